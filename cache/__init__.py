"""cache: the LMDB store of what the API server answered, per client and per query. Knows nothing of HTTP."""
