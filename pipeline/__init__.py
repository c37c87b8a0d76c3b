"""legalign inference pipeline: read -> normalise -> locate -> measure -> plan -> write."""

__version__ = "0.1.0"
