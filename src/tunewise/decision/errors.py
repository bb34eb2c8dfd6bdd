"""The decision's error."""

from __future__ import annotations

from tunewise.core.errors import TunewiseError

__all__ = ["DecisionError"]


class DecisionError(TunewiseError, ValueError):
    """The decision cannot be computed from these inputs; the message says which is missing."""
