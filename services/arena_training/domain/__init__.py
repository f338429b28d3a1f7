"""Training domain: recipes and run state (no transport)."""
