"""The A/B and canary server, and retraining from its feedback."""
