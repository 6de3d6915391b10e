"""gscache: data."""
