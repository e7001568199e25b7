"""Synthetic checkpoints for the tests and the benchmarks."""
