"""The report's error."""

from __future__ import annotations

from tunewise.core.errors import TunewiseError

__all__ = ["ReportError"]


class ReportError(TunewiseError):
    """The report cannot be built (no evaluation to report on); the message says what to run."""

    hint = "run the stages the report reads first: `tunewise run` brings them all up to date"
