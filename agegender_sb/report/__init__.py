"""Reading tables against truth: scoring, plots, and the published-numbers check."""
