"""Kubernetes: training-job manifests built as objects, and the thin API adapter."""
