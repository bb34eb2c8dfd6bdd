"""The money side of the decision: what the best fine-tune's gain over the reference is worth (the
``roi`` part of summary.json: cost lines, benefit, net, payback with intervals, break-even gain,
cumulative net, sensitivity), and a fine-tune's extra cost and gain over the alternative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewise.candidates.ensemble import candidate_members
from tunewise.config.sections import RoiConfig
from tunewise.decision.costs import (
    CandidateCosts,
    Money,
    candidate_costs,
    payback_months,
    payback_text,
    sensitivity,
    training_compute_lines,
)
from tunewise.decision.quality import Quality
from tunewise.decision.run_facts import incumbent_usd_per_request


def upgrade_money(
    finetune: str, alternative: str, quality: Quality, costs: dict[str, CandidateCosts], roi: RoiConfig
) -> dict[str, Any]:
    """The fine-tune's extra gain and cost over the alternative, and the payback of the difference
    (None unless volume and value are set)."""
    gain = quality.oriented(finetune) - quality.oriented(alternative)
    money = Money(
        costs[finetune].one_time - costs[alternative].one_time,
        gain,
        roi.monthly_volume or 0.0,
        roi.value_per_outcome_usd or 0.0,
        costs[finetune].running - costs[alternative].running,
    )
    months = payback_months(money.one_time, money.net()) if roi.monthly_volume and roi.value_per_outcome_usd else None
    return {
        "candidate": finetune,
        "alternative": alternative,
        "gain": gain,
        "extra_one_time_usd": money.one_time,
        "extra_running_usd": money.extra_running,
        "monthly_benefit_usd": money.benefit(),
        "monthly_net_usd": money.net(),
        "payback_months": months,
    }


def roi_block(
    run_dir: Path,
    evaluation: dict,
    roi: RoiConfig,
    quality: Quality,
    costs: dict[str, CandidateCosts],
    trained: dict[str, dict],
    flagged: int,
    latency: dict[str, float],
    api_tokens: float | None,
    candidate: str | None,
    reference: str | None,
    missing: list[str],
    reasons: list[str],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The payback arithmetic of the best fine-tune against the reference: cost lines, benefit,
    net, payback with intervals, break-even gain, cumulative net and sensitivity."""
    out: dict[str, Any] = {
        "horizon_months": roi.horizon_months,
        "assumptions": roi.model_dump(mode="json"),
        "missing": missing,
        "one_time_cost_usd": None,
        "monthly_benefit_usd": None,
        "payback_months": None,
        "candidate": candidate,
        "baseline": reference,
        "metric": quality.metric,
        "training_compute_this_run_usd": sum(line["usd"] for line in training_compute_lines(trained, roi)),
    }
    comparison = evaluation.get("comparisons", {}).get(candidate or "", {}).get("metrics", {}).get(quality.metric)
    if candidate is None or reference is None or not comparison:
        return out
    sign = -1 if quality.lower_is_better else 1
    gain = sign * comparison["difference"] / quality.scale
    gain_ci = sorted(sign * x / quality.scale for x in comparison["difference_ci"])
    c, b = costs[candidate], costs[reference]
    out.update(
        {
            "gain": gain,
            "gain_ci95": gain_ci,
            "one_time_cost_usd": c.one_time,
            "one_time_cost_lines": c.one_time_lines,
            "monthly_running_cost_usd": {"candidate": c.running, "baseline": b.running},
            "monthly_running_cost_arithmetic": {"candidate": c.running_arithmetic, "baseline": b.running_arithmetic},
            "latency_ms": {candidate: latency.get(candidate), reference: latency.get(reference)},
        }
    )
    if missing:
        return out
    members = candidate_members(evaluation).get(candidate)

    incumbent_usd = incumbent_usd_per_request(evaluation)  # the same for every sensitivity case

    def money_for(settings: RoiConfig, g: float) -> Money:
        def costs_of(name: str, its_members: list[str] | None) -> CandidateCosts:
            entry = quality.entries[name]
            return candidate_costs(
                name, entry, settings, trained, flagged, latency, api_tokens, incumbent_usd, its_members
            )

        cc, bb = costs_of(candidate, members), costs_of(reference, None)
        return Money(
            cc.one_time,
            g,
            settings.monthly_volume or 0.0,
            settings.value_per_outcome_usd or 0.0,
            cc.running - bb.running,
        )

    money = money_for(roi, gain)
    net = money.net()
    months = payback_months(money.one_time, net)
    net_ci = sorted([money.net(gain_ci[0]), money.net(gain_ci[1])])
    months_ci = [payback_months(money.one_time, net_ci[1]), payback_months(money.one_time, net_ci[0])]
    horizon = roi.horizon_months
    break_even_gain = (money.one_time / horizon + money.extra_running) / (money.volume * money.value)
    out.update(
        {
            "monthly_benefit_usd": money.benefit(),
            "monthly_benefit_ci95": sorted([money.benefit(g) for g in gain_ci]),
            "monthly_net_usd": net,
            "monthly_net_ci95": net_ci,
            "payback_months": months,
            "payback_months_ci95": months_ci,
            "roi_12m": (net * 12 - money.one_time) / money.one_time if money.one_time else None,
            "break_even_gain": break_even_gain,
            "break_even_relative_improvement": (
                break_even_gain * quality.scale / comparison["baseline"] if comparison.get("baseline") else None
            ),
            "benefit_arithmetic": f"{money.volume:,.0f} requests x gain {gain:.4g} x ${money.value:g} = "
            f"${money.benefit():,.2f} a month",
            "cumulative": [
                {
                    "month": m,
                    "net_usd": -money.one_time + net * m,
                    "low": -money.one_time + net_ci[0] * m,
                    "high": -money.one_time + net_ci[1] * m,
                }
                for m in range(horizon + 1)
            ],
            "sensitivity": sensitivity(money, roi, money_for),
        }
    )
    reasons.append(
        f"{candidate} against {reference}: one-time cost ${money.one_time:,.0f} (its training compute, data "
        f"review, labels, engineering); monthly benefit ${money.benefit():,.0f} ({money.volume:,.0f} requests "
        f"x gain {gain:.3f} in {quality.metric} x ${money.value:g} an outcome), extra running cost "
        f"${money.extra_running:,.0f} a month; payback {payback_text(months)}"
        + (f" (interval {_interval_months(months_ci)})" if months is not None else "")
    )
    return out


def _interval_months(months_ci: list[float | None]) -> str:
    low, high = months_ci
    return f"{low:.1f} to {'never' if high is None else f'{high:.1f}'} months" if low is not None else "never"
