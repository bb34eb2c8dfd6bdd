"""Talking to an OpenAI-compatible endpoint: retries with Retry-After, the response cache, one row's outcome, a session of concurrent requests."""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.candidates.base import (
    Candidate,
    CandidateError,
)
from tunewise.core.artifacts import write_json
from tunewise.models.loading import tunewise_home

log = logging.getLogger("tunewise.candidates.api")


CHARS_PER_TOKEN = 4  # input tokens are estimated as characters / 4 unless a tokenizer is given


MESSAGE_OVERHEAD_TOKENS = 4  # chat formatting per message (role, separators), in the estimate


RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx


ABORT_STATUSES = {
    401: "the key was refused (401)",
    403: "access was refused (403)",
    404: "not found (404): does base_url end with /v1, and is the model name right?",
}


ABORT_KINDS = frozenset(f"HTTP {status}" for status in ABORT_STATUSES)


MAX_BACKOFF_S = 60.0  # longest exponential back-off between two attempts


MAX_RETRY_AFTER_S = 300.0  # a server's Retry-After is honoured up to this


CACHE_VERSION = 1


REASON_CHARS = 300


def retry_after_seconds(headers: Any, now: float | None = None) -> float | None:
    """Seconds a server asked to wait: ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP date."""
    if headers is None:
        return None
    get = headers.get
    millis = get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def cache_key(base_url: str, model: str, messages: Sequence[dict], decoding: dict[str, Any]) -> str:
    """sha256 of the endpoint, model, full messages and decoding settings (canonical JSON)."""
    payload = {
        "base_url": str(base_url).rstrip("/"),
        "model": model,
        "messages": list(messages),
        "decoding": decoding,
        "version": CACHE_VERSION,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResponseCache:
    """One JSON file per key (``<dir>/<key[:2]>/<key>.json``), written atomically and owner-only."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a damaged entry is a miss, not a crash
            log.warning("api cache: ignoring unreadable %s (%s)", path, type(exc).__name__)
            return None
        return entry if isinstance(entry, dict) and entry.get("version") == CACHE_VERSION else None

    def put(self, key: str, entry: dict[str, Any]) -> None:

        write_json(self.path(key), {**entry, "version": CACHE_VERSION}, private=True)


def default_cache_dir() -> Path:

    return tunewise_home() / "api_cache"


@dataclass
class ApiRow:
    status: str  # ok, failed
    content: str = ""
    logprobs: list[dict] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    latency_ms: float = 0.0
    attempts: int = 0
    cached: bool = False
    reason: str | None = None  # failed: what went wrong last (masked)
    kind: str | None = None  # failed: the reason's category (HTTP 500, timeout, ...)
    features: tuple[bool, bool] = (False, False)  # (structured output, logprobs) the answer was asked with

    def cache_entry(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "logprobs": self.logprobs,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_estimated": self.usage_estimated,
            "latency_ms": self.latency_ms,
            "features": list(self.features),
        }

    @classmethod
    def from_cache(cls, entry: dict[str, Any]) -> ApiRow:
        return cls(
            "ok",
            content=str(entry.get("content", "")),
            logprobs=entry.get("logprobs"),
            prompt_tokens=int(entry.get("prompt_tokens", 0)),
            completion_tokens=int(entry.get("completion_tokens", 0)),
            usage_estimated=bool(entry.get("usage_estimated", False)),
            latency_ms=float(entry.get("latency_ms", 0.0)),
            cached=True,
            features=tuple(entry.get("features", (False, False))),
        )  # type: ignore[arg-type]


class FeatureRefused(Exception):
    """The server answered 400 to a request with response_format or logprobs."""


@dataclass
class ApiSession:
    """The client and the shared state of one predict call; holds the key, never the candidate."""

    candidate: Candidate  # the api_* candidate that owns the session (tunewise.candidates.api)
    key: str | None = None
    client: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    pause_until: float = 0.0
    stopped: threading.Event = field(default_factory=threading.Event)  # set when the run stops: workers leave
    requests: int = 0  # HTTP requests sent, every attempt counted

    def open(self) -> ApiSession:
        try:
            from openai import OpenAI
        except ImportError:  # pragma: no cover - a core dependency
            raise CandidateError("the api_* candidates need the openai package: pip install 'openai>=1.30'") from None
        c = self.candidate
        self.key = os.environ.get(c.api_key_env) if c.api_key_env else None
        if c.api_key_env and not self.key:
            raise CandidateError(
                f"{c.name}: the environment variable {c.api_key_env} is empty or not set; put the "
                "endpoint's API key there (api_key_env names it; the key is never a setting)"
            )
        self.client = OpenAI(api_key=self.key or "no-key", base_url=c.base_url, max_retries=0, timeout=c.timeout_s)
        return self

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def mask(self, text: str) -> str:
        text = str(text)
        if self.key:
            text = text.replace(self.key, "***")
        text = re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)
        return text[:REASON_CHARS]

    def _hold(self) -> None:
        while True:  # a 429's Retry-After holds back every worker
            with self.lock:
                remaining = self.pause_until - time.monotonic()
            if remaining <= 0 or self.stopped.is_set():
                return
            self.stopped.wait(min(remaining, 0.5))

    def request(self, messages: list[dict], features: tuple[bool, bool], *, negotiating: bool = False) -> ApiRow:
        """One row: the request with retries. Raises FeatureRefused (negotiating and a 400) or
        CandidateError (401, 403, 404)."""
        import openai

        c = self.candidate
        started = time.perf_counter()
        attempts, reason, kind = 0, "", ""
        refused: str | None = None  # raised after the except block, so no exception keeps the client's as context
        while True:
            self._hold()
            if self.stopped.is_set():
                return ApiRow(
                    "failed",
                    attempts=attempts,
                    reason="run stopped",
                    kind="stopped",
                    features=features,
                    latency_ms=(time.perf_counter() - started) * 1000,
                )
            attempts += 1
            with self.lock:
                self.requests += 1
            wait_at_least = 0.0
            token_param = c.token_param_
            params = {"model": c.model, "messages": messages, **c._request_decoding(features, token_param)}
            sent = time.perf_counter()
            try:
                response = self.client.chat.completions.create(**params)
                latency_ms = (time.perf_counter() - sent) * 1000
                return self._row(response, messages, features, attempts, latency_ms)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                said = f"{exc.message} {json.dumps(exc.body, default=str) if exc.body is not None else ''}"
                if token_param == "max_completion_tokens" and "max_completion_tokens" in said:
                    # an older server: ask again with the older name, and keep it for every later request
                    with self.lock:
                        c.token_param_ = "max_tokens"
                    log.info("%s: the server refused max_completion_tokens; sending max_tokens instead", c.name)
                    continue
                if isinstance(exc, openai.UnprocessableEntityError):
                    return ApiRow(
                        "failed",
                        attempts=attempts,
                        reason=self.mask(f"HTTP 422: {said}"),
                        kind="HTTP 422",
                        features=features,
                        latency_ms=(time.perf_counter() - started) * 1000,
                    )
                kind = "HTTP 400"
                if negotiating and (features[0] or features[1]):
                    refused = self.mask(exc.message)
                else:
                    return ApiRow(
                        "failed",
                        attempts=attempts,
                        reason=self.mask(f"HTTP 400: {exc.message}"),
                        kind="HTTP 400",
                        features=features,
                        latency_ms=(time.perf_counter() - started) * 1000,
                    )
            except openai.APIStatusError as exc:
                status = exc.status_code
                kind, reason = f"HTTP {status}", self.mask(f"HTTP {status}: {exc.message}")
                if status in ABORT_STATUSES:
                    self.stopped.set()
                    where = f"; the key is read from ${c.api_key_env}" if status in (401, 403) and c.api_key_env else ""
                    refused = (
                        f"{c.name}: {c.base_url} model {c.model!r}: {ABORT_STATUSES[status]}{where} "
                        f"({self.mask(exc.message)})"
                    )
                elif status not in RETRY_STATUSES and status < 500:
                    return ApiRow(
                        "failed",
                        attempts=attempts,
                        reason=reason,
                        kind=kind,
                        features=features,
                        latency_ms=(time.perf_counter() - started) * 1000,
                    )
                after = retry_after_seconds(exc.response.headers if exc.response is not None else None)
                if after is not None and refused is None:
                    wait_at_least = min(after, MAX_RETRY_AFTER_S)
                    if status == 429:
                        with self.lock:
                            self.pause_until = max(self.pause_until, time.monotonic() + wait_at_least)
            except openai.APITimeoutError:
                kind, reason = "timeout", f"no answer within timeout_s={c.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                kind, reason = "connection", self.mask(f"connection failed: {exc.message}")
            except (
                ValueError,
                TypeError,
                AttributeError,
                IndexError,
                KeyError,
                openai.APIResponseValidationError,
            ) as exc:
                kind, reason = "malformed answer", self.mask(f"malformed answer: {type(exc).__name__}: {exc}")
            if refused is not None:
                if kind in ABORT_KINDS:
                    raise CandidateError(refused)
                raise FeatureRefused(refused)
            if attempts > c.max_retries:
                return ApiRow(
                    "failed",
                    attempts=attempts,
                    reason=reason,
                    kind=kind,
                    features=features,
                    latency_ms=(time.perf_counter() - started) * 1000,
                )
            delay = min(MAX_BACKOFF_S, c.backoff_s * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
            delay = max(delay, wait_at_least)
            log.info("%s: %s; retry %d of %d in %.2f s", c.name, reason, attempts, c.max_retries, delay)
            self.stopped.wait(delay)

    def _row(
        self, response: Any, messages: list[dict], features: tuple[bool, bool], attempts: int, latency_ms: float
    ) -> ApiRow:
        choice = response.choices[0]  # no choices: IndexError, a malformed answer
        content = choice.message.content
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise TypeError(f"message content is {type(content).__name__}, not text")
        tokens = None
        logprobs = getattr(choice, "logprobs", None)
        if features[1] and logprobs is not None and getattr(logprobs, "content", None):
            tokens = [
                {
                    "token": t.token,
                    "logprob": float(t.logprob),
                    "top_logprobs": [{"token": a.token, "logprob": float(a.logprob)} for a in (t.top_logprobs or [])],
                }
                for t in logprobs.content
            ]
        usage = getattr(response, "usage", None)
        estimated = usage is None or usage.prompt_tokens is None or usage.completion_tokens is None
        if estimated:
            prompt_tokens = self.candidate._estimate_input_tokens(messages)
            completion_tokens = math.ceil(len(content) / CHARS_PER_TOKEN)
        else:
            prompt_tokens, completion_tokens = int(usage.prompt_tokens), int(usage.completion_tokens)
        return ApiRow(
            "ok",
            content=content,
            logprobs=tokens,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            usage_estimated=estimated,
            latency_ms=latency_ms,
            attempts=attempts,
            features=features,
        )
