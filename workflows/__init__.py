"""Deterministic Temporal workflow code: no I/O, no wall clock; activities do the rest."""
