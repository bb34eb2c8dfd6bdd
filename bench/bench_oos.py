"""Benchmark: out-of-scope detection on BANKING77 with held-out intents (issue 15).

The usual protocol: a quarter of the 77 intents (seeded) are held out as out of scope. Their test
rows are relabelled ``out_of_scope``; a few rows per held-out intent (default 10) go into training
labelled ``out_of_scope`` and a few others (default 5) into the validation set, where
``evaluate_candidates`` chooses each candidate's threshold on the in-scope margin (best in-scope
probability minus out_of_scope's): the highest whose validation in-scope cost against the model
forced to answer in scope stays within ``evaluate.oos_max_in_scope_drop`` at
``evaluate.oos_cost_confidence``. Answers below the threshold, or of the ``out_of_scope`` class,
count as "out of scope".
Each model's predictions are saved under ``--out/predictions/seed<seed>/<candidate>``; ``--reuse``
evaluates them again (a change to the evaluation measured on the same models, in seconds).

The reference, a model without any out-of-scope handling: the same candidate trained on the
in-scope rows only (no out_of_scope rows), evaluated by plain accuracy on the in-scope test rows.

Targets, per candidate: OOS recall >= 0.60 (with the threshold) at an in-scope accuracy within 1
point of the reference. A fine-tuned candidate's accuracy moves by about half a point with its
training seed alone, so ``--train-seeds 0,1,2,3`` trains it (and its reference) once per seed and
also reads the target on the means of the paired changes.

    .venv/bin/python bench/bench_oos.py                       # tfidf_lr and embed_lr, full BANKING77 (minutes)
    .venv/bin/python bench/bench_oos.py --candidates tfidf_lr,embed_lr,encoder_ft --max-steps 300   # slow
    .venv/bin/python bench/bench_oos.py --candidates lora_llm --threads 2 --train-seeds 0,1,2,3   # about an hour
    .venv/bin/python bench/bench_oos.py --quick               # 20 intents, 20 rows each: checks the script works

Candidates go through the same interface as the baseline and train stages
(``make_candidate(name).fit(train, validation).predict(test)``); scoring is tunewise's own
``evaluate_candidates`` (``out_of_scope`` entry of each candidate).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

BANKING77 = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "banking77"
OOS = "out_of_scope"
TARGET_RECALL = 0.60
MAX_ACCURACY_DROP = 0.01


def records(path: Path, prefix: str) -> pd.DataFrame:
    raw = pd.read_csv(path)
    return pd.DataFrame(
        {
            "id": [f"{prefix}{i}" for i in range(len(raw))],
            "input": raw["text"].astype(str),
            "context": "[]",
            "label": raw["category"].astype(str),
        }
    )


def build(train_all: pd.DataFrame, test_all: pd.DataFrame, args) -> dict[str, pd.DataFrame | list[str]]:
    """The held-out split: training, validation and test frames with and without out_of_scope rows."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(args.seed)
    intents = sorted(train_all["label"].unique())
    if args.quick:  # a small subset of intents and rows, to check the script end to end
        intents = sorted(rng.choice(intents, size=args.quick_intents, replace=False).tolist())
        train_all = (
            train_all[train_all["label"].isin(intents)]
            .groupby("label", group_keys=False)
            .sample(n=args.quick_rows, random_state=args.seed)
        )
        test_all = (
            test_all[test_all["label"].isin(intents)]
            .groupby("label", group_keys=False)
            .sample(n=args.quick_rows, random_state=args.seed)
        )
    held = sorted(rng.choice(intents, size=len(intents) // 4, replace=False).tolist())
    in_scope = train_all[~train_all["label"].isin(held)]
    train_in, val_in = train_test_split(
        in_scope, test_size=args.validation_fraction, stratify=in_scope["label"], random_state=args.seed
    )
    held_rows = (
        train_all[train_all["label"].isin(held)]
        .sample(frac=1.0, random_state=args.seed)
        .groupby("label", group_keys=False)
        .head(args.oos_per_intent + args.oos_val_per_intent)
    )
    oos_train = held_rows.groupby("label", group_keys=False).head(args.oos_per_intent)
    oos_val = held_rows.drop(oos_train.index)
    test = test_all.assign(label=np.where(test_all["label"].isin(held), OOS, test_all["label"]))
    return {
        "held": held,
        "train": pd.concat([train_in, oos_train.assign(label=OOS)]).sort_values("id").reset_index(drop=True),
        "validation": pd.concat([val_in, oos_val.assign(label=OOS)]).sort_values("id").reset_index(drop=True),
        "test": test.reset_index(drop=True),
        "train_ref": train_in.sort_values("id").reset_index(drop=True),
        "validation_ref": val_in.sort_values("id").reset_index(drop=True),
        "test_ref": test[test["label"] != OOS].reset_index(drop=True),
    }


def make(name: str, args, train_seed: int | None = None):
    from tunewise.candidates.registry import candidate_class, make_candidate
    from tunewise.config.sections import TrainConfig

    kwargs: dict = {}
    if candidate_class(name).kind == "finetuned":
        settings: dict = {"sample_size": None}
        if args.max_steps:
            settings["max_steps"] = args.max_steps
        if args.eval_max_rows:
            settings["eval_max_rows"] = args.eval_max_rows
        if args.oos_weight is not None:
            settings["out_of_scope_weight"] = args.oos_weight
        kwargs.update(train_config=TrainConfig(**settings), seed=args.seed if train_seed is None else train_seed)
    return make_candidate(name, **kwargs)


def candidate_kind(name: str) -> str:
    from tunewise.candidates.registry import candidate_class

    return candidate_class(name).kind


def seed_summary(results: dict[str, dict]) -> dict[str, dict]:
    """A fine-tuned candidate trained with several seeds on the same split: the target on the mean of
    its paired changes (each run against the reference trained with the same seed). One LoRA run's
    in-scope accuracy moves by about half a point with the seed alone, the size of the margin."""
    by_candidate: dict[str, list[dict]] = {}
    for r in results.values():
        if r.get("train_seed") is not None:
            by_candidate.setdefault(r["candidate"], []).append(r)
    summary = {}
    for name, rs in by_candidate.items():
        if len(rs) < 2:
            continue
        changes = [r["out_of_scope"]["in_scope_accuracy"] - r["reference_accuracy"] for r in rs]
        recalls = [r["out_of_scope"]["oos_recall"] for r in rs]
        mean_change, mean_recall = float(np.mean(changes)), float(np.mean(recalls))
        summary[name] = {
            "train_seeds": [r["train_seed"] for r in rs],
            "in_scope_change_points": [round(100 * c, 2) for c in changes],
            "mean_in_scope_change_points": round(100 * mean_change, 3),
            "oos_recall": [round(x, 4) for x in recalls],
            "mean_oos_recall": round(mean_recall, 4),
            "runs_passing": sum(r["recall_pass"] and r["accuracy_pass"] for r in rs),
            "mean_pass": bool(mean_recall >= TARGET_RECALL and mean_change >= -MAX_ACCURACY_DROP),
        }
    return summary


def training_record(model) -> dict | None:
    """How a fine-tuned candidate's training ended (steps, best step, why it stopped, the validation curve):
    whether early stopping, not the out-of-scope rows, cost in-scope accuracy."""
    summary = getattr(model, "train_summary_", None)
    if not summary:
        return None
    keys = ("steps_done", "epochs_done", "stop_reason", "best_step", "best", "under_trained", "validation_curve")
    return {key: summary.get(key) for key in keys} | {"planned_steps": summary["plan"]["total_steps"]}


def main() -> int:
    from tunewise.models.loading import quiet_known_warnings

    quiet_known_warnings()  # as every tunewise command does: transformers' past_key_values notice, once per batch
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--candidates",
        default="tfidf_lr,embed_lr",
        help="comma-separated; encoder_ft and lora_llm work too but take hours on 2 cores",
    )
    parser.add_argument(
        "--oos-per-intent", type=int, default=10, help="training rows per held-out intent, labelled out_of_scope"
    )
    parser.add_argument(
        "--oos-val-per-intent", type=int, default=5, help="validation rows per held-out intent (0: none)"
    )
    parser.add_argument(
        "--validation-fraction", type=float, default=0.1, help="of the in-scope training rows (stratified)"
    )
    parser.add_argument(
        "--target-precision", type=float, default=0.9, help="evaluate.target_precision for the threshold"
    )
    parser.add_argument(
        "--max-in-scope-drop",
        type=float,
        default=None,
        help="evaluate.oos_max_in_scope_drop (default: tunewise's); the threshold's in-scope cost on validation "
        "(its upper bound at evaluate.oos_cost_confidence)",
    )
    parser.add_argument("--n-resamples", type=int, default=500, help="bootstrap resamples for the intervals")
    parser.add_argument("--max-steps", type=int, default=None, help="train.max_steps for fine-tuned candidates")
    parser.add_argument(
        "--eval-max-rows", type=int, default=None, help="train.eval_max_rows: validation rows early stopping reads"
    )
    parser.add_argument(
        "--oos-weight",
        type=float,
        default=None,
        help="train.out_of_scope_weight for fine-tuned candidates (default: tunewise's, balanced)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-seed",
        type=int,
        default=None,
        help="fine-tuned candidates' training seed (default: --seed), same split",
    )
    parser.add_argument(
        "--train-seeds",
        default=None,
        help="several training seeds, comma-separated (for example 0,1,2,3): each fine-tuned candidate and its "
        "reference trained once per seed; the target is also read on the means of the paired changes",
    )
    parser.add_argument(
        "--no-neighbours",
        action="store_true",
        help="evaluate.oos_neighbours off: the candidate's own cut alone (the tenth session's rule)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="evaluate the predictions a previous run saved under --out/predictions instead of fitting again",
    )
    parser.add_argument(
        "--reference-from",
        type=Path,
        default=None,
        help="take the reference's predictions from this earlier --out (same seeds) instead of training it "
        "again: for a change that only affects training with out-of-scope rows",
    )
    parser.add_argument("--quick", action="store_true", help="a small subset, to check the script works")
    parser.add_argument("--quick-intents", type=int, default=20)
    parser.add_argument("--quick-rows", type=int, default=20, help="train and test rows per intent with --quick")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tunewise-bench-oos"))
    args = parser.parse_args()

    os.environ.setdefault("TUNEWISE_PROGRESS", "off")
    import torch

    torch.set_num_threads(args.threads)
    import tunewise.candidates.registry  # noqa: F401  registers every candidate
    from tunewise.config.sections import EvaluateConfig
    from tunewise.evaluation.evaluate import evaluate_candidates
    from tunewise.evaluation.predictions import CandidatePredictions

    data = build(records(BANKING77 / "train.csv", "train-"), records(BANKING77 / "test.csv", "test-"), args)
    train, validation, test = data["train"], data["validation"], data["test"]
    n_oos = int((test["label"] == OOS).sum())
    print(
        f"BANKING77{' (quick)' if args.quick else ''}: {len(data['held'])} of "
        f"{len(data['held']) + data['train_ref']['label'].nunique()} intents held out (seed {args.seed}); "
        f"train {len(train)} ({int((train['label'] == OOS).sum())} out_of_scope), validation {len(validation)} "
        f"({int((validation['label'] == OOS).sum())} out_of_scope), test {len(test)} ({n_oos} out_of_scope); "
        f"cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    config = EvaluateConfig(
        target_precision=args.target_precision,
        n_resamples=args.n_resamples,
        oos_neighbours=not args.no_neighbours,
        **({} if args.max_in_scope_drop is None else {"oos_max_in_scope_drop": args.max_in_scope_drop}),
    )
    # as the evaluate stage does: the out-of-scope neighbours of the training rows (the default encoder)
    oos_neighbours = None
    if config.oos_neighbours:
        from tunewise.config.sections import ModelsConfig
        from tunewise.evaluation.neighbours import OutOfScopeNeighbours

        oos_neighbours = OutOfScopeNeighbours.fit(
            train["input"].tolist(), train["label"].tolist(), OOS, ModelsConfig().encoder
        )

    results: dict[str, dict] = {}
    seeds = [int(s) for s in args.train_seeds.split(",")] if args.train_seeds else [args.train_seed]
    runs = [
        (name, train_seed)
        for name in [c for c in args.candidates.split(",") if c]
        # the classic candidates fit deterministically: one run whatever the training seeds
        for train_seed in (seeds if candidate_kind(name) == "finetuned" else [None])
    ]
    for name, train_seed in runs:
        run = name if train_seed is None else f"{name}-train-seed{train_seed}"
        started = time.perf_counter()
        training: dict[str, dict | None] = {}
        saved = args.out / "predictions" / f"seed{args.seed}" / run
        if args.reuse:
            outputs = {
                split: pd.read_parquet(saved / f"{split}.parquet") for split in ("test", "validation", "reference")
            }
        else:
            model = make(name, args, train_seed).fit(train, validation)
            outputs = {"test": model.predict(test), "validation": model.predict(validation)}
            training["with_oos"] = training_record(model)
            del model
        predicted = CandidatePredictions(name, "candidate", outputs["test"], validation=outputs["validation"])
        seconds = time.perf_counter() - started
        evaluation = evaluate_candidates(
            test,
            [predicted],
            task="classify",
            validation=validation,
            seed=args.seed,
            config=config.model_copy(update={"baseline": name}),
            proba_labels=sorted(set(train["label"])),
            oos_neighbours=oos_neighbours,
        )
        entry = evaluation.summary["candidates"][0]
        oos = entry["out_of_scope"]

        started = time.perf_counter()
        if args.reuse:
            ref_pred = outputs["reference"]
        else:
            if args.reference_from:  # a change that leaves the reference alone (no out-of-scope rows there)
                ref_pred = outputs["reference"] = pd.read_parquet(
                    args.reference_from
                    / "predictions"
                    / saved.relative_to(args.out / "predictions")
                    / "reference.parquet"
                )
            else:
                reference = make(name, args, train_seed).fit(data["train_ref"], data["validation_ref"])
                ref_pred = outputs["reference"] = reference.predict(data["test_ref"])
                training["reference"] = training_record(reference)
                del reference
            # saved, so a change to evaluation can be measured on the same models (--reuse)
            saved.mkdir(parents=True, exist_ok=True)
            for split, frame in outputs.items():
                frame.to_parquet(saved / f"{split}.parquet")
        ref_seconds = time.perf_counter() - started
        ref_accuracy = float((ref_pred["prediction"].to_numpy() == data["test_ref"]["label"].to_numpy()).mean())

        recall_ok = oos["oos_recall"] >= TARGET_RECALL
        accuracy_ok = oos["in_scope_accuracy"] >= ref_accuracy - MAX_ACCURACY_DROP
        results[run] = {
            "candidate": name,
            "train_seed": train_seed,
            "threshold": entry.get("out_of_scope_threshold"),
            "threshold_info": evaluation.thresholds[name],
            "out_of_scope": oos,
            "ci95": {k: entry["ci95"].get(k) for k in ("in_scope_accuracy", "oos_recall", "oos_precision")},
            "reference_accuracy": ref_accuracy,
            "fit_predict_seconds": round(seconds, 1),
            "reference_seconds": round(ref_seconds, 1),
            "training": training,
            "recall_pass": recall_ok,
            "accuracy_pass": accuracy_ok,
        }
        c = oos["class_only"]
        info = evaluation.thresholds[name]
        print(
            f"{run}: threshold {results[run]['threshold']} ({info.get('method')}, validation in-scope "
            f"{info.get('validation_in_scope_accuracy')} vs {info.get('validation_in_scope_accuracy_reference')} "
            f"{info.get('reference')}, cut on {info.get('score')}"
            + (
                f" and the neighbour margin at {info['neighbour_threshold']:.4f}"
                if info.get("neighbour_threshold") is not None
                else ""
            )
            + ","
            f" OOS recall {info.get('validation_oos_recall')}); with threshold: in-scope acc "
            f"{oos['in_scope_accuracy']:.4f}, OOS recall {oos['oos_recall']:.4f}, precision "
            f"{oos['oos_precision'] if oos['oos_precision'] is None else round(oos['oos_precision'], 4)}; "
            f"class only: in-scope acc {c['in_scope_accuracy']:.4f}, OOS recall {c['oos_recall']:.4f}; "
            f"reference (no OOS handling) in-scope acc {ref_accuracy:.4f}; {seconds:.0f} s + {ref_seconds:.0f} s",
            flush=True,
        )

    def fmt(x) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    print(
        f"\ncandidate | in-scope acc (threshold) | OOS recall | OOS precision | OOS F1 | reference in-scope acc "
        f"| target: recall >= {TARGET_RECALL}, acc >= reference - {MAX_ACCURACY_DROP}"
    )
    for name, r in results.items():  # name: the run (candidate and training seed)
        o = r["out_of_scope"]
        verdict = (
            "PASS"
            if r["recall_pass"] and r["accuracy_pass"]
            else "FAIL ("
            + ", ".join(x for x, ok in (("recall", r["recall_pass"]), ("accuracy", r["accuracy_pass"])) if not ok)
            + ")"
        )
        print(
            f"{name} | {fmt(o['in_scope_accuracy'])} | {fmt(o['oos_recall'])} | {fmt(o['oos_precision'])} | "
            f"{fmt(o['oos_f1'])} | {fmt(r['reference_accuracy'])} | {verdict}"
        )
        c = o["class_only"]
        print(
            f"{name} (class only, no threshold) | {fmt(c['in_scope_accuracy'])} | {fmt(c['oos_recall'])} | "
            f"{fmt(c['oos_precision'])} | {fmt(c['oos_f1'])} | |"
        )
    summary = seed_summary(results)
    for name, entry in summary.items():
        print(
            f"{name} over training seeds {entry['train_seeds']}: in-scope accuracy {entry['mean_in_scope_change_points']:+.2f}"
            f" points from the reference on average (each: {entry['in_scope_change_points']}), OOS recall "
            f"{entry['mean_oos_recall']:.3f} on average; runs passing {entry['runs_passing']} of {len(entry['train_seeds'])}; "
            f"target on the means: {'PASS' if entry['mean_pass'] else 'FAIL'}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    tag = (
        f"-train-seeds{args.train_seeds.replace(',', '-')}"
        if args.train_seeds
        else ("" if args.train_seed is None else f"-train-seed{args.train_seed}")
    )
    path = (
        args.out / f"results{'-quick' if args.quick else ''}-seed{args.seed}{tag}{'-reuse' if args.reuse else ''}.json"
    )
    path.write_text(
        json.dumps(
            {
                "held_out": data["held"],
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
                "over_training_seeds": summary,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
