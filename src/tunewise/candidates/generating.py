"""Prompted LLMs that write replies (task ``generate``): zero-shot and few-shot, and the nearest
training reply (no LLM).
"""

from __future__ import annotations

import time

import pandas as pd

from tunewise.candidates.base import (
    Candidate,
    generation_predictions,
    input_texts,
    register_candidate,
)
from tunewise.candidates.llm_base import LLMCandidate, embed_texts, nearest_neighbours, truncate_texts
from tunewise.llm.chat import contexts as _contexts, generate_replies
from tunewise.models.loading import DEFAULT_ENCODER, DEFAULT_LLM

__all__ = ["DEFAULT_GENERATE_SYSTEM_PROMPT", "FewShotGenerator", "NearestReplyCandidate", "ZeroShotGenerator"]

DEFAULT_GENERATE_SYSTEM_PROMPT = (
    "You reply to customer messages on behalf of a support team. "
    "Write the reply the team would send: helpful, accurate and concise."
)


class GeneratingCandidate(LLMCandidate):
    task = "generate"

    def _system_prompt(self) -> str:
        head = self.system_prompt or DEFAULT_GENERATE_SYSTEM_PROMPT
        return f"{head}\n{self.task_description.strip()}" if self.task_description else head

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        raise NotImplementedError

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        replies, latency = generate_replies(
            self.model_,
            self.tokenizer_,
            self._conversations(frame),
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            description=self.name,
        )
        return generation_predictions(frame, replies, latency)


@register_candidate
class ZeroShotGenerator(GeneratingCandidate):
    """System prompt + the message (and its earlier turns); greedy decoding."""

    name = "zero_shot_llm_gen"

    def __init__(
        self,
        llm: str = DEFAULT_LLM,
        offline: bool = True,
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        task_description: str | None = None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        max_input_tokens: int = 256,
    ) -> None:
        self.llm = llm
        self.offline = offline
        self.trust_remote_code = trust_remote_code
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> ZeroShotGenerator:
        self._load_llm()
        self.system_prompt_ = self._system_prompt()
        return self

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        return [
            [
                {"role": "system", "content": "\n\n".join([self.system_prompt_, *system])},
                *turns,
                {"role": "user", "content": text},
            ]
            for text, (turns, system) in zip(self._inputs(frame), _contexts(frame))
        ]


@register_candidate
class FewShotGenerator(GeneratingCandidate):
    """The ``few_shot_k`` most similar training (message, reply) pairs as earlier turns."""

    name = "few_shot_llm_gen"

    def __init__(
        self,
        llm: str = DEFAULT_LLM,
        encoder: str = DEFAULT_ENCODER,
        offline: bool = True,
        trust_remote_code: bool = False,
        system_prompt: str | None = None,
        task_description: str | None = None,
        few_shot_k: int = 5,
        max_new_tokens: int = 128,
        batch_size: int = 8,
        max_input_tokens: int = 256,
    ) -> None:
        self.llm = llm
        self.encoder = encoder
        self.offline = offline
        self.trust_remote_code = trust_remote_code
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.few_shot_k = few_shot_k
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.max_input_tokens = max_input_tokens

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> FewShotGenerator:
        self._load_llm()
        self.system_prompt_ = self._system_prompt()
        self.shot_texts_ = self._inputs(train)
        self.shot_replies_ = truncate_texts(self.tokenizer_, self._training_answers(train), self.max_input_tokens)
        self.shot_vectors_ = embed_texts(input_texts(train), self.encoder)
        return self

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        neighbours = nearest_neighbours(
            embed_texts(input_texts(frame), self.encoder), self.shot_vectors_, self.few_shot_k
        )
        out = []
        for text, (turns, system), near in zip(self._inputs(frame), _contexts(frame), neighbours):
            shots = []
            for j in near[::-1]:
                shots += [
                    {"role": "user", "content": self.shot_texts_[j]},
                    {"role": "assistant", "content": self.shot_replies_[j]},
                ]
            out.append(
                [
                    {"role": "system", "content": "\n\n".join([self.system_prompt_, *system])},
                    *shots,
                    *turns,
                    {"role": "user", "content": text},
                ]
            )
        return out


@register_candidate
class NearestReplyCandidate(Candidate):
    """The reply given to the most similar training message (by sentence embedding)."""

    name = "nn_reply"
    kind = "cheap"
    task = "generate"

    def __init__(self, encoder: str = DEFAULT_ENCODER) -> None:
        self.encoder = encoder

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> NearestReplyCandidate:
        self.replies_ = self._training_answers(train)
        self.vectors_ = embed_texts(input_texts(train), self.encoder)
        return self

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()
        started = time.perf_counter()
        nearest = nearest_neighbours(embed_texts(input_texts(frame), self.encoder), self.vectors_, 1)
        replies = [self.replies_[row[0]] for row in nearest]
        return generation_predictions(frame, replies, (time.perf_counter() - started) * 1000 / max(len(frame), 1))
