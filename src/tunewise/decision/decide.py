"""The decision: fine-tune, use something that needs no fine-tuning, wait, or measure more.

Inputs are measurements and the ``roi:`` assumptions, never the data's origin:

- quality: the evaluation's candidates with intervals, every pair's paired comparison on the
  primary metric (``pairwise``), each candidate's comparison with the reference (``comparisons``);
- the reference of the minimum-improvement rule (evaluate.summary ``baseline``): the incumbent
  (what the team runs today: a candidate or its own predictions file; default the strongest
  prompted LLM), or, when the incumbent is within noise of chance, the best candidate that needs no
  fine-tuning; the target is its score x (1 + ``evaluate.threshold``);
- each candidate's own costs: engineering days by kind (a fine-tune, a cheap classic model and a
  prompt are not built and kept at the same price; the incumbent exists already), its own
  training compute (tokens it processed x FLOPs per token on a reference GPU), data review and new
  labels for the candidates that learn from the data, and its serving footprint: the smallest CPU
  instance whose memory holds it, busy for the measured latency x volume, or the API price per
  request of an incumbent that is a hosted model.

The verdict (``decision.verdict``):

- FINE_TUNE: a fine-tuned candidate meets the target (the lower end of its relative improvement's
  interval reaches the threshold), beats every alternative that costs no more beyond noise, and
  (when volume and value are given) its extra gain over the recommended alternative pays back its
  extra cost within the horizon;
- USE_ALTERNATIVE: no fine-tune qualifies (or it does not pay back), and a candidate that needs
  no fine-tuning, the incumbent included, is meaningful: ``recommended`` names the cheapest one
  within noise of the best of them (with volume and value: upgraded to a better one beyond noise
  when its extra gain pays back);
- NOT_YET: nothing usable meets the bar (no meaningful alternative), or the learning curve
  (``tunewise curve``) measured that more data would take a fine-tune to the target: the reasons
  say what data it would take;
- INCONCLUSIVE: the best fine-tune's interval straddles the threshold (or it was stopped while
  still improving, so its score is only a lower bound): the reasons say how many more test rows
  would settle it, from a power calculation at the observed effect.

The first reason is the one that decided. Every cost line carries its arithmetic: the cost model
and the payback arithmetic are :mod:`tunewise.decision.costs`, scores, noise and the target
:mod:`tunewise.decision.quality`, the ``roi`` part of summary.json (the best fine-tune's payback)
:mod:`tunewise.decision.roi`, what is read from the run folder besides the evaluation
:mod:`tunewise.decision.run_facts`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tunewise.candidates.ensemble import candidate_members
from tunewise.config.sections import RoiConfig
from tunewise.core.artifacts import read_json
from tunewise.core.layout import RunLayout
from tunewise.core.pricing import CPU_INSTANCES
from tunewise.decision.costs import (
    CandidateCosts,
    Money,
    candidate_costs,
    gain_scale,
    monthly_running_cost,
    one_time_cost,
    payback_months,
    payback_text,
    serving_memory_gib,
    test_rows_needed,
)
from tunewise.decision.errors import DecisionError
from tunewise.decision.quality import Quality, improvement_target, relative_text, target_status
from tunewise.decision.roi import roi_block, upgrade_money
from tunewise.decision.run_facts import (
    incumbent_usd_per_request,
    read_api_tokens,
    read_flagged_rows,
    read_latencies,
    read_latency_cores,
    read_measured_usd_per_request,
    read_train_summaries,
)

# re-exported for callers (workflows.distill_students, the tests): the cost model itself lives in costs
__all__ = [
    "CPU_INSTANCES",
    "DecisionError",
    "Money",
    "VERDICTS",
    "decide",
    "monthly_running_cost",
    "one_time_cost",
    "payback_months",
    "serving_memory_gib",
    "test_rows_needed",
]

VERDICTS = ("FINE_TUNE", "USE_ALTERNATIVE", "NOT_YET", "INCONCLUSIVE")


# =============================================================================================
# The decision


def _choose(
    names: list[str], quality: Quality, costs: dict[str, CandidateCosts], roi: RoiConfig, priced: bool
) -> tuple[str | None, list[str]]:
    """The cheapest of the candidates within noise of the best (ties: the better one, said so);
    with volume and value, a better one beyond noise instead when its extra gain pays back."""
    names = [n for n in names if math.isfinite(quality.oriented(n))]
    if not names:
        return None, []
    best = max(names, key=lambda n: (quality.oriented(n), n))
    contenders = [n for n in names if n == best or not quality.better_beyond_noise(best, n)]
    ranked = sorted(contenders, key=lambda n: (round(costs[n].total, 2), -quality.oriented(n), n))
    chosen = ranked[0]
    notes: list[str] = []
    if len(contenders) > 1:
        others = ", ".join(n for n in ranked[1:])
        notes.append(
            f"{chosen} is the cheapest of the candidates within noise of the best ({best}): "
            f"${costs[chosen].total:,.0f} over {roi.horizon_months} months against {others}"
        )
        tied = [n for n in ranked[1:] if round(costs[n].total, 2) == round(costs[chosen].total, 2)]
        if tied:
            notes.append(
                f"{chosen} and {', '.join(tied)} cost the same; the tie is broken by quality "
                f"({chosen} {quality.score(chosen):.4g} {quality.metric})"
            )
    if priced:
        best_upgrade, best_value = None, 0.0
        for n in names:
            if n == chosen or not quality.better_beyond_noise(n, chosen):
                continue
            gain = quality.oriented(n) - quality.oriented(chosen)
            extra_net = (roi.monthly_volume or 0) * (roi.value_per_outcome_usd or 0) * gain - (
                costs[n].running - costs[chosen].running
            )
            extra_one = costs[n].one_time - costs[chosen].one_time
            months = payback_months(extra_one, extra_net)
            value = extra_net * roi.horizon_months - extra_one
            if months is not None and months <= roi.horizon_months and value > best_value:
                best_upgrade, best_value = n, value
        if best_upgrade is not None:
            notes.append(
                f"{best_upgrade} is better than {chosen} beyond noise and its extra gain pays back its extra "
                f"cost: ${best_value:,.0f} more over {roi.horizon_months} months"
            )
            chosen = best_upgrade
    return chosen, notes


def decide(run_dir: str | Path, roi: RoiConfig) -> dict[str, Any]:
    """The ``roi`` and ``decision`` parts of the report's summary.json, from a run's evaluation."""
    run_dir = Path(run_dir)
    summary_path = RunLayout(run_dir).summary("evaluate")
    if not summary_path.exists():
        raise DecisionError(f"{summary_path} not found; run `tunewise evaluate` first")
    evaluation = read_json(summary_path)
    metric = evaluation["primary_metric"]
    gate = evaluation.get("gate", {})
    reference = evaluation.get("baseline") or gate.get("baseline")
    incumbent = (evaluation.get("incumbent") or {}).get("name") or reference
    threshold = evaluation.get("threshold", (evaluation.get("comparison") or {}).get("threshold", 0.15))
    entries = {c["name"]: c for c in evaluation.get("candidates", [])}
    if incumbent in entries:
        entries[incumbent] = {**entries[incumbent], "is_incumbent": True}
    for name, usd in read_measured_usd_per_request(run_dir).items():
        if name in entries:
            entries[name] = {**entries[name], "usd_per_request_measured": usd}
    members = candidate_members(evaluation)
    for name, cores in read_latency_cores(run_dir, list(entries), members).items():
        entries[name] = {**entries[name], "latency_cores": cores}
    quality = Quality(
        metric,
        gain_scale(metric),
        metric in (evaluation.get("lower_is_better") or []),
        entries,
        evaluation.get("pairwise") or {},
    )
    latency = read_latencies(run_dir, list(entries))
    trained = read_train_summaries(run_dir)
    flagged = read_flagged_rows(run_dir)
    api_tokens = read_api_tokens(run_dir, roi)
    costs = {
        name: candidate_costs(
            name,
            entry,
            roi,
            trained,
            flagged,
            latency,
            api_tokens,
            incumbent_usd_per_request(evaluation),
            members.get(name),
        )
        for name, entry in entries.items()
    }
    missing = [name for name in ("monthly_volume", "value_per_outcome_usd") if getattr(roi, name) is None]
    priced = not missing
    comparisons = evaluation.get("comparisons", {})

    finetunes = [n for n, e in entries.items() if e["kind"] == "finetuned"]
    alternatives = [n for n, e in entries.items() if e["kind"] != "finetuned" and e.get("meaningful", True)]
    statuses = {n: target_status(comparisons.get(n), metric, threshold, quality.lower_is_better) for n in finetunes}
    under_trained = {n: trained[n] for n in finetunes if (trained.get(n) or {}).get("under_trained")}
    alternative, alternative_notes = _choose(alternatives, quality, costs, roi, priced)
    target_score, target = improvement_target(reference, threshold, quality)

    qualifying = [
        f
        for f in finetunes
        if statuses[f][0] == "meets"
        and all(quality.better_beyond_noise(f, a) for a in alternatives if costs[a].total <= costs[f].total)
    ]
    finetune, finetune_notes = _choose(qualifying, quality, costs, roi, priced)
    best_finetune = max(finetunes, key=lambda n: (quality.oriented(n), n)) if finetunes else None

    reasons: list[str] = []
    extra: dict[str, Any] = {}
    if finetune is not None:
        status, facts = statuses[finetune]
        meets = (
            f"{finetune} meets the target: {relative_text(facts)} over {reference}, the whole interval above "
            f"the {threshold:.0%} minimum ({target})"
        )
        comparator = alternative or (reference if reference != finetune else None)
        money = upgrade_money(finetune, comparator, quality, costs, roi) if comparator else None
        extra["vs_alternative"] = money
        beats = (
            f"it beats every alternative that costs no more beyond noise ({quality.pair_text(finetune, alternative)})"
            if alternative
            else "no candidate without fine-tuning is meaningful"
        )
        if money is None or not priced:
            verdict, recommended = "FINE_TUNE", finetune
            reasons.append(
                f"{meets}, and {beats}"
                + ("" if priced else f"; the money side was not priced (set {', '.join('roi.' + m for m in missing)})")
            )
        elif money["payback_months"] is not None and money["payback_months"] <= roi.horizon_months:
            verdict, recommended = "FINE_TUNE", finetune
            reasons.append(
                f"{meets}, {beats}, and its extra gain over {comparator} pays back its extra cost in "
                f"{money['payback_months']:.1f} months, within the {roi.horizon_months}-month horizon"
            )
        else:
            verdict = "USE_ALTERNATIVE" if alternative else "NOT_YET"
            recommended = alternative
            reasons.append(
                f"{finetune} meets the target but its extra gain over {comparator} does not pay back its "
                f"extra cost within {roi.horizon_months} months (payback {payback_text(money['payback_months'])})"
                + (f": use {alternative}" if alternative else "")
            )
        if alternative:
            reasons.append(quality.pair_text(finetune, alternative))
        reasons.extend(finetune_notes)
    else:
        unsure = [
            f
            for f in finetunes
            if statuses[f][0] == "unsure"
            and (alternative is None or quality.oriented(f) >= quality.oriented(alternative))
        ]
        lower_bound = [f for f in finetunes if f in under_trained]
        if unsure:
            pick = max(unsure, key=lambda n: (quality.oriented(n), n))
            _, facts = statuses[pick]
            needed = test_rows_needed(facts["n"], facts["relative"], facts["relative_ci"], threshold)
            verdict, recommended = "INCONCLUSIVE", alternative or incumbent
            more = (
                f"about {max(needed - facts['n'], 1):,} more test rows ({needed:,} in all) would settle it at the "
                f"observed effect (80% power)"
                if needed is not None
                else "the observed effect sits on the threshold: no test size tells it apart"
            )
            reasons.append(
                f"the test set cannot tell whether {pick} meets the target: {relative_text(facts)} over "
                f"{reference} on {facts['n']:,} rows straddles the {threshold:.0%} minimum ({target}); {more}"
            )
            extra["test_rows_needed"] = needed
        elif lower_bound:
            pick = lower_bound[0]
            verdict, recommended = "INCONCLUSIVE", alternative or incumbent
            reasons.append(
                f"{pick} was stopped by a budget while validation still improved "
                f"({under_trained[pick].get('under_trained_reason', 'under-trained')}): its score is a lower "
                "bound, so it cannot be ruled out; train it to convergence (remove the cap) and decide again"
            )
        else:
            more = _more_data_reason(run_dir, best_finetune, roi) if best_finetune else None
            reachable = bool(more) and not more.startswith("more data of the same kind will not")
            why = _finetune_shortfall(
                best_finetune, statuses, quality, alternatives, costs, reference, threshold, target
            )
            if alternative is None:
                verdict, recommended = "NOT_YET", None
                reasons.append(f"nothing meets the bar: no candidate without fine-tuning is meaningful and {why}")
            elif reachable:
                verdict, recommended = "NOT_YET", alternative
                reasons.append(f"{why}; the learning curve says more data would get there: use {alternative} meanwhile")
            else:
                verdict, recommended = "USE_ALTERNATIVE", alternative
                reasons.append(f"use {alternative}, which needs no fine-tuning: {why}")
            if more:
                reasons.append(more)
                extra["more_data"] = more
            elif best_finetune:
                reasons.append(
                    "run `tunewise curve` to see whether more labelled data would take a fine-tune to the target"
                )
        reasons.extend(alternative_notes if recommended == alternative else [])
    for name in under_trained:
        if name not in reasons[0]:
            reasons.append(
                f"{name} was stopped by a budget while validation still improved: its score is a lower bound"
            )
    if evaluation.get("reference_note"):
        reasons.append(evaluation["reference_note"])
    sampled = [n for n, e in entries.items() if e.get("on_sample")]
    if sampled:
        reasons.append(
            "scored on a sample of the test set (their comparisons rest on it): "
            + ", ".join(f"{n} ({entries[n]['n_eval']:,} of {entries[n].get('n_test', '?'):,} rows)" for n in sampled)
        )
    if not priced:
        reasons.append(
            "the money side was not priced: set "
            + " and ".join(f"roi.{m}" for m in missing)
            + "; candidates within noise of each other were decided by their cost at the default rates"
        )

    roi_out = roi_block(
        run_dir,
        evaluation,
        roi,
        quality,
        costs,
        trained,
        flagged,
        latency,
        api_tokens,
        best_finetune,
        reference,
        missing,
        reasons,
        extra,
    )
    candidates_costs = {
        n: {
            "one_time_usd": c.one_time,
            "monthly_running_usd": c.running,
            "horizon_cost_usd": c.total,
            "instance": c.instance,
            "memory_gib": c.memory_gib,
            "running_arithmetic": c.running_arithmetic,
            "one_time_lines": c.one_time_lines,
        }
        for n, c in costs.items()
    }
    roi_out["candidates"] = candidates_costs
    decision = {
        "verdict": verdict,
        "recommended": recommended,
        "reasons": reasons,
        "headline": f"{verdict}: {reasons[0]}",
        "candidate": best_finetune,
        "reference": reference,
        "incumbent": incumbent,
        "threshold": threshold,
        "target": target,
        "target_score": target_score,
        "priced": priced,
        "alternative": alternative,
        "finetune": finetune,
        "finetune_status": {n: {"status": s, **f} for n, (s, f) in statuses.items()},
        "under_trained": sorted(under_trained),
        "gate_passed": bool(gate.get("passed")),
        "recommendation": {
            "name": recommended,
            "kind": entries.get(recommended, {}).get("kind"),
            "horizon_cost_usd": costs[recommended].total if recommended in costs else None,
        },
        **extra,
    }
    return {"roi": roi_out, "decision": decision}


def _finetune_shortfall(
    best: str | None,
    statuses: dict,
    quality: Quality,
    alternatives: list[str],
    costs: dict[str, CandidateCosts],
    reference: str | None,
    threshold: float,
    target: str,
) -> str:
    if best is None:
        return "no fine-tuned candidate was trained"
    status, facts = statuses[best]
    if status == "misses":
        return (
            f"no fine-tune reaches the {threshold:.0%} minimum improvement over {reference} "
            f"(best {best}: {relative_text(facts)}; target {target})"
        )
    if status == "meets":
        cheaper = [
            a for a in alternatives if costs[a].total <= costs[best].total and not quality.better_beyond_noise(best, a)
        ]
        return (
            f"{best} meets the target but is not better beyond noise than "
            + "; ".join(quality.pair_text(best, a) for a in cheaper[:2])
            + ", which cost less"
        )
    return f"{best} could not be compared with {reference}"


def _more_data_reason(run_dir: Path, candidate: str, roi: RoiConfig) -> str | None:
    """What the learning curve (``tunewise curve``) says more labels would do for ``candidate``."""
    path = run_dir / "curve" / "curve.json"
    if not path.exists():
        return None
    curve = read_json(path)
    proxy = (curve.get("notes") or {}).get(f"{candidate}_proxy")  # a combined candidate: measured through a member
    entry = curve.get("candidates", {}).get(candidate) or (curve.get("candidates", {}).get(proxy) if proxy else None)
    target = (entry or {}).get("target")
    if not target:
        return None
    if not target["reachable"]:
        return f"more data of the same kind will not reach the target: {target['message']} (tunewise curve)"
    more = target["more_rows"]
    classes = [row["label"] for row in entry["per_class"][:5]]
    return (
        f"the learning curve says {candidate} reaches {target['accuracy']:.3f} accuracy with about "
        f"{target['n_needed']:,} training rows: {more:,} more labelled rows, most useful in {', '.join(classes)}; "
        f"at ${roi.usd_per_label:g} a label that is ${more * roi.usd_per_label:,.0f} (tunewise curve)"
    )
