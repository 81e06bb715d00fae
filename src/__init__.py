"""Shared code of the self-supervised toolkit: one module per job (see DESIGN.md)."""
