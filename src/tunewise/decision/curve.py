"""Learning curves: how the metric grows with data, and how much data the target would take.

``learning_curve`` trains candidates on nested stratified subsets of the training split (each
subset contains the smaller ones, so the curve is not noise between unrelated draws), scores each
on the same validation and test ids, and fits a saturating power law to the test error:

    error(n) = a * n^(-b) + c        (a >= 0, 0 < b <= 2, 0 <= c <= 1)

c is the error the curve levels off at: a target below 1 - c is "not reachable" with more of the
same data. The interval comes from a bootstrap over test examples: resample the test ids, recompute
every subset's score on the same resample (paired), refit. Reported: the metric expected at 2x, 5x
and 10x the current data, the examples needed for the target (the gate's: baseline score x (1 +
threshold)), and per-class recall curves with the classes whose recall still grows most per
doubling of data: where more labels help.

Classification (accuracy) only: a generation metric's curve would need the LLM to generate for
every subset, hours on a CPU. The fit is scipy's ``curve_fit``; the subsets and the bootstrap are
numpy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.artifacts import atomic_path, read_json, write_json
from tunewise.core.errors import TunewiseError
from tunewise.core.layout import RunLayout
from tunewise.core.progress import console, progress
from tunewise.core.runs import check_run_id, existing_run_lock
from tunewise.core.stats import percentile_interval, resample_weights

__all__ = ["CurveError", "CurveFit", "fit_power_law", "learning_curve", "nested_subsets", "power_law"]

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
MIN_PER_CLASS = 2  # a class below this is raised to it: a model cannot learn a class it never saw
MULTIPLES = (1, 2, 5, 10)  # 1x: the fit at the current data, beside the measured value


class CurveError(TunewiseError, ValueError):
    """The curve cannot be computed; the message says what to change."""


# =============================================================================================
# Subsets


def nested_subsets(
    labels: Sequence[str], fractions: Sequence[float], seed: int, min_per_class: int = MIN_PER_CLASS
) -> tuple[dict[float, np.ndarray], list[str]]:
    """Row indices per fraction, stratified by label and nested (a smaller subset is inside a larger).

    Each class's rows are shuffled once (seeded); the subset at fraction f takes the first
    max(min_per_class, round(f x class size)) of them. Returns (subsets, notes), where notes say
    which fractions were raised so every class has ``min_per_class`` rows.
    """
    labels = np.asarray(labels)
    fractions = sorted(set(float(f) for f in fractions))
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise CurveError(f"fractions must be in (0, 1], got {fractions}")
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))}
    subsets, notes = {}, []
    for f in fractions:
        raised = 0
        parts = []
        for rows in order.values():
            take = int(round(f * len(rows)))
            if take < min(min_per_class, len(rows)):
                take = min(min_per_class, len(rows))
                raised += 1
            parts.append(rows[:take])
        subsets[f] = np.sort(np.concatenate(parts))
        if raised:
            notes.append(f"fraction {f:g}: {raised} class(es) raised to {min_per_class} rows so every class is seen")
    return subsets, notes


# =============================================================================================
# The power law


def power_law(n: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a * np.power(n, -b) + c


@dataclass
class CurveFit:
    a: float
    b: float
    c: float

    def error(self, n: float) -> float:
        return float(power_law(np.asarray(n, dtype=float), self.a, self.b, self.c))

    def n_for_error(self, error: float) -> float | None:
        """Examples needed for ``error``; None when the curve levels off above it."""
        if error <= self.c or self.a <= 0 or self.b <= 0:
            return None
        return float((self.a / (error - self.c)) ** (1 / self.b))


def fit_power_law(ns: Sequence[float], errors: Sequence[float]) -> CurveFit:
    """Least-squares fit of error = a n^-b + c within bounds (scipy's trust-region reflective)."""
    from scipy.optimize import curve_fit

    ns, errors = np.asarray(ns, dtype=float), np.asarray(errors, dtype=float)
    if len(ns) < 3:
        raise CurveError(f"a power law has 3 parameters: it needs at least 3 subset sizes, got {len(ns)}")
    c0 = max(0.0, float(errors.min()) * 0.5)
    b0 = 0.5
    a0 = max(1e-6, float((errors[0] - c0) * ns[0] ** b0))
    try:
        params, _ = curve_fit(
            power_law, ns, errors, p0=(a0, b0, c0), bounds=([0, 1e-3, 0], [np.inf, 2.0, 1.0]), maxfev=20000
        )
    except RuntimeError:  # no convergence: the flattest curve through the points
        params = (0.0, 1.0, float(errors.mean()))
    return CurveFit(*map(float, params))


# =============================================================================================
# The curve


def _fit_and_score(
    name: str, factory: Callable[[str], Any], train: pd.DataFrame, frames: dict[str, pd.DataFrame]
) -> dict[str, Any]:
    started = time.perf_counter()
    candidate = factory(name).fit(train, None)
    fit_seconds = time.perf_counter() - started
    out = {"fit_seconds": fit_seconds}
    for split, frame in frames.items():
        predictions = candidate.predict(frame)
        out[split] = predictions["prediction"].astype(str).to_numpy() == frame["label"].astype(str).to_numpy()
    return out


def learning_curve(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    *,
    candidates: list[str],
    factory: Callable[[str], Any],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    target: float | None = None,
    n_resamples: int = 500,
    engine: str = "local",
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Train ``candidates`` on nested subsets; fit and extrapolate each one's test accuracy curve.

    ``factory(name)`` returns an unfitted candidate. With ``engine="ray"`` every (candidate,
    subset) training runs as a Ray task.
    """
    if "label" not in train.columns:
        raise CurveError("learning curves are computed for classification (accuracy); this run has no labels")
    subsets, notes = nested_subsets(train["label"].astype(str).tolist(), fractions, seed)
    frames = {"validation": validation, "test": test}
    jobs = [(name, f) for name in candidates for f in subsets]
    results: dict[tuple[str, float], dict] = {}
    if engine == "ray":
        results = _run_ray(jobs, subsets, factory, train, frames, ray_address)
    else:
        with progress("learning curve", len(jobs), unit="fits") as advance:
            for name, f in jobs:
                subset = train.iloc[subsets[f]].reset_index(drop=True)
                # say what is being fitted now (a log line during a long fit names it), then count it
                advance(0, description=f"curve {name} at {f:g} ({len(subset)} rows)")
                results[(name, f)] = _fit_and_score(name, factory, subset, frames)
                advance(1)
    labels = test["label"].astype(str).to_numpy()
    classes = sorted(set(labels.tolist()))
    out: dict[str, Any] = {
        "fractions": list(subsets),
        "n_train": len(train),
        "notes": notes,
        "seed": seed,
        "sizes": {str(f): int(len(idx)) for f, idx in subsets.items()},
        "target": target,
        "n_resamples": n_resamples,
        "engine": engine,
        "candidates": {},
    }
    # stats' bootstrap: how often each test row is drawn, per resample; the same resamples for every candidate
    weights = resample_weights(len(test), n_resamples, seed).astype(np.float64)
    boot_fits: dict[str, list[CurveFit]] = {}
    ns = np.array([len(subsets[f]) for f in subsets], dtype=float)
    # the bootstrap refits (a scipy fit each, ~4 ms): a few seconds per candidate at 500 resamples
    with progress("learning curve: bootstrap", len(candidates) * n_resamples, unit="fits") as advance:
        for name in candidates:
            correct = np.stack([results[(name, f)]["test"] for f in subsets])
            boot_accuracy = (weights @ correct.T.astype(np.float64)) / len(test)  # (resamples, fractions)
            boot_fits[name] = []
            for accuracy in boot_accuracy:
                boot_fits[name].append(fit_power_law(ns, 1 - accuracy))
                advance(1)
    for name in candidates:
        correct = np.stack([results[(name, f)]["test"] for f in subsets])  # (fractions, test rows)
        accuracy = correct.mean(axis=1)
        fit = fit_power_law(ns, 1 - accuracy)
        boot = boot_fits[name]
        entry: dict[str, Any] = {
            "n": ns.astype(int).tolist(),
            "test_accuracy": accuracy.tolist(),
            "validation_accuracy": [float(results[(name, f)]["validation"].mean()) for f in subsets],
            "fit_seconds": [round(results[(name, f)]["fit_seconds"], 3) for f in subsets],
            "fit": {"a": fit.a, "b": fit.b, "c": fit.c, "plateau_accuracy": 1 - fit.c},
            "plateau_ci95": _interval([1 - b.c for b in boot]),
            "expected": {},
        }
        n_now = float(len(train))
        for multiple in MULTIPLES:
            predicted = [1 - b.error(n_now * multiple) for b in boot]
            entry["expected"][f"{multiple}x"] = {
                "n": int(n_now * multiple),
                "accuracy": 1 - fit.error(n_now * multiple),
                "ci95": _interval(predicted),
            }
        if target is not None:
            entry["target"] = _needed(fit, boot, target, n_now)
        entry["per_class"] = _per_class(correct, labels, classes, ns)
        out["candidates"][name] = entry
    return out


def _interval(values: Sequence[float | None], level: float = 0.95) -> list[float]:
    """stats' percentile interval of the finite values, as a list (None: no value)."""
    return list(percentile_interval(np.asarray([v for v in values if v is not None], dtype=float), level))


def _needed(fit: CurveFit, boot: list[CurveFit], target: float, n_now: float) -> dict[str, Any]:
    n = fit.n_for_error(1 - target)
    reachable_share = float(np.mean([b.n_for_error(1 - target) is not None for b in boot]))
    if n is None:
        return {
            "accuracy": target,
            "reachable": False,
            "reachable_share": reachable_share,
            "message": f"not reachable: the curve levels off at {1 - fit.c:.3f} accuracy",
        }
    boot_n = [b.n_for_error(1 - target) for b in boot]
    finite = [x for x in boot_n if x is not None]
    return {
        "accuracy": target,
        "reachable": True,
        "n_needed": int(math.ceil(n)),
        "more_rows": max(0, int(math.ceil(n - n_now))),
        "reachable_share": reachable_share,
        "n_needed_ci95": _interval(finite) if finite else None,
        "message": (
            f"about {int(math.ceil(n)):,} training rows ({max(0, int(math.ceil(n - n_now))):,} more) "
            f"to reach {target:.3f} accuracy"
            if n > n_now
            else f"the curve puts {target:.3f} accuracy within the current {int(n_now):,} rows"
        ),
    }


def _per_class(correct: np.ndarray, labels: np.ndarray, classes: list[str], ns: np.ndarray) -> list[dict[str, Any]]:
    """Recall per class at each subset size, and its growth per doubling between the last two sizes."""
    rows = []
    doublings = math.log2(ns[-1] / ns[-2]) if len(ns) > 1 and ns[-1] > ns[-2] else 1.0
    for c in classes:
        mask = labels == c
        recall = correct[:, mask].mean(axis=1)
        gain = float((recall[-1] - recall[-2]) / doublings) if len(recall) > 1 else 0.0
        rows.append(
            {
                "label": c,
                "n_test": int(mask.sum()),
                "recall": recall.round(4).tolist(),
                "gain_per_doubling": round(gain, 4),
            }
        )
    # where more data helps most: still growing, and far from perfect
    rows.sort(key=lambda r: -(max(r["gain_per_doubling"], 0) + 1e-3) * (1 - r["recall"][-1]))
    return rows


def _run_ray(
    jobs: list[tuple[str, float]],
    subsets: dict[float, np.ndarray],
    factory: Callable[[str], Any],
    train: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    address: str | None,
) -> dict:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        fit_remote = ray.remote(_fit_subset)
        frames_ref, train_ref = ray.put(frames), ray.put(train)
        # one task per (candidate, subset); the subset is cut inside the task from the shared frame
        refs = {job: fit_remote.remote(job[0], factory, train_ref, subsets[job[1]], frames_ref) for job in jobs}
        with progress("learning curve (ray)", len(jobs), unit="fits") as advance:
            results = {}
            pending = dict((ref, job) for job, ref in refs.items())
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                results[job] = ray.get(done[0])
                advance(1, description=f"curve {job[0]} at {job[1]:g}")
        return results
    finally:
        if started_here:
            ray.shutdown()


def _fit_subset(
    name: str, factory: Callable[[str], Any], train: pd.DataFrame, indices: np.ndarray, frames: dict[str, pd.DataFrame]
) -> dict[str, Any]:
    # a Ray task: Ray resolves the shared frames (object references) before it runs
    return _fit_and_score(name, factory, train.iloc[indices].reset_index(drop=True), frames)


def write_curve_plot(curve: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, entry in curve["candidates"].items():
        ns = np.asarray(entry["n"], dtype=float)
        line = ax.plot(ns, entry["test_accuracy"], "o", label=f"{name} (measured)")[0]
        grid = np.geomspace(ns.min(), ns.max() * 10, 60)
        fit = CurveFit(entry["fit"]["a"], entry["fit"]["b"], entry["fit"]["c"])
        ax.plot(
            grid,
            [1 - fit.error(n) for n in grid],
            "-",
            color=line.get_color(),
            alpha=0.7,
            label=f"{name} fit, levels off at {1 - fit.c:.3f}",
        )
    if curve.get("target") is not None:
        ax.axhline(curve["target"], color="grey", linestyle="--", label=f"target {curve['target']:.3f}")
    ax.axvline(curve["n_train"], color="black", linewidth=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training rows (log scale; vertical line: current data)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


# =============================================================================================
# A run's curve: ``tunewise curve``


def candidate_factory(cfg: Any) -> Callable[[str], Any]:
    """Unfitted candidates built from the project's config (``tunewise.candidates.factory``)."""
    import functools

    from tunewise.candidates.factory import build_candidate  # on use: loads sklearn

    return functools.partial(build_candidate, config=cfg)


def default_candidates(evaluation: dict[str, Any], decision: dict[str, Any] | None = None) -> list[str]:
    """The decision's best fine-tune and the alternative it was weighed against (else the gate's)."""
    decision = decision or {}
    gate = evaluation.get("gate", {})
    names = [
        decision.get("candidate") or gate.get("candidate"),
        decision.get("alternative") or decision.get("recommended") or gate.get("cheap"),
    ]
    return list(dict.fromkeys(n for n in names if n))


def resolve_curve_candidates(names: list[str], evaluation: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Candidates a curve can train. One that combines others (the ensemble) is not trained on its
    own: it averages its members' probabilities, so its curve is measured through its strongest
    fine-tuned member (the ensemble scored at or above it on this test set); ``notes`` says so."""
    from tunewise.candidates.ensemble import candidate_members  # on use: loads sklearn
    from tunewise.candidates.registry import CANDIDATES  # on use: loads sklearn

    notes: dict[str, str] = {}
    out: list[str] = []
    scores = {c["name"]: (c.get("metrics") or {}).get("accuracy") for c in evaluation.get("candidates", [])}
    kinds = {c["name"]: c.get("kind") for c in evaluation.get("candidates", [])}
    recorded = candidate_members(evaluation)
    for name in names:
        if name in CANDIDATES and CANDIDATES[name].combines:
            members = recorded.get(name) or [
                n
                for n, k in kinds.items()
                if k == "finetuned" and n != name and not (n in CANDIDATES and CANDIDATES[n].combines)
            ]
            tuned = [m for m in members if kinds.get(m) == "finetuned"] or members
            if not tuned:
                raise CurveError(f"the {name} has no recorded members to measure a curve through; pass --candidates")
            proxy = max(tuned, key=lambda m: (scores.get(m) or 0.0, m))
            notes[name] = (
                f"the {name} averages {', '.join(members)}; its curve is measured through its "
                f"strongest fine-tuned member {proxy} (the {name} adds "
                f"{(scores.get(name) or 0) - (scores.get(proxy) or 0):+.3f} accuracy on this test set)"
            )
            notes[f"{name}_proxy"] = proxy
            name = proxy
        if name not in out:
            out.append(name)
    return out, notes


def run_curve(
    cfg: Any,
    run_id: str = "default",
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    candidates: list[str] | None = None,
    target: float | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    n_resamples: int = 500,
) -> dict[str, Any]:
    """Learning curves for a run: reads its split (and evaluation), writes ``runs/<id>/curve/``.

    Holds the run folder's lock (refused with the holder's pid while another process works in it)."""

    with existing_run_lock(cfg.resolve(cfg.runs_dir) / check_run_id(run_id)):
        return _run_curve(
            cfg,
            run_id,
            fractions=fractions,
            candidates=candidates,
            target=target,
            engine=engine,
            ray_address=ray_address,
            n_resamples=n_resamples,
        )


def _run_curve(
    cfg: Any,
    run_id: str,
    *,
    fractions: Sequence[float],
    candidates: list[str] | None,
    target: float | None,
    engine: str,
    ray_address: str | None,
    n_resamples: int,
) -> dict[str, Any]:

    run_dir = cfg.resolve(cfg.runs_dir) / run_id
    if cfg.task != "classify":
        raise CurveError(
            "tunewise curve measures accuracy curves for classify projects; generation curves would "
            "generate with the LLM for every subset (hours on a CPU)"
        )
    paths = RunLayout(run_dir).splits()
    for path in paths.values():
        if not path.exists():
            raise CurveError(
                f"{path} not found: run `tunewise split` (and `tunewise evaluate` for the default "
                "candidates and target) first"
            )
    frames = {name: pd.read_parquet(path) for name, path in paths.items()}
    summary_path = RunLayout(run_dir).summary("evaluate")
    evaluation = read_json(summary_path) if summary_path.exists() else {}
    decision_path = run_dir / "decide" / "decision.json"
    decision = (read_json(decision_path) or {}).get("decision", {}) if decision_path.exists() else {}
    if not candidates:
        candidates = default_candidates(evaluation, decision)
        if not candidates:
            raise CurveError(
                f"no evaluation in {run_dir} to pick candidates from: pass --candidates "
                "(e.g. tfidf_lr,encoder_ft) or run `tunewise evaluate` first"
            )
    candidates, notes = resolve_curve_candidates(list(candidates), evaluation)
    for key, note in notes.items():
        if not key.endswith("_proxy"):
            console.print(f"curve: {note}")
    if target is None:
        # the decision's target: the reference's score moved by the minimum improvement
        target = decision.get("target_score")
        if target is None:
            comparison = evaluation.get("comparison") or {}
            if comparison.get("baseline_score") is not None:
                target = comparison["baseline_score"] * (1 + comparison.get("threshold", cfg.evaluate.threshold))
        if target is not None and target > 1.0:
            console.print(
                f"curve: the decision's target {target:.3f} is above accuracy 1: no amount of data reaches "
                "it; the curve reports accuracy 1.0 as the target instead"
            )
            target = 1.0
    console.print(
        f"curve: {', '.join(candidates)} on fractions {', '.join(f'{f:g}' for f in fractions)} of "
        f"{len(frames['train'])} training rows" + (f"; target accuracy {target:.3f}" if target else "")
    )
    curve = learning_curve(
        frames["train"],
        frames["validation"],
        frames["test"],
        candidates=candidates,
        factory=candidate_factory(cfg),
        fractions=fractions,
        seed=cfg.seed,
        target=target,
        n_resamples=n_resamples,
        engine=engine,
        ray_address=ray_address,
    )
    curve["notes"] = notes
    curve["target_source"] = "decision" if decision.get("target_score") is not None else "evaluation"
    out_dir = run_dir / "curve"
    write_json(out_dir / "curve.json", curve)
    write_curve_plot(curve, out_dir / "curve.png")
    return curve
