"""Test helpers: a fake OpenAI-compatible upstream with fault injection."""
