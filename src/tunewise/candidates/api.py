"""Prompted LLMs behind an OpenAI-compatible API: the model a team uses today, as a candidate.

The same prompts as the embedded prompted LLMs (``tunewise.candidates.prompting``), sent to any
OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, Azure's compatible route, vLLM,
llama.cpp's server, Ollama, ``tunewise serve``) with the maintained ``openai`` client:

- ``api_zero_shot`` (classify): the label list in the system prompt, one label asked for;
- ``api_few_shot`` (classify): the same, with the ``few_shot_k`` most similar training examples
  (by sentence embedding) as earlier user/assistant turns, the most similar right before the message;
- ``api_zero_shot_gen`` / ``api_few_shot_gen`` (generate): system prompt + message, and the
  ``few_shot_k`` most similar training (message, reply) pairs as earlier turns.

All four are ``kind = "baseline"`` and ``expensive = True``, like the embedded prompted LLMs, so
the baseline stage times them on a probe and scores a sample when the whole sets would not fit its
time budget, and ``evaluate.baseline`` can name one as the incumbent.

Requests (:class:`ApiSession`): a pool of ``max_concurrency`` threads sharing one sync ``OpenAI``
client (its own retries off). 429, 408, 409 and 5xx answers, timeouts, dropped connections and
malformed bodies are retried up to ``max_retries`` times with exponential back-off and jitter; a
``Retry-After`` (seconds or an HTTP date, or OpenAI's ``retry-after-ms``) is honoured as a lower
bound, and a 429's pause holds back every worker, not only the one that got it. A row whose request
still fails is kept, never dropped: its prediction is empty and it counts as wrong; ``info()``
reports how many rows failed, their share and why. 401, 403 and 404 stop the run at once with a
:class:`~tunewise.candidates.registry.CandidateError` (a wrong key, model or ``base_url`` fails every row).

Classification: the answer is mapped to a label by exact match, then by a normalised match (case,
underscores/hyphens/spaces, punctuation). Where the server supports it, the reply is constrained by
``response_format`` (a JSON schema whose ``label`` is an enum of the labels): the first request
asks for it, and a 400 falls back to a plain reply (likewise for ``logprobs``). A reply that maps
to no label is an *invalid answer*: the prediction is the raw reply, with score 0, counted wrong;
``info()`` reports the share. With token log-probabilities, ``score`` is the probability of the
answered label's tokens and ``proba`` spreads the rest over the other labels (the first answer
token's top alternatives to the labels they begin, the remainder evenly); without them a valid
answer has score 1.0.

Costs: tokens in and out come from each response's ``usage`` (estimated from characters when a
server sends none, and counted); the cost of each row is ``usage x`` the configured prices. The
predictions contract allows no extra column, so per-row tokens, cost, attempts and latency are in
:meth:`ApiCandidate.usage_frame`, and totals, the mean cost per row and failures in ``info()``;
:func:`monthly_cost` turns a cost per request into a monthly figure. ``max_usd`` caps the money a
candidate spends in one process: before each batch the cost of its uncached rows is estimated
(characters / 4 input tokens, or a tokenizer, plus ``max_tokens`` of output at the output price),
and a batch that would take the spend past the cap is not sent: :class:`SpendingCapReached` is
raised with the predictions made so far. :meth:`ApiCandidate.estimate_cost` gives the same
estimate for a whole frame before anything is sent. ``max_usd_project`` caps the money every run
of a project spends, summed in a ledger file in the project folder (:class:`SpendLedger`): each
batch reserves its estimate there before it is sent (so two processes cannot both pass the cap)
and settles the difference with what it really cost once answered.

The answer's length limit is sent as ``max_completion_tokens`` (OpenAI's current name); a server
that rejects that parameter (400 or 422 naming it) is asked again with ``max_tokens``, and the
candidate keeps using that.

Cache: one JSON file per request under ``cache_dir`` (default ``$TUNEWISE_HOME/api_cache``), written
atomically and owner-only, named by the sha256 of (base_url, model, the full messages, the decoding
settings), so a re-run makes no request and costs nothing; ``no_cache`` neither reads nor writes it.
Only successful answers are cached: a re-run retries the rows that failed.

The key: only the name of the environment variable holding it (``api_key_env``) is a setting. The
value is read when requests start, lives in the request session only, and is masked in every
recorded reason, log line and exception message.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.api_answers import label_probabilities, map_to_label
from tunewise.candidates.api_client import (
    CHARS_PER_TOKEN,
    MESSAGE_OVERHEAD_TOKENS,
    ApiRow,
    ApiSession,
    FeatureRefused,
    ResponseCache,
    cache_key,
    default_cache_dir,
    log,
)
from tunewise.candidates.api_spending import SpendingCapReached, SpendLedger, monthly_cost
from tunewise.candidates.base import (
    PREDICTION_COLUMNS,
    Candidate,
    CandidateError,
    generation_predictions,
)
from tunewise.config.baseline_section import ApiLlmConfig
from tunewise.models.loading import resolve_llm

__all__ = [
    "ApiLlmConfig",
    "ResponseCache",
    "SpendLedger",
    "SpendingCapReached",
    "api_llm_settings",
    "cache_key",
    "label_probabilities",
    "map_to_label",
    "monthly_cost",
]


# ---------------------------------------------------------------------------------------------
# Settings


def api_llm_settings(section: ApiLlmConfig | dict[str, Any] | None) -> dict[str, Any]:
    """The constructor arguments of the api_* candidates from an ``api_llm`` section (or {})."""
    if section is None:
        return {}
    if isinstance(section, dict):
        section = ApiLlmConfig.model_validate(section)
    out = section.model_dump()
    out["ledger"] = str(section.ledger_path()) if section.ledger else None  # absolute: the stage's cwd may differ
    return out


# ---------------------------------------------------------------------------------------------
# Answers to labels


# ---------------------------------------------------------------------------------------------
# Retry-After, the cache


# ---------------------------------------------------------------------------------------------
# One row's outcome


# ---------------------------------------------------------------------------------------------
# The candidates


class ApiCandidate(Candidate):
    """Requests, cache, spending cap and usage shared by the four api_* candidates."""

    kind = "baseline"
    expensive = True

    # -- fit helpers

    def _fit_endpoint(self) -> None:
        if not self.base_url or not self.model:
            raise CandidateError(
                f"{self.name}: set base_url and model (the api_llm settings) to the OpenAI-compatible "
                "endpoint and model to call"
            )
        for name, minimum in (("max_concurrency", 1), ("batch_size", 1), ("max_retries", 0)):
            if int(getattr(self, name)) < minimum:
                raise CandidateError(f"{self.name}: {name} must be at least {minimum}")
        if self.timeout_s <= 0:
            raise CandidateError(f"{self.name}: timeout_s must be positive")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise CandidateError(
                f"{self.name}: the environment variable {self.api_key_env} is empty or not set; put "
                "the endpoint's API key there (api_key_env names it; the key is never a setting)"
            )
        try:
            import openai  # noqa: F401
        except ImportError:  # pragma: no cover - a core dependency
            raise CandidateError(f"{self.name}: needs the openai package: pip install 'openai>=1.30'") from None
        self.cache_dir_ = (
            None if self.no_cache else str(Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir())
        )
        self.tokenizer_ = self._load_tokenizer()
        self.rows_: list[dict[str, Any]] = []
        self.spent_usd_ = 0.0
        self.requests_ = 0
        self.token_param_ = "max_completion_tokens"
        if self.max_usd_project is not None and not self.ledger:
            raise CandidateError(
                f"{self.name}: max_usd_project needs the ledger file that sums a project's spending "
                "(set ledger; from a config it is the project folder's tunewise_api_spend.json)"
            )
        self.ledger_ = SpendLedger(self.ledger) if self.ledger else None
        ladder = self._ladder()
        self.features_: tuple[bool, bool] | None = ladder[0] if len(ladder) == 1 else None

    def _count_tokens(self, text: str) -> int:
        """Tokens of ``text``: characters / 4, or the tokenizer's count (a function returning a number,
        or a transformers tokenizer)."""
        if self.tokenizer_ is None:
            return math.ceil(len(text) / CHARS_PER_TOKEN)
        if hasattr(self.tokenizer_, "encode"):  # a transformers tokenizer
            counted = self.tokenizer_(text, add_special_tokens=False)
        else:
            counted = self.tokenizer_(text)
        return len(counted["input_ids"]) if not isinstance(counted, (int, np.integer)) else int(counted)

    def _load_tokenizer(self) -> Any:
        if self.tokenizer is None or callable(self.tokenizer):
            return self.tokenizer
        try:
            from transformers import AutoTokenizer

            spec = str(self.tokenizer)
            path = resolve_llm(spec).path if not Path(spec).expanduser().is_dir() else Path(spec).expanduser()
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to load gets one clear message
            raise CandidateError(
                f"{self.name}: cannot load tokenizer {self.tokenizer!r} for the cost estimate "
                f"({type(exc).__name__}: {exc}); leave tokenizer unset for characters / 4"
            ) from None

    # -- requests

    def _ladder(self) -> list[tuple[bool, bool]]:
        """Feature sets (structured output, logprobs) to try, most capable first."""
        return [(False, False)]

    def _decoding(self, features: tuple[bool, bool]) -> dict[str, Any]:
        # "max_tokens" names the setting here (and in the cache key) whatever parameter carries it
        return {"temperature": self.temperature, "max_tokens": self._max_tokens()}

    def _request_decoding(self, features: tuple[bool, bool], token_param: str) -> dict[str, Any]:
        decoding = self._decoding(features)
        decoding[token_param] = decoding.pop("max_tokens")
        return decoding

    def _max_tokens(self) -> int:
        raise NotImplementedError

    def _conversations(self, frame: pd.DataFrame) -> list[list[dict[str, str]]]:
        raise NotImplementedError

    def _key(self, messages: list[dict], features: tuple[bool, bool]) -> str:
        return cache_key(self.base_url, self.model, messages, self._decoding(features))

    def _cached(self, cache: ResponseCache | None, messages: list[dict]) -> ApiRow | None:
        if cache is None:
            return None
        ladder = self._ladder()
        order = ([self.features_] if self.features_ is not None else []) + [f for f in ladder if f != self.features_]
        for features in order:
            entry = cache.get(self._key(messages, features))
            if entry is not None:
                row = ApiRow.from_cache(entry)
                row.features = features
                if self.features_ is None:
                    self.features_ = features
                return row
        return None

    def _estimate_input_tokens(self, messages: list[dict]) -> int:
        return sum(self._count_tokens(str(m.get("content", ""))) + MESSAGE_OVERHEAD_TOKENS for m in messages) + 3

    def _schema_tokens(self) -> int:
        return 0

    def _usd(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (
            prompt_tokens * self.usd_per_million_input_tokens + completion_tokens * self.usd_per_million_output_tokens
        ) / 1e6

    def _estimate_usd(self, conversations: Sequence[list[dict]]) -> tuple[float, int, int]:
        """(usd, input tokens, output tokens at most) for sending ``conversations``."""
        tokens_in = sum(self._estimate_input_tokens(m) + self._schema_tokens() for m in conversations)
        tokens_out = self._max_tokens() * len(conversations)
        return self._usd(tokens_in, tokens_out), tokens_in, tokens_out

    def _negotiate(self, session: ApiSession, cache: ResponseCache | None, messages: list[dict]) -> ApiRow:
        """The first request: the most capable feature set the server accepts (a 400 steps down)."""
        row = None
        for features in self._ladder():
            try:
                row = session.request(messages, features, negotiating=True)
            except FeatureRefused as exc:
                log.info("%s: the server refused %s (%s); trying without", self.name, _feature_names(features), exc)
                continue
            if row.status == "ok":
                self.features_ = features
            break
        assert row is not None  # the ladder ends with a plain request, which is never refused as a feature
        if row.status == "ok" and cache is not None:
            cache.put(self._key(messages, row.features), row.cache_entry())
        return row

    def _send(self, session: ApiSession, cache: ResponseCache | None, messages: list[dict]) -> ApiRow:
        features = self.features_ if self.features_ is not None else (False, False)
        row = session.request(messages, features)
        if row.status == "ok" and cache is not None:
            cache.put(self._key(messages, features), row.cache_entry())
        return row

    def _complete(self, frame: pd.DataFrame) -> list[ApiRow]:
        """One row outcome per row of ``frame``, in order (cache, spending cap, concurrent requests)."""
        conversations = self._conversations(frame)
        n = len(conversations)
        rows: list[ApiRow | None] = [None] * n
        cache = None if self.cache_dir_ is None else ResponseCache(self.cache_dir_)
        session: ApiSession | None = None
        pool: ThreadPoolExecutor | None = None
        try:
            for start in range(0, n, self.batch_size):
                stop = min(n, start + self.batch_size)
                misses = []
                for i in range(start, stop):
                    rows[i] = self._cached(cache, conversations[i])
                    if rows[i] is None:
                        misses.append(i)
                if not misses:
                    continue
                estimate, _, _ = self._estimate_usd([conversations[i] for i in misses])
                if self.max_usd is not None and self.spent_usd_ + estimate > self.max_usd + 1e-12:
                    done = self._record(frame.iloc[:start], rows[:start])
                    raise SpendingCapReached(
                        f"{self.name}: spending cap reached: ${self.spent_usd_:.4f} spent, and the next batch of "
                        f"{len(misses)} uncached rows is estimated at ${estimate:.4f}, which would pass max_usd "
                        f"${self.max_usd:g}; stopped before it with {start} of {n} rows predicted (kept in "
                        "the error's predictions). Raise max_usd or score fewer rows (baseline.sample_size); "
                        "answers already received are cached and cost nothing again.",
                        done,
                        spent_usd=self.spent_usd_,
                        max_usd=float(self.max_usd),
                        estimate_usd=estimate,
                    )
                reserved = self._reserve_project(frame, rows, start, n, len(misses), estimate)
                spent_before = self.spent_usd_
                try:
                    if session is None:
                        session = ApiSession(self).open()
                        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix=self.name)
                    while self.features_ is None and misses:  # until one answer says what the server takes
                        first = misses.pop(0)
                        rows[first] = self._negotiate(session, cache, conversations[first])
                        self._spend(rows[first])
                    futures: dict[Future, int] = {
                        pool.submit(self._send, session, cache, conversations[i]): i for i in misses
                    }
                    pending = set(futures)
                    try:
                        while pending:
                            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                            for future in finished:
                                i = futures[future]
                                rows[i] = future.result()
                                self._spend(rows[i])
                    except BaseException:
                        session.stopped.set()
                        for future in pending:
                            future.cancel()
                        raise
                finally:  # the ledger keeps what the batch really cost, even when it stopped half-way
                    if self.ledger_ is not None and (reserved or self.spent_usd_ > spent_before):
                        self.ledger_.settle(self.spent_usd_ - spent_before - reserved, self._endpoint())
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            if session is not None:
                self.requests_ += session.requests
                session.close()
        return rows  # type: ignore[return-value]

    def _endpoint(self) -> str:
        return f"{self.model} @ {str(self.base_url).rstrip('/')}"

    def _reserve_project(
        self, frame: pd.DataFrame, rows: list[ApiRow | None], start: int, n: int, n_misses: int, estimate: float
    ) -> float:
        """Reserve a batch's estimate in the project's ledger (the amount reserved), or raise
        SpendingCapReached when it would take the project's total past ``max_usd_project``."""
        if self.ledger_ is None:
            return 0.0
        reserved, before = self.ledger_.reserve(estimate, self.max_usd_project, self._endpoint())
        if not reserved:
            done = self._record(frame.iloc[:start], rows[:start])
            raise SpendingCapReached(
                f"{self.name}: project spending cap reached: the project's runs have spent ${before:.4f} "
                f"(ledger {self.ledger_.path}), and the next batch of {n_misses} uncached rows is estimated at "
                f"${estimate:.4f}, which would pass max_usd_project ${self.max_usd_project:g}; stopped before it "
                f"with {start} of {n} rows predicted (kept in the error's predictions). Raise "
                "baseline.api_llm.max_usd_project; answers already received are cached and cost nothing again.",
                done,
                spent_usd=before,
                max_usd=float(self.max_usd_project),
                estimate_usd=estimate,
                scope="project",
            )
        return estimate if estimate > 0 else 0.0

    def _spend(self, row: ApiRow) -> None:
        if row.status == "ok" and not row.cached:
            self.spent_usd_ += self._usd(row.prompt_tokens, row.completion_tokens)

    # -- predictions and what is recorded

    def _answer(self, row: ApiRow) -> dict[str, Any]:
        """prediction, score, proba, status (ok, invalid, failed) of one row."""
        raise NotImplementedError

    def _record(self, frame: pd.DataFrame, rows: Sequence[ApiRow]) -> pd.DataFrame:
        """Predictions for ``frame`` from ``rows``, and each row's usage appended to ``rows_``."""
        if "id" not in frame.columns:
            raise CandidateError(f"record frame has no 'id' column; columns: {', '.join(map(str, frame.columns))}")
        ids = frame["id"].astype(str).tolist()
        answers = [self._answer(row) for row in rows]
        for id_, row, answer in zip(ids, rows, answers):
            self.rows_.append(
                {
                    "id": id_,
                    "status": answer["status"],
                    "cached": row.cached,
                    "attempts": row.attempts,
                    "prompt_tokens": row.prompt_tokens if row.status == "ok" else 0,
                    "completion_tokens": row.completion_tokens if row.status == "ok" else 0,
                    "usd": self._usd(row.prompt_tokens, row.completion_tokens) if row.status == "ok" else 0.0,
                    "usage_estimated": row.usage_estimated,
                    "latency_ms": row.latency_ms,
                    "reason": row.reason,
                    "kind": row.kind,
                    "reply": row.content[:200] if answer["status"] == "invalid" else None,
                }
            )
        latency = np.array([row.latency_ms for row in rows], dtype=np.float64)
        if self.task == "generate":
            return generation_predictions(frame, [a["prediction"] for a in answers], latency)
        return pd.DataFrame(
            {
                "id": ids,
                "prediction": [a["prediction"] for a in answers],
                "score": np.array([a["score"] for a in answers], dtype=np.float64),
                "proba": [a["proba"] for a in answers],
                "latency_ms": latency,
            },
            columns=list(PREDICTION_COLUMNS),
        )

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predictions (the contract of tunewise.candidates.registry); a failed row's prediction is empty and
        an invalid answer's is the raw reply, both with score 0 (see the module docstring)."""
        self._check_fitted()
        rows = self._complete(frame)
        return self._record(frame, rows)

    def estimate_cost(self, frame: pd.DataFrame) -> dict[str, Any]:
        """A dry run: what scoring ``frame`` would cost, nothing sent (cached rows cost nothing)."""
        self._check_fitted()
        conversations = self._conversations(frame)
        cache = None if self.cache_dir_ is None else ResponseCache(self.cache_dir_)
        features = self.features_
        misses = [m for m in conversations if self._cached(cache, m) is None]
        self.features_ = features  # a dry run decides nothing
        usd, tokens_in, tokens_out = self._estimate_usd(misses)
        remaining = None if self.max_usd is None else max(0.0, self.max_usd - self.spent_usd_)
        return {
            "rows": len(conversations),
            "cached_rows": len(conversations) - len(misses),
            "rows_to_request": len(misses),
            "input_tokens": int(tokens_in),
            "output_tokens_at_most": int(tokens_out),
            "usd": usd,
            "usd_per_row": usd / len(misses) if misses else 0.0,
            "method": (
                f"input: characters / {CHARS_PER_TOKEN} + {MESSAGE_OVERHEAD_TOKENS} a message"
                if self.tokenizer is None
                else f"input: tokenizer {self.tokenizer!r}"
            )
            + f"; output: max_tokens {self._max_tokens()} a row",
            "prices": self._prices(),
            "max_usd": self.max_usd,
            "spent_usd": self.spent_usd_,
            "fits_max_usd": remaining is None or usd <= remaining,
            **self._project_spend(usd),
        }

    def _project_spend(self, usd: float | None = None) -> dict[str, Any]:
        if self.ledger_ is None:
            return {"max_usd_project": self.max_usd_project, "project_spent_usd": None}
        spent = self.ledger_.total()
        out = {"max_usd_project": self.max_usd_project, "project_spent_usd": spent, "ledger": str(self.ledger_.path)}
        if usd is not None:
            out["fits_max_usd_project"] = self.max_usd_project is None or spent + usd <= self.max_usd_project + 1e-12
        return out

    def _prices(self) -> dict[str, float]:
        return {
            "usd_per_million_input_tokens": float(self.usd_per_million_input_tokens),
            "usd_per_million_output_tokens": float(self.usd_per_million_output_tokens),
        }

    def usage_frame(self) -> pd.DataFrame:
        """Every row predicted so far: id, status (ok, invalid, failed), cached, attempts, tokens, usd,
        latency_ms, reason (failed), reply (invalid)."""
        self._check_fitted()
        columns = [
            "id",
            "status",
            "cached",
            "attempts",
            "prompt_tokens",
            "completion_tokens",
            "usd",
            "usage_estimated",
            "latency_ms",
            "reason",
            "kind",
            "reply",
        ]
        return pd.DataFrame(self.rows_, columns=columns)

    def usd_per_row(self) -> float | None:
        """Mean cost of a row that got an answer (cached ones included: what a request costs)."""
        answered = [r["usd"] for r in self.rows_ if r["status"] != "failed"]
        return float(np.mean(answered)) if answered else None

    def monthly_cost(self, monthly_volume: float) -> dict[str, Any]:
        """The measured mean cost per row at ``monthly_volume`` requests a month."""
        per_row = self.usd_per_row()
        if per_row is None:
            raise CandidateError(f"{self.name}: no row has been answered yet; predict some rows first")
        return monthly_cost(per_row, monthly_volume)

    def info(self) -> dict[str, Any]:
        """What the baseline stage writes about this candidate beside its metrics (JSON-safe)."""
        self._check_fitted()
        rows = self.rows_
        n = len(rows)
        failed = [r for r in rows if r["status"] == "failed"]
        answered = [r for r in rows if r["status"] != "failed"]
        requested = [r for r in rows if not r["cached"]]
        latency = np.array([r["latency_ms"] for r in answered], dtype=np.float64)
        out: dict[str, Any] = {
            "endpoint": {"base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env},
            "rows": n,
            "requests": int(self.requests_),
            "retries": int(sum(max(0, r["attempts"] - 1) for r in requested)),
            "cached_rows": n - len(requested),
            "failed": {
                "n": len(failed),
                "share": len(failed) / n if n else 0.0,
                "reasons": dict(Counter(r["kind"] for r in failed)),
                "examples": [{"id": r["id"], "reason": r["reason"]} for r in failed[:5]],
            },
            "usage": {
                "prompt_tokens": int(sum(r["prompt_tokens"] for r in rows)),
                "completion_tokens": int(sum(r["completion_tokens"] for r in rows)),
                "estimated_usage_rows": int(sum(bool(r["usage_estimated"]) for r in answered)),
                "usd_total": float(sum(r["usd"] for r in rows)),
                "usd_per_row_mean": self.usd_per_row(),
                "usd_spent": float(self.spent_usd_),
                "max_usd": self.max_usd,
                **self._project_spend(),
                "prices": self._prices(),
                "priced": bool(self.usd_per_million_input_tokens or self.usd_per_million_output_tokens),
            },
            "latency_ms": (
                {
                    "mean": float(latency.mean()),
                    "p50": float(np.percentile(latency, 50)),
                    "p95": float(np.percentile(latency, 95)),
                }
                if len(latency)
                else {}
            ),
            "cache": {"dir": self.cache_dir_, "enabled": self.cache_dir_ is not None},
            "token_param": self.token_param_,
        }
        return out


def _feature_names(features: tuple[bool, bool]) -> str:
    names = [n for n, on in zip(("response_format", "logprobs"), features) if on]
    return " and ".join(names) or "a plain request"
