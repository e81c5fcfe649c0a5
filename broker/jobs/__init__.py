"""Background work: the worker loop (the durable job engine arrives with orders)."""
