import os
import sys
from pathlib import Path

# As every `legalign` command does (pipeline/cli.py): OpenMP threads that wait passively
# instead of spinning, so the in-process networks do not starve the worker processes the
# engine tests start on the same 2 cores.  Set before torch is imported by any test.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Test helpers (leg_builder) live next to the tests.
sys.path.insert(0, str(Path(__file__).parent))
