"""Judge domain: prompts, verdict parsing, position-swap aggregation (no transport)."""
