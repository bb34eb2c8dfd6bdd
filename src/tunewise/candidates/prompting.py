"""LLM prompting candidates and retrieval baselines, behind the predict contract of tunewise.candidates.registry.

classify:
- ``zero_shot_llm``: the label names in the system prompt; each label is scored by the
  log-likelihood of its tokens as the assistant's answer, so the answer is always a valid label.
- ``few_shot_llm``: the same, with the k most similar training examples (by sentence embedding)
  placed before the message as earlier user/assistant turns.

generate:
- ``zero_shot_llm_gen``: system prompt + message, greedy decoding.
- ``few_shot_llm_gen``: the k most similar training pairs as earlier turns.
- ``nn_reply``: the reply of the most similar training input (no LLM; kind ``cheap``).
- ``rag_llm_gen``: the top-k knowledge-base paragraphs (by embedding) in the system prompt.

How label scoring stays affordable (77 labels x a 400-token prompt on a CPU):

1. The prompt is run once per example and shared by all labels. The label token sequences form a
   prefix tree (trie): "card arrival" and "card linking" share the node "card". The trie nodes are
   appended after the prompt in the same forward pass, with a 4-D attention mask in which each
   node sees the prompt and its own ancestors only, and position ids continue from the end of the
   prompt along its branch. One forward pass then yields every label's token log-probabilities,
   exactly as if each label were appended to the prompt on its own (tested against the naive
   per-label loop, :func:`score_continuations_naive`). Unlike expanding the prompt's KV cache to one
   copy per label, this keeps a single copy of the prompt's keys and values per example.
2. The token prefix that all prompts share (system prompt and label list) is run once per call
   with ``use_cache=True``; every batch starts from a copy of that KV cache.
3. Examples are sorted by prompt length, batched with left padding, and restored to input order.
4. A label shortlist per example (``shortlist``, on by default): a cheap ranker, the highest cosine
   similarity between the message and each label's training examples (the MiniLM embeddings
   few-shot retrieval computes anyway), keeps the top k labels, and only their trie is fed. The
   size k is the smallest of a grid whose recall on validation reaches 0.99 (k=10 of 77 on
   BANKING77, recall 0.995). The system prompt still lists every label, so the shared prefix and
   the scores of the labels kept are unchanged; labels left out get probability 0.

The scored answer ends with the end-of-turn token, so a label that is a prefix of another ("card"
vs "card arrival") is not favoured just because it is shorter. Labels are ranked by the summed
log-likelihood (the probability of the whole answer) by default; the mean per token is the
alternative. On a 500-row stratified BANKING77 test sample with SmolLM2-135M-Instruct: zero-shot
(calibrated) 0.120 accuracy with sum vs 0.114 with mean; few-shot (k=5) 0.914 with either.

torch and transformers are imported inside functions: importing the registry stays fast.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from tunewise.candidates.base import (
    input_texts,
    register_candidate,
)
from tunewise.candidates.label_scoring import LabelScoringClassifier
from tunewise.candidates.llm_base import (
    embed_texts,
    label_display_name,
    label_similarity,
    nearest_neighbours,
    top_labels,
)
from tunewise.llm.chat import contexts as _contexts, generate_replies, render as _render
from tunewise.llm.scoring import ContinuationScores, answer_continuations, score_continuations
from tunewise.models.loading import DEFAULT_ENCODER, DEFAULT_LLM

__all__ = [
    "ContinuationScores",
    "FewShotClassifier",
    "ZeroShotClassifier",
    "answer_continuations",
    "generate_replies",
    "label_display_name",
    "nearest_neighbours",
    "label_similarity",
    "score_continuations",
    "top_labels",
]

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")  # the content-free inputs of Zhao et al. (2021)


# few_shot_llm's prompt search (see FewShotClassifier._search_prompt): (instruction, demonstrations),
# the plain prompt first. "listed" names every label in the system prompt, "brief" does not;
# "nearest" shows the k most similar training examples as earlier chat turns, "inline" the same
# examples as "Message: ... / Category: ..." lines in the system message (fewer template tokens),
# "per_label" the nearest one of each of the k nearest labels (from the k * PER_LABEL_WIDTH
# nearest rows) as chat turns.
PROMPT_VARIANTS = (("listed", "nearest"), ("brief", "nearest"), ("brief", "inline"), ("brief", "per_label"))
PER_LABEL_WIDTH = 10
# The prompt search keeps the most accurate prompt, unless one at most PROMPT_ACCURACY_TOLERANCE
# below it on the search rows is at least PROMPT_MIN_SAVING shorter. On BANKING77 the prompt that
# lists the 77 labels led the brief one by 2 rows in 200 (0.895 vs 0.885) at 3.3x the tokens; on all
# 3,080 test rows both scored 0.9101, and listing the labels took 489 s against about 300. The
# tolerance is the issue's own for speed-ups (shortlisting: within 1 point); a wider rule ("the
# cheapest within noise") once kept a prompt 7 points worse on a 154-label set.
PROMPT_ACCURACY_TOLERANCE = 0.01
PROMPT_MIN_SAVING = 0.25


@register_candidate
class ZeroShotClassifier(LabelScoringClassifier):
    """The label list in the system prompt; the most likely label wins (``label_score``: mean or sum).

    With a shortlist (see :class:`LabelScoringClassifier`) the ranker uses the training examples'
    embeddings, so the LLM itself still sees no example, but which labels it may pick does.
    """

    name = "zero_shot_llm"

    def __init__(
        self,
        llm: str = DEFAULT_LLM,
        encoder: str = DEFAULT_ENCODER,
        offline: bool = True,
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        task_description: str | None = None,
        label_score: Literal["mean", "sum"] = "sum",
        calibrate: bool = True,
        batch_size: int = 8,
        max_input_tokens: int = 256,
        shortlist: bool | int | str = "auto",
        shortlist_recall: float = 0.99,
        precision: str = "auto",
        scoring_workers: int | str = "auto",
    ) -> None:
        self.llm = llm
        self.encoder = encoder
        self.offline = offline
        self.trust_remote_code = trust_remote_code
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.label_score = label_score
        self.calibrate = calibrate
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.shortlist = shortlist
        self.shortlist_recall = shortlist_recall
        self.precision = precision
        self.scoring_workers = scoring_workers

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> ZeroShotClassifier:
        self._fit_labels(train)
        # Contextual calibration (Zhao et al. 2021, "Calibrate before use"): a small model prefers
        # some labels whatever the message says; its scores for content-free messages measure that
        # preference, and predict subtracts it. On BANKING77 it lifts SmolLM2-135M from chance
        # (always the same label) to about 0.1 accuracy; with few-shot prompts it hurts, so only here.
        # Scored over every label (no shortlist: the prior is needed for each).
        self.content_free_ = None
        self.shortlist_k_ = len(self.labels_)
        if self.calibrate:
            free = pd.DataFrame({"id": ["n/a", "empty", "mask"], "input": CONTENT_FREE_INPUTS, "context": "[]"})
            self.content_free_ = self.label_log_likelihoods(free, shortlist=False)
        self._fit_shortlist(train, validation)
        return self

    def _label_prior(self) -> np.ndarray:
        if self.content_free_ is None:
            return np.zeros(len(self.labels_))
        return self.content_free_.scores(self.label_score).mean(axis=0)

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        out = []
        for text, (turns, system) in zip(self._inputs(frame), _contexts(frame)):
            out.append(
                [
                    {"role": "system", "content": "\n\n".join([self.system_prompt_, *system])},
                    *turns,
                    {"role": "user", "content": text},
                ]
            )
        return out


@register_candidate
class FewShotClassifier(LabelScoringClassifier):
    """Zero-shot plus the ``few_shot_k`` most similar training examples as earlier turns."""

    name = "few_shot_llm"

    def __init__(
        self,
        llm: str = DEFAULT_LLM,
        encoder: str = DEFAULT_ENCODER,
        offline: bool = True,
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        task_description: str | None = None,
        few_shot_k: int = 5,
        label_score: Literal["mean", "sum"] = "sum",
        batch_size: int = 8,
        max_input_tokens: int = 256,
        shortlist: bool | int | str = "auto",
        shortlist_recall: float = 0.99,
        precision: str = "auto",
        prompt_search: bool = True,
        prompt_search_rows: int = 200,
        prompt_search_final_rows: int = 600,
        scoring_workers: int | str = "auto",
    ) -> None:
        self.llm = llm
        self.encoder = encoder
        self.offline = offline
        self.trust_remote_code = trust_remote_code
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.few_shot_k = few_shot_k
        self.label_score = label_score
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens
        self.shortlist = shortlist
        self.shortlist_recall = shortlist_recall
        self.precision = precision
        self.prompt_search = prompt_search
        self.prompt_search_rows = prompt_search_rows
        self.prompt_search_final_rows = prompt_search_final_rows
        self.scoring_workers = scoring_workers

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> FewShotClassifier:
        self._fit_labels(train)
        self.shot_texts_ = self._inputs(train)
        self.shot_answers_ = [label_display_name(a) for a in self._training_answers(train)]
        self.shot_labels_ = np.array(self._training_answers(train), dtype=object)
        self.shot_vectors_ = embed_texts(input_texts(train), self.encoder)
        self._fit_shortlist(train, validation, train_vectors=self.shot_vectors_)  # the same embeddings rank labels
        self.instruction_, self.demos_ = PROMPT_VARIANTS[0]
        self.prompt_search_info_: dict[str, Any] = {"searched": False}
        self.search_answers_: pd.DataFrame | None = None  # the chosen prompt's answers, by input text
        if self.prompt_search:
            self._search_prompt(train, validation)
        return self

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "prompt": {
                "instruction": self.instruction_,
                "demos": self.demos_,
                "few_shot_k": self.few_shot_k,
                "dtype": self.dtype_,
            },
            "prompt_search": dict(self.prompt_search_info_),
        }

    def _search_prompt(self, train: pd.DataFrame, validation: pd.DataFrame | None) -> None:
        """Choose the instruction and the demonstrations on held-out rows (DSPy-style, by score).

        As DSPy's optimisers do (BootstrapFewShot, MIPRO: try demonstration sets and instructions,
        keep the best by a validation metric), each of :data:`PROMPT_VARIANTS` scores the same
        ``prompt_search_rows`` held-out rows; those within noise of the best are scored again on up
        to ``prompt_search_final_rows`` rows in all, and :func:`choose_prompt` picks on those: the
        prompted candidate gets its best shot. A tie goes to the shorter prompt (mean tokens, the
        scoring cost), then to the plain prompt.
        Each prompt tried also records whether it is within noise of the best (a paired 95% sign
        test on the rows one gets right and the other wrong), for the reader: on 200 rows a 1-point
        lead is 2 messages. Preferring the cheapest prompt within noise was tried and dropped: on a
        154-label set it kept a prompt 7 points less accurate for 1% fewer tokens. Held-out rows are
        validation rows with a training label; without validation, as many training rows are held
        out of the demonstration pool.
        """
        rng = np.random.default_rng(1)
        codes = set(self.labels_)
        pool_saved = (self.shot_texts_, self.shot_answers_, self.shot_labels_, self.shot_vectors_)
        if validation is not None and len(validation) and "label" in validation.columns:
            rows = validation[validation["label"].astype(str).isin(codes)]
            measured_on = "validation"
        else:
            rows, measured_on = None, "training rows held out of the demonstration pool"
        if rows is None or not len(rows):
            n_hold = min(max(self.prompt_search_final_rows, self.prompt_search_rows), len(train) // 5)
            if n_hold < 20:
                self.prompt_search_info_ = {"searched": False, "why": "too few rows to hold out for the search"}
                return
            held = np.sort(rng.choice(len(train), n_hold, replace=False))
            keep = np.setdiff1d(np.arange(len(train)), held)
            rows = train.iloc[held]
            self.shot_texts_ = [self.shot_texts_[i] for i in keep]
            self.shot_answers_ = [self.shot_answers_[i] for i in keep]
            self.shot_labels_, self.shot_vectors_ = self.shot_labels_[keep], self.shot_vectors_[keep]
        # two rounds (successive halving, as MIPRO scores minibatches then the best on more rows):
        # every prompt on `prompt_search_rows` rows, then the prompts within noise of the best on up
        # to `prompt_search_final_rows`. On BANKING77, 200 rows tied brief/inline with brief/nearest
        # (0.885 each) and the shorter inline prompt was kept; on the 3,080 test rows it scored 0.887
        # against 0.910.
        order = rng.permutation(len(rows))
        first = rows.iloc[np.sort(order[: self.prompt_search_rows])]
        more = rows.iloc[
            np.sort(order[self.prompt_search_rows : max(self.prompt_search_final_rows, self.prompt_search_rows)])
        ]
        tried, correct, answers = [], [], []
        try:
            for instruction, demos in PROMPT_VARIANTS:
                entry, right, answered = self._try_prompt(instruction, demos, first)
                tried.append(entry)
                correct.append(right)
                answers.append([answered])
            best = max(range(len(tried)), key=lambda i: (tried[i]["accuracy"], -tried[i]["prompt_tokens"], -i))
            contenders = [i for i in range(len(tried)) if not _worse_beyond_noise(correct[i], correct[best])]
            if len(contenders) > 1 and len(more):
                for i in contenders:
                    entry, right, answered = self._try_prompt(tried[i]["instruction"], tried[i]["demos"], more)
                    correct[i] = np.concatenate([correct[i], right])
                    answers[i].append(answered)
                    tried[i].update(
                        rows=len(correct[i]),
                        accuracy=round(float(correct[i].mean()), 4),
                        seconds=round(tried[i]["seconds"] + entry["seconds"], 2),
                    )
        finally:
            self.shot_texts_, self.shot_answers_, self.shot_labels_, self.shot_vectors_ = pool_saved
        finalists = [i for i in range(len(tried)) if len(correct[i]) == max(len(c) for c in correct)]
        best = max(finalists, key=lambda i: (tried[i]["accuracy"], -tried[i]["prompt_tokens"], -i))
        chosen = finalists[choose_prompt([tried[i] for i in finalists])]
        for i, entry in enumerate(tried):
            n = len(correct[i])  # a prompt dropped after the first round is compared on those rows
            entry["within_noise_of_best"] = not _worse_beyond_noise(correct[i], correct[best][:n])
        self.instruction_, self.demos_ = tried[chosen]["instruction"], tried[chosen]["demos"]
        if measured_on == "validation":  # with the whole demonstration pool: what predict would answer
            self.search_answers_ = pd.concat(answers[chosen])
        plain = tried[0]["accuracy"]
        self.prompt_search_info_ = {
            "searched": True,
            "rows": len(first),
            "final_rows": len(correct[chosen]),
            "measured_on": measured_on,
            "tried": tried,
            "rule": (
                f"every prompt on {len(first)} rows, those within noise of the best on {len(correct[chosen])}; "
                f"then the most accurate, unless one at most {PROMPT_ACCURACY_TOLERANCE:.0%} below it is at least "
                f"{PROMPT_MIN_SAVING:.0%} shorter (then the most accurate such); a tie goes to the shorter "
                "prompt, then to the plain one"
            ),
            "chosen": {"instruction": self.instruction_, "demos": self.demos_},
            "plain_accuracy": plain,
            "chosen_accuracy": tried[chosen]["accuracy"],
            "gain_over_plain": round(tried[chosen]["accuracy"] - plain, 4),
        }

    def _try_prompt(
        self, instruction: str, demos: str, rows: pd.DataFrame
    ) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
        """Score one prompt variant on ``rows``: its entry in the search's record, which rows it got
        right, and its answers indexed by input text."""
        self.instruction_, self.demos_ = instruction, demos
        started = time.perf_counter()
        answered = self.predict(rows)
        predicted = answered["prediction"].astype(str).to_numpy()
        seconds = time.perf_counter() - started
        tokens = self.tokenizer_(_render(self.tokenizer_, self._conversations(rows)), add_special_tokens=False)[
            "input_ids"
        ]
        right = predicted == rows["label"].astype(str).to_numpy()
        return (
            {
                "instruction": instruction,
                "demos": demos,
                "rows": len(rows),
                "accuracy": round(float(right.mean()), 4),
                "prompt_tokens": round(float(np.mean([len(t) for t in tokens])), 1),
                "seconds": round(seconds, 2),
            },
            right,
            answered.set_axis(pd.Index(input_texts(rows), name="text")),
        )

    def predict(self, frame: pd.DataFrame, shortlist: bool = True) -> pd.DataFrame:
        """As every label-scoring classifier predicts; rows whose text the prompt search already
        answered with the chosen prompt (same text, same demonstrations: the same answer) are taken
        from its record, so the validation rows it searched on are not scored twice."""
        answered = getattr(self, "search_answers_", None)
        keys = pd.Index(input_texts(frame)) if len(frame) else pd.Index([])
        known = keys.isin(answered.index) if answered is not None and shortlist else np.zeros(len(frame), bool)
        if not known.any():
            return super().predict(frame, shortlist=shortlist)
        answered = answered[~answered.index.duplicated()]
        reused = (
            answered.loc[keys[known]].reset_index(drop=True).assign(id=frame.loc[known, "id"].astype(str).to_numpy())
        )
        fresh = super().predict(frame[~known], shortlist=shortlist) if (~known).any() else reused.iloc[:0]
        order = np.concatenate([np.flatnonzero(known), np.flatnonzero(~known)])
        return pd.concat([reused, fresh], ignore_index=True).iloc[np.argsort(order)].reset_index(drop=True)

    def _demonstrations(self, vectors: np.ndarray) -> np.ndarray:
        """Demonstration rows per message, most similar first: the ``few_shot_k`` nearest training
        examples ("nearest"), or the nearest example of each of the ``few_shot_k`` nearest distinct
        labels ("per_label": contrasting examples, as a shortlist shows them)."""
        k = self.few_shot_k
        if self.demos_ in ("nearest", "inline"):
            return nearest_neighbours(vectors, self.shot_vectors_, k)
        wide = nearest_neighbours(vectors, self.shot_vectors_, k * PER_LABEL_WIDTH)
        out = np.empty((len(vectors), min(k, wide.shape[1])), dtype=np.int64)
        for r, near in enumerate(wide):
            _, first = np.unique(self.shot_labels_[near], return_index=True)
            picked = near[np.sort(first)][:k]
            if len(picked) < out.shape[1]:  # fewer distinct labels nearby: fill with the nearest others
                picked = np.concatenate([picked, near[~np.isin(near, picked)]])[: out.shape[1]]
            out[r] = picked
        return out

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        texts = self._inputs(frame)
        neighbours = self._demonstrations(embed_texts(input_texts(frame), self.encoder))
        system_prompt = self.instructions_[self.instruction_]
        out = []
        inline = self.demos_ == "inline"
        for text, (turns, system), near in zip(texts, _contexts(frame), neighbours):
            shots, examples = [], []
            for j in near[::-1]:  # the most similar example sits right before the message
                if inline:
                    examples.append(f"Message: {self.shot_texts_[j]}\nCategory: {self.shot_answers_[j]}")
                else:
                    shots += [
                        {"role": "user", "content": self.shot_texts_[j]},
                        {"role": "assistant", "content": self.shot_answers_[j]},
                    ]
            head = [system_prompt, "Examples:\n\n" + "\n\n".join(examples)] if inline else [system_prompt]
            out.append(
                [
                    {"role": "system", "content": "\n\n".join([*head, *system])},
                    *shots,
                    *turns,
                    {"role": "user", "content": text},
                ]
            )
        return out


def choose_prompt(tried: Sequence[dict[str, Any]]) -> int:
    """Index of the prompt the search keeps, from entries with ``accuracy`` and ``prompt_tokens``.

    The most accurate, unless prompts at most :data:`PROMPT_ACCURACY_TOLERANCE` below it are at
    least :data:`PROMPT_MIN_SAVING` shorter: then the most accurate of those. A tie goes to the
    shorter prompt, then to the earlier one (the plain prompt is first).
    """

    def rank(i: int) -> tuple[float, float, int]:
        return tried[i]["accuracy"], -tried[i]["prompt_tokens"], -i

    best = max(range(len(tried)), key=rank)
    floor = tried[best]["accuracy"] - PROMPT_ACCURACY_TOLERANCE - 1e-9
    ceiling = (1 - PROMPT_MIN_SAVING) * tried[best]["prompt_tokens"]
    cheaper = [i for i, t in enumerate(tried) if t["accuracy"] >= floor and t["prompt_tokens"] <= ceiling]
    return max(cheaper, key=rank) if cheaper else best


def _worse_beyond_noise(correct: np.ndarray, best: np.ndarray) -> bool:
    """Paired sign test (normal approximation, 95%): does ``correct`` lose to ``best`` beyond noise?

    Only the rows where the two disagree count (McNemar's view): ``best`` right and the other
    wrong, against the reverse. Hand-written: three lines, where scipy's binomtest would need the
    counts anyway."""
    lost, won = int((best & ~correct).sum()), int((correct & ~best).sum())
    return lost - won > 1.96 * math.sqrt(lost + won)
