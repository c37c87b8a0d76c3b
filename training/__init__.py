"""Datasets, synthetic films, training and evaluation."""
