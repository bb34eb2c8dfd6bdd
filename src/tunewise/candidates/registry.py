"""Candidates: every model tunewise compares, and the complete registry.

The contract every candidate follows and the registry live in :mod:`tunewise.candidates.base`
(re-exported here). This module holds the cheap classic models and imports every other
implementation, so importing it registers them all: the LLM prompting baselines
(``tunewise.candidates.prompting``, ``tunewise.candidates.generating``), the hosted-API ones (``tunewise.candidates.api``), the fine-tuned models
of the train stage (``tunewise.candidates.finetuned``) and the ``ensemble`` of them (``tunewise.candidates.ensemble``).
Building a candidate from a project's config: ``tunewise.candidates.factory.build_candidate``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.base import (
    CANDIDATES,
    KINDS,
    PREDICTION_COLUMNS,
    TASKS,
    Candidate,
    CandidateError,
    NotFittedError,
    candidate_class,
    candidate_kwargs,
    check_predictions,
    classification_predictions,
    generation_predictions,
    input_texts,
    make_candidate,
    register_candidate,
)
from tunewise.models.loading import embed

__all__ = [
    "CANDIDATES",
    "DEFAULT_CANDIDATES",
    "KINDS",
    "PREDICTION_COLUMNS",
    "TASKS",
    "Candidate",
    "CandidateError",
    "EmbedLogRegCandidate",
    "MajorityCandidate",
    "NotFittedError",
    "TfidfLogRegCandidate",
    "candidate_class",
    "candidate_kwargs",
    "check_predictions",
    "classification_predictions",
    "generation_predictions",
    "input_texts",
    "make_candidate",
    "register_candidate",
]

# What the baseline stage runs when the config names no candidates. rag_llm_gen is added for
# generate only when the project has a knowledge base (see tunewise.evaluation.baseline.default_candidates).
DEFAULT_CANDIDATES: dict[str, tuple[str, ...]] = {
    "classify": ("majority", "tfidf_lr", "embed_lr", "zero_shot_llm", "few_shot_llm"),
    "generate": ("nn_reply", "zero_shot_llm_gen", "few_shot_llm_gen", "rag_llm_gen"),
}


# ---------------------------------------------------------------------------------------------
# Classic candidates


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _classifier_arrays(classifier: Any) -> dict[str, np.ndarray]:
    """A fitted LogisticRegression's weights (its classes go with the JSON values, as labels)."""
    return {"coef": classifier.coef_, "intercept": classifier.intercept_}


def _restore_classifier(classifier: Any, labels: list[str], arrays: dict[str, np.ndarray]) -> Any:
    """``classifier`` (an unfitted LogisticRegression) with saved weights: scikit-learn's
    predict_proba needs only these fitted attributes."""
    classifier.classes_ = np.asarray(labels, dtype=object)
    classifier.coef_, classifier.intercept_ = arrays["coef"], arrays["intercept"]
    classifier.n_features_in_ = int(arrays["coef"].shape[1])
    return classifier


@register_candidate
class MajorityCandidate(Candidate):
    """Always the most frequent training label: the floor every other candidate must clear."""

    name = "majority"
    kind = "cheap"
    task = "classify"

    def __init__(self) -> None:
        pass

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> MajorityCandidate:
        counts = pd.Series(self._training_answers(train)).value_counts()
        self.labels_ = sorted(counts.index)
        self.prior_ = np.array([counts[label] for label in self.labels_], dtype=np.float64) / counts.sum()
        return self

    saves_fitted = True

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        return {"labels": self.labels_}, {"prior": self.prior_}

    def restore_fitted(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.labels_, self.prior_ = list(values["labels"]), arrays["prior"]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        start = time.perf_counter()
        proba = np.tile(self.prior_, (len(frame), 1))
        latency = (time.perf_counter() - start) * 1000 / max(len(frame), 1)
        return classification_predictions(frame, self.labels_, proba, latency)


@register_candidate
class TfidfLogRegCandidate(Candidate):
    """TF-IDF of word 1-2 grams and character 2-5 grams (within words), logistic regression.

    Character n-grams carry typos and word forms ("refund", "refunded", "refnd") that word
    n-grams miss; sublinear tf keeps a repeated word from dominating a short message.
    """

    name = "tfidf_lr"
    kind = "cheap"
    task = "classify"

    def __init__(self, C: float = 10.0, max_iter: int = 1000, char_min_df: int = 2) -> None:
        self.C = C
        self.max_iter = max_iter
        self.char_min_df = char_min_df

    saves_fitted = True

    def _pipeline(self, char_min_df: int, vocabularies: dict[str, dict[str, int]] | None = None) -> Any:
        """The features and the classifier, unfitted; with ``vocabularies`` the vectorizers' fixed
        vocabularies (a saved fit)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        vocab = vocabularies or {}
        features = FeatureUnion(
            [
                (
                    "word",
                    TfidfVectorizer(
                        analyzer="word", ngram_range=(1, 2), sublinear_tf=True, vocabulary=vocab.get("word")
                    ),
                ),
                (
                    "char",
                    TfidfVectorizer(
                        analyzer="char_wb",
                        ngram_range=(2, 5),
                        sublinear_tf=True,
                        min_df=char_min_df,
                        vocabulary=vocab.get("char"),
                    ),
                ),
            ]
        )
        return make_pipeline(features, LogisticRegression(C=self.C, max_iter=self.max_iter))

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> TfidfLogRegCandidate:
        labels = self._training_answers(train)
        # char_min_df drops character n-grams seen once; it is lowered for tiny training sets,
        # where it would leave no features at all.
        self.char_min_df_ = self.char_min_df if len(train) >= 50 else 1
        self.pipeline_ = self._pipeline(self.char_min_df_)
        self.pipeline_.fit(input_texts(train), labels)
        self.labels_ = [str(c) for c in self.pipeline_.classes_]
        return self

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        union, classifier = self.pipeline_[0], self.pipeline_[-1]
        vectorizers = dict(union.transformer_list)
        values = {
            "labels": self.labels_,
            "char_min_df": self.char_min_df_,
            # vocabulary_ maps a term to a numpy integer: JSON wants int
            "vocabularies": {k: {t: int(i) for t, i in v.vocabulary_.items()} for k, v in vectorizers.items()},
        }
        arrays = {f"idf.{k}": v.idf_ for k, v in vectorizers.items()}
        return values, {**arrays, **_classifier_arrays(classifier)}

    def restore_fitted(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.char_min_df_ = int(values["char_min_df"])
        self.pipeline_ = self._pipeline(self.char_min_df_, values["vocabularies"])
        for name, vectorizer in self.pipeline_[0].transformer_list:
            vectorizer.idf_ = arrays[f"idf.{name}"]  # scikit-learn's setter: the fitted idf weights
        _restore_classifier(self.pipeline_[-1], values["labels"], arrays)
        self.labels_ = list(values["labels"])

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        texts = input_texts(frame)
        proba, seconds = _timed(
            lambda: self.pipeline_.predict_proba(texts) if texts else np.zeros((0, len(self.labels_)))
        )
        return classification_predictions(frame, self.labels_, proba, seconds * 1000 / max(len(frame), 1))


@register_candidate
class EmbedLogRegCandidate(Candidate):
    """Sentence embeddings (the embedded MiniLM encoder by default), logistic regression."""

    name = "embed_lr"
    kind = "cheap"
    task = "classify"

    def __init__(self, encoder: str = "embedded:minilm-l6", C: float = 10.0, max_iter: int = 1000) -> None:
        self.encoder = encoder
        self.C = C
        self.max_iter = max_iter

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> EmbedLogRegCandidate:
        from sklearn.linear_model import LogisticRegression

        labels = self._training_answers(train)
        vectors = embed(input_texts(train), self.encoder)
        self.classifier_ = LogisticRegression(C=self.C, max_iter=self.max_iter).fit(vectors, labels)
        self.labels_ = [str(c) for c in self.classifier_.classes_]
        return self

    saves_fitted = True

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        self._check_fitted()
        return {"labels": self.labels_}, _classifier_arrays(self.classifier_)

    def restore_fitted(self, values: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        from sklearn.linear_model import LogisticRegression

        self.classifier_ = _restore_classifier(
            LogisticRegression(C=self.C, max_iter=self.max_iter), values["labels"], arrays
        )
        self.labels_ = list(values["labels"])

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()

        texts = input_texts(frame)

        def run() -> np.ndarray:
            if not texts:
                return np.zeros((0, len(self.labels_)))
            return self.classifier_.predict_proba(embed(texts, self.encoder))

        proba, seconds = _timed(run)
        return classification_predictions(frame, self.labels_, proba, seconds * 1000 / max(len(frame), 1))


# The other implementations register themselves on import: the LLM prompting baselines, the
# hosted-API candidates (they reuse llm_candidates' prompts), the fine-tuned ones and the ensemble of
# them. The registry's order is import order (fine-tuned first when tunewise.candidates.factory is
# imported first); nothing reads it as a ranking: stages take DEFAULT_CANDIDATES or sorted names.
from tunewise.candidates import prompting as _llm_candidates  # noqa: E402, F401, I001
from tunewise.candidates import generating as _generating  # noqa: E402, F401
from tunewise.candidates import rag as _rag  # noqa: E402, F401
from tunewise.candidates import api_prompting as _api_llm  # noqa: E402, F401
from tunewise.candidates import finetuned as _finetuned  # noqa: E402, F401
from tunewise.candidates import ensemble as _ensemble  # noqa: E402, F401
