"""``tunewise monitor``: what the live log says: promote, keep testing or roll back; drift; budgets.

Reads the request log of ``tunewise serve`` (:mod:`tunewise.monitoring.store`) and reports, per arm:

- online quality from feedback: accuracy against the correct labels people gave (classify), else
  the share of thumbs up; each with a Wilson score interval; the mean rating when there are ratings.
  Outcomes belong to the arm that answered (``served_by``): a candidate's failures answered by the
  incumbent count against the candidate's error budget, not its accuracy.
- the verdict for each other arm against the incumbent: the difference in proportions with
  Newcombe's hybrid score interval (Newcombe 1998, Statistics in Medicine 17:873, method 10) and
  the two-proportion z-test. The comparison is unpaired: each request is answered by one arm.
  ``promote`` when the interval lies above zero, ``roll back`` when below, else ``keep testing``
  with the labelled feedback per arm needed to detect ``min_detectable_effect`` at the configured
  level and power (Fleiss, Levin & Paik, Statistical Methods for Rates and Proportions, 3rd ed.
  2003, eq. 4.14, without continuity correction), and the requests that takes at the current
  feedback rate and traffic share.
- drift of the recent window against the training data: the population stability index (PSI) of
  the predicted-label distribution (outputs) and of the feedback labels (true labels) against
  the training labels (smoothed; < 0.1 stable, 0.1-0.25 moderate, > 0.25 shift: the usual credit
  scoring rule of thumb); for generation, PSI of reply length in the training replies' deciles;
  and embedding drift: the cosine distance between the centroid of recent inputs' embeddings
  (the embedded MiniLM) and the training inputs' centroid, with a permutation p-value (labels
  "recent" / "training" shuffled over the pooled set).
- latency p50 / p99 and error rate per arm against the budgets of ``MonitorConfig``.
- decay: per arm, the online metric of the earlier half of its feedback against the recent half
  (two-proportion test); a drop of at least ``min_detectable_effect`` beyond noise is flagged.
- when drift or decay is flagged, ``retrain`` says so, with the feedback rows ``tunewise retrain``
  could use.

Anything that needs a person (a promote or roll-back verdict, drift beyond the alert level, decay,
a budget breached) sets ``needs_action``; ``tunewise monitor`` then exits with code 3.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from tunewise.config.sections import MonitorConfig
from tunewise.core.layout import RunLayout
from tunewise.core.stats import wilson_interval
from tunewise.models.loading import embed
from tunewise.monitoring.feedback import INCUMBENT, feedback_training_rows, parse_since

__all__ = [
    "embedding_drift",
    "monitor",
    "newcombe_interval",
    "parse_since",
    "psi",
    "sample_size_two_proportions",
    "two_proportion_test",
    "verdict",
]

ACTION_EXIT_CODE = 3
PSI_SMOOTHING = 0.5  # pseudo-count per category: an empty category would make PSI infinite


# =============================================================================================
# Statistics


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of p1 - p2 from the two Wilson intervals (Newcombe's method 10); good coverage
    at small n and near 0 or 1, where the Wald interval fails."""
    if n1 == 0 or n2 == 0:
        return (float("nan"), float("nan"))
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, level)
    l2, u2 = wilson_interval(k2, n2, level)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test."""
    if n1 == 0 or n2 == 0:
        return float("nan")
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return float(2 * sps.norm.sf(abs(z)))


def sample_size_two_proportions(p1: float, p2: float, level: float = 0.95, power: float = 0.8) -> int:
    """Observations per group to detect p1 vs p2 with a two-sided test (Fleiss et al. 2003, eq. 4.14):
    n = (z_a * sqrt(2 pbar qbar) + z_b * sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2."""
    if p1 == p2:
        return math.inf  # type: ignore[return-value]
    z_a = sps.norm.ppf(1 - (1 - level) / 2)
    z_b = sps.norm.ppf(power)
    pbar = (p1 + p2) / 2
    n = (z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p1 - p2) ** 2
    return int(math.ceil(n))


def psi(expected: pd.Series, actual: pd.Series) -> dict[str, Any]:
    """Population stability index of ``actual`` (recent values) against ``expected`` (training values):
    sum over categories of (a - e) * ln(a / e), shares smoothed with a pseudo-count."""
    categories = sorted(set(expected.astype(str)) | set(actual.astype(str)))
    e = expected.astype(str).value_counts().reindex(categories, fill_value=0).to_numpy(np.float64) + PSI_SMOOTHING
    a = actual.astype(str).value_counts().reindex(categories, fill_value=0).to_numpy(np.float64) + PSI_SMOOTHING
    e, a = e / e.sum(), a / a.sum()
    terms = (a - e) * np.log(a / e)
    order = np.argsort(-terms)
    return {
        "psi": float(terms.sum()),
        "n_recent": int(len(actual)),
        "n_reference": int(len(expected)),
        "largest": [
            {
                "value": categories[i],
                "recent_share": round(float(a[i]), 4),
                "training_share": round(float(e[i]), 4),
                "contribution": round(float(terms[i]), 4),
            }
            for i in order[:5]
        ],
    }


def _psi_level(value: float, config: MonitorConfig) -> str:
    return "shift" if value >= config.psi_alert else "moderate" if value >= config.psi_warn else "stable"


def embedding_drift(
    reference: np.ndarray, recent: np.ndarray, n_permutations: int = 500, seed: int = 0
) -> dict[str, Any]:
    """Cosine distance between the centroids of ``recent`` and ``reference`` embeddings, and its
    permutation p-value: how often a random split of the pooled rows into groups of the same sizes
    is at least as far apart (one matrix product for all permutations)."""
    reference = np.asarray(reference, np.float64)
    recent = np.asarray(recent, np.float64)
    n_recent, n_total = len(recent), len(reference) + len(recent)

    def distance(recent_sum: np.ndarray, total_sum: np.ndarray) -> np.ndarray:
        a = recent_sum / n_recent
        b = (total_sum - recent_sum) / (n_total - n_recent)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        return 1.0 - cos

    pooled = np.vstack([reference, recent])
    total = pooled.sum(0)
    observed = float(distance(recent.sum(0), total))
    rng = np.random.default_rng(seed)
    chosen = np.argsort(rng.random((n_permutations, n_total)), axis=1)[:, :n_recent]
    indicator = np.zeros((n_permutations, n_total))
    np.put_along_axis(indicator, chosen, 1.0, axis=1)
    null = distance(indicator @ pooled, total[None, :])
    p_value = (1 + int((null >= observed).sum())) / (n_permutations + 1)
    return {
        "distance": observed,
        "p_value": float(p_value),
        "null_p99": float(np.quantile(null, 0.99)),
        "n_recent": int(n_recent),
        "n_reference": int(len(reference)),
        "n_permutations": n_permutations,
    }


# =============================================================================================
# Outcomes and verdicts


def _outcomes(requests: pd.DataFrame, feedback: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Per answered request with feedback: the arm that answered and a 0/1 outcome, and which
    feedback defines it (label accuracy when any label was given, else thumbs up)."""
    answered = requests[requests["status"] != "error"].set_index("id")
    for kind, name in (("label", "accuracy"), ("thumbs", "thumbs_up_rate")):
        rows = feedback[feedback["kind"] == kind]
        rows = rows[rows["request_id"].isin(answered.index)]
        if len(rows):
            served = answered.loc[rows["request_id"]]
            if kind == "label":
                success = (served["output"].to_numpy() == rows["value"].to_numpy()).astype(int)
            else:
                success = (rows["value"].to_numpy() == "up").astype(int)
            return pd.DataFrame(
                {"request_id": rows["request_id"].to_numpy(), "arm": served["served_by"].to_numpy(), "success": success}
            ), name
    return pd.DataFrame(columns=["request_id", "arm", "success"]), None


def verdict(
    incumbent: tuple[int, int],
    candidate: tuple[int, int],
    config: MonitorConfig,
    share: float | None = None,
    feedback_rate: float | None = None,
) -> dict[str, Any]:
    """Candidate (successes, trials) against the incumbent's: promote / keep testing / roll back."""
    (ki, ni), (kc, nc) = incumbent, candidate
    level = config.confidence_level
    out: dict[str, Any] = {"incumbent": {"successes": ki, "n": ni}, "candidate": {"successes": kc, "n": nc}}
    pi = ki / ni if ni else float("nan")
    pc = kc / nc if nc else float("nan")
    diff = pc - pi if ni and nc else float("nan")
    low, high = newcombe_interval(kc, nc, ki, ni, level) if ni and nc else (float("nan"), float("nan"))
    out.update(difference=diff, interval=[low, high], p_value=two_proportion_test(kc, nc, ki, ni), level=level)
    # traffic to detect the smallest effect worth having, around the incumbent's rate
    base = pi if ni else 0.5
    effect = config.min_detectable_effect
    target = base + effect if base + effect < 1 else base - effect
    needed = sample_size_two_proportions(base, target, level, config.power)
    out["needed_per_arm"] = needed
    out["more_needed"] = {"incumbent": max(0, needed - ni), "candidate": max(0, needed - nc)}
    if feedback_rate and share:
        # the slower arm (usually the canary) sets the pace: its feedback arrives at rate x share
        out["requests_needed"] = int(math.ceil(out["more_needed"]["candidate"] / (feedback_rate * share)))
    if ni < config.min_feedback or nc < config.min_feedback:
        out["verdict"] = "keep testing"
        out["reason"] = (
            f"too little feedback for a verdict ({nc} for the candidate, {ni} for the incumbent; "
            f"{config.min_feedback} each at least); {needed} per arm detect a "
            f"{config.min_detectable_effect:.0%} difference at power {config.power:.0%}"
        )
    elif low > 0:
        out["verdict"] = "promote"
        out["reason"] = (
            f"the candidate is better by {diff:+.1%} (interval {low:+.1%} to {high:+.1%}, p={out['p_value']:.3g})"
        )
    elif high < 0:
        out["verdict"] = "roll back"
        out["reason"] = (
            f"the candidate is worse by {diff:+.1%} (interval {low:+.1%} to {high:+.1%}, p={out['p_value']:.3g})"
        )
    else:
        out["verdict"] = "keep testing"
        out["reason"] = (
            f"difference {diff:+.1%} is within noise (interval {low:+.1%} to {high:+.1%}); "
            f"{needed} labelled answers per arm detect a {config.min_detectable_effect:.0%} difference"
        )
    return out


# =============================================================================================
# The report


def _arm_table(requests: pd.DataFrame, outcomes: pd.DataFrame, feedback: pd.DataFrame, config: MonitorConfig) -> dict:
    arms: dict[str, Any] = {}
    level = config.confidence_level
    for arm in sorted(set(requests["arm"]) | set(requests["served_by"])):
        assigned = requests[requests["arm"] == arm]
        answered = requests[(requests["served_by"] == arm) & (requests["status"] != "error")]
        failed = assigned["status"].isin(["fallback", "error"])
        # latency as the arm's users saw it: a fallback's time (failed try + incumbent) counts to the arm assigned
        latency = assigned.loc[assigned["status"] != "error", "latency_ms"].astype(float)
        entry: dict[str, Any] = {
            "requests_assigned": int(len(assigned)),
            "requests_answered": int(len(answered)),
            "failed": int(failed.sum()),
            "error_rate": float(failed.mean()) if len(assigned) else None,
            "latency_p50_ms": float(latency.quantile(0.5)) if len(latency) else None,
            "latency_p99_ms": float(latency.quantile(0.99)) if len(latency) else None,
            "out_of_scope_rate": float(answered["out_of_scope"].fillna(0).astype(float).mean())
            if len(answered)
            else None,
        }
        mine = outcomes[outcomes["arm"] == arm]
        k, n = int(mine["success"].sum()), int(len(mine))
        entry["feedback_n"] = n
        entry["online_metric"] = k / n if n else None
        entry["online_ci"] = list(wilson_interval(k, n, level)) if n else None
        ratings = feedback[(feedback["kind"] == "rating") & feedback["request_id"].isin(answered["id"])][
            "value"
        ].astype(float)
        if len(ratings) > 1:
            half = sps.t.ppf(1 - (1 - level) / 2, len(ratings) - 1) * ratings.std(ddof=1) / math.sqrt(len(ratings))
            entry["rating_mean"], entry["rating_ci"] = (
                float(ratings.mean()),
                [float(ratings.mean() - half), float(ratings.mean() + half)],
            )
        elif len(ratings) == 1:
            entry["rating_mean"], entry["rating_ci"] = float(ratings.iloc[0]), None
        arms[arm] = entry
    return arms


def _decay(requests: pd.DataFrame, outcomes: pd.DataFrame, config: MonitorConfig) -> dict[str, dict]:
    """Per arm, the online metric of the earlier half of its feedback (by request time) against the
    recent half: a model whose answers get worse while its inputs look the same (concept drift,
    a product change) shows here before anywhere else."""
    out: dict[str, dict] = {}
    if outcomes.empty:
        return out
    times = requests.set_index("id")["ts"]
    timed = outcomes.assign(ts=times.reindex(outcomes["request_id"]).to_numpy()).sort_values("ts")
    for arm, rows in timed.groupby("arm"):
        n = len(rows)
        if n < 2 * config.min_feedback:
            out[str(arm)] = {
                "status": "not computed",
                "reason": f"{n} outcomes; {2 * config.min_feedback} needed (two halves of monitor.min_feedback)",
            }
            continue
        earlier, recent = rows.iloc[: n // 2], rows.iloc[n // 2 :]
        k1, n1, k2, n2 = int(earlier["success"].sum()), len(earlier), int(recent["success"].sum()), len(recent)
        p_value = two_proportion_test(k1, n1, k2, n2)
        drop = k1 / n1 - k2 / n2
        out[str(arm)] = {
            "earlier": k1 / n1,
            "earlier_n": n1,
            "recent": k2 / n2,
            "recent_n": n2,
            "drop": drop,
            "p_value": p_value,
            "decayed": bool(drop >= config.min_detectable_effect and p_value < 1 - config.confidence_level),
        }
    return out


def _budgets(arms: dict, config: MonitorConfig) -> list[dict]:
    breaches = []
    for arm, e in arms.items():
        checks = (
            ("latency_p50_ms", config.latency_p50_budget_ms),
            ("latency_p99_ms", config.latency_p99_budget_ms),
            ("error_rate", config.error_rate_budget),
        )
        for key, budget in checks:
            value = e.get(key)
            if value is not None and value > budget:
                breaches.append({"arm": arm, "measure": key, "value": value, "budget": budget})
    return breaches


def _drift(
    requests: pd.DataFrame,
    feedback: pd.DataFrame,
    train: pd.DataFrame | None,
    task: str,
    config: MonitorConfig,
    encoder: str | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    recent = requests[requests["status"] != "error"].tail(config.drift_window)
    if train is None or not len(train):
        return {"status": "not computed", "reason": "no training data (runs/<id>/split/train.parquet) to compare with"}
    if not len(recent):
        return {"status": "not computed", "reason": "no answered requests in the window"}
    if task == "classify" and "label" in train.columns:
        in_scope = recent[recent["out_of_scope"].fillna(0).astype(int) == 0]
        if len(in_scope):
            result = psi(train["label"], in_scope["output"])
            out["predicted_labels"] = {**result, "level": _psi_level(result["psi"], config)}
        labelled = feedback[(feedback["kind"] == "label") & feedback["request_id"].isin(recent["id"])]
        if len(labelled) >= config.min_feedback:
            result = psi(train["label"], labelled["value"])
            out["feedback_labels"] = {**result, "level": _psi_level(result["psi"], config)}
        else:
            out["feedback_labels"] = {
                "status": "not computed",
                "reason": f"{len(labelled)} labelled feedback in the window; {config.min_feedback} needed",
            }
    elif task == "generate" and "target" in train.columns:
        lengths = train["target"].fillna("").astype(str).str.len()
        edges = np.unique(np.quantile(lengths, np.linspace(0, 1, 11)[1:-1]))

        def decile(values: np.ndarray) -> pd.Series:
            return pd.Series(np.searchsorted(edges, values, side="right")).astype(str)

        result = psi(decile(lengths.to_numpy()), decile(recent["output"].fillna("").astype(str).str.len().to_numpy()))
        out["reply_length"] = {**result, "level": _psi_level(result["psi"], config)}
    texts = recent["input"].dropna().astype(str).tolist()
    if encoder is None:
        out["embedding"] = {"status": "not computed", "reason": "no encoder given"}
    elif len(texts) < 10:
        out["embedding"] = {
            "status": "not computed",
            "reason": f"{len(texts)} logged inputs in the window; 10 needed (is serve.store_inputs off?)",
        }
    else:
        rng = np.random.default_rng(config.seed)
        reference_texts = train["input"].fillna("").astype(str).to_numpy()
        if len(reference_texts) > config.drift_reference_rows:
            reference_texts = reference_texts[
                rng.choice(len(reference_texts), config.drift_reference_rows, replace=False)
            ]
        result = embedding_drift(
            embed(list(reference_texts), encoder), embed(texts, encoder), config.drift_permutations, config.seed
        )
        out["embedding"] = {**result, "drifted": result["p_value"] < config.drift_alpha}
    return out


def monitor(
    requests: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    config: MonitorConfig | None = None,
    train: pd.DataFrame | None = None,
    task: str = "classify",
    incumbent: str | None = None,
    weights: dict[str, float] | None = None,
    encoder: str | None = None,
    since: float | None = None,
) -> dict[str, Any]:
    """The monitor's report from log frames (``Store.requests_frame`` / ``feedback_frame``)."""
    config = config or MonitorConfig()
    if since is not None:
        requests = requests[requests["ts"] >= since]
    report: dict[str, Any] = {
        "window": {
            "since": since,
            "requests": int(len(requests)),
            "first": float(requests["ts"].min()) if len(requests) else None,
            "last": float(requests["ts"].max()) if len(requests) else None,
        },
        "actions": [],
    }
    feedback = feedback[feedback["request_id"].isin(requests["id"])]
    outcomes, metric = _outcomes(requests, feedback)
    report["online_metric"] = metric
    arms = _arm_table(requests, outcomes, feedback, config) if len(requests) else {}
    report["arms"] = arms
    names = sorted(set(arms) | set(weights or {}))
    if incumbent is None:
        incumbent = (
            INCUMBENT
            if INCUMBENT in names
            else (max(weights, key=weights.get) if weights else (names[0] if names else None))
        )
    report["incumbent"] = incumbent
    report["verdicts"] = {}
    if incumbent is not None and metric is not None:
        inc = outcomes[outcomes["arm"] == incumbent]
        total_weight = sum((weights or {}).values()) or 1.0
        for arm in names:
            if arm == incumbent:
                continue
            mine = outcomes[outcomes["arm"] == arm]
            answered = arms.get(arm, {}).get("requests_answered", 0)
            rate = len(mine) / answered if answered else None
            share = (weights or {}).get(arm, 0) / total_weight if weights else None
            v = verdict(
                (int(inc["success"].sum()), len(inc)),
                (int(mine["success"].sum()), len(mine)),
                config,
                share=share,
                feedback_rate=rate,
            )
            report["verdicts"][arm] = v
            if v["verdict"] in ("promote", "roll back"):
                report["actions"].append(f"{v['verdict']} {arm}: {v['reason']}")
    elif metric is None:
        report["verdict_note"] = "no label or thumbs feedback in the window: no verdict"
    report["budgets"] = _budgets(arms, config)
    for b in report["budgets"]:
        report["actions"].append(f"{b['arm']}: {b['measure']} {b['value']:.4g} over the budget {b['budget']:.4g}")
    report["drift"] = _drift(requests, feedback, train, task, config, encoder) if len(requests) else {}
    for key in ("predicted_labels", "feedback_labels", "reply_length"):
        entry = report["drift"].get(key, {})
        if entry.get("level") == "shift":
            report["actions"].append(
                f"drift: {key.replace('_', ' ')} PSI {entry['psi']:.3f} >= {config.psi_alert} "
                f"against the training data: check the inputs and consider retraining"
            )
    emb = report["drift"].get("embedding", {})
    if emb.get("drifted"):
        report["actions"].append(
            f"drift: recent inputs' embedding centroid moved {emb['distance']:.4f} from the "
            f"training centroid (permutation p={emb['p_value']:.3g}): consider retraining"
        )
    report["decay"] = _decay(requests, outcomes, config) if metric is not None else {}
    for arm, entry in report["decay"].items():
        if entry.get("decayed"):
            report["actions"].append(
                f"decay: {arm}'s online {metric} fell from {entry['earlier']:.3f} "
                f"(n={entry['earlier_n']}) to {entry['recent']:.3f} (n={entry['recent_n']}), "
                f"p={entry['p_value']:.3g}: consider retraining"
            )
    report["retrain"] = _retrain_advice(report, requests, feedback, task)
    report["needs_action"] = bool(report["actions"])
    return report


def _retrain_advice(report: dict, requests: pd.DataFrame, feedback: pd.DataFrame, task: str) -> dict[str, Any]:
    """Whether drift or decay calls for a retrain, and how many feedback rows ``tunewise retrain`` could use."""
    why = [a for a in report["actions"] if a.startswith(("drift:", "decay:"))]
    rows, _ = feedback_training_rows(requests, feedback, task=task)
    return {"advised": bool(why), "why": why, "feedback_rows": int(len(rows))}


def monitor_run(
    store_url: str,
    run_dir: str | Path,
    config: MonitorConfig | None = None,
    since: str | None = None,
    incumbent: str | None = None,
    encoder: str | None = "embedded:minilm-l6",
    task: str | None = None,
) -> dict[str, Any]:
    """The report for a run's log: reads the store, the run's training split and the arm weights."""
    from tunewise.monitoring.store import Store  # on use: loads sqlalchemy

    config = config or MonitorConfig()
    run_dir = Path(run_dir)
    store = Store(store_url)
    try:
        cutoff = parse_since(since if since is not None else config.since)
        requests, feedback = store.requests_frame(cutoff), store.feedback_frame()
        stored = store.arm_weights()
    finally:
        store.close()
    train_path = RunLayout(run_dir).split("train")
    train = pd.read_parquet(train_path) if train_path.exists() else None
    if task is None:
        task = (
            "generate"
            if train is not None and "target" in train.columns and "label" not in train.columns
            else "classify"
        )
    report = monitor(
        requests,
        feedback,
        config=config,
        train=train,
        task=task,
        incumbent=incumbent,
        weights={n: w for n, (_, w) in stored.items()},
        encoder=encoder,
    )
    report["window"]["since"] = cutoff
    report["weights"] = {n: {"candidate": c, "weight": w} for n, (c, w) in stored.items()}
    report["retrain"]["command"] = f"tunewise retrain --run-id {run_dir.name}"
    return report
