"""Ingest, curation (checks and their runner), near-duplicates, the leakage-free split, the issues table."""
