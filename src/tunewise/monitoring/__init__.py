"""The serving request log, its feedback, and drift and decay monitoring."""
