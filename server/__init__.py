"""gscache: server."""
