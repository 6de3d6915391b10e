"""gscache: gscache."""
