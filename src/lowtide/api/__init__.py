"""The HTTP API: thin routes that parse, authorise and call a service."""
