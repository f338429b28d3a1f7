"""Model backends: vLLM, OpenAI-compatible HTTP, transformers, replay; one factory picks."""
