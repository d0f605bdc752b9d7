"""Benchmarks (`make bench*`): every speed figure in the docs comes from one of these."""
