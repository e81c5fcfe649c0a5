"""Background work: the durable job queue, its lanes and the worker loop."""
