"""tunewise: will fine-tuning an LLM on your data pay off? Measure it, then do it right."""

__version__ = "0.1.0"
