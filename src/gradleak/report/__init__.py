"""Reports: image grids and audit summaries rendered from stored results."""
