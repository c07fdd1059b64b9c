"""The OpenAPI description, checked by schemathesis against the real server."""
