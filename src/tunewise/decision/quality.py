"""The quality side of the decision: scores on the primary metric, which candidate is better beyond
noise (paired comparisons), the minimum-improvement target over the reference, and where a
fine-tune's relative improvement lies against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Quality:
    """Quality facts the verdict reads from evaluate/summary.json."""

    metric: str
    scale: float
    lower_is_better: bool
    entries: dict[str, dict]
    pairwise: dict[str, dict[str, dict]]

    def score(self, name: str) -> float:
        value = self.entries[name]["metrics"].get(self.metric)
        return float("nan") if value is None else float(value)

    def oriented(self, name: str) -> float:
        """Higher is better, on a 0-1 scale."""
        return (-1 if self.lower_is_better else 1) * self.score(name) / self.scale

    def better_beyond_noise(self, a: str, b: str) -> bool:
        """a is better than b: the paired difference's interval lies wholly on a's side."""
        pair = self.pairwise.get(a, {}).get(b)
        if pair is None:
            return False
        low, high = pair["difference_ci"]
        return (high < 0) if self.lower_is_better else (low > 0)

    def pair_text(self, a: str, b: str) -> str:
        pair = self.pairwise.get(a, {}).get(b)
        if pair is None:
            return f"{a} and {b} share no scored rows"
        low, high = pair["difference_ci"]
        return (
            f"{a} {self.score(a):.4g} vs {b} {self.score(b):.4g} {self.metric}, difference {pair['difference']:+.4g} "
            f"(interval {low:+.4g} to {high:+.4g}, n={pair['n']:,})"
        )


def improvement_target(reference: str | None, threshold: float, quality: Quality) -> tuple[float | None, str]:
    """(target score, its arithmetic): the reference's score moved by the minimum improvement."""
    if reference not in quality.entries:
        return None, "no reference"
    score = quality.score(reference)
    factor = (1 - threshold) if quality.lower_is_better else (1 + threshold)
    target = score * factor
    ceiling = 1.0 * quality.scale
    text = f"{quality.metric} {target:.4g} = {reference}'s {score:.4g} x {factor:g}"
    if not quality.lower_is_better and target > ceiling:
        text += f", above the metric's maximum {ceiling:g}: no candidate can reach it from this reference"
    return target, text


def target_status(comparison: dict | None, metric: str, threshold: float, lower_is_better: bool) -> tuple[str, dict]:
    """meets / misses / unsure: where the relative improvement's interval lies against the threshold."""
    entry = (comparison or {}).get("metrics", {}).get(metric)
    if not entry or entry.get("relative_improvement") is None:
        return "unknown", {}
    rel = entry["relative_improvement"]
    low, high = entry["relative_ci"]
    if lower_is_better:
        rel, low, high = -rel, -high, -low
    if not all(v is not None and math.isfinite(v) for v in (rel, low, high)):
        return "unknown", {}
    facts = {"relative": rel, "relative_ci": [low, high], "n": entry["n"]}
    if low >= threshold:
        return "meets", facts
    if high < threshold:
        return "misses", facts
    return "unsure", facts


def relative_text(facts: dict) -> str:
    low, high = facts["relative_ci"]
    return f"{facts['relative']:+.1%} (interval {low:+.1%} to {high:+.1%})"
