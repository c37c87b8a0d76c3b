"""Landmark network code and the shipped default weights."""
