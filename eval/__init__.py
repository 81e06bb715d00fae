"""Evaluation command-line tools (run as ``python -m eval.<name>``): thin CLIs over ``src.metrics``."""
