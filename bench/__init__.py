"""Benchmarks (printed figures, not tests)."""
