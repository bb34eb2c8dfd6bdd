"""Label scoring shared by the prompted classifiers (zero_shot_llm, few_shot_llm): every label's
log-likelihood as the LLM's answer, over a per-message label shortlist ranked by embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.base import CandidateError, classification_predictions, input_texts
from tunewise.candidates.llm_base import (
    LLMCandidate,
    embed_texts,
    label_display_names,
    label_similarity,
    softmax_rows,
    top_labels,
)
from tunewise.llm.chat import render as _render
from tunewise.llm.scoring import ContinuationScores, answer_continuations, score_continuations, scoring_workers

DEFAULT_CLASSIFY_SYSTEM_PROMPT = "You sort customer messages into categories."


# Shortlist sizes tried in fit, smallest first: the smallest whose recall on held-out rows reaches
# the target is kept. Held-out rows for that measure are capped: recall to 0.001 needs no more.
SHORTLIST_GRID = (5, 10, 15, 20, 30, 40, 50, 75, 100)
SHORTLIST_HELD_OUT_ROWS = 2000
SHORTLIST_RANKER = "max cosine similarity to the label's training examples (sentence encoder)"


class LabelScoringClassifier(LLMCandidate):
    """Label scoring shared by zero- and few-shot classification; subclasses build the prompts.

    The label shortlist: with many labels, most of the tokens fed per example are label-trie nodes
    (77 BANKING77 labels: about 230 trie tokens after a 150-token few-shot prompt), and nearly all
    labels are hopeless for a given message. A cheap ranker (:func:`label_similarity` over the
    sentence encoder's embeddings, which few_shot_llm computes anyway for its shots) keeps the
    ``shortlist_k_`` most similar labels per message, and only those are scored by the LLM; the
    others get probability 0. The system prompt still lists every label, so it stays one shared,
    cached prefix and a message is scored exactly as without the shortlist. ``shortlist_k_`` is
    the smallest size of :data:`SHORTLIST_GRID` whose recall (true label on the shortlist) on
    held-out rows reaches ``shortlist_recall``: validation rows when fit gets them, else leave-one-
    out on training rows. No size reaching it, or a size not below the number of labels, means
    every label is scored (the full path, unchanged).
    """

    task = "classify"

    def _fit_labels(self, train: pd.DataFrame) -> None:
        self.labels_ = sorted(set(self._training_answers(train)))
        self.label_names_ = label_display_names(self.name, self.labels_)
        self._load_llm()
        self.continuations_ = answer_continuations(self.model_, self.tokenizer_, self.label_names_)
        head = self.system_prompt or DEFAULT_CLASSIFY_SYSTEM_PROMPT
        about = f"\n{self.task_description.strip()}" if self.task_description else ""
        listing = "\n".join(f"- {name}" for name in self.label_names_)
        # "listed" names every label (what zero-shot needs); "brief" leaves the list to the examples
        # and the shortlist, a far shorter prompt for the few-shot search to weigh against it
        self.instructions_ = {
            "listed": f"{head}{about}\nAnswer with exactly one category from this list, written as it appears:\n{listing}",
            "brief": f"{head}{about}\nAnswer with exactly one category, written as in the examples.",
        }
        self.system_prompt_ = self.instructions_["listed"]

    def _fit_shortlist(
        self, train: pd.DataFrame, validation: pd.DataFrame | None, train_vectors: np.ndarray | None = None
    ) -> None:
        """Choose ``shortlist_k_`` (see the class docstring) and keep what the ranker needs."""
        setting = self.shortlist
        n_labels = len(self.labels_)
        if isinstance(setting, str) and setting != "auto":
            raise CandidateError(
                f"{self.name}: shortlist must be true, false, 'auto' or a number of labels, not {setting!r}"
            )
        if not isinstance(setting, bool) and isinstance(setting, (int, np.integer)) and setting < 1:
            raise CandidateError(f"{self.name}: shortlist must keep at least 1 label, not {setting}")
        self.shortlist_k_ = n_labels
        self.shortlist_recall_: float | None = None
        self.shortlist_info_: dict[str, Any] = {
            "setting": setting,
            "k": n_labels,
            "n_labels": n_labels,
            "shortlisted": False,
            "target_recall": self.shortlist_recall,
            "recall": None,
            "recall_by_k": {},
            "measured_on": None,
        }
        if setting is False:
            return
        fixed = None if setting is True or setting == "auto" else int(setting)
        grid = [k for k in SHORTLIST_GRID if k < n_labels] if fixed is None else [min(fixed, n_labels)]
        if not grid or grid == [n_labels]:
            return  # too few labels to leave any out: every label is scored
        codes = {label: i for i, label in enumerate(self.labels_)}
        self.rank_vectors_ = (
            train_vectors if train_vectors is not None else embed_texts(input_texts(train), self.encoder)
        )
        self.rank_labels_ = np.array([codes[a] for a in self._training_answers(train)], dtype=np.int64)

        # Held-out rows: validation rows with a training label (others cannot be predicted whether
        # shortlisted or not), else training rows each ranked without itself (leave-one-out).
        rng = np.random.default_rng(0)
        held_out, exclude, truth = None, None, None
        if validation is not None and len(validation) and "label" in validation.columns:
            known = validation[validation["label"].astype(str).isin(codes)]
            if len(known):
                if len(known) > SHORTLIST_HELD_OUT_ROWS:
                    known = known.iloc[np.sort(rng.choice(len(known), SHORTLIST_HELD_OUT_ROWS, replace=False))]
                held_out = embed_texts(input_texts(known), self.encoder)
                truth = known["label"].astype(str).map(codes).to_numpy()
                self.shortlist_info_["measured_on"] = f"validation ({len(known)} rows)"
        if held_out is None:
            rows = np.arange(len(train))
            if len(rows) > SHORTLIST_HELD_OUT_ROWS:
                rows = np.sort(rng.choice(len(rows), SHORTLIST_HELD_OUT_ROWS, replace=False))
            held_out, exclude, truth = self.rank_vectors_[rows], rows, self.rank_labels_[rows]
            self.shortlist_info_["measured_on"] = f"leave-one-out on {len(rows)} training rows"
        similarity = label_similarity(held_out, self.rank_vectors_, self.rank_labels_, n_labels, exclude=exclude)
        ranked = top_labels(similarity, max(grid))
        recall = {k: float((ranked[:, :k] == truth[:, None]).any(axis=1).mean()) for k in grid}
        self.shortlist_info_["recall_by_k"] = {str(k): round(r, 4) for k, r in recall.items()}
        if fixed is not None:
            chosen = grid[0]
        else:
            chosen = next((k for k in grid if recall[k] >= self.shortlist_recall), None)
            if chosen is None:
                return  # no shortlist is safe enough: every label is scored
        self.shortlist_k_ = chosen
        self.shortlist_recall_ = recall[chosen]
        self.shortlist_info_.update(
            k=chosen, shortlisted=chosen < n_labels, recall=round(recall[chosen], 4), ranker=SHORTLIST_RANKER
        )

    def info(self) -> dict[str, Any]:
        """What the baseline stage writes about this candidate beside its metrics."""
        self._check_fitted()
        return {"shortlist": dict(self.shortlist_info_)}

    def shortlist_rows(self, frame: pd.DataFrame) -> np.ndarray | None:
        """Label indices scored for each row of ``frame``, or None when every label is scored."""
        if self.shortlist_k_ >= len(self.labels_):
            return None
        similarity = label_similarity(
            embed_texts(input_texts(frame), self.encoder), self.rank_vectors_, self.rank_labels_, len(self.labels_)
        )
        return top_labels(similarity, self.shortlist_k_)

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        raise NotImplementedError

    def label_log_likelihoods(self, frame: pd.DataFrame, shortlist: bool = True) -> ContinuationScores:
        """Log-likelihood of every label (``labels_`` order) as the answer to every row of ``frame``.

        With ``shortlist`` (and a fitted ``shortlist_k_`` below the number of labels), labels off a
        row's shortlist are not scored and get ``-inf``.
        """
        self._check_fitted()
        conversations = self._conversations(frame)
        prompts = (
            self.tokenizer_(_render(self.tokenizer_, conversations), add_special_tokens=False)["input_ids"]
            if conversations
            else []
        )
        rows = self.shortlist_rows(frame) if shortlist and len(frame) else None
        return score_continuations(
            self.model_,
            prompts,
            self.continuations_,
            shortlist=rows,
            batch_size=self.batch_size,
            description=self.name,
            pad_token_id=self.tokenizer_.pad_token_id or 0,
            workers=scoring_workers(getattr(self, "scoring_workers", 1)),
        )

    def _label_prior(self) -> np.ndarray:
        """Per-label score subtracted before ranking; zero unless the subclass calibrates."""
        return np.zeros(len(self.labels_))

    def predict(self, frame: pd.DataFrame, shortlist: bool = True) -> pd.DataFrame:
        """Predictions (the contract of tunewise.candidates.registry); ``shortlist=False`` scores every label."""
        scored = self.label_log_likelihoods(frame, shortlist=shortlist)
        scores = scored.scores(self.label_score) - self._label_prior()[None, :]
        proba = softmax_rows(scores) if len(frame) else np.zeros((0, len(self.labels_)))  # off the shortlist: 0
        return classification_predictions(frame, self.labels_, proba, scored.latency_ms)
