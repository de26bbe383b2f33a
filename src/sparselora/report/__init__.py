"""Human-facing outputs: model cards (tables, plots and validation reports follow)."""
