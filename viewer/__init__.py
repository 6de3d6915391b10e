"""gscache: viewer."""
