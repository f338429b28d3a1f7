"""Inference domain: model registry, request hashing and batching rules (no transport)."""
