"""Scoring candidates on held-out data: baselines, metrics, statistics, slices, robustness, forgetting."""
