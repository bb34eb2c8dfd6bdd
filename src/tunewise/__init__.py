"""tunewise: will fine-tuning an LLM on your data pay off? Measure it, then do it right."""

__version__ = "0.1.0"

import os as _os

# Weights load from local folders in well under a second: transformers' per-file loading bars only
# interleave with tunewise's own progress display. A user's explicit setting wins.
_os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
