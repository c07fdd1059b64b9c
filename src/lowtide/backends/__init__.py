"""Model servers: one adapter per kind (OpenAI-compatible HTTP, the built-in test model)."""
