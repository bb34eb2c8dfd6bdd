"""Reading a run's JSON artifacts leniently, and the number formats the page and its filters use."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

TEXT_CHARS = 300  # example texts are cut to this many characters


# ---------------------------------------------------------------------------------------------
# Reading artifacts


def read_artifact(path: Path) -> Any | None:
    """A JSON artifact, or None when it is missing or unreadable (a section then says so)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def finite_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------------------
# Number formatting (jinja filters too)


def fmt_num(value: Any, digits: int = 4) -> str:
    number = finite_or_none(value)
    if number is None:
        return "n/a"
    if abs(number) >= 1000:
        return f"{number:,.0f}"
    return f"{number:.{digits}g}"


def fmt_pct(value: Any, signed: bool = True) -> str:
    number = finite_or_none(value)
    if number is None:
        return "n/a"
    digits = 0 if abs(number) >= 1 else 1  # +1350% reads better than +1350.0%
    return f"{number * 100:+.{digits}f}%" if signed else f"{number * 100:.{digits}f}%"


def fmt_usd(value: Any) -> str:
    number = finite_or_none(value)
    if number is None:
        return "n/a"
    sign = "-" if number < 0 else ""
    number = abs(number)
    return f"{sign}${number:,.0f}" if number >= 100 else f"{sign}${number:,.2f}"


def fmt_months(value: Any) -> str:
    number = finite_or_none(value)
    if number is None:
        return "n/a"
    return f"{number:.2g} months" if number < 10 else f"{number:.0f} months"


def fmt_months_number(value: Any) -> str:
    number = finite_or_none(value)
    return "n/a" if number is None else f"{number:.2g}" if number < 10 else f"{number:.0f}"


def fmt_interval(pair: Any, fmt=fmt_num) -> str:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or any(finite_or_none(v) is None for v in pair):
        return "n/a"
    return f"{fmt(pair[0])} to {fmt(pair[1])}"


def shorten(text: Any, limit: int = TEXT_CHARS) -> str:
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
