"""The candidate contract and registry: every model tunewise compares, behind one predict contract.

The implementations register themselves here; tunewise.candidates.registry imports them all, so code that
needs the complete registry imports tunewise.candidates.registry, and an implementation imports this module.

The contract, shared by the cheap classic models (``tunewise.candidates.registry``), the LLM prompting
baselines in ``tunewise.candidates.prompting``, the fine-tuned models of the train stage and the
``ensemble`` (``tunewise.candidates.ensemble``):

- the constructor only stores its keyword arguments (so ``get_params``, ``clone`` and ``repr``
  from scikit-learn's ``BaseEstimator`` work, and a config maps one-to-one onto a candidate);
- ``fit(train, validation=None)`` learns from record frames (``tunewise.core.records``) and returns
  ``self``; everything it learns lives in attributes whose names end in ``_``;
- ``predict(frame)`` returns :data:`Predictions` for every row of ``frame``, in order, and raises
  :class:`NotFittedError` when ``fit`` has not run;
- a candidate with ``saves_fitted`` (the cheap classic models) implements ``fitted_state`` and
  ``restore_fitted``: :func:`save_fitted` writes what it learned as JSON and safetensors (never a
  pickle), and :func:`load_fitted` reads it back into a candidate built with the same settings, so
  later stages and serving load the baseline stage's fitted model instead of refitting it;
- class attributes: ``name`` (the registry key), ``kind`` (``baseline`` for LLM prompting,
  ``cheap`` for classic models, ``finetuned`` for trained ones), ``task`` (``classify`` or
  ``generate``), ``expensive`` (True when scoring costs LLM forward passes, so the baseline
  stage scores a sample of the test set) and ``combines`` (True for a candidate made of other
  candidates, the ``ensemble`` of ``tunewise.candidates.ensemble``: no stage trains it on its own; the
  evaluate stage combines its members' stored predictions, and a run's fitted one is built from
  its fitted members with ``from_members``; a fitted one holds them in ``members_``).

Predictions is a DataFrame with the columns of :data:`PREDICTION_COLUMNS`:

- ``id`` (str): the record id, same order as the input frame;
- ``prediction`` (str): a label of ``labels_`` (classify) or the generated reply (generate);
- ``score`` (float): the probability of the prediction (classify), NaN for generate;
- ``proba`` (list[float]): one probability per label in ``labels_`` order (classify), None for
  generate;
- ``latency_ms`` (float): per-example wall time; batched candidates share a batch's time equally.

One conformance test (tests/test_candidates.py) holds every registered candidate to this.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from tunewise.core.artifacts import atomic_path, json_safe, read_json, write_json
from tunewise.core.errors import TunewiseError
from tunewise.core.records import answer_column, rows_fingerprint

__all__ = [
    "CANDIDATES",
    "KINDS",
    "PREDICTION_COLUMNS",
    "TASKS",
    "Candidate",
    "CandidateError",
    "NotFittedError",
    "candidate_class",
    "candidate_kwargs",
    "check_predictions",
    "classification_predictions",
    "best_in_scope",
    "generation_predictions",
    "in_scope_margin",
    "input_texts",
    "load_fitted",
    "make_candidate",
    "register_candidate",
    "save_fitted",
]

KINDS = ("baseline", "cheap", "finetuned")
TASKS = ("classify", "generate")
PREDICTION_COLUMNS = ("id", "prediction", "score", "proba", "latency_ms")


class CandidateError(TunewiseError, ValueError):
    """A candidate cannot be built or fitted as asked; the message says what to change."""

    hint = "check the candidate's name and settings in the config (baseline.candidates, train.candidates)"


# ---------------------------------------------------------------------------------------------
# The contract


class Candidate(BaseEstimator):
    """Base of every candidate: the class attributes and the fitted check; no behaviour beyond."""

    name: ClassVar[str]
    kind: ClassVar[str]
    task: ClassVar[str]
    expensive: ClassVar[bool] = False
    combines: ClassVar[bool] = False
    saves_fitted: ClassVar[bool] = False  # fitted_state / restore_fitted implemented

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> Candidate:
        raise NotImplementedError

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What the fitted candidate needs to predict: JSON values and named arrays."""
        raise NotImplementedError(f"{self.name} does not save its fitted state")

    def restore_fitted(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Become the fitted candidate whose :meth:`fitted_state` gave ``values`` and ``arrays``."""
        raise NotImplementedError(f"{self.name} does not load a fitted state")

    def _check_fitted(self) -> None:
        # scikit-learn's check: fitted means some attribute ending in "_" has been set.
        check_is_fitted(self, msg=f"candidate {self.name!r} is not fitted yet: call fit(train) before predict()")

    def _training_answers(self, train: pd.DataFrame) -> list[str]:
        """The label (classify) or target (generate) column of ``train``, as strings."""
        column = answer_column(self.task)
        if column not in train.columns:
            raise CandidateError(
                f"{self.name}: the training frame has no {column!r} column (task {self.task} needs it); "
                f"columns: {', '.join(map(str, train.columns))}"
            )
        if len(train) == 0:
            raise CandidateError(f"{self.name}: the training frame is empty")
        answers = train[column]
        missing = answers.isna()
        if missing.any():
            first = train.loc[missing, "id"].iloc[0] if "id" in train.columns else missing.idxmax()
            raise CandidateError(f"{self.name}: {int(missing.sum())} training rows have no {column} (first id {first})")
        return answers.astype(str).tolist()


def input_texts(frame: pd.DataFrame) -> list[str]:
    """The ``input`` column as strings (empty string for missing values)."""
    if "input" not in frame.columns:
        raise CandidateError(f"record frame has no 'input' column; columns: {', '.join(map(str, frame.columns))}")
    return frame["input"].fillna("").astype(str).tolist()


def _ids(frame: pd.DataFrame) -> list[str]:
    if "id" not in frame.columns:
        raise CandidateError(f"record frame has no 'id' column; columns: {', '.join(map(str, frame.columns))}")
    return frame["id"].astype(str).tolist()


def classification_predictions(
    frame: pd.DataFrame, labels: Sequence[str], proba: np.ndarray, latency_ms: np.ndarray | float
) -> pd.DataFrame:
    """Predictions from a probability matrix (rows: examples, columns: ``labels`` in order)."""
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(frame), len(labels)):
        raise ValueError(f"proba has shape {proba.shape}, expected {(len(frame), len(labels))}")
    best = proba.argmax(axis=1) if len(frame) else np.zeros(0, dtype=int)
    labels_array = np.asarray(list(labels), dtype=object)
    return pd.DataFrame(
        {
            "id": _ids(frame),
            "prediction": labels_array[best].tolist() if len(frame) else [],
            "score": proba[np.arange(len(frame)), best] if len(frame) else np.zeros(0),
            "proba": [row.tolist() for row in proba],
            "latency_ms": np.broadcast_to(np.asarray(latency_ms, dtype=np.float64), (len(frame),)).copy(),
        }
    )


def best_in_scope(
    proba: np.ndarray, labels: Sequence[str], out_of_scope_label: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row, the best in-scope label (a column of ``proba``, whose columns are ``labels``) and
    its in-scope margin: its probability minus the out-of-scope label's. None when
    ``out_of_scope_label`` is not one of ``labels`` or no other label is.

    Below 0 the model answers out of scope; a small margin is a doubtful in-scope answer. The
    out-of-scope threshold cuts on this rather than on the top probability: on BANKING77 with
    held-out intents it catches more out-of-scope rows at the same in-scope cost for every
    candidate (docs/benchmarks.md, tenth session), because a row split between two close intents
    is confidently in scope while a row near the out-of-scope class is not. Without that class
    (probability 0) it is the top probability itself.
    """
    labels = list(labels)
    if out_of_scope_label not in labels or len(labels) < 2:
        return None
    proba = np.asarray(proba, dtype=np.float64)
    oos = labels.index(out_of_scope_label)
    masked = proba.copy()
    masked[:, oos] = -np.inf
    best = masked.argmax(axis=1)
    return best, proba[np.arange(len(proba)), best] - proba[:, oos]


def in_scope_margin(proba: np.ndarray, labels: Sequence[str], out_of_scope_label: str) -> np.ndarray | None:
    """The in-scope margin of :func:`best_in_scope` alone."""
    found = best_in_scope(proba, labels, out_of_scope_label)
    return None if found is None else found[1]


def generation_predictions(frame: pd.DataFrame, replies: Sequence[str], latency_ms: np.ndarray | float) -> pd.DataFrame:
    """Predictions for generated replies: no score, no proba."""
    if len(replies) != len(frame):
        raise ValueError(f"{len(replies)} replies for {len(frame)} rows")
    return pd.DataFrame(
        {
            "id": _ids(frame),
            "prediction": [str(r) for r in replies],
            "score": np.full(len(frame), np.nan),
            "proba": [None] * len(frame),
            "latency_ms": np.broadcast_to(np.asarray(latency_ms, dtype=np.float64), (len(frame),)).copy(),
        }
    )


def check_predictions(predictions: pd.DataFrame, frame: pd.DataFrame, candidate: Candidate) -> None:
    """Raise ValueError naming the candidate and the first offending row when the contract is broken.

    The baseline stage runs this on every candidate's output, so a third-party or fine-tuned
    candidate that drifts from the contract fails where it happens, not in a later stage.
    """
    who = f"candidate {candidate.name!r}"
    if not isinstance(predictions, pd.DataFrame):
        raise TypeError(f"{who}: predict() returned {type(predictions).__name__}, expected a DataFrame")
    if list(predictions.columns) != list(PREDICTION_COLUMNS):
        raise ValueError(f"{who}: prediction columns {list(predictions.columns)}, expected {list(PREDICTION_COLUMNS)}")
    expected_ids = _ids(frame)
    got_ids = predictions["id"].astype(str).tolist()
    if got_ids != expected_ids:
        where = next(
            (i for i, (a, b) in enumerate(zip(got_ids, expected_ids)) if a != b), min(len(got_ids), len(expected_ids))
        )
        raise ValueError(
            f"{who}: prediction ids differ from the input ids at row {where} "
            f"({len(got_ids)} predictions for {len(expected_ids)} rows)"
        )
    bad_text = [i for i, p in zip(got_ids, predictions["prediction"]) if not isinstance(p, str)]
    if bad_text:
        raise ValueError(f"{who}: prediction of id {bad_text[0]} is not a string")
    latency = pd.to_numeric(predictions["latency_ms"], errors="coerce")
    if latency.isna().any() or (latency < 0).any():
        raise ValueError(f"{who}: latency_ms must be a non-negative number for every row")
    if candidate.task == "classify":
        labels = list(candidate.labels_)
        known = set(labels)
        for row in predictions.itertuples(index=False):
            if row.prediction not in known:
                if getattr(candidate, "may_answer_outside_labels", False) and row.score == 0:
                    continue  # a failed request or an answer that is no label (tunewise.candidates.api): kept, counted wrong
                raise ValueError(
                    f"{who}: id {row.id} predicted {row.prediction!r}, not one of its {len(labels)} labels"
                )
            proba = np.asarray(row.proba, dtype=np.float64)
            if proba.shape != (len(labels),) or not np.isfinite(proba).all() or abs(proba.sum() - 1.0) > 1e-4:
                raise ValueError(f"{who}: id {row.id}: proba must be {len(labels)} probabilities summing to 1")
            if not abs(row.score - proba[labels.index(row.prediction)]) <= 1e-6:
                raise ValueError(f"{who}: id {row.id}: score {row.score} is not the probability of the prediction")
    elif not predictions["score"].isna().all():
        raise ValueError(f"{who}: score must be NaN for generate candidates")


# ---------------------------------------------------------------------------------------------
# Registry


CANDIDATES: dict[str, type[Candidate]] = {}


def register_candidate(cls: type[Candidate]) -> type[Candidate]:
    """Class decorator: add a candidate to :data:`CANDIDATES` under ``cls.name``."""
    for attribute, allowed in (("kind", KINDS), ("task", TASKS)):
        value = getattr(cls, attribute, None)
        if value not in allowed:
            raise TypeError(f"{cls.__name__}.{attribute} is {value!r}; expected one of {allowed}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' (its registry key)")
    if name in CANDIDATES and CANDIDATES[name] is not cls:
        raise TypeError(f"candidate name {name!r} is taken by {CANDIDATES[name].__name__}")
    CANDIDATES[name] = cls
    return cls


def candidate_class(name: str) -> type[Candidate]:
    """The registered class for ``name``; a typo is answered with the closest known name."""
    if name not in CANDIDATES:
        close = difflib.get_close_matches(name, list(CANDIDATES), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CandidateError(f"unknown candidate {name!r}: {hint}known candidates: {', '.join(sorted(CANDIDATES))}")
    return CANDIDATES[name]


def make_candidate(name: str, **kwargs: Any) -> Candidate:
    """Build a registered candidate by name; a typo is answered with the closest known name."""
    cls = candidate_class(name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        params = ", ".join(p for p in inspect.signature(cls.__init__).parameters if p != "self")
        raise CandidateError(f"{name}: {exc}; its parameters are: {params or '(none)'}") from None


def candidate_kwargs(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``settings`` that candidate ``name``'s constructor takes.

    The baseline config holds one pool of settings (LLM spec, few_shot_k, ...) shared by all
    candidates; each candidate receives only the ones it declares, so none is swallowed by **kwargs.
    """
    params = inspect.signature(candidate_class(name).__init__).parameters
    return {k: v for k, v in settings.items() if k in params}


# ---------------------------------------------------------------------------------------------
# Fitted state on disk: JSON and safetensors, no pickle

FITTED_VALUES = "fitted.json"  # written last: its presence means the pair is complete
FITTED_ARRAYS = "fitted.safetensors"
FITTED_FORMAT = 1


def save_fitted(candidate: Candidate, folder: str | Path, train: pd.DataFrame) -> Path:
    """Write a fitted ``saves_fitted`` candidate to ``folder`` (private: a vocabulary is user text).

    Beside what it learned go its settings and a fingerprint of ``train``, the rows it was fitted
    on: :func:`load_fitted` refuses a folder whose settings or rows differ from the caller's.
    """
    from safetensors.numpy import save_file  # numpy only: no torch

    values, arrays = candidate.fitted_state()
    folder = Path(folder)
    with atomic_path(folder / FITTED_ARRAYS, private=True) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    write_json(
        folder / FITTED_VALUES,
        {
            "format": FITTED_FORMAT,
            "candidate": candidate.name,
            "params": json_safe(candidate.get_params()),
            "fitted_on": {"rows": len(train), "fingerprint": rows_fingerprint(train, candidate.task)},
            "values": values,
        },
        private=True,
    )
    return folder


def load_fitted(candidate: Candidate, folder: str | Path, train: pd.DataFrame) -> str | None:
    """Restore ``candidate`` (unfitted, built with the settings wanted) from ``folder`` when it holds
    the same candidate, fitted with the same settings on the same rows as ``train``; returns None
    when it did, else why not (missing, another candidate, other settings, other rows)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / FITTED_VALUES).exists() or not (folder / FITTED_ARRAYS).exists():
        return f"{folder} holds no fitted model"
    saved = read_json(folder / FITTED_VALUES)
    if saved.get("format") != FITTED_FORMAT or saved.get("candidate") != candidate.name:
        return f"{folder / FITTED_VALUES} is not a saved {candidate.name}"
    if saved.get("params") != json_safe(candidate.get_params()):
        return f"{folder / FITTED_VALUES} was fitted with other settings"
    if (saved.get("fitted_on") or {}).get("fingerprint") != rows_fingerprint(train, candidate.task):
        return f"{folder / FITTED_VALUES} was fitted on other training rows"
    candidate.restore_fitted(saved["values"], load_file(str(folder / FITTED_ARRAYS)))
    return None
