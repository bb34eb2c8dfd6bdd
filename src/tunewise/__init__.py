"""tunewise: will fine-tuning an LLM on your data pay off? Measure it, then do it right."""

__version__ = "0.1.0"

# Importing tunewise changes no environment variable and no umask: the command line quiets
# transformers' loading bars before each command (tunewise.cli.common.prepare_process).
