"""Studies behind single decisions: ``python -m benchmarks.studies.NAME``."""
