"""The incumbent, the reference each candidate is compared with, and the gate a candidate must pass."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tunewise.evaluation.base import INCUMBENT_NAME, PREDICTIONS_PREFIX, PRIMARY_METRIC, pct
from tunewise.evaluation.scores import Resampler, Scores, compare_scores


def pick_incumbent(task: str, entries: dict[str, dict], configured: str | None) -> tuple[str | None, str | None]:
    """(incumbent name, note): the configured candidate (or ``predictions:FILE``, loaded as
    ``incumbent``), else the strongest prompted LLM measured: the "pre-trained model before
    fine-tuning" of the minimum-improvement rule, never an arbitrary one of them."""
    primary = PRIMARY_METRIC[task]
    if configured is not None:
        name = INCUMBENT_NAME if configured.startswith(PREDICTIONS_PREFIX) else configured
        if name in entries:
            return name, None
        return None, (
            f"evaluate.baseline is {configured!r} but it has no usable predictions; "
            f"available: {', '.join(sorted(entries)) or 'none'}"
        )
    prompted = [n for n, e in entries.items() if e["kind"] == "baseline"]
    best = best_by_primary(entries, prompted, primary)
    if best is not None:
        return best, (
            f"the incumbent is {best}, the strongest prompted LLM measured "
            f"(of {', '.join(sorted(prompted))}); name the system you run today with evaluate.baseline"
        )
    alternatives = [n for n, e in entries.items() if e["kind"] != "finetuned"]
    best = best_by_primary(entries, alternatives, primary)
    if best is not None:
        return (
            best,
            f"no prompted LLM was measured; the incumbent is {best}, the best candidate that needs no fine-tuning",
        )
    return (
        None,
        "no baseline: no prompted LLM or other candidate without fine-tuning has predictions; set evaluate.baseline",
    )


def meaningful(task: str, entry: dict, scores: Scores, primary: str) -> dict:
    """Whether a candidate is more than chance: its interval's lower end above the majority-class
    rate (the accuracy of always answering the most frequent label on the same rows, never below
    1 / number of labels). A baseline within noise of that is a strawman: beating it by 15% says
    nothing about fine-tuning."""
    if task != "classify" or primary != "accuracy":
        return {"meaningful": True, "floor": None, "reason": "not checked for this metric"}
    counts = np.bincount(scores.y_true, minlength=len(scores.labels))
    floor = max(float(counts.max() / max(len(scores.y_true), 1)), 1.0 / max(len(set(scores.y_true.tolist())), 1))
    low = (entry.get("ci95", {}).get(primary) or [float("nan")])[0]
    ok = bool(low is not None and math.isfinite(low) and low > floor)
    reason = (
        f"{entry['name']} scores {entry['metrics'].get(primary, float('nan')):.4g} {primary} (interval from "
        f"{low:.4g}); always answering the most frequent label scores {floor:.4g} on the same rows"
    )
    return {
        "meaningful": ok,
        "floor": floor,
        "lower": low,
        "reason": reason + ("" if ok else ": within noise of chance, not a meaningful baseline"),
    }


def comparison_reference(
    task: str, entries: dict[str, dict], incumbent: str | None, checks: dict[str, dict], primary: str
) -> tuple[str | None, str | None]:
    """The candidate the minimum-improvement rule is measured against: the incumbent when it is
    meaningful, else the best meaningful candidate that needs no fine-tuning."""
    if incumbent is None or checks.get(incumbent, {}).get("meaningful", True):
        return incumbent, None
    alternatives = [
        n
        for n, e in entries.items()
        if e["kind"] != "finetuned" and n != incumbent and checks.get(n, {}).get("meaningful", True)
    ]
    best = best_by_primary(entries, alternatives, primary)
    if best is None:
        return incumbent, (
            f"the baseline {incumbent} is not meaningful ({checks[incumbent]['reason']}) and no "
            "other candidate without fine-tuning is either; comparisons use it all the same"
        )
    return best, (
        f"the baseline {incumbent} is not meaningful ({checks[incumbent]['reason']}): the "
        f"minimum-improvement rule is measured against {best}, the best candidate that needs no fine-tuning"
    )


def pairwise_primary(
    scores: dict[str, Scores], names: Sequence[str], primary: str, resampler: Resampler, level: float, seed: int
) -> dict[str, dict[str, dict]]:
    """Every ordered pair's paired comparison on the primary metric (on the ids both scored):
    ``out[a][b]`` is a against b. The decision reads it to tell which candidates are within noise
    of each other and which beat the cheaper ones."""
    out: dict[str, dict[str, dict]] = {n: {} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            result = compare_scores(scores[a], scores[b], (primary,), resampler, level, seed)
            if result is None or primary not in result["metrics"]:
                continue
            m = result["metrics"][primary]
            lo, hi = m["difference_ci"]
            out[a][b] = {
                "difference": m["difference"],
                "difference_ci": [lo, hi],
                "p_value": m["p_value"],
                "test": m["test"],
                "n": m["n"],
            }
            out[b][a] = {
                "difference": -m["difference"],
                "difference_ci": [-hi, -lo],
                "p_value": m["p_value"],
                "test": m["test"],
                "n": m["n"],
            }
    return out


def best_by_primary(entries: dict[str, dict], names: Sequence[str], primary: str) -> str | None:
    scored = [(entries[n]["metrics"].get(primary), n) for n in names]
    scored = [(v, n) for v, n in scored if v is not None and math.isfinite(v)]
    return max(scored, key=lambda item: item[0])[1] if scored else None


def gate_decision(
    task: str,
    *,
    candidate: str | None,
    baseline: str | None,
    vs_baseline: dict | None,
    cheap: str | None,
    vs_cheap: dict | None,
    threshold: float,
    require_beats_cheap: bool = True,
    notes: Sequence[str] = (),
) -> dict:
    """Pass when the relative improvement on the primary metric reaches ``threshold`` with the
    interval's lower end above zero, and the candidate does not lose to the best cheap one beyond
    noise (the difference's interval entirely below zero)."""
    primary = PRIMARY_METRIC[task]
    reasons: list[str] = list(notes)
    passed = True
    if candidate is None or baseline is None:
        return {
            "passed": False,
            "candidate": candidate,
            "baseline": baseline,
            "reasons": reasons + ["no candidate to compare with a baseline"],
        }
    comparison = (vs_baseline or {}).get("metrics", {}).get(primary)
    if comparison is None:
        return {
            "passed": False,
            "candidate": candidate,
            "baseline": baseline,
            "reasons": reasons + [f"{candidate} and {baseline} share no scored test ids: nothing to compare"],
        }
    rel, (lo, hi) = comparison["relative_improvement"], comparison["relative_ci"]
    n = comparison["n"]
    if rel is None or not math.isfinite(rel):
        passed = False
        reasons.append(
            f"relative improvement of {candidate} over {baseline} is undefined ({baseline} scores 0 {primary})"
        )
    else:
        where = f"{primary} {comparison['candidate']:.4g} vs {comparison['baseline']:.4g}, n={n}"
        if rel >= threshold:
            reasons.append(
                f"{candidate} improves {primary} over {baseline} by {pct(rel)} ({where}), "
                f"reaching the {threshold:.0%} threshold"
            )
        else:
            passed = False
            reasons.append(
                f"{candidate} improves {primary} over {baseline} by {pct(rel)} ({where}), "
                f"below the {threshold:.0%} threshold"
            )
        if lo is not None and math.isfinite(lo) and lo > 0:
            reasons.append(f"the {primary} gain is beyond noise: its interval is {pct(lo)} to {pct(hi)}")
        else:
            passed = False
            reasons.append(
                f"the {primary} gain may be noise: its interval ({pct(lo)} to {pct(hi)}) reaches zero or below"
            )
    if require_beats_cheap:
        cmp_cheap = (vs_cheap or {}).get("metrics", {}).get(primary)
        if cheap is None:
            reasons.append("no cheap candidate to check against")
        elif cmp_cheap is None:
            passed = False
            reasons.append(f"{candidate} and the cheap candidate {cheap} share no scored test ids")
        else:
            d_lo, d_hi = cmp_cheap["difference_ci"]
            if d_hi is not None and math.isfinite(d_hi) and d_hi < 0:
                passed = False
                reasons.append(
                    f"{candidate} loses to the cheap candidate {cheap} beyond noise: {primary} difference "
                    f"{cmp_cheap['difference']:+.4g} (interval {d_lo:+.4g} to {d_hi:+.4g}, n={cmp_cheap['n']})"
                )
            else:
                reasons.append(
                    f"{candidate} does not lose to the cheap candidate {cheap} beyond noise "
                    f"({primary} difference {cmp_cheap['difference']:+.4g}, interval {d_lo:+.4g} to {d_hi:+.4g})"
                )
    return {"passed": passed, "candidate": candidate, "baseline": baseline, "cheap": cheap, "reasons": reasons}


def gate_exit_code(summary: dict) -> int:
    """0 when the evaluation gate passed, 1 when it failed or the summary holds no gate."""
    gate = summary.get("gate") if isinstance(summary, dict) else None
    return 0 if isinstance(gate, dict) and gate.get("passed") is True else 1
