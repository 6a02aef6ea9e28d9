"""``make bench``: the exporter at fleet scale against the simulated API (see BENCHMARKS.md)."""
