"""Which rows to label next (``tunewise suggest``) and folding the labelled rows back in (``tunewise add-labels``).

suggest ranks an unlabelled pool by the current model's uncertainty, spread by embedding
diversity, cluster-margin style (Citovsky et al. 2021, "Batch Active Learning at Scale"):

1. every pool row gets its margin uncertainty, 1 - (p1 - p2) of the class probabilities: 1 when
   the two likeliest classes tie, near 0 when the model is sure;
2. rows already labelled are skipped: the same text after ``tunewise.core.text.dedup_key`` (case,
   punctuation, numbers), or a sentence embedding within cosine 0.95 of a labelled row; copies
   inside the pool keep their first occurrence;
3. the ~10 x k most uncertain rows left are clustered (KMeans on MiniLM embeddings) into k
   clusters and the most uncertain row of each cluster is taken, so the batch covers k different
   confusions instead of k copies of one.

add-labels appends the filled rows to ``data.added`` (JSON Lines, ids ``added-<n>``): blank labels
and texts the project already has are skipped and counted, a label outside the current label set is
a warning naming file:line (new classes are allowed). The next ``tunewise run`` reads that file as
extra training rows through curation and the split; the test split stays as it was: when the test
comes from the split (no ``data.test``), add-labels freezes the current test ids in
``tunewise_frozen_test_ids.json`` beside the config, and the split takes exactly those as test.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.artifacts import csv_unescape, read_json, write_csv, write_json, write_text
from tunewise.core.errors import TunewiseError
from tunewise.core.layout import RunLayout
from tunewise.core.progress import console
from tunewise.core.records import answer_column
from tunewise.core.runs import check_run_id, existing_run_lock
from tunewise.core.text import dedup_keys
from tunewise.data.ingest import IngestError, iter_raw_rows
from tunewise.models.loading import embed
from tunewise.pipeline.stages.ingest import read_split_file

__all__ = [
    "LabellingError",
    "Selection",
    "add_labels",
    "margin_uncertainty",
    "rank_for_labelling",
    "read_pool",
    "suggest",
]

POOL_FACTOR = 10  # rows shortlisted per row asked for, before clustering
NEAR_DUPLICATE_COSINE = 0.95
SUGGEST_COLUMNS = ("id", "text", "suggested_label", "confidence", "uncertainty", "cluster", "label")
_INPUT_NAMES = ("text", "sentence", "query", "utterance", "message", "input", "prompt", "question")
_LABEL_NAMES = ("label", "intent", "category", "class")
_TARGET_NAMES = ("reply", "response", "answer", "output", "completion", "target")


class LabellingError(TunewiseError, ValueError):
    """suggest or add-labels cannot run as asked; the message says what to change."""


# =============================================================================================
# Ranking


def margin_uncertainty(proba: np.ndarray) -> np.ndarray:
    """1 - (p1 - p2) per row: p1, p2 the two largest class probabilities (one class: 0)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] == 0:
        raise ValueError(f"proba must be a (rows, classes) matrix, got shape {proba.shape}")
    if proba.shape[1] == 1:
        return np.zeros(len(proba))
    top2 = -np.partition(-proba, 1, axis=1)[:, :2]
    return 1.0 - (top2[:, 0] - top2[:, 1])


@dataclass
class Selection:
    """Rows picked from a pool (positions into it, most uncertain first) and what was skipped."""

    indices: np.ndarray
    clusters: np.ndarray  # cluster of each picked row
    shortlisted: int  # rows clustered
    skipped_labelled_exact: int = 0
    skipped_labelled_near: int = 0
    skipped_pool_copies: int = 0
    notes: list[str] = field(default_factory=list)


def _max_cosine(vectors: np.ndarray, reference: np.ndarray, block: int = 4096) -> np.ndarray:
    """Largest cosine of each row of ``vectors`` to any row of ``reference`` (both unit length)."""
    if len(reference) == 0 or len(vectors) == 0:
        return np.full(len(vectors), -1.0)
    out = np.empty(len(vectors))
    for start in range(0, len(vectors), block):
        out[start : start + block] = (vectors[start : start + block] @ reference.T).max(axis=1)
    return out


def rank_for_labelling(
    pool_texts: Sequence[str],
    uncertainty: np.ndarray,
    labelled_texts: Sequence[str],
    k: int,
    *,
    embed_fn: Callable[[list[str]], np.ndarray],
    labelled_vectors: np.ndarray | None = None,
    pool_factor: int = POOL_FACTOR,
    near_duplicate: float = NEAR_DUPLICATE_COSINE,
    seed: int = 0,
) -> Selection:
    """Pick ``k`` pool rows to label: uncertain, unlike each other, and not already labelled.

    ``embed_fn(texts)`` returns unit-length embeddings; ``labelled_vectors`` (the embeddings of
    ``labelled_texts``) saves embedding them again when the caller has them.
    """
    from sklearn.cluster import KMeans

    if k < 1:
        raise LabellingError(f"k must be at least 1, got {k}")
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    if len(uncertainty) != len(pool_texts):
        raise ValueError(f"{len(uncertainty)} uncertainties for {len(pool_texts)} pool rows")
    pool_texts = [str(t) for t in pool_texts]
    pool_keys = dedup_keys(pool_texts) if pool_texts else []
    labelled_keys = set(dedup_keys([str(t) for t in labelled_texts])) if len(labelled_texts) else set()
    seen: set[str] = set()
    eligible = np.zeros(len(pool_texts), dtype=bool)
    exact = copies = 0
    for i, key in enumerate(pool_keys):
        if key in labelled_keys:
            exact += 1
        elif key in seen:
            copies += 1
        else:
            seen.add(key)
            eligible[i] = True
    if labelled_vectors is None:
        labelled_vectors = embed_fn([str(t) for t in labelled_texts]) if len(labelled_texts) else np.zeros((0, 1))

    # most uncertain first; ties keep pool order so the same pool gives the same batch
    order = [i for i in np.argsort(-uncertainty, kind="stable") if eligible[i]]
    wanted = pool_factor * k
    shortlist: list[int] = []
    vectors: list[np.ndarray] = []
    near = 0
    position = 0
    while len(shortlist) < wanted and position < len(order):
        block = order[position : position + max(wanted - len(shortlist), k)]
        position += len(block)
        block_vectors = np.asarray(embed_fn([pool_texts[i] for i in block]), dtype=np.float32)
        similar = _max_cosine(block_vectors, labelled_vectors) >= near_duplicate
        near += int(similar.sum())
        shortlist.extend(np.asarray(block)[~similar].tolist())
        vectors.append(block_vectors[~similar])
    notes = []
    if not shortlist:
        return Selection(
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            0,
            exact,
            near,
            copies,
            ["no pool row is left to suggest: every one is already labelled"],
        )
    shortlist_arr = np.asarray(shortlist, dtype=np.int64)
    matrix = np.concatenate(vectors)
    n_clusters = min(k, len(shortlist_arr))
    if n_clusters < k:
        notes.append(f"only {len(shortlist_arr)} pool rows are left after skipping labelled ones: all are suggested")
    if n_clusters == len(shortlist_arr):
        clusters = np.arange(n_clusters)
    else:
        import warnings

        with warnings.catch_warnings():  # identical embeddings give fewer distinct clusters: filled below
            warnings.simplefilter("ignore")
            clusters = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit_predict(matrix)
    scores = uncertainty[shortlist_arr]
    picked: list[int] = []  # positions in the shortlist
    for c in np.unique(clusters):
        members = np.flatnonzero(clusters == c)
        picked.append(int(members[np.argmax(scores[members])]))  # argmax: the first (earliest) on ties
    if len(picked) < n_clusters:  # fewer non-empty clusters than asked: top up with the most uncertain left
        chosen = set(picked)
        picked += [p for p in range(len(shortlist_arr)) if p not in chosen][: n_clusters - len(picked)]
    picked.sort(key=lambda p: (-scores[p], p))
    return Selection(
        shortlist_arr[picked],
        np.asarray(clusters)[picked].astype(np.int64),
        len(shortlist_arr),
        exact,
        near,
        copies,
        notes,
    )


# =============================================================================================
# Reading files


def _find_column(columns: Sequence[str], configured: str | None, names: Sequence[str]) -> str | None:
    by_lower = {c.lower(): c for c in reversed(list(columns))}
    for name in ([configured] if configured else []) + list(names):
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    return None


def _raw_rows(path: Path, encoding: str = "utf-8") -> tuple[list[Any], list[str]]:
    """(every raw row of the file, the columns seen), with tunewise.data.ingest's reader."""

    if not path.exists():
        raise LabellingError(f"{path}: file not found")
    if not path.is_file():
        raise LabellingError(f"{path}: not a file")
    try:
        rows = list(iter_raw_rows(path, "auto", encoding))
    except IngestError as exc:
        raise LabellingError(str(exc)) from None
    columns: dict[str, None] = {}
    for raw in rows:
        if raw.fields is not None:
            columns.update(dict.fromkeys(raw.fields))
    return rows, list(columns)


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def read_pool(cfg: Any, path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """An unlabelled file as records (id, input, context, source_line) and what could not be read; a
    label column is named in ``info["ignored_label_column"]`` and not read (the rows are unlabelled)."""
    path = Path(path)
    rows, columns = _raw_rows(path, cfg.data.encoding)
    text_column = _find_column(columns, cfg.data.columns.input, _INPUT_NAMES)
    if text_column is None:
        raise LabellingError(
            f"{path}: no text column (looked for {cfg.data.columns.input or 'text'}, "
            f"{', '.join(_INPUT_NAMES[1:])}); columns found: {', '.join(columns) or '(none)'}"
        )
    id_column = _find_column(columns, cfg.data.columns.id, ("id",))
    records, unreadable, empty = [], [], 0
    for raw in rows:
        if raw.fields is None:
            unreadable.append(f"{path}:{raw.line}: {raw.error}")
            continue
        text = _text(raw.fields.get(text_column))
        if not text.strip():
            empty += 1
            continue
        row_id = _text(raw.fields.get(id_column)) if id_column else ""
        records.append({"id": row_id or f"pool-{raw.line}", "input": text, "context": "[]", "source_line": raw.line})
    if not records:
        raise LabellingError(
            f"{path}: the pool is empty: no row with text in column {text_column!r} ({len(rows)} rows read, "
            f"{empty} with empty text, {len(unreadable)} unreadable)"
        )
    label_column = _find_column([c for c in columns if c != text_column], cfg.data.columns.label, _LABEL_NAMES)
    return pd.DataFrame(records), {
        "file": str(path),
        "rows_read": len(rows),
        "unreadable": unreadable,
        "empty": empty,
        "text_column": text_column,
        "ignored_label_column": label_column,
    }


def _run_dir(cfg: Any, run_id: str) -> Path:
    return cfg.resolve(cfg.runs_dir) / run_id


def _labelled_texts(cfg: Any, run_dir: Path) -> list[str]:
    """Every text the project has a label for: the run's records and splits, and the added rows."""
    texts: list[str] = []
    layout = RunLayout(run_dir)
    ingested = [layout.stage("ingest") / "records.parquet", layout.stage("ingest") / "test_records.parquet"]
    for path in [*ingested, *layout.splits().values()]:
        if path.exists():
            texts += pd.read_parquet(path, columns=["input"])["input"].astype(str).tolist()
    added = cfg.resolve(cfg.data.added)
    if added.exists():
        rows, _ = _raw_rows(added)
        texts += [_text(r.fields.get("text")) for r in rows if r.fields is not None]
    return list(dict.fromkeys(t for t in texts if t.strip()))


# =============================================================================================
# suggest


def _model(cfg: Any, run_dir: Path, name: str | None) -> tuple[Any, str, str]:
    """(fitted candidate, its name, how it was obtained)."""
    from tunewise.candidates.factory import load_run_candidate, run_candidate  # on use: loads scipy, sklearn
    from tunewise.candidates.finetuned import FineTunedCandidate  # on use: loads scipy, sklearn
    from tunewise.candidates.registry import CANDIDATES, candidate_class  # on use: loads scipy, sklearn

    if name is None:
        summary = RunLayout(run_dir).summary("evaluate")
        evaluation = read_json(summary) if summary.exists() else {}
        name = (evaluation.get("gate") or {}).get("candidate")
        if not name:
            raise LabellingError(
                f"no evaluation in {run_dir} names a candidate: pass --candidate (e.g. embed_lr) "
                "or run `tunewise evaluate` first"
            )
        if name not in CANDIDATES or CANDIDATES[name].combines:  # the ensemble: the best single model instead
            name = _best_single_candidate(evaluation, name)
    cls = candidate_class(name)
    if cls.task != "classify":
        raise LabellingError(f"{name!r} is a {cls.task} candidate; suggest needs a classifier's probabilities")
    if issubclass(cls, FineTunedCandidate):
        return run_candidate(name, cfg, run_dir), name, f"loaded from {run_dir / 'train' / name}"
    frames = {}
    for split in ("train", "validation"):
        path = RunLayout(run_dir).split(split)
        if not path.exists():
            raise LabellingError(
                f"{path} not found: run `tunewise split` first (the model is refit on its train split)"
            )
        frames[split] = pd.read_parquet(path)
    loaded = load_run_candidate(name, cfg, run_dir, frames["train"])
    if loaded is not None:
        return loaded, name, f"loaded from {RunLayout(run_dir).fitted(name)}"
    model = run_candidate(name, cfg, run_dir, frames["train"], frames["validation"])
    if cls.combines:  # asked for by name: made of the run's members
        return model, name, f"made of {', '.join(m.name for m in model.members_)} from {run_dir}"
    return model, name, f"refit on {len(frames['train']):,} training rows"


def _best_single_candidate(evaluation: dict, gate_candidate: str) -> str:
    """The real classify candidate with the best primary metric in the evaluation (``gate_candidate``
    is a combination, such as the ensemble, that cannot be refit on its own)."""
    from tunewise.candidates.registry import CANDIDATES  # on use: loads scipy, sklearn

    metric = evaluation.get("primary_metric") or "accuracy"
    sign = 1 if metric in (evaluation.get("lower_is_better") or []) else -1
    scored = [
        (sign * c["metrics"][metric], c["name"])
        for c in evaluation.get("candidates", [])
        if c.get("name") in CANDIDATES
        and CANDIDATES[c["name"]].task == "classify"
        and not CANDIDATES[c["name"]].combines
        and isinstance((c.get("metrics") or {}).get(metric), (int, float))
    ]
    if not scored:
        raise LabellingError(
            f"the gate's candidate {gate_candidate!r} is not a model suggest can use and the "
            "evaluation has no other classifier: pass --candidate (e.g. embed_lr)"
        )
    return min(scored)[1]


def suggest(
    cfg: Any,
    pool: str | Path,
    k: int,
    *,
    run_id: str = "default",
    candidate: str | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Rank ``pool`` and write the ``k`` rows to label next as a CSV for annotators; returns a summary.
    Holds the run folder's lock: it reads the run's model and writes ``runs/<id>/suggest/``."""

    with existing_run_lock(_run_dir(cfg, check_run_id(run_id))):
        return _suggest(cfg, pool, k, run_id=run_id, candidate=candidate, out=out)


def _suggest(
    cfg: Any, pool: str | Path, k: int, *, run_id: str, candidate: str | None, out: str | Path | None
) -> dict[str, Any]:

    if cfg.task != "classify":
        raise LabellingError(
            "suggest ranks rows by the model's class probabilities: it works for classify projects; "
            "this project's task is generate"
        )
    if k < 1:
        raise LabellingError(f"--k must be at least 1, got {k}")
    run_dir = _run_dir(cfg, run_id)
    frame, read = read_pool(cfg, pool)
    model, name, how = _model(cfg, run_dir, candidate)
    console.print(f"suggest: {name} ({how}) scores {len(frame):,} pool rows")
    predictions = model.predict(frame)
    proba = np.vstack(predictions["proba"].to_numpy())
    uncertainty = margin_uncertainty(proba)
    labelled = _labelled_texts(cfg, run_dir)

    def embed_fn(texts: list[str]) -> np.ndarray:
        return embed(texts, cfg.models.encoder)

    selection = rank_for_labelling(frame["input"].tolist(), uncertainty, labelled, k, embed_fn=embed_fn, seed=cfg.seed)
    idx = selection.indices
    table = pd.DataFrame(
        {
            "id": frame["id"].to_numpy()[idx],
            "text": frame["input"].to_numpy()[idx],
            "suggested_label": predictions["prediction"].to_numpy()[idx],
            "confidence": np.round(predictions["score"].to_numpy(dtype=float)[idx], 4),
            "uncertainty": np.round(uncertainty[idx], 4),
            "cluster": selection.clusters,
            "label": "",
        },
        columns=list(SUGGEST_COLUMNS),
    )
    out_path = Path(out) if out is not None else run_dir / "suggest" / "to_label.csv"
    write_csv(out_path, table)
    return {
        "candidate": name,
        "model": how,
        "pool": str(pool),
        "out": str(out_path),
        "k": k,
        "suggested": len(table),
        "pool_rows": read["rows_read"],
        "pool_unreadable": read["unreadable"],
        "pool_empty": read["empty"],
        "skipped_labelled_exact": selection.skipped_labelled_exact,
        "skipped_labelled_near": selection.skipped_labelled_near,
        "skipped_pool_copies": selection.skipped_pool_copies,
        "shortlisted": selection.shortlisted,
        "pool_mean_uncertainty": float(uncertainty.mean()),
        "suggested_mean_uncertainty": float(table["uncertainty"].mean()) if len(table) else None,
        "labelled_rows_compared": len(labelled),
        "notes": selection.notes,
        "rows": table.to_dict("records"),
    }


# =============================================================================================
# add-labels


_ADDED_ID = re.compile(r"^added-(\d+)$")


def _existing_records(cfg: Any) -> pd.DataFrame:
    """The project's labelled rows as ingested from its own files (training, test)."""

    frames = [read_split_file(cfg, cfg.resolve(cfg.data.train)).frame]
    if cfg.data.test:
        frames.append(read_split_file(cfg, cfg.resolve(cfg.data.test)).frame)
    return pd.concat(frames, ignore_index=True)


def _freeze_test(cfg: Any, run_dir: Path) -> dict[str, Any]:
    """Write the frozen test ids the first time; the split stage reads them from then on."""
    from tunewise.data.split import FROZEN_TEST_FILE  # on use: loads scipy, sklearn

    if cfg.data.test:
        return {"frozen": False, "reason": f"data.test ({cfg.data.test}) is the test set already"}
    path = cfg.resolve(FROZEN_TEST_FILE)
    if path.exists():
        return {"frozen": True, "path": str(path), "new": False, "ids": len(read_json(path)["ids"])}
    test_path = RunLayout(run_dir).split("test")
    if not test_path.exists():
        raise LabellingError(
            f"{test_path} not found: run `tunewise split` first, so the test split can be frozen before rows are added"
        )
    ids = pd.read_parquet(test_path, columns=["id"])["id"].astype(str).tolist()
    write_json(
        path,
        {
            "run_id": run_dir.name,
            "source": str(test_path),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "note": "the split stage takes exactly these ids as test while data.test is not set",
            "ids": ids,
        },
    )
    return {"frozen": True, "path": str(path), "new": True, "ids": len(ids)}


def add_labels(cfg: Any, file: str | Path, *, run_id: str = "default") -> dict[str, Any]:
    """Append the labelled rows of ``file`` to ``data.added``; returns what was added, skipped and warned.
    Holds the run folder's lock: the test ids it freezes must come from a split nobody is rewriting."""

    with existing_run_lock(_run_dir(cfg, check_run_id(run_id))):
        return _add_labels(cfg, file, run_id=run_id)


def _add_labels(cfg: Any, file: str | Path, *, run_id: str) -> dict[str, Any]:

    file = Path(file)
    answer = answer_column(cfg.task)
    rows, columns = _raw_rows(file)
    # suggest's sheet is written with formula-like cells quoted (artifacts.csv_safe): take the quote off
    unescape = csv_unescape if file.suffix.lower() in (".csv", ".tsv") else (lambda value: value)
    text_column = _find_column(columns, cfg.data.columns.input, _INPUT_NAMES)
    answer_column_name = (
        _find_column(columns, cfg.data.columns.label, _LABEL_NAMES)
        if answer == "label"
        else _find_column(columns, cfg.data.columns.target, _TARGET_NAMES)
    )
    if text_column is None or answer_column_name is None:
        wanted = "text and label" if answer == "label" else "text and reply"
        raise LabellingError(f"{file} needs {wanted} columns; columns found: {', '.join(columns) or '(none)'}")

    added_path = cfg.resolve(cfg.data.added)
    existing = _existing_records(cfg)
    known_labels = set(existing[answer].astype(str)) if answer == "label" else set()
    known_texts = existing["input"].astype(str).tolist()
    previous_lines: list[str] = []
    next_number = 1
    if added_path.exists():
        previous_lines = [line for line in added_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for raw in _raw_rows(added_path)[0]:
            if raw.fields is None:
                continue
            known_texts.append(_text(raw.fields.get("text")))
            if answer == "label":
                known_labels.add(_text(raw.fields.get("label")))
            match = _ADDED_ID.match(_text(raw.fields.get("id")))
            if match:
                next_number = max(next_number, int(match.group(1)) + 1)
    seen = set(dedup_keys(known_texts)) if known_texts else set()

    counts = Counter()
    warnings: list[str] = []
    new_labels: Counter[str] = Counter()
    candidates = []  # (line, text, answer) rows that passed the blank and unreadable checks
    for raw in rows:
        where = f"{file}:{raw.line}"
        if raw.fields is None:
            counts["unreadable"] += 1
            warnings.append(f"{where}: skipped, {raw.error}")
            continue
        text = unescape(_text(raw.fields.get(text_column)))
        value = unescape(_text(raw.fields.get(answer_column_name))).strip()
        if not value:
            counts["blank_label"] += 1
            continue
        if not text.strip():
            counts["empty_text"] += 1
            warnings.append(f"{where}: skipped, empty text in column {text_column!r}")
            continue
        if len(text) + len(value) > cfg.data.max_chars:
            counts["too_long"] += 1
            warnings.append(f"{where}: skipped, over data.max_chars={cfg.data.max_chars}")
            continue
        candidates.append((raw.line, text, value))
    keys = dedup_keys([text for _, text, _ in candidates]) if candidates else []
    new_rows = []
    for (line, text, value), key in zip(candidates, keys):
        if key in seen:  # already in the training data, the added file, or earlier in this file
            counts["already_labelled"] += 1
            continue
        seen.add(key)
        if answer == "label" and value not in known_labels:
            if not new_labels[value]:
                warnings.append(
                    f"{file}:{line}: label {value!r} is not one of the {len(known_labels)} current labels: "
                    "added as a new class"
                )
            new_labels[value] += 1
        new_rows.append(
            {
                "id": f"added-{next_number + len(new_rows)}",
                "text": text,
                ("label" if answer == "label" else "reply"): value,
            }
        )

    freeze = _freeze_test(cfg, _run_dir(cfg, run_id))
    if new_rows:
        lines = previous_lines + [json.dumps(r, ensure_ascii=False) for r in new_rows]
        write_text(added_path, "\n".join(lines) + "\n")  # atomic: the whole file or the old one
    return {
        "file": str(file),
        "rows_read": len(rows),
        "added": len(new_rows),
        "added_file": str(added_path),
        "added_total": len(previous_lines) + len(new_rows),
        "skipped_blank_label": counts["blank_label"],
        "skipped_already_labelled": counts["already_labelled"],
        "skipped_empty_text": counts["empty_text"],
        "skipped_unreadable": counts["unreadable"],
        "skipped_too_long": counts["too_long"],
        "new_labels": dict(new_labels),
        "warnings": warnings,
        "test": freeze,
        "ids": [r["id"] for r in new_rows],
    }
