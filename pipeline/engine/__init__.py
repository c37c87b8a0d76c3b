"""``legalign run`` engines: input expansion, the local streaming engine."""
