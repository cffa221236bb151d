"""Benchmarks: each prints its figures (and a peer's, side by side, where there is one) and writes JSON to bench/results/."""
