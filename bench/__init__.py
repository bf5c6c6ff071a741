"""Benchmarks of the write path and the workers, beside their ceilings (``python -m bench``)."""
