"""Segments: definitions, their pure evaluation, and their SQL."""
