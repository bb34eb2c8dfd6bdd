"""The root of every tunewise error: a message that says what went wrong and a hint that says what to do.

Each library module keeps its own error class (``ConfigError``, ``StageError``, ...) with its
other bases (``ValueError``, ``OSError``, ...), so callers' ``except`` clauses keep working; all of
them derive from ``TunewiseError``, so the CLI needs one ``except`` to turn any of them into a
message, the hint and a non-zero exit code (``tunewise.cli.common``).
"""

from __future__ import annotations

__all__ = ["TunewiseError"]


class TunewiseError(Exception):
    """A problem the user can act on. ``hint``: what to do next, or None when the message says it.

    A subclass sets a class-level ``hint`` for its usual remedy; ``raise XError(msg, hint=...)``
    gives one instance its own.
    """

    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint
