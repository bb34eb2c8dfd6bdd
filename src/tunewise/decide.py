"""The decision: measured gain -> cost, benefit, payback -> GO / NO-GO, with every number's arithmetic.

Inputs are measurements and the ``roi:`` assumptions, never the data's origin:

- the gain: the evaluation's paired comparison of the gate's candidate against the baseline
  (difference in the primary metric and its bootstrap interval, evaluate/summary.json);
- training compute: tokens each fine-tuned candidate actually processed (train_summary.json) x
  FLOPs per token (tunewise.train.FLOPS_PER_TOKEN: 4N for LoRA, 6N for a full fine-tune) priced
  on a reference GPU at a documented utilisation;
- running cost: per-request latency measured on this machine (the predictions' latency_ms),
  scaled to the serving instance's vCPUs and priced by the hour;
- data work: rows curation flagged for review x minutes x rate, plus new labels x price.

Benefit a month = volume x gain x value of one outcome, where the gain is the absolute
difference in the primary metric (accuracy: share of requests answered right; generation
metrics on a 0-100 scale are divided by 100). Net a month = benefit - extra running cost.
Payback = one-time cost / net; 12-month ROI = (net x 12 - one-time) / one-time; break-even gain
= the gain at which payback equals the horizon. The gain's interval is carried through to the
benefit, net and payback intervals. Sensitivity: each assumption moved by -25% and +25%, the
payback recomputed, sorted by how far it moves.

The verdict is GO when the evaluation's gate passed (the improvement reaches the threshold and is
beyond noise, and the candidate does not lose to the best cheap model) and payback falls within
the horizon. ``recommended`` is the cheapest candidate that meets the target over the horizon,
which can be a cheap model or a prompted LLM; when none does, the baseline is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .artifacts import read_json
from .config import RoiConfig

__all__ = ["CPU_INSTANCES", "DecisionError", "decide", "one_time_cost", "payback_months"]

# CPU instances that serve a model. Latency measured on this machine (2 cores) scales by vCPUs.
CPU_INSTANCES: dict[str, dict[str, Any]] = {
    # AWS EC2 on-demand, us-east-1, Linux (aws.amazon.com/ec2/pricing/on-demand, read 2026-11).
    "c7i.large": {"vcpus": 2, "usd_per_hour": 0.08925},
    "c7i.xlarge": {"vcpus": 4, "usd_per_hour": 0.1785},
    "c7i.2xlarge": {"vcpus": 8, "usd_per_hour": 0.357},
}
HOURS_PER_MONTH = 730  # 365 x 24 / 12, the convention cloud price pages use
MEASURED_CORES = 2  # the development machine the latencies come from (docs/benchmarks.md)
SENSITIVITY_STEP = 0.25
CHARS_PER_TOKEN = 4.0  # English text, a common rule of thumb for BPE tokenizers


class DecisionError(ValueError):
    """The decision cannot be computed from these inputs; the message says which is missing."""


# =============================================================================================
# Cost lines


def _gpu(roi: RoiConfig) -> dict[str, Any]:
    from .train import GPU_UTILISATION, REFERENCE_GPUS

    table = {g["gpu"]: g for g in REFERENCE_GPUS}
    if roi.gpu not in table:
        raise DecisionError(f"roi.gpu: unknown GPU {roi.gpu!r}; known: {', '.join(table)}")
    gpu = dict(table[roi.gpu])
    gpu["usd_per_hour"] = roi.gpu_usd_per_hour or gpu["usd_per_hour"]
    gpu["utilisation"] = roi.gpu_utilisation or GPU_UTILISATION
    return gpu


def _instance(roi: RoiConfig) -> dict[str, Any]:
    if roi.serving_instance not in CPU_INSTANCES:
        raise DecisionError(f"roi.serving_instance: unknown instance {roi.serving_instance!r}; known: "
                            f"{', '.join(CPU_INSTANCES)}")
    instance = {"name": roi.serving_instance, **CPU_INSTANCES[roi.serving_instance]}
    instance["usd_per_hour"] = roi.serving_usd_per_hour or instance["usd_per_hour"]
    return instance


def training_compute_lines(train_summaries: dict[str, dict], roi: RoiConfig) -> list[dict[str, Any]]:
    """One cost line per fine-tuned candidate: FLOPs of the tokens it processed, on the reference GPU."""
    from .train import FLOPS_PER_TOKEN

    gpu = _gpu(roi)
    lines = []
    for name, summary in sorted(train_summaries.items()):
        method = summary.get("method", "lora")
        trainable = summary.get("trainable_parameters") or 0
        base = summary["parameters"] - trainable if method == "lora" else summary["parameters"]
        tokens = int(summary.get("tokens_seen") or 0)
        factor = FLOPS_PER_TOKEN[method]
        flops = factor * base * tokens * roi.training_runs
        hours = flops / (gpu["peak_bf16_tflops"] * 1e12 * gpu["utilisation"]) / 3600
        usd = hours * gpu["usd_per_hour"]
        lines.append({
            "item": f"training compute: {name}", "candidate": name, "usd": usd,
            "arithmetic": f"{factor} x {base / 1e6:.1f}M params x {tokens:,} tokens x {roi.training_runs} run(s) "
                          f"= {flops:.3g} FLOPs / ({gpu['peak_bf16_tflops']:g} TFLOP/s x {gpu['utilisation']:g}) "
                          f"= {hours:.4g} GPU-h x ${gpu['usd_per_hour']:g}/h",
            "source": f"{gpu['gpu']} peak bf16 and price: tunewise.train.REFERENCE_GPUS; utilisation: "
                      "tunewise.train.GPU_UTILISATION",
        })
    return lines


def one_time_cost(train_summaries: dict[str, dict], flagged_rows: int, roi: RoiConfig,
                  candidate: str | None = None) -> tuple[float, list[dict[str, Any]]]:
    """Total one-time cost and its lines. ``candidate``: only that candidate's training is priced
    (None: every trained candidate, the compute this run spent)."""
    compute = training_compute_lines(train_summaries, roi)
    if candidate is not None and candidate != "ensemble":  # the ensemble needs every trained member
        compute = [line for line in compute if line["candidate"] == candidate]
    review_hours = flagged_rows * roi.review_minutes_per_row / 60
    lines = compute + [
        {"item": "data review", "usd": review_hours * roi.reviewer_usd_per_hour,
         "arithmetic": f"{flagged_rows:,} rows flagged by curation x {roi.review_minutes_per_row:g} min "
                       f"= {review_hours:.3g} h x ${roi.reviewer_usd_per_hour:g}/h",
         "source": "roi.review_minutes_per_row, roi.reviewer_usd_per_hour; rows: curate/issues (action flagged)"},
        {"item": "new labels", "usd": roi.new_labels * roi.usd_per_label,
         "arithmetic": f"{roi.new_labels:,} labels x ${roi.usd_per_label:g}", "source": "roi.new_labels, roi.usd_per_label"},
        {"item": "engineering", "usd": roi.engineering_days * roi.engineer_usd_per_day,
         "arithmetic": f"{roi.engineering_days:g} days x ${roi.engineer_usd_per_day:g}/day",
         "source": "roi.engineering_days, roi.engineer_usd_per_day"},
    ]
    return float(sum(line["usd"] for line in lines)), lines


def monthly_running_cost(latency_ms: float, roi: RoiConfig, *, api_tokens: float | None = None) -> dict[str, Any]:
    """Serving cost a month at ``roi.monthly_volume`` requests: compute hours on the instance (or an API)."""
    volume = roi.monthly_volume or 0.0
    if api_tokens is not None and roi.baseline_usd_per_million_tokens is not None:
        usd = volume * api_tokens / 1e6 * roi.baseline_usd_per_million_tokens
        return {"usd": usd, "arithmetic": f"{volume:,.0f} requests x {api_tokens:,.0f} tokens x "
                f"${roi.baseline_usd_per_million_tokens:g}/M tokens"}
    instance = _instance(roi)
    speedup = instance["vcpus"] / MEASURED_CORES
    busy_hours = volume * latency_ms / 1000 / speedup / 3600
    hours = max(busy_hours, HOURS_PER_MONTH) if roi.always_on else busy_hours
    usd = hours * instance["usd_per_hour"]
    floor = " (one instance always on)" if roi.always_on and busy_hours < HOURS_PER_MONTH else ""
    return {"usd": usd, "busy_hours": busy_hours,
            "arithmetic": f"{volume:,.0f} requests x {latency_ms:.3g} ms / {speedup:g} = {busy_hours:.3g} busy h; "
                          f"{hours:.4g} h{floor} x ${instance['usd_per_hour']:g}/h ({instance['name']})"}


# =============================================================================================
# Payback arithmetic


@dataclass
class Money:
    """The inputs of the payback arithmetic for one candidate against the baseline."""

    one_time: float
    gain: float  # absolute gain in the primary metric, on a 0-1 scale
    volume: float
    value: float
    extra_running: float  # candidate's running cost - baseline's, a month (negative: it saves)

    def benefit(self, gain: float | None = None) -> float:
        return self.volume * (self.gain if gain is None else gain) * self.value

    def net(self, gain: float | None = None) -> float:
        return self.benefit(gain) - self.extra_running


def payback_months(one_time: float, net_per_month: float) -> float | None:
    """Months until the one-time cost is earned back; None when the net is not positive (never)."""
    if net_per_month <= 0:
        return None
    return one_time / net_per_month


def _gain_scale(metric: str) -> float:
    # accuracy, F1, rates: already 0-1; chrF, BLEU, ROUGE reported on 0-100 by tunewise.metrics_gen
    return 100.0 if metric in ("chrf", "bleu", "rouge_l", "rougeL") else 1.0


def _payback_text(months: float | None) -> str:
    return "never (the monthly net is not positive)" if months is None else f"{months:.2f} months"


def sensitivity(money: Money, roi: RoiConfig, recompute: Callable[[RoiConfig, float], Money]) -> list[dict[str, Any]]:
    """Each assumption (and the measured gain) moved by -25% and +25%: payback at each end."""
    rows = []
    fields = ["monthly_volume", "value_per_outcome_usd", "engineering_days", "engineer_usd_per_day",
              "review_minutes_per_row", "reviewer_usd_per_hour", "gpu_usd_per_hour", "serving_usd_per_hour"]
    for name in ["measured_gain", *fields]:
        if name == "measured_gain":
            base = money.gain
        elif name == "gpu_usd_per_hour":
            base = _gpu(roi)["usd_per_hour"]
        elif name == "serving_usd_per_hour":
            base = _instance(roi)["usd_per_hour"]
        else:
            base = getattr(roi, name)
        if not base:
            continue
        ends = {}
        for side, factor in (("low", 1 - SENSITIVITY_STEP), ("high", 1 + SENSITIVITY_STEP)):
            if name == "measured_gain":
                moved = recompute(roi, base * factor)
            else:
                moved = recompute(roi.model_copy(update={name: base * factor}), money.gain)
            ends[side] = payback_months(moved.one_time, moved.net())
        finite = [v for v in ends.values() if v is not None]
        swing = math.inf if len(finite) < 2 else abs(ends["high"] - ends["low"])
        rows.append({"assumption": name, "base": base, "low": base * (1 - SENSITIVITY_STEP),
                     "high": base * (1 + SENSITIVITY_STEP), "payback_low": ends["low"], "payback_high": ends["high"],
                     "swing_months": None if math.isinf(swing) else swing})
    rows.sort(key=lambda r: -(r["swing_months"] if r["swing_months"] is not None else math.inf))
    return rows


# =============================================================================================
# Reading a run


def _latencies(run_dir: Path, names: list[str]) -> dict[str, float]:
    """Median per-request latency (ms) of each candidate's test predictions."""
    out = {}
    for name in names:
        for stage in ("train", "baseline", "evaluate"):  # evaluate: the ensemble's summed latency
            path = run_dir / stage / "predictions" / f"{name}.parquet"
            if path.exists():
                frame = pd.read_parquet(path, columns=["latency_ms"])
                out[name] = float(np.median(frame["latency_ms"])) if len(frame) else 0.0
                break
    return out


def _train_summaries(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: read_json(p) for p in sorted((run_dir / "train").glob("*/train_summary.json"))}


def _flagged_rows(run_dir: Path) -> int:
    path = run_dir / "curate" / "issues.parquet"
    if not path.exists():
        return 0
    issues = pd.read_parquet(path, columns=["id", "action"])
    return int(issues.loc[issues["action"] == "flagged", "id"].nunique())


def _api_tokens(run_dir: Path, roi: RoiConfig) -> float | None:
    if roi.tokens_per_request is not None:
        return roi.tokens_per_request
    path = run_dir / "split" / "test.parquet"
    if not path.exists():
        return None
    texts = pd.read_parquet(path, columns=["input"])["input"].astype(str)
    return float(texts.str.len().mean() / CHARS_PER_TOKEN) if len(texts) else None


def _meets_target(entry: dict[str, Any], metric: str, threshold: float, lower_is_better: bool) -> bool:
    comparison = entry.get("metrics", {}).get(metric)
    if not comparison:
        return False
    low = comparison["relative_ci"][0]
    improvement = comparison["relative_improvement"]
    if lower_is_better:
        improvement, low = -improvement, -comparison["relative_ci"][1]
    return improvement is not None and improvement >= threshold and low is not None and low > 0


# =============================================================================================
# The decision


def decide(run_dir: str | Path, roi: RoiConfig) -> dict[str, Any]:
    """The ``roi`` and ``decision`` parts of the report's summary.json, from a run's evaluation."""
    run_dir = Path(run_dir)
    summary_path = run_dir / "evaluate" / "summary.json"
    if not summary_path.exists():
        raise DecisionError(f"{summary_path} not found; run `tunewise evaluate` first")
    evaluation = read_json(summary_path)
    metric = evaluation["primary_metric"]
    gate = evaluation.get("gate", {})
    baseline = evaluation.get("baseline") or gate.get("baseline")
    comparison = evaluation.get("comparison") or {}
    candidate = comparison.get("candidate") or gate.get("candidate")
    kinds = {c["name"]: c["kind"] for c in evaluation.get("candidates", [])}
    names = list(kinds)
    latency = _latencies(run_dir, names)
    trained = _train_summaries(run_dir)
    flagged = _flagged_rows(run_dir)
    api_tokens = _api_tokens(run_dir, roi)
    scale = _gain_scale(metric)
    lower_is_better = metric in (evaluation.get("lower_is_better") or [])

    missing = [name for name in ("monthly_volume", "value_per_outcome_usd") if getattr(roi, name) is None]
    reasons: list[str] = []
    roi_out: dict[str, Any] = {"horizon_months": roi.horizon_months, "assumptions": roi.model_dump(mode="json"),
                               "missing": missing, "one_time_cost_usd": None, "monthly_benefit_usd": None,
                               "payback_months": None}

    def money_for(name: str, settings: RoiConfig, gain: float) -> Money:
        one_time, _ = one_time_cost(trained, flagged, settings, candidate=name)
        running = monthly_running_cost(latency.get(name, 0.0), settings)["usd"]
        base_running = monthly_running_cost(latency.get(baseline, 0.0), settings, api_tokens=api_tokens)["usd"]
        return Money(one_time, gain, settings.monthly_volume or 0.0, settings.value_per_outcome_usd or 0.0,
                     running - base_running)

    if not candidate or not comparison:
        reasons.append("no comparison between a candidate and the baseline was possible: "
                       + "; ".join(gate.get("reasons", []) or ["the evaluation compared no candidates"]))
        return _result(roi_out, "NO_GO", baseline, candidate, reasons, gate)

    difference = comparison["difference"] * (-1 if lower_is_better else 1)
    difference_ci = sorted(x * (-1 if lower_is_better else 1) for x in comparison["difference_ci95"])
    gain, gain_ci = difference / scale, [x / scale for x in difference_ci]
    one_time, lines = one_time_cost(trained, flagged, roi, candidate=candidate)
    run_compute = sum(line["usd"] for line in training_compute_lines(trained, roi))
    running = {"candidate": monthly_running_cost(latency.get(candidate, 0.0), roi),
               "baseline": monthly_running_cost(latency.get(baseline, 0.0), roi, api_tokens=api_tokens)}
    roi_out.update({
        "candidate": candidate, "baseline": baseline, "metric": metric,
        "gain": gain, "gain_ci95": gain_ci, "one_time_cost_usd": one_time, "one_time_cost_lines": lines,
        "training_compute_this_run_usd": run_compute,
        "monthly_running_cost_usd": {k: v["usd"] for k, v in running.items()},
        "monthly_running_cost_arithmetic": {k: v["arithmetic"] for k, v in running.items()},
        "latency_ms": {candidate: latency.get(candidate), baseline: latency.get(baseline)},
    })

    if missing:
        for name in missing:
            reasons.append({"monthly_volume": "no monthly volume given (roi.monthly_volume): the gain cannot be "
                                              "priced",
                            "value_per_outcome_usd": "no value per outcome given (roi.value_per_outcome_usd): the "
                                                     "gain cannot be priced"}[name])
        reasons.extend(gate.get("reasons", []))
        return _result(roi_out, "NO_GO", _recommend(evaluation, metric, kinds, latency, roi, trained, flagged,
                                                    baseline, lower_is_better, None), candidate, reasons, gate)

    money = money_for(candidate, roi, gain)
    net = money.net()
    months = payback_months(money.one_time, net)
    net_ci = sorted([money.net(gain_ci[0]), money.net(gain_ci[1])])
    months_ci = [payback_months(money.one_time, net_ci[1]), payback_months(money.one_time, net_ci[0])]
    horizon = roi.horizon_months
    break_even_gain = (money.one_time / horizon + money.extra_running) / (money.volume * money.value)
    cumulative = [{"month": m, "net_usd": -money.one_time + net * m, "low": -money.one_time + net_ci[0] * m,
                   "high": -money.one_time + net_ci[1] * m} for m in range(horizon + 1)]
    roi_out.update({
        "monthly_benefit_usd": money.benefit(), "monthly_benefit_ci95": sorted([money.benefit(g) for g in gain_ci]),
        "monthly_net_usd": net, "monthly_net_ci95": net_ci, "payback_months": months,
        "payback_months_ci95": months_ci,
        "roi_12m": (net * 12 - money.one_time) / money.one_time if money.one_time else None,
        "break_even_gain": break_even_gain,
        "break_even_relative_improvement": (break_even_gain * scale / comparison["baseline_score"]
                                            if comparison.get("baseline_score") else None),
        "benefit_arithmetic": f"{money.volume:,.0f} requests x gain {gain:.4g} x ${money.value:g} = "
                              f"${money.benefit():,.2f} a month",
        "cumulative": cumulative,
        "sensitivity": sensitivity(money, roi, lambda settings, g: money_for(candidate, settings, g)),
    })

    passed = bool(gate.get("passed"))
    pays = months is not None and months <= horizon
    verdict = "GO" if passed and pays else "NO_GO"
    reasons.extend(gate.get("reasons", []))
    reasons.append(f"one-time cost ${money.one_time:,.0f} (training compute, data review, labels, engineering); "
                   f"monthly benefit ${money.benefit():,.0f} ({money.volume:,.0f} requests x gain {gain:.3f} in "
                   f"{metric} x ${money.value:g} an outcome), extra running cost ${money.extra_running:,.0f} a month")
    if pays:
        reasons.append(f"payback in {months:.1f} months, within the {horizon}-month horizon "
                       f"(interval {_interval_months(months_ci)})")
    else:
        needed = money.one_time / horizon + money.extra_running  # net a month that pays back in time
        value_needed = needed / (money.volume * gain) if gain > 0 else None
        volume_needed = needed / (gain * money.value) if gain > 0 else None
        gain_text = (f"a gain of at least {break_even_gain:.3f} in {metric}" if break_even_gain * scale <= scale
                     else f"a gain larger than {metric} allows")
        reasons.append(
            f"payback {_payback_text(months)} is beyond the {horizon}-month horizon at roi.value_per_outcome_usd "
            f"${money.value:g} and roi.monthly_volume {money.volume:,.0f}: it would take "
            + (f"a value per outcome of at least ${value_needed:,.4g}, a volume of at least {volume_needed:,.0f} a "
               f"month, or " if value_needed is not None else "")
            + f"{gain_text} (measured {gain:.3f})")
    if not passed:
        more = _more_data_reason(run_dir, candidate, roi)
        if more:
            reasons.append(more)
            roi_out["more_data"] = more
    recommended = _recommend(evaluation, metric, kinds, latency, roi, trained, flagged, baseline, lower_is_better,
                             money_for)
    return _result(roi_out, verdict, recommended, candidate, reasons, gate)


def _more_data_reason(run_dir: Path, candidate: str, roi: RoiConfig) -> str | None:
    """When the gate fails: what the learning curve (``tunewise curve``) says more labels would do."""
    path = run_dir / "curve" / "curve.json"
    if not path.exists():
        return None
    entry = read_json(path).get("candidates", {}).get(candidate)
    target = (entry or {}).get("target")
    if not target:
        return None
    if not target["reachable"]:
        return f"more data of the same kind will not reach the target: {target['message']} (tunewise curve)"
    more = target["more_rows"]
    classes = [row["label"] for row in entry["per_class"][:5]]
    return (f"the learning curve says {candidate} reaches {target['accuracy']:.3f} accuracy with about "
            f"{target['n_needed']:,} training rows: {more:,} more labelled rows, most useful in {', '.join(classes)}; "
            f"at ${roi.usd_per_label:g} a label that is ${more * roi.usd_per_label:,.0f} (tunewise curve)")


def _interval_months(months_ci: list[float | None]) -> str:
    low, high = months_ci
    return f"{low:.1f} to {'never' if high is None else f'{high:.1f}'} months" if low is not None else "never"


def _recommend(evaluation: dict, metric: str, kinds: dict[str, str], latency: dict[str, float], roi: RoiConfig,
               trained: dict[str, dict], flagged: int, baseline: str | None, lower_is_better: bool,
               money_for: Callable[[str, RoiConfig, float], Money] | None) -> dict[str, Any]:
    """The cheapest candidate over the horizon among those that meet the target; else the baseline."""
    threshold = evaluation.get("comparison", {}).get("threshold", 0.15)
    meeting = [name for name, entry in evaluation.get("comparisons", {}).items()
               if _meets_target(entry, metric, threshold, lower_is_better)]
    if not meeting:
        return {"name": baseline, "why": f"no candidate improves {metric} over {baseline} by {threshold:.0%} beyond "
                                         "noise: keep the baseline"}
    costs = {}
    for name in meeting:
        members = trained if name == "ensemble" else {k: v for k, v in trained.items() if k == name}
        compute = sum(line["usd"] for line in training_compute_lines(members, roi))
        running = monthly_running_cost(latency.get(name, 0.0), roi)["usd"] if roi.monthly_volume else latency.get(name, 0.0)
        costs[name] = compute + running * roi.horizon_months
    cheapest = min(meeting, key=lambda n: (round(costs[n], 2), latency.get(n, 0.0), n))
    unit = "USD over the horizon" if roi.monthly_volume else "(ms latency x horizon: no volume given)"
    return {"name": cheapest, "kind": kinds.get(cheapest), "meeting_target": sorted(meeting),
            "horizon_cost": {n: round(c, 4) for n, c in costs.items()},
            "why": f"{cheapest} ({kinds.get(cheapest)}) is the cheapest of {len(meeting)} candidate(s) that improve "
                   f"{metric} over {baseline} by at least {threshold:.0%} beyond noise: {costs[cheapest]:,.2f} {unit}"}


def _result(roi_out: dict, verdict: str, recommended: Any, candidate: str | None, reasons: list[str],
            gate: dict) -> dict[str, Any]:
    rec = recommended if isinstance(recommended, dict) else {"name": recommended}
    if rec.get("why"):
        reasons = [*reasons, f"recommended: {rec['why']}"]
    return {"roi": roi_out, "decision": {"verdict": verdict, "recommended": rec.get("name"),
                                         "recommendation": rec, "candidate": candidate, "reasons": reasons,
                                         "gate_passed": bool(gate.get("passed"))}}
