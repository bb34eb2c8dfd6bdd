"""The ``ensemble`` candidate: the mean class probabilities of the fine-tuned candidates and the best cheap one.

Its members rule and its combination rule live here, once, and serve both ways it is built:

- the evaluate stage builds it from the predictions the baseline and train stages stored
  (``tunewise.evaluation.predictions.ensemble_candidate``): no model runs again;
- as a candidate (``fit`` / ``predict``, the contract of ``tunewise.candidates.base``) it fits a
  pool of unfitted candidates, keeps the members the rule picks and averages their predictions;
  ``from_members`` wraps members that are fitted already (serving loads them from a run).

Members (:func:`choose_members`): every fine-tuned candidate with probabilities, plus the cheap
candidate other than ``majority`` with the best validation accuracy (classic models often err
differently from fine-tuned ones, which is what an average needs); at least two, else no ensemble.
Combination (:func:`combine_predictions`): on the ids every member scored, the mean of the
members' class probabilities; the prediction is its most probable label; latency is the sum of
the members' (serving it runs them all).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from tunewise.candidates.base import Candidate, CandidateError, classification_predictions, register_candidate

__all__ = [
    "candidate_members",
    "MEMBER_KINDS",
    "MIN_MEMBERS",
    "TOO_FEW_MEMBERS",
    "EnsembleCandidate",
    "choose_members",
    "combine_predictions",
    "proba_matrix",
    "validation_accuracy",
]

MEMBER_KINDS = ("finetuned", "cheap")  # the kinds the members rule picks from
MIN_MEMBERS = 2
TOO_FEW_MEMBERS = "fewer than two members (fine-tuned candidates with probabilities, plus a cheap one)"


# ---------------------------------------------------------------------------------------------
# The members rule and the combination rule


def proba_matrix(frame: pd.DataFrame, labels: Sequence[str]) -> np.ndarray | None:
    """The class probabilities in ``labels`` order, or None when they are missing or in another order."""
    if "proba" not in frame.columns or not len(frame) or frame["proba"].isna().any():
        return None
    proba = np.stack([np.asarray(p, dtype=np.float64) for p in frame["proba"]])
    if proba.shape[1] != len(labels):
        return None
    # candidates order their columns by sorted label: check it through the argmax, do not assume it
    if not (np.asarray(labels, dtype=object)[proba.argmax(1)] == frame["prediction"].to_numpy()).all():
        return None
    return proba


def validation_accuracy(validation: pd.DataFrame) -> float:
    """Accuracy of validation predictions that carry the true ``label`` beside them (0.0 without it)."""
    truth = validation.get("label")
    return float((validation["prediction"] == truth).mean()) if truth is not None else 0.0


def choose_members(pool: Sequence[tuple[str, str, float | None]]) -> list[str]:
    """The members of the ensemble, from ``(name, kind, validation accuracy or None)`` in pool order.

    The pool holds candidates whose class probabilities are usable (in sorted-label order). Every
    fine-tuned one is a member; when there is one, so is the cheap candidate other than
    ``majority`` with the best validation accuracy (ties: the later name). A cheap candidate
    without validation predictions (accuracy None) is not ranked.
    """
    tuned = [name for name, kind, _ in pool if kind == "finetuned"]
    cheap = [
        (accuracy, name)
        for name, kind, accuracy in pool
        if kind == "cheap" and accuracy is not None and name != "majority"
    ]
    members = list(tuned)
    if cheap and tuned:
        members.append(max(cheap)[1])
    return members


def combine_predictions(frames: Sequence[pd.DataFrame], labels: Sequence[str]) -> pd.DataFrame:
    """The members' predictions combined: on the ids all of them scored (in the first one's order),
    the mean of their class probabilities (columns in ``labels`` order), the most probable label,
    its probability as the score, and the sum of their latencies."""
    labels = list(labels)
    ids = set.intersection(*(set(f["id"]) for f in frames))
    parts = [f[f["id"].isin(ids)].set_index("id") for f in frames]
    order = [i for i in frames[0]["id"] if i in ids]
    probas = [proba_matrix(p.loc[order].reset_index(), labels) for p in parts]
    if any(p is None for p in probas):
        raise CandidateError(
            f"ensemble: a member's predictions have no class probabilities in sorted-label order "
            f"on the {len(order)} ids all members scored"
        )
    mean = np.mean(probas, axis=0)
    best = mean.argmax(1)
    latency = np.sum([p.loc[order, "latency_ms"].to_numpy(dtype=float) for p in parts], axis=0)
    return pd.DataFrame(
        {
            "id": order,
            "prediction": np.asarray(labels, dtype=object)[best],
            "score": mean[np.arange(len(order)), best],
            "proba": [r.tolist() for r in mean],
            "latency_ms": latency,
        }
    )


# ---------------------------------------------------------------------------------------------
# The candidate


@register_candidate
class EnsembleCandidate(Candidate):
    """The mean class probabilities of its members (:func:`choose_members` over ``candidates``).

    ``candidates``: the pool, unfitted candidates (scikit-learn's ``VotingClassifier`` habit);
    ``fit`` fits a clone of each and keeps the members the rule picks. The factory
    (``tunewise.candidates.factory.build_candidate("ensemble", config)``) builds the pool from the
    candidates a project runs. Kind ``finetuned``: it needs its fine-tuned members' training.
    """

    name = "ensemble"
    kind = "finetuned"
    task = "classify"
    combines = True

    def __init__(self, candidates: Sequence[Candidate] = ()) -> None:
        self.candidates = candidates

    @classmethod
    def pool_names(cls, names: Sequence[str], kinds: dict[str, str]) -> list[str]:
        """The names in ``names`` (kinds by name) the members rule can pick from, in order."""
        return [n for n in dict.fromkeys(names) if kinds.get(n) in MEMBER_KINDS and n != cls.name]

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> EnsembleCandidate:
        labels = sorted(set(self._training_answers(train)))
        if not self.candidates:
            raise CandidateError(
                "ensemble: no candidates to choose members from; build it with "
                "tunewise.candidates.factory.build_candidate('ensemble', config)"
            )
        names = [c.name for c in self.candidates]
        if len(set(names)) < len(names):
            raise CandidateError(f"ensemble: the pool names a candidate twice: {names}")
        fitted: dict[str, Candidate] = {}
        pool: list[tuple[str, str, float | None]] = []
        for candidate in self.candidates:
            if candidate.task != self.task or candidate.combines:
                raise CandidateError(
                    f"ensemble: {candidate.name!r} cannot be a member (a {candidate.task} "
                    f"candidate{' that combines others' if candidate.combines else ''})"
                )
            model = clone(candidate).fit(train, validation)
            if list(model.labels_) != labels:  # probabilities in another order: not averaged (as in evaluate)
                continue
            accuracy = None
            if model.kind == "cheap" and validation is not None and len(validation):  # ranked on validation
                predicted = model.predict(validation)
                if "label" in validation.columns:  # the truth beside the predictions, as the evaluate stage puts it
                    predicted = predicted.assign(label=validation["label"].to_numpy())
                accuracy = validation_accuracy(predicted)
            fitted[model.name] = model
            pool.append((model.name, model.kind, accuracy))
        members = choose_members(pool)
        if len(members) < MIN_MEMBERS:
            raise CandidateError(f"ensemble: {TOO_FEW_MEMBERS}; the pool gave {members or 'none'}")
        self.members_ = [fitted[m] for m in members]
        self.labels_ = labels
        return self

    @classmethod
    def from_members(cls, members: Sequence[Candidate]) -> EnsembleCandidate:
        """A fitted ensemble of members fitted already (serving: members loaded from a run's stages)."""
        if len(members) < MIN_MEMBERS:
            raise CandidateError(f"ensemble: {TOO_FEW_MEMBERS}; got {[m.name for m in members] or 'none'}")
        labels = sorted(members[0].labels_)
        for member in members:
            member._check_fitted()
            if member.task != cls.task or list(member.labels_) != labels:
                raise CandidateError(
                    f"ensemble: member {member.name!r} does not predict the same labels, in sorted order, as the others"
                )
        ensemble = cls(candidates=list(members))
        ensemble.members_ = list(members)
        ensemble.labels_ = labels
        return ensemble

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        if not len(frame):
            return classification_predictions(frame, self.labels_, np.zeros((0, len(self.labels_))), 0.0)
        # members score positional ids, so a frame with repeated ids still combines row by row
        positional = frame.assign(id=[str(i) for i in range(len(frame))])
        combined = combine_predictions([m.predict(positional) for m in self.members_], self.labels_)
        return classification_predictions(
            frame, self.labels_, np.stack(combined["proba"].to_numpy()), combined["latency_ms"].to_numpy()
        )


def candidate_members(evaluation: dict[str, Any]) -> dict[str, list[str]]:
    """The members of each evaluated candidate that combines others (the ensemble), by name: its
    entry's ``members``; in runs evaluated before entries carried them, the ``ensemble`` block."""
    out = {
        e["name"]: list(e["members"])
        for e in evaluation.get("candidates", [])
        if isinstance(e, dict) and e.get("members")
    }
    recorded = (evaluation.get("ensemble") or {}).get("members")
    if recorded and "ensemble" not in out:  # the evaluate stage's summary of its ensemble, older runs
        out["ensemble"] = list(recorded)
    return out
