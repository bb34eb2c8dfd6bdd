"""Chat templates and end-of-turn ids: one definition for prompting and training."""
