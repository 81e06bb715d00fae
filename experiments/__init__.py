"""Experiment tools (run as ``python -m experiments.<name>``): static positive-pair sets, t-SNE, log plots."""
