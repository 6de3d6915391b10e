"""gscache: training."""
