"""What a candidate costs and when it pays back: engineering, training compute, data review and
labels, serving on the smallest CPU instance that holds it; payback months, their sensitivity to
each assumption, and the test rows a power calculation asks for. Every cost line carries its
arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunewise.config.sections import RoiConfig
from tunewise.core.pricing import CPU_INSTANCES, FLOPS_PER_TOKEN, GPU_UTILISATION, REFERENCE_GPUS
from tunewise.decision.errors import DecisionError

# CPU_INSTANCES (the instances that serve a model, with prices) and the reference GPUs:
# tunewise.core.pricing, imported above.
# Resident memory a served candidate needs, GiB: the Python process with its libraries plus the
# weights in fp32 and working memory. Rounded up from the resident set of `tunewise serve` with
# one arm on this machine (docs/benchmarks.md, "Serving footprint"): scikit-learn models ~0.3,
# torch + MiniLM (22M parameters) ~0.8, torch + SmolLM2-135M ~1.6.
SERVING_MEMORY_GIB = {"sklearn": 0.35, "encoder": 0.9, "llm": 1.8}
USABLE_MEMORY_SHARE = 0.75  # the rest is the operating system's and headroom for request bursts
HOURS_PER_MONTH = 730  # 365 x 24 / 12, the convention cloud price pages use
# Cores of the machine a latency was measured on, for runs written before the baseline and train
# stages recorded it (``latency_cores`` beside each candidate's latency): the development machine.
MEASURED_CORES = 2


SENSITIVITY_STEP = 0.25
CHARS_PER_TOKEN = 4.0  # English text, a common rule of thumb for BPE tokenizers
Z_POWER = 0.8416  # one-sided 80% power, the usual planning default


# =============================================================================================
# Cost lines


def _gpu(roi: RoiConfig) -> dict[str, Any]:
    table = {g["gpu"]: g for g in REFERENCE_GPUS}
    if roi.gpu not in table:
        raise DecisionError(f"roi.gpu: unknown GPU {roi.gpu!r}; known: {', '.join(table)}")
    gpu = dict(table[roi.gpu])
    gpu["usd_per_hour"] = roi.gpu_usd_per_hour or gpu["usd_per_hour"]
    gpu["utilisation"] = roi.gpu_utilisation or GPU_UTILISATION
    return gpu


def serving_memory_gib(name: str, members: list[str] | None = None) -> float:
    """Memory a served candidate needs (an ensemble: its members in one process)."""
    if members:
        parts = [serving_memory_gib(m) for m in members]
        return max(parts) + sum(sorted(parts)[:-1]) * 0.5  # one runtime, weights of each
    if name in ("majority", "tfidf_lr", "incumbent") or name.startswith("nn_"):
        return SERVING_MEMORY_GIB["sklearn"]
    if name in ("embed_lr", "encoder_ft") or name.startswith("embed"):
        return SERVING_MEMORY_GIB["encoder"]
    return SERVING_MEMORY_GIB["llm"]


def _instance(roi: RoiConfig, memory_gib: float | None = None) -> dict[str, Any]:
    """The configured instance, or (auto) the smallest that holds ``memory_gib``."""
    if roi.serving_instance == "auto":
        need = memory_gib if memory_gib is not None else SERVING_MEMORY_GIB["llm"]
        fitting = [n for n, i in CPU_INSTANCES.items() if i["memory_gib"] * USABLE_MEMORY_SHARE >= need]
        name = fitting[0] if fitting else list(CPU_INSTANCES)[-1]
    elif roi.serving_instance in CPU_INSTANCES:
        name = roi.serving_instance
    else:
        raise DecisionError(
            f"roi.serving_instance: unknown instance {roi.serving_instance!r}; known: auto, {', '.join(CPU_INSTANCES)}"
        )
    instance = {"name": name, **CPU_INSTANCES[name]}
    instance["usd_per_hour"] = roi.serving_usd_per_hour or instance["usd_per_hour"]
    return instance


def training_compute_lines(train_summaries: dict[str, dict], roi: RoiConfig) -> list[dict[str, Any]]:
    """One cost line per fine-tuned candidate: FLOPs of the tokens it processed, on the reference GPU."""
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
        lines.append(
            {
                "item": f"training compute: {name}",
                "candidate": name,
                "usd": usd,
                "arithmetic": f"{factor} x {base / 1e6:.1f}M params x {tokens:,} tokens x {roi.training_runs} run(s) "
                f"= {flops:.3g} FLOPs / ({gpu['peak_bf16_tflops']:g} TFLOP/s x {gpu['utilisation']:g}) "
                f"= {hours:.4g} GPU-h x ${gpu['usd_per_hour']:g}/h",
                "source": f"{gpu['gpu']} peak bf16 and price: tunewise.core.pricing.REFERENCE_GPUS; utilisation: "
                "tunewise.core.pricing.GPU_UTILISATION",
            }
        )
    return lines


def _engineering_days(roi: RoiConfig, kind: str) -> tuple[float, str]:
    if kind == "finetuned":
        return roi.engineering_days, "roi.engineering_days"
    if kind == "cheap":
        return roi.engineering_days_cheap, "roi.engineering_days_cheap"
    if kind == "incumbent":
        return 0.0, "the incumbent runs already"
    return roi.engineering_days_prompted, "roi.engineering_days_prompted"


def one_time_cost(
    train_summaries: dict[str, dict],
    flagged_rows: int,
    roi: RoiConfig,
    candidate: str | None = None,
    kind: str = "finetuned",
    members: list[str] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Total one-time cost of building ``candidate`` and its lines: its own training compute (an
    ensemble: its fine-tuned members'), data review and new labels when it learns from the data,
    and engineering days for its kind. ``candidate`` None: every trained candidate's compute."""
    compute = training_compute_lines(train_summaries, roi)
    if candidate is not None:
        own = set(members or [candidate])
        compute = [line for line in compute if line["candidate"] in own]
    learns = kind in ("finetuned", "cheap")
    lines = list(compute)
    if learns:
        review_hours = flagged_rows * roi.review_minutes_per_row / 60
        lines += [
            {
                "item": "data review",
                "usd": review_hours * roi.reviewer_usd_per_hour,
                "arithmetic": f"{flagged_rows:,} rows flagged by curation x {roi.review_minutes_per_row:g} min "
                f"= {review_hours:.3g} h x ${roi.reviewer_usd_per_hour:g}/h",
                "source": "roi.review_minutes_per_row, roi.reviewer_usd_per_hour; rows: curate/issues (action flagged)",
            },
            {
                "item": "new labels",
                "usd": roi.new_labels * roi.usd_per_label,
                "arithmetic": f"{roi.new_labels:,} labels x ${roi.usd_per_label:g}",
                "source": "roi.new_labels, roi.usd_per_label",
            },
        ]
    days, source = _engineering_days(roi, kind)
    lines.append(
        {
            "item": "engineering",
            "usd": days * roi.engineer_usd_per_day,
            "arithmetic": f"{days:g} days x ${roi.engineer_usd_per_day:g}/day ({kind})",
            "source": f"{source}, roi.engineer_usd_per_day",
        }
    )
    return float(sum(line["usd"] for line in lines)), lines


def monthly_running_cost(
    latency_ms: float,
    roi: RoiConfig,
    *,
    api_tokens: float | None = None,
    memory_gib: float | None = None,
    usd_per_request: float | None = None,
    measured_cores: float | None = None,
) -> dict[str, Any]:
    """Serving cost a month at ``roi.monthly_volume`` requests: an API's price per request or per
    token, else compute hours on the instance that holds the model. ``measured_cores``: the cores of
    the machine that measured ``latency_ms`` (default ``MEASURED_CORES``, for runs that did not
    record it); an instance with more vCPUs serves proportionally more requests an hour."""
    volume = roi.monthly_volume or 0.0
    if usd_per_request is not None:
        return {
            "usd": volume * usd_per_request,
            "instance": None,
            "arithmetic": f"{volume:,.0f} requests x ${usd_per_request:.4g} a request (measured)",
        }
    if api_tokens is not None and roi.baseline_usd_per_million_tokens is not None:
        usd = volume * api_tokens / 1e6 * roi.baseline_usd_per_million_tokens
        return {
            "usd": usd,
            "instance": None,
            "arithmetic": f"{volume:,.0f} requests x {api_tokens:,.0f} tokens x "
            f"${roi.baseline_usd_per_million_tokens:g}/M tokens",
        }
    instance = _instance(roi, memory_gib)
    cores = measured_cores or MEASURED_CORES
    speedup = instance["vcpus"] / cores
    busy_hours = volume * latency_ms / 1000 / speedup / 3600
    hours = max(busy_hours, HOURS_PER_MONTH) if roi.always_on else busy_hours
    usd = hours * instance["usd_per_hour"]
    floor = " (one instance always on)" if roi.always_on and busy_hours < HOURS_PER_MONTH else ""
    fits = f", {memory_gib:.2g} GiB needed of {instance['memory_gib']:g}" if memory_gib is not None else ""
    return {
        "usd": usd,
        "busy_hours": busy_hours,
        "instance": instance["name"],
        "measured_cores": cores,
        "arithmetic": f"{volume:,.0f} requests x {latency_ms:.3g} ms / {speedup:g} ({instance['vcpus']:g} vCPUs / "
        f"{cores:g} measuring cores) = {busy_hours:.3g} busy h; "
        f"{hours:.4g} h{floor} x ${instance['usd_per_hour']:g}/h ({instance['name']}{fits})",
    }


# =============================================================================================
# Payback arithmetic


@dataclass
class Money:
    """The inputs of the payback arithmetic for one candidate against another."""

    one_time: float
    gain: float  # absolute gain in the primary metric, on a 0-1 scale
    volume: float
    value: float
    extra_running: float  # candidate's running cost - the other's, a month (negative: it saves)

    def benefit(self, gain: float | None = None) -> float:
        return self.volume * (self.gain if gain is None else gain) * self.value

    def net(self, gain: float | None = None) -> float:
        return self.benefit(gain) - self.extra_running


def payback_months(one_time: float, net_per_month: float) -> float | None:
    """Months until the one-time cost is earned back; None when the net is not positive (never)."""
    if net_per_month <= 0:
        return None
    return max(one_time, 0.0) / net_per_month


def gain_scale(metric: str) -> float:
    # accuracy, F1, rates: already 0-1; chrF, BLEU, ROUGE reported on 0-100 by tunewise.evaluation.metrics_gen
    return 100.0 if metric in ("chrf", "bleu", "rouge_l", "rougeL") else 1.0


def payback_text(months: float | None) -> str:
    return "never (the monthly net is not positive)" if months is None else f"{months:.2f} months"


def sensitivity(money: Money, roi: RoiConfig, recompute: Callable[[RoiConfig, float], Money]) -> list[dict[str, Any]]:
    """Each assumption (and the measured gain) moved by -25% and +25%: payback at each end."""
    rows = []
    fields = [
        "monthly_volume",
        "value_per_outcome_usd",
        "engineering_days",
        "engineer_usd_per_day",
        "review_minutes_per_row",
        "reviewer_usd_per_hour",
        "gpu_usd_per_hour",
        "serving_usd_per_hour",
    ]
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
        rows.append(
            {
                "assumption": name,
                "base": base,
                "low": base * (1 - SENSITIVITY_STEP),
                "high": base * (1 + SENSITIVITY_STEP),
                "payback_low": ends["low"],
                "payback_high": ends["high"],
                "swing_months": None if math.isinf(swing) else swing,
            }
        )
    rows.sort(key=lambda r: -(r["swing_months"] if r["swing_months"] is not None else math.inf))
    return rows


def test_rows_needed(
    n: int, relative: float, relative_ci: tuple[float, float], threshold: float, z: float = 1.959964
) -> int | None:
    """Test rows at which the relative improvement's interval would clear ``threshold`` with 80%
    power, if the observed effect is the true one: the interval's half-width shrinks with
    sqrt(n), so n' = n x ((z + z_power) x se / |effect - threshold|)^2. None when the effect sits
    on the threshold (no test size tells it apart)."""
    low, high = relative_ci
    distance = abs(relative - threshold)
    if not all(map(math.isfinite, (relative, low, high))) or distance < 1e-9:
        return None
    se = (high - low) / (2 * z)
    return int(math.ceil(n * ((z + Z_POWER) * se / distance) ** 2))


test_rows_needed.__test__ = False  # a function's name, not a pytest test


# =============================================================================================
# One candidate's costs


@dataclass
class CandidateCosts:
    """One candidate's costs: one-time (with its lines), a month of running it, and over the horizon."""

    one_time: float
    one_time_lines: list[dict[str, Any]]
    running: float  # a month
    running_arithmetic: str
    instance: str | None
    memory_gib: float | None
    horizon: int

    @property
    def total(self) -> float:
        return self.one_time + self.running * self.horizon


def candidate_costs(
    name: str,
    entry: dict,
    roi: RoiConfig,
    trained: dict[str, dict],
    flagged: int,
    latency: dict[str, float],
    api_tokens: float | None,
    usd_per_request: float | None,
    members: list[str] | None,
) -> CandidateCosts:
    """What building and serving ``name`` costs: its own one-time work and training compute, and its
    running cost (a measured API price, or the smallest CPU instance that holds it)."""
    # the incumbent runs already: no engineering or data work to build it, whatever its kind
    kind = "incumbent" if entry.get("is_incumbent") else entry["kind"]
    one_time, lines = one_time_cost(trained, flagged, roi, candidate=name, kind=kind, members=members)
    memory = serving_memory_gib(name, members)
    if entry.get("usd_per_request_measured") is not None:  # an API candidate: priced by its measured tokens
        running = monthly_running_cost(latency.get(name, 0.0), roi, usd_per_request=entry["usd_per_request_measured"])
    elif kind == "incumbent" and usd_per_request is not None:
        running = monthly_running_cost(latency.get(name, 0.0), roi, usd_per_request=usd_per_request)
    elif kind == "incumbent":
        running = monthly_running_cost(
            latency.get(name, 0.0),
            roi,
            api_tokens=api_tokens,
            memory_gib=memory,
            measured_cores=entry.get("latency_cores"),
        )
    else:
        running = monthly_running_cost(
            latency.get(name, 0.0), roi, memory_gib=memory, measured_cores=entry.get("latency_cores")
        )
    return CandidateCosts(
        one_time,
        lines,
        running["usd"],
        running["arithmetic"],
        running.get("instance"),
        None if running.get("instance") is None else memory,
        roi.horizon_months,
    )
