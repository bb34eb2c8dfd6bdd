"""What every prompted-LLM candidate shares: the model loaded once per process, its inference dtype,
the sentence-encoder helpers that pick demonstrations and shortlist labels, label display names,
input truncation, and the base class that loads the model in fit.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.base import (
    Candidate,
    CandidateError,
    input_texts,
)
from tunewise.models.loading import embed, load_llm

# ---------------------------------------------------------------------------------------------
# Models, shared between candidates within one process


@functools.lru_cache(maxsize=2)
def cached_llm(spec: str, offline: bool, trust_remote_code: bool, dtype: str = "float32") -> tuple[Any, Any]:
    # zero_shot_llm and few_shot_llm (and the generate ones) use the same weights; load once.

    return load_llm(spec, offline=offline, trust_remote_code=trust_remote_code, dtype=dtype)


def inference_dtype(precision: str) -> str:
    """The weight dtype prompted candidates run in: ``precision`` auto, fp32 or bf16.

    auto is bf16 where the CPU multiplies bf16 natively (AVX512-BF16 or AMX; oneDNN's check) and
    float32 elsewhere: emulated bf16 is slower than float32. On this project's 2-core AMX machine
    bf16 weights score few-shot prompts 2x faster than float32 with the same labels on a 96-row
    BANKING77 check (bench/bench_shortlist.py measures both). bf16 where it is emulated is refused.
    """
    if precision == "fp32":
        return "float32"
    import torch

    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    if precision == "bf16" and not native:
        raise CandidateError(
            "precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is "
            "slower than float32; use precision auto or fp32"
        )
    if precision not in ("auto", "bf16"):
        raise CandidateError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    return "bfloat16" if native else "float32"


def embed_texts(texts: list[str], encoder: str) -> np.ndarray:

    return embed(texts, encoder) if texts else np.zeros((0, 1), dtype=np.float32)


def nearest_neighbours(queries: np.ndarray, pool: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of the ``k`` most similar pool rows per query row, most similar first.

    Rows are unit-normalised embeddings, so the dot product is the cosine similarity. Queries are
    taken in chunks so a large test set against a large training set stays within memory.
    """
    k = min(k, len(pool))
    out = np.zeros((len(queries), k), dtype=np.int64)
    if k == 0:
        return out
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ pool.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start : start + len(sims)] = np.take_along_axis(top, order, axis=1)
    return out


def label_similarity(
    queries: np.ndarray,
    pool: np.ndarray,
    pool_labels: np.ndarray,
    n_labels: int,
    *,
    exclude: np.ndarray | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """(queries, labels): each query's highest cosine similarity to a pool row of each label.

    The cheap ranker behind the label shortlist. The nearest example of a label is a better guide
    than the label's centroid when a label covers several phrasings: on BANKING77 (MiniLM, 10% of
    train held out) the true label is in the top 10 for 99.5% of messages, against 98.7% by centroid
    and 91.5% by the label name's own embedding. ``exclude`` (one pool row per query, -1 for none)
    leaves a query's own row out, for a leave-one-out measure on training rows. A label with no
    pool row left gets -inf.
    """
    pool_labels = np.asarray(pool_labels, dtype=np.int64)
    order = np.argsort(pool_labels, kind="stable")  # pool rows grouped by label, for reduceat
    grouped = pool[order]
    present = np.unique(pool_labels)
    starts = np.searchsorted(pool_labels[order], present)
    where = np.empty(len(order), dtype=np.int64)
    where[order] = np.arange(len(order))  # pool row -> column in ``grouped``
    out = np.full((len(queries), n_labels), -np.inf, dtype=np.float32)
    for begin in range(0, len(queries), chunk):
        sims = queries[begin : begin + chunk] @ grouped.T
        if exclude is not None:
            own = np.asarray(exclude[begin : begin + chunk])
            hit = np.flatnonzero(own >= 0)
            sims[hit, where[own[hit]]] = -np.inf
        if len(present):
            out[begin : begin + len(sims), present] = np.maximum.reduceat(sims, starts, axis=1)
    return out


def top_labels(similarity: np.ndarray, k: int) -> np.ndarray:
    """(rows, k) label indices with the highest similarity, best first (ties: lower index first)."""
    k = min(k, similarity.shape[1])
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


# ---------------------------------------------------------------------------------------------
# Prompts


def label_display_name(label: str) -> str:
    """How a label is shown to (and answered by) the LLM: underscores become spaces."""
    return str(label).replace("_", " ").strip()


def label_display_names(candidate: str, labels: Sequence[str]) -> list[str]:
    """Display names of ``labels``; two labels that read the same are an error naming ``candidate``."""
    names = [label_display_name(label) for label in labels]
    clashes = pd.Series(list(labels)).groupby(names).agg(list)
    clashes = clashes[clashes.map(len) > 1]
    if len(clashes):
        raise CandidateError(
            f"{candidate}: labels {clashes.iloc[0]} read the same once underscores "
            "become spaces; rename one so the LLM can tell them apart"
        )
    return names


def truncate_texts(tokenizer: Any, texts: list[str], max_tokens: int) -> list[str]:
    """Keep the first ``max_tokens`` tokens of each text, so one long message cannot blow the context."""
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [t if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens]) for t, ids in zip(texts, encoded)]


# ---------------------------------------------------------------------------------------------
# Label scoring


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Candidates


class LLMCandidate(Candidate):
    """What every LLM candidate shares: loading the model in fit, truncating inputs."""

    kind = "baseline"
    expensive = True

    def _load_llm(self) -> None:
        self.dtype_ = inference_dtype(getattr(self, "precision", "auto"))
        self.model_, self.tokenizer_ = cached_llm(self.llm, self.offline, self.trust_remote_code, self.dtype_)

    def _inputs(self, frame: pd.DataFrame) -> list[str]:
        return truncate_texts(self.tokenizer_, input_texts(frame), self.max_input_tokens)
