"""Default YAML configuration, shipped as package data (``legalign.configs``)."""
