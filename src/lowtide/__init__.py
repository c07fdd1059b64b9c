"""lowtide: a self-hosted Batch API for LLM requests."""

__version__ = "0.1.0"
