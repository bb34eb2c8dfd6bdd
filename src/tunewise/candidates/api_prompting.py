"""The four ``api_*`` candidates: zero- and few-shot classification and generation through an
OpenAI-compatible endpoint, on :class:`~tunewise.candidates.api.ApiCandidate` (requests, retries,
cache, spending cap).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from tunewise.candidates.api import ApiCandidate
from tunewise.candidates.api_answers import label_probabilities, map_to_label
from tunewise.candidates.api_client import (
    CHARS_PER_TOKEN,
    ApiRow,
)
from tunewise.candidates.base import (
    input_texts,
    register_candidate,
)
from tunewise.candidates.generating import DEFAULT_GENERATE_SYSTEM_PROMPT
from tunewise.candidates.label_scoring import DEFAULT_CLASSIFY_SYSTEM_PROMPT
from tunewise.candidates.llm_base import embed_texts, label_display_name, label_display_names, nearest_neighbours
from tunewise.llm.chat import contexts as _contexts
from tunewise.models.loading import DEFAULT_ENCODER

__all__ = ["ApiFewShotClassifier", "ApiFewShotGenerator", "ApiZeroShotClassifier", "ApiZeroShotGenerator"]


class _ApiClassifier(ApiCandidate):
    task = "classify"
    # A failed row ("") or an invalid answer (the reply) is a prediction outside labels_, with score 0 and
    # uniform proba: kept and counted wrong (evaluation adds such predictions to its label list);
    # tunewise.candidates.registry.check_predictions lets such rows through for candidates with this flag.
    may_answer_outside_labels = True

    def _fit_labels(self, train: pd.DataFrame) -> None:
        self.labels_ = sorted(set(self._training_answers(train)))
        self.label_names_ = label_display_names(self.name, self.labels_)
        head = self.system_prompt or DEFAULT_CLASSIFY_SYSTEM_PROMPT
        about = f"\n{self.task_description.strip()}" if self.task_description else ""
        listing = "\n".join(f"- {name}" for name in self.label_names_)
        self.system_prompt_ = (
            f"{head}{about}\nAnswer with exactly one category from this list, written as it "
            f"appears, and nothing else:\n{listing}"
        )
        self.max_tokens_ = 16 + max(math.ceil(len(name) / 2) for name in self.label_names_)

    def _ladder(self) -> list[tuple[bool, bool]]:
        structured = [True, False] if self.structured_output else [False]
        logprobs = [True, False] if self.top_logprobs > 0 else [False]
        return [(s, lp) for s in structured for lp in logprobs]

    def _schema(self) -> dict[str, Any]:
        return {
            "type": "json_schema",
            "json_schema": {
                "name": "category",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"label": {"type": "string", "enum": list(self.label_names_)}},
                    "required": ["label"],
                    "additionalProperties": False,
                },
            },
        }

    def _schema_tokens(self) -> int:
        return math.ceil(len(json.dumps(self._schema())) / CHARS_PER_TOKEN) if self.structured_output else 0

    def _decoding(self, features: tuple[bool, bool]) -> dict[str, Any]:
        out = super()._decoding(features)
        if features[0]:
            out["response_format"] = self._schema()
        if features[1]:
            out["logprobs"] = True
            out["top_logprobs"] = int(self.top_logprobs)
        return out

    def _max_tokens(self) -> int:
        return self.max_tokens_

    def _answer(self, row: ApiRow) -> dict[str, Any]:
        n = len(self.labels_)
        uniform = [1.0 / n] * n
        if row.status != "ok":
            return {"prediction": "", "score": 0.0, "proba": uniform, "status": "failed"}
        label, value = map_to_label(row.content, self.labels_, self.label_names_)
        if label is None:  # the answer as written (a JSON reply's label value), counted wrong
            return {"prediction": value.strip(), "score": 0.0, "proba": uniform, "status": "invalid"}
        index = self.labels_.index(label)
        proba = label_probabilities(index, self.label_names_, row.logprobs, value)
        return {"prediction": label, "score": float(proba[index]), "proba": proba.tolist(), "status": "ok"}

    def info(self) -> dict[str, Any]:
        out = super().info()
        invalid = [r for r in self.rows_ if r["status"] == "invalid"]
        n = len(self.rows_)
        out["invalid"] = {
            "n": len(invalid),
            "share": len(invalid) / n if n else 0.0,
            "examples": [{"id": r["id"], "reply": r["reply"]} for r in invalid[:5]],
        }
        structured, logprobs = self.features_ if self.features_ is not None else (None, None)
        out["features"] = {"structured_output": structured, "logprobs": logprobs}
        return out

    def _user_turns(self, frame: pd.DataFrame) -> list[tuple[list[dict], list[str], str]]:
        return [(turns, system, text) for text, (turns, system) in zip(input_texts(frame), _contexts(frame))]


@register_candidate
class ApiZeroShotClassifier(_ApiClassifier):
    """The label list in the system prompt; the endpoint's model answers one label."""

    name = "api_zero_shot"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        usd_per_million_input_tokens: float = 0.0,
        usd_per_million_output_tokens: float = 0.0,
        max_usd: float | None = 10.0,
        max_usd_project: float | None = None,
        ledger: str | None = None,
        max_concurrency: int = 4,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        cache_dir: str | None = None,
        no_cache: bool = False,
        temperature: float = 0.0,
        top_logprobs: int = 5,
        structured_output: bool = True,
        tokenizer: Any = None,
        system_prompt: str | None = None,
        task_description: str | None = None,
        batch_size: int = 8,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.usd_per_million_input_tokens = usd_per_million_input_tokens
        self.usd_per_million_output_tokens = usd_per_million_output_tokens
        self.max_usd = max_usd
        self.max_usd_project = max_usd_project
        self.ledger = ledger
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cache_dir = cache_dir
        self.no_cache = no_cache
        self.temperature = temperature
        self.top_logprobs = top_logprobs
        self.structured_output = structured_output
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.batch_size = batch_size

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> ApiZeroShotClassifier:
        self._fit_labels(train)
        self._fit_endpoint()
        return self

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        return [
            [
                {"role": "system", "content": "\n\n".join([self.system_prompt_, *system])},
                *turns,
                {"role": "user", "content": text},
            ]
            for turns, system, text in self._user_turns(frame)
        ]


@register_candidate
class ApiFewShotClassifier(_ApiClassifier):
    """Zero-shot plus the ``few_shot_k`` most similar training examples as earlier turns."""

    name = "api_few_shot"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        usd_per_million_input_tokens: float = 0.0,
        usd_per_million_output_tokens: float = 0.0,
        max_usd: float | None = 10.0,
        max_usd_project: float | None = None,
        ledger: str | None = None,
        max_concurrency: int = 4,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        cache_dir: str | None = None,
        no_cache: bool = False,
        temperature: float = 0.0,
        top_logprobs: int = 5,
        structured_output: bool = True,
        tokenizer: Any = None,
        system_prompt: str | None = None,
        task_description: str | None = None,
        batch_size: int = 8,
        encoder: str = DEFAULT_ENCODER,
        few_shot_k: int = 5,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.usd_per_million_input_tokens = usd_per_million_input_tokens
        self.usd_per_million_output_tokens = usd_per_million_output_tokens
        self.max_usd = max_usd
        self.max_usd_project = max_usd_project
        self.ledger = ledger
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cache_dir = cache_dir
        self.no_cache = no_cache
        self.temperature = temperature
        self.top_logprobs = top_logprobs
        self.structured_output = structured_output
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.batch_size = batch_size
        self.encoder = encoder
        self.few_shot_k = few_shot_k

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> ApiFewShotClassifier:
        self._fit_labels(train)
        self._fit_endpoint()
        self.shot_texts_ = input_texts(train)
        self.shot_answers_ = [label_display_name(a) for a in self._training_answers(train)]
        self.shot_vectors_ = embed_texts(self.shot_texts_, self.encoder)
        return self

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        return _few_shot_conversations(self, frame, self.shot_answers_)


def _few_shot_conversations(candidate: Any, frame: pd.DataFrame, answers: Sequence[str]) -> list[list[dict[str, str]]]:
    """System prompt, the ``few_shot_k`` nearest training pairs (the nearest last), earlier turns, the message."""
    texts = input_texts(frame)
    if not texts:
        return []
    neighbours = nearest_neighbours(
        embed_texts(texts, candidate.encoder), candidate.shot_vectors_, candidate.few_shot_k
    )
    out = []
    for text, (turns, system), near in zip(texts, _contexts(frame), neighbours):
        shots = []
        for j in near[::-1]:  # the most similar example sits right before the message
            shots += [
                {"role": "user", "content": candidate.shot_texts_[j]},
                {"role": "assistant", "content": answers[j]},
            ]
        out.append(
            [
                {"role": "system", "content": "\n\n".join([candidate.system_prompt_, *system])},
                *shots,
                *turns,
                {"role": "user", "content": text},
            ]
        )
    return out


class _ApiGenerator(ApiCandidate):
    task = "generate"

    def _fit_prompt(self) -> None:
        head = self.system_prompt or DEFAULT_GENERATE_SYSTEM_PROMPT
        self.system_prompt_ = f"{head}\n{self.task_description.strip()}" if self.task_description else head

    def _max_tokens(self) -> int:
        return int(self.max_new_tokens)

    def _answer(self, row: ApiRow) -> dict[str, Any]:
        if row.status != "ok":
            return {"prediction": "", "status": "failed"}
        return {"prediction": row.content.strip(), "status": "ok"}


@register_candidate
class ApiZeroShotGenerator(_ApiGenerator):
    """System prompt + the message (and its earlier turns)."""

    name = "api_zero_shot_gen"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        usd_per_million_input_tokens: float = 0.0,
        usd_per_million_output_tokens: float = 0.0,
        max_usd: float | None = 10.0,
        max_usd_project: float | None = None,
        ledger: str | None = None,
        max_concurrency: int = 4,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        cache_dir: str | None = None,
        no_cache: bool = False,
        temperature: float = 0.0,
        tokenizer: Any = None,
        system_prompt: str | None = None,
        task_description: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 128,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.usd_per_million_input_tokens = usd_per_million_input_tokens
        self.usd_per_million_output_tokens = usd_per_million_output_tokens
        self.max_usd = max_usd
        self.max_usd_project = max_usd_project
        self.ledger = ledger
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cache_dir = cache_dir
        self.no_cache = no_cache
        self.temperature = temperature
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> ApiZeroShotGenerator:
        self._training_answers(train)  # the contract's checks on the training frame
        self._fit_prompt()
        self._fit_endpoint()
        return self

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        return [
            [
                {"role": "system", "content": "\n\n".join([self.system_prompt_, *system])},
                *turns,
                {"role": "user", "content": text},
            ]
            for text, (turns, system) in zip(input_texts(frame), _contexts(frame))
        ]


@register_candidate
class ApiFewShotGenerator(_ApiGenerator):
    """The ``few_shot_k`` most similar training (message, reply) pairs as earlier turns."""

    name = "api_few_shot_gen"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        usd_per_million_input_tokens: float = 0.0,
        usd_per_million_output_tokens: float = 0.0,
        max_usd: float | None = 10.0,
        max_usd_project: float | None = None,
        ledger: str | None = None,
        max_concurrency: int = 4,
        timeout_s: float = 30.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        cache_dir: str | None = None,
        no_cache: bool = False,
        temperature: float = 0.0,
        tokenizer: Any = None,
        system_prompt: str | None = None,
        task_description: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 128,
        encoder: str = DEFAULT_ENCODER,
        few_shot_k: int = 5,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.usd_per_million_input_tokens = usd_per_million_input_tokens
        self.usd_per_million_output_tokens = usd_per_million_output_tokens
        self.max_usd = max_usd
        self.max_usd_project = max_usd_project
        self.ledger = ledger
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cache_dir = cache_dir
        self.no_cache = no_cache
        self.temperature = temperature
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.task_description = task_description
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.encoder = encoder
        self.few_shot_k = few_shot_k

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> ApiFewShotGenerator:
        replies = self._training_answers(train)
        self._fit_prompt()
        self._fit_endpoint()
        self.shot_texts_ = input_texts(train)
        self.shot_replies_ = replies
        self.shot_vectors_ = embed_texts(self.shot_texts_, self.encoder)
        return self

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        return _few_shot_conversations(self, frame, self.shot_replies_)
