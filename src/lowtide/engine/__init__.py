"""The engine: validates batches, dispatches their requests to backends, records results,
and finalises. Runs inside ``lowtide serve`` (or ``lowtide worker`` when scaled out)."""
