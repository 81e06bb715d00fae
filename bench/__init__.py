"""Throughput and memory measurements (``python -m bench.moco``); results are printed and written as JSON."""
