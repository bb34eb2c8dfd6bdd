"""``tunewise retrain``: live feedback becomes training rows, the pipeline re-runs, the same gate decides.

The loop the server closes (issue 9):

1. rows from the request log: a request whose feedback gives the correct label (classify), or one
   whose answer got a thumbs up (its served answer is confirmed: a label or a reply). Each row
   needs its logged input (``serve.store_inputs``); a thumbs-up on an out-of-scope answer, a
   label outside the run's label set, or a row that is a near-copy of a frozen test row is skipped
   and counted with its reason: production traffic repeats test questions, and those rows in
   training would inflate the new run's test score, so the gate would pass on leaked rows;
2. the rows go through ``add-labels`` (the test ids are frozen first, so the new run is scored on
   exactly the old test rows) and the whole pipeline (ingest, curation, split, baselines,
   training, evaluation, decision, report) runs into a new run id; the old run, which the server
   may be serving, is not touched;
3. the new run must pass the same gate: its decision recommends a model (FINE_TUNE or USE_ALTERNATIVE,
   as its predecessor's did) with the gate settings of the source
   run (``evaluate.baseline``, ``threshold``, ``gate_beats_cheap``, ``confidence_level`` and the
   ``roi`` section unchanged), and the new recommended candidate is not worse than the old one
   beyond noise on the shared test rows (McNemar on the paired answers; for replies, a sign-flip
   permutation test on per-row chrF). The result is
   ``runs/<new>/retrain/retrain.json``; ``tunewise serve`` refuses a retrained run whose gate
   failed, so a worse model cannot be put in front of users by accident.

A retrain that stopped part-way (killed, or an error) is resumed by running it again with the same
``--new-run-id``: finished stages are reused, training resumes from its checkpoint, rows already
added are not added twice, and until it finishes the new run counts as failing its gate.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from tunewise.config.sections import EvaluateConfig
from tunewise.core.artifacts import read_json, write_json, write_text
from tunewise.core.errors import TunewiseError
from tunewise.core.layout import RunLayout
from tunewise.core.runs import check_run_id, existing_run_lock, run_lock
from tunewise.monitoring.feedback import feedback_training_rows, parse_since
from tunewise.pipeline.runner import run_stages
from tunewise.workflows.labelling import add_labels

__all__ = ["GATE_FIELDS", "RetrainError", "feedback_training_rows", "retrain", "retrain_gate"]

RETRAIN_FILE = Path("retrain") / "retrain.json"
FEEDBACK_FILE = Path("retrain") / "feedback_rows.jsonl"  # written first: a retrain into this run has started
ADDED_FILE = Path("retrain") / "added.json"  # what add-labels did, kept for a rerun after an interruption
GATE_FIELDS = ("baseline", "threshold", "gate_beats_cheap", "confidence_level")  # of the evaluate section
NOISE_ALPHA = 0.05  # a regression against the previous candidate counts when McNemar's p is below this


class RetrainError(TunewiseError, ValueError):
    """retrain cannot run as asked; the message says what to change."""


# verdicts that name a model to serve; a retrained run must keep its predecessor's
SERVABLE_VERDICTS = ("FINE_TUNE", "USE_ALTERNATIVE")


def _run_labels(run_dir: Path) -> set[str] | None:
    train = RunLayout(run_dir).split("train")
    if not train.exists():
        return None
    frame = pd.read_parquet(train)
    return set(frame["label"].astype(str)) if "label" in frame.columns else None


def _drop_test_copies(rows: pd.DataFrame, run_dir: Path, cfg: Any) -> tuple[pd.DataFrame, int]:
    """Rows that are near-copies of the source run's test rows (the split's own leakage check)."""
    from tunewise.data.split import find_leakage  # on use: loads scipy, sklearn

    test_path = RunLayout(run_dir).split("test")
    if rows.empty or not test_path.exists():
        return rows, 0
    test = pd.read_parquet(test_path, columns=["id", "input"])
    candidates = pd.DataFrame({"id": rows["request_id"].astype(str), "input": rows["text"].astype(str)})
    # roles swapped: every feedback row with a near-duplicate among the test rows is reported once
    leaks = find_leakage(test, candidates, cfg.split.leakage_threshold, cfg.seed)
    leaked = {feedback_id for feedback_id, _, _ in leaks}
    return rows[~rows["request_id"].astype(str).isin(leaked)].reset_index(drop=True), len(leaked)


def _gate_settings(config: dict) -> dict[str, Any]:
    evaluate = config.get("evaluate") or {}
    return {**{f"evaluate.{k}": evaluate.get(k) for k in GATE_FIELDS}, "roi": config.get("roi")}


def _paired_regression(old_dir: Path, old_name: str | None, new_dir: Path, new_name: str | None) -> dict[str, Any]:
    """The new recommended candidate against the old one on the test rows both answered: McNemar on
    right/wrong (classify), a sign-flip permutation test on per-row chrF (generate)."""
    from tunewise.core.stats import mcnemar, paired_permutation  # on use: loads scipy

    if not old_name or not new_name:
        return {"status": "not computed", "reason": "no recommended candidate in one of the runs"}
    paths = [RunLayout(d).per_example(n) for d, n in ((old_dir, old_name), (new_dir, new_name))]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        return {"status": "not computed", "reason": f"no per-example results: {', '.join(missing)}"}
    old, new = (pd.read_parquet(p) for p in paths)
    column = next((c for c in ("correct", "chrf") if c in old.columns and c in new.columns), None)
    if column is None:
        return {"status": "not computed", "reason": "per-example results have neither 'correct' nor 'chrf'"}
    both = old[["id", column]].merge(new[["id", column]], on="id", suffixes=("_old", "_new"))
    if both.empty:
        return {"status": "not computed", "reason": "the runs share no test rows"}
    before, after = both[f"{column}_old"].to_numpy(), both[f"{column}_new"].to_numpy()
    if column == "correct":
        p_value, method = mcnemar(after.astype(bool), before.astype(bool))
        measure = "accuracy"
    else:
        p_value, method, measure = paired_permutation(after, before), "paired_permutation", "chrf"
    old_value, new_value = float(before.astype(float).mean()), float(after.astype(float).mean())
    worse = new_value < old_value and p_value < NOISE_ALPHA
    return {
        "status": "computed",
        "previous": old_name,
        "new": new_name,
        "rows": int(len(both)),
        "measure": measure,
        "previous_value": old_value,
        "new_value": new_value,
        "p_value": float(p_value),
        "test": method,
        "worse_beyond_noise": bool(worse),
    }


def retrain_gate(run_dir: str | Path) -> dict[str, Any] | None:
    """The gate of a retrained run (None for a run that did not come from ``retrain``).

    A run whose retrain started but did not finish (killed, or stopped by an error, before the gate
    was checked) has a failed gate: its stages may be done and its models trained, but nothing has
    compared them with the previous run yet, so ``tunewise serve`` must not take it (without this, a
    retrain killed after its decide stage would leave a run that serve accepts without any gate)."""

    run_dir = Path(run_dir)
    path = run_dir / RETRAIN_FILE
    if path.exists():
        return read_json(path).get("gate")
    if (run_dir / FEEDBACK_FILE).exists():
        return {
            "passed": False,
            "reasons": [
                f"the retrain into {run_dir.name} did not finish (it stopped before its gate was checked); run the same "
                f"`tunewise retrain --new-run-id {run_dir.name}` again: it resumes where it stopped"
            ],
        }
    return None


def _resumed_added(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """add-labels' record of a retrain run again after an interruption. The interrupted attempt put
    its rows into data.added, so this attempt's add-labels skips them as already labelled; they are
    rows this retrain added, as in a retrain nobody interrupted (found by the kill -9 test: the
    rerun's retrain.json said 0 rows added). Exact when the earlier rows are all still in the
    feedback window (the log only grows; a relative --since can drop old ones)."""
    again = min(earlier["added"], now["skipped_already_labelled"])
    new_labels = Counter(earlier.get("new_labels") or {})
    new_labels.update(now.get("new_labels") or {})
    return {
        **now,
        "added": earlier["added"] + now["added"],
        "skipped_already_labelled": now["skipped_already_labelled"] - again,
        "new_labels": dict(new_labels),
        "test": earlier["test"],
        "ids": earlier["ids"] + now["ids"],
    }


def retrain(
    cfg: Any,
    *,
    run_id: str,
    store_url: str,
    new_run_id: str | None = None,
    since: str | None = None,
    thumbs_up: bool = True,
    min_rows: int = 1,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Feedback rows -> add-labels -> the pipeline into ``new_run_id`` -> the same gate. Returns the record
    written to ``runs/<new>/retrain/retrain.json`` (``dry_run``: the rows only, nothing written).

    Holds the lock of the source run (its split and decision are the reference, and add-labels freezes
    its test ids) and of the new run: refused with the holder's pid while another process works in
    either, before anything is written."""

    options = {
        "run_id": run_id,
        "store_url": store_url,
        "new_run_id": new_run_id,
        "since": since,
        "thumbs_up": thumbs_up,
        "min_rows": min_rows,
        "dry_run": dry_run,
    }
    if dry_run:  # reads only
        return _retrain(cfg, **options)
    with existing_run_lock(cfg.resolve(cfg.runs_dir) / check_run_id(run_id)):
        return _retrain(cfg, **options)


def _retrain(
    cfg: Any,
    *,
    run_id: str,
    store_url: str,
    new_run_id: str | None,
    since: str | None,
    thumbs_up: bool,
    min_rows: int,
    dry_run: bool,
) -> dict[str, Any]:
    from tunewise.monitoring.store import Store  # on use: loads sqlalchemy

    run_dir = cfg.resolve(cfg.runs_dir) / run_id
    if not RunLayout(run_dir).split("test").exists():
        raise RetrainError(
            f"{run_dir}: no split test set; `tunewise retrain` starts from a run that went through "
            f"the pipeline (`tunewise run --run-id {run_id}`)"
        )
    try:
        cutoff = parse_since(since)
    except ValueError as exc:
        raise RetrainError(str(exc)) from None
    store = Store(store_url)
    try:
        requests, feedback = store.requests_frame(cutoff), store.feedback_frame()
        safe_url = store.safe_url
    finally:
        store.close()
    oos = (cfg.evaluate or EvaluateConfig()).out_of_scope_label
    rows, skipped = feedback_training_rows(
        requests, feedback, task=cfg.task, labels=_run_labels(run_dir), thumbs_up=thumbs_up, out_of_scope_label=oos
    )
    rows, near_test = _drop_test_copies(rows, run_dir, cfg)
    if near_test:
        skipped["near-copy of a test row"] += near_test
    record: dict[str, Any] = {
        "source_run": run_id,
        "store": safe_url,
        "since": cutoff,
        "requests_in_window": int(len(requests)),
        "feedback_rows": int(len(feedback)),
        "rows": int(len(rows)),
        "rows_by_source": rows["source"].value_counts().to_dict() if len(rows) else {},
        "skipped": dict(skipped),
        "thumbs_up_used": thumbs_up,
    }
    if dry_run:
        return {**record, "dry_run": True}
    if len(rows) < min_rows:
        raise RetrainError(
            f"{len(rows)} labelled feedback row(s) in {safe_url} (--min-rows {min_rows}); skipped: "
            f"{dict(skipped) or 'none'}. Post feedback with a label (POST /v1/feedback) first"
        )

    new_run_id = check_run_id(new_run_id or f"{run_id}-retrain-{time.strftime('%Y%m%d-%H%M%S')}")
    new_dir = cfg.resolve(cfg.runs_dir) / new_run_id
    # the new run folder is written from here on (feedback rows, then the pipeline): one process at a time
    with run_lock(new_dir):
        if new_dir.exists() and (new_dir / RETRAIN_FILE).exists():
            raise RetrainError(f"{new_dir} holds a finished retrain already; pick another --new-run-id")
        answer = "label" if cfg.task == "classify" else "reply"
        feedback_file, added_file = new_dir / FEEDBACK_FILE, new_dir / ADDED_FILE
        earlier = read_json(added_file) if added_file.exists() else None  # an interrupted retrain into this run
        write_text(
            feedback_file,
            rows[["request_id", "text", answer, "source"]].to_json(orient="records", lines=True, force_ascii=False),
        )
        added = add_labels(cfg, feedback_file, run_id=run_id)
        added = {
            k: added[k]
            for k in ("added", "added_total", "added_file", "skipped_already_labelled", "new_labels", "test", "ids")
        }
        if earlier is not None:
            added = _resumed_added(earlier, added)
        # right after add-labels (a kill between the two writes, a few ms, still counts the rows as skipped)
        write_json(added_file, added)
        record.update(
            new_run=new_run_id, feedback_file=str(feedback_file), added={k: v for k, v in added.items() if k != "ids"}
        )

        started = time.perf_counter()
        run_stages(cfg, new_run_id)
        record["pipeline_seconds"] = round(time.perf_counter() - started, 1)

        old_config, new_config = read_json(run_dir / "config.json"), read_json(new_dir / "config.json")
        decision = (read_json(new_dir / "decide" / "decision.json") or {}).get("decision", {})
        old_decision_file = run_dir / "decide" / "decision.json"
        old_decision = (read_json(old_decision_file) or {}).get("decision", {}) if old_decision_file.exists() else {}
        reasons: list[str] = []
        old_gate, new_gate = _gate_settings(old_config), _gate_settings(new_config)
        for key, before in old_gate.items():
            after = new_gate[key]
            if after == before:
                continue
            reasons.append(
                f"the gate changed since {run_id}: {key} {before!r} -> {after!r}; a retrained model must "
                "pass the gate its predecessor passed"
            )
        verdict, old_verdict = decision.get("verdict"), old_decision.get("verdict")
        if verdict not in SERVABLE_VERDICTS:
            reasons.append(
                f"{new_run_id}'s decision is {verdict or 'missing'}: " + "; ".join(decision.get("reasons", [])[:3])
            )
        elif old_verdict in SERVABLE_VERDICTS and verdict != old_verdict:
            reasons.append(
                f"{new_run_id}'s decision is {verdict} where {run_id}'s was {old_verdict}: "
                + "; ".join(decision.get("reasons", [])[:2])
            )
        old_test = set(pd.read_parquet(RunLayout(run_dir).split("test"), columns=["id"])["id"].astype(str))
        new_test = set(pd.read_parquet(RunLayout(new_dir).split("test"), columns=["id"])["id"].astype(str))
        same_test = old_test == new_test
        if not same_test:
            reasons.append(
                f"the test rows differ from {run_id}'s ({len(old_test ^ new_test)} ids not shared): "
                "the comparison would not be like for like"
            )
        previous = old_decision.get("recommended") or old_decision.get("candidate")
        regression = _paired_regression(run_dir, previous, new_dir, decision.get("recommended"))
        if regression.get("worse_beyond_noise"):
            reasons.append(
                f"{regression['new']} is worse than the previous {regression['previous']} beyond noise on "
                f"{regression['rows']} shared test rows ({regression['measure']} "
                f"{regression['new_value']:.4f} vs {regression['previous_value']:.4f}, {regression['test']} "
                f"p={regression['p_value']:.3g})"
            )
        passed = not reasons
        record["gate"] = {
            "passed": passed,
            "verdict": decision.get("verdict"),
            "recommended": decision.get("recommended"),
            "previous_recommended": previous,
            "same_test_rows": same_test,
            "test_rows": len(new_test),
            "gate_settings": new_gate,
            "against_previous": regression,
            "reasons": reasons
            or [
                f"{new_run_id} is {verdict} under the same gate as {run_id}, on the same "
                f"{len(new_test)} test rows, and not worse than "
                f"{previous or 'the previous candidate'} beyond noise"
            ],
        }
        record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(new_dir / RETRAIN_FILE, record)
        return record
