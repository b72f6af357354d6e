"""The results stage: an experiment's runs (``runs``), their tables, plots and comparison, and where to see them."""
