"""legalign: lower-limb alignment on full-leg radiographs.

The installed import names all live under this package: ``legalign.models`` (networks,
codec, shipped weights), ``legalign.pipeline`` (read, locate, measure, plan, write, the
command line), ``legalign.training`` (datasets, training, evaluation) and
``legalign.configs`` (the default YAML configuration, as package data).
"""

__version__ = "0.1.0"
