"""Stage 7, reports: the results table, the history plot, and sweep summaries."""
