"""Use cases: what the API asks for, in terms of the store, the blobs and the engine."""
