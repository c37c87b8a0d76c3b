"""One module per ``legalign`` subcommand (see pipeline/cli.py)."""
