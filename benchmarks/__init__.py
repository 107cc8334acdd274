"""Reproducible benchmarks of reconciler (DESIGN B6): `make bench`, see benchmarks.run."""
