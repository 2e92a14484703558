"""Strategy-level portfolio construction: optimisation over strategies' return streams."""
