"""Selection domain: pool cleaning, splits, test-set construction, training data (no transport)."""
