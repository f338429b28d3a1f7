"""Training service: recipes, worker, runners, manifests."""
