"""Consumer workers: one loop, and a sink per topic it feeds into the store."""
