"""Flywheel domain: the run spec and the iteration state machine (no transport)."""
