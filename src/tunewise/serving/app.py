"""``tunewise serve``: a run's candidates behind HTTP, traffic split between arms (A/B, canary).

The app (:func:`create_app`) is FastAPI on uvicorn:

- ``POST /v1/classify`` and an OpenAI-compatible ``POST /v1/chat/completions``;
- each request goes to an arm: sticky per ``user`` (sha256 of the user -> [0, 1) against the
  cumulative weights, so a user keeps their arm, and raising a canary's weight only moves users
  towards it), overridable per request (``arm``) for testing; the response names the arm and a
  request id;
- ``POST /v1/feedback`` (a correct label, thumbs up/down or a 1-5 rating; a repeat is stored once,
  a different label replaces the earlier one),
  ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /v1/arms``, ``POST /admin/arms`` (the
  weights, changed without a restart: ``tunewise promote`` / ``rollback`` call it; the admin key,
  or a loopback client without one);
- dynamic micro-batching: per arm, an asyncio queue; a worker takes what arrived within
  ``max_wait_ms`` (up to ``max_batch``) and runs one ``predict`` in a thread;
- every request, response, latency and arm goes to the log (:mod:`tunewise.monitoring.store`) before the
  response leaves, so no answered request is missing from it after a crash;
- safe defaults: 127.0.0.1, bounded body size, input length and max_tokens, an optional API key
  (read from the environment, never from the config file), no stack traces to clients; when a
  candidate arm fails, the incumbent answers and the failure is counted;
- hardening (issue 18): bounded chat history (turns, characters, the model's context length), a
  per-request timeout that also stops the model's computation (504), a body read timeout (408),
  an admin key for ``/admin/*`` and forced arms (loopback clients only without one), a Host
  header check against DNS rebinding when no API key is set, and a refusal to listen on a
  non-loopback address without an API key unless ``--insecure``.

Classification answers below the evaluation's out-of-scope threshold for that candidate
(evaluate/summary.json) are answered with the out-of-scope label: the bot hands over to a person
instead of guessing, as the evaluation measured.

Command: ``tunewise serve --run-id RUN [--arms incumbent=0.9,candidate=0.1]``, or for scripts and
tests without a config file ``python -m tunewise.serving.app RUN_DIR --port 8000 [--arms ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunewise.config.sections import EvaluateConfig, MonitorConfig, ServeConfig as _SectionServeConfig, config_from_dict
from tunewise.core.errors import TunewiseError
from tunewise.models.loading import quiet_known_warnings  # every command calls it too; the server when it starts
from tunewise.monitoring.feedback import CANDIDATE, INCUMBENT
from tunewise.serving.retrain import retrain_gate

_WORDS = re.compile(r"\S+")  # the "tokens" of a model without a tokenizer

__all__ = [
    "ArmSpec",
    "MonitorConfig",
    "ServeConfig",
    "ServeError",
    "ServedModel",
    "assign_arm",
    "check_arms",
    "check_bind",
    "create_app",
    "normalise_weights",
    "quiet_known_warnings",
    "load_models",
    "parse_arms",
    "resolve_arms",
    "run_server",
    "start_in_thread",
]

log = logging.getLogger("tunewise.serving.app")


class ServeError(TunewiseError, RuntimeError):
    """The server cannot start as asked; the message says what to change."""

    hint = "check the serve section of the config and the command's options; `tunewise serve --help` lists them"


ServeConfig = _SectionServeConfig  # the serve section, hardening settings included (issue 18)


def _widen_config(config: Any) -> ServeConfig:
    if config is None:
        return ServeConfig()
    if isinstance(config, ServeConfig):
        return config
    return ServeConfig(**config.model_dump())


# =============================================================================================
# Start-up checks: where to listen, which arms, which warnings


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: Any = None, insecure: bool = False) -> str | None:
    """Refuse (ServeError) to listen on a non-loopback ``host`` without an API key, unless
    ``insecure``; returns a warning to print when serving anyway, else None."""
    config = _widen_config(config)
    if _is_loopback(host):
        return None
    has_key = bool(os.environ.get(config.api_key_env))
    if has_key:
        if not os.environ.get(config.admin_key_env):
            return (f"listening on {host}; {config.admin_key_env} is not set, so /admin/arms (promote, rollback) "
                    "and forced arms answer loopback clients only")
        return None
    if not insecure:
        raise ServeError(f"refusing to listen on {host} without an API key: anyone who reaches the port could use "
                         f"the models and post feedback. Set {config.api_key_env} (and {config.admin_key_env} for "
                         "promote/rollback from other hosts), listen on 127.0.0.1, or pass --insecure to serve "
                         "without a key anyway")
    return (f"listening on {host} WITHOUT an API key (--insecure): anyone who reaches the port can use the models "
            "and post feedback, and the Host header is not checked")


def check_arms(run_dir: str | Path, specs: list[ArmSpec]) -> None:
    """Every arm's candidate exists: trained in ``train/<name>/adapter`` or a registered candidate
    (refitted at start). Raises ServeError naming the arm and the candidate; cheap (no model load)."""
    from tunewise.candidates.registry import CANDIDATES  # on use: loads scipy, sklearn

    run_dir = Path(run_dir)
    for spec in specs:
        trained = (run_dir / "train" / spec.candidate / "adapter" / "tunewise_train.json").exists()
        if not trained and spec.candidate not in CANDIDATES:
            raise ServeError(f"arm {spec.name!r}: candidate {spec.candidate!r} is not trained in {run_dir / 'train'} "
                             f"and is not a registered candidate (known: {', '.join(sorted(CANDIDATES))})")
        if not trained and not (run_dir / "split" / "train.parquet").exists():
            raise ServeError(f"arm {spec.name!r}: candidate {spec.candidate!r} is refitted on the run's split, and "
                             f"{run_dir / 'split' / 'train.parquet'} is not there")


# =============================================================================================
# Arms: which candidates, with which weights, and the sticky assignment


@dataclass(frozen=True)
class ArmSpec:
    name: str
    candidate: str
    weight: float
    max_batch: int | None = None  # None: ServeConfig.max_batch (the bench serves one arm one-at-a-time)


def parse_arms(text: str | Mapping[str, float] | None) -> dict[str, float] | None:
    """``"incumbent=0.9,candidate:encoder_ft=0.1"`` -> {"incumbent": 0.9, "candidate:encoder_ft": 0.1}."""
    if text is None or isinstance(text, Mapping):
        return dict(text) if text is not None else None
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.rpartition("=")
        if not sep or not name:
            raise ServeError(f"--arms: {part!r} is not ARM=WEIGHT (e.g. incumbent=0.9,candidate=0.1)")
        try:
            out[name.strip()] = float(weight)
        except ValueError:
            raise ServeError(f"--arms: weight {weight!r} of {name!r} is not a number") from None
    return out


def _gate_roles(run_dir: Path) -> dict[str, str | None]:
    summary_path = run_dir / "evaluate" / "summary.json"
    if not summary_path.exists():
        raise ServeError(f"{summary_path} not found: run `tunewise evaluate` before serving")
    gate = json.loads(summary_path.read_text()).get("gate", {})
    candidate = gate.get("candidate")
    decision_path = run_dir / "decide" / "decision.json"
    if decision_path.exists():
        candidate = json.loads(decision_path.read_text()).get("decision", {}).get("recommended") or candidate
    return {INCUMBENT: gate.get("baseline"), CANDIDATE: candidate}


def resolve_arms(run_dir: str | Path, arms: str | Mapping[str, float] | None) -> list[ArmSpec]:
    """Arm specs from ``--arms``: ``incumbent`` and ``candidate`` name the gate's baseline and the
    recommended candidate; any other arm name is a candidate name; ``ARM:CANDIDATE`` names both."""
    run_dir = Path(run_dir)
    weights = parse_arms(arms)
    roles = _gate_roles(run_dir)
    if weights is None:
        if roles[INCUMBENT] and roles[CANDIDATE] and roles[INCUMBENT] != roles[CANDIDATE]:
            weights = {INCUMBENT: 0.9, CANDIDATE: 0.1}
        else:
            weights = {INCUMBENT: 1.0}
    specs = []
    for key, weight in weights.items():
        name, _, candidate = key.partition(":")
        if not candidate:
            candidate = roles.get(name) if name in roles else name
        if not candidate:
            raise ServeError(f"arm {name!r}: the evaluation names no {name} (evaluate/summary.json gate); "
                             f"give it as {name}:CANDIDATE=WEIGHT")
        if not (weight >= 0 and math.isfinite(weight)):
            raise ServeError(f"arm {name!r}: weight must be a non-negative number, got {weight}")
        specs.append(ArmSpec(name=name, candidate=candidate, weight=float(weight)))
    if len({s.name for s in specs}) != len(specs):
        raise ServeError("arm names must be distinct")
    if not any(s.weight > 0 for s in specs):
        raise ServeError("at least one arm needs a positive weight")
    return specs


def normalise_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights scaled to sum to 1. Each must be a finite number >= 0 and at least one above 0;
    they are divided by the largest first, so huge values (1e308) do not overflow the sum.
    Raises ValueError saying what is wrong."""
    if not weights:
        raise ValueError("no weights given")
    values: dict[str, float] = {}
    for name, weight in weights.items():
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"weight of {name!r} is not a number: {weight!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {weight!r}")
        values[name] = value
    largest = max(values.values())
    if largest <= 0:
        raise ValueError("all weights are zero: at least one arm needs a positive weight")
    scaled = {name: value / largest for name, value in values.items()}
    total = math.fsum(scaled.values())
    out = {name: value / total for name, value in scaled.items()}
    if not all(math.isfinite(v) and v >= 0 for v in out.values()) or not math.isclose(math.fsum(out.values()), 1.0):
        raise ValueError(f"weights {dict(weights)} cannot be normalised")
    return out


def _unit_interval(key: str) -> float:
    # sha256, not hash(): Python salts str hashes per process, and replicas must agree.
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def assign_arm(key: str, weights: Mapping[str, float]) -> str:
    """The arm of ``key`` (a user): its point in [0, 1) against the cumulative weights, arms in name
    order. Sticky, the same in every replica, and when one arm's share grows the users who move
    only move towards it (for two arms)."""
    names = sorted(n for n, w in weights.items() if w > 0)
    if not names:
        raise ServeError("no arm has a positive weight")
    total = float(sum(weights[n] for n in names))
    point = _unit_interval(key) * total
    cumulative = 0.0
    for name in names:
        cumulative += weights[name]
        if point < cumulative:
            return name
    return names[-1]


# =============================================================================================
# Models


def _project_config(run_dir: Path, cfg: Any = None) -> Any:
    if cfg is not None:
        return cfg

    saved = run_dir / "config.json"
    if saved.exists():
        try:
            return config_from_dict(json.loads(saved.read_text()), base_dir=run_dir.parent.parent)
        except Exception as exc:  # noqa: BLE001 - defaults still serve the common case
            log.warning("run config %s not usable (%s); using default settings", saved, exc)
    return None


class ServedModel:
    """A fitted candidate, with the out-of-scope threshold the evaluation chose for it."""

    def __init__(self, name: str, candidate: Any, threshold: float | None, out_of_scope_label: str) -> None:
        self.name = name
        self.candidate = candidate
        self.task = candidate.task
        self.threshold = threshold if candidate.task == "classify" else None
        self.out_of_scope_label = out_of_scope_label
        self.labels = list(getattr(candidate, "labels_", []) or [])

    def feedback_labels(self) -> set[str]:
        return {*self.labels, self.out_of_scope_label}

    @property
    def generation_limit(self) -> int | None:
        """Most tokens the model itself generates (its max_new_tokens), when it has one."""
        limit = getattr(self.candidate, "max_new_tokens", None)
        if limit is None and hasattr(self.candidate, "_config"):  # fine-tuned: the train config's
            limit = getattr(self.candidate._config(), "max_new_tokens", None)
        return int(limit) if limit else None

    @property
    def context_tokens(self) -> int | None:
        """The context length in tokens (position limit) of a model that reads the whole chat history
        into its prompt: a causal LM (prompted or fine-tuned). None for the others: an encoder
        classifier truncates its input by design, cheap models have no limit."""
        model = getattr(self.candidate, "model_", None)
        can_generate = getattr(model, "can_generate", None)
        try:
            causal = bool(callable(can_generate) and can_generate())
        except Exception:  # noqa: BLE001 - a model that cannot say is not limited here
            causal = False
        if not causal:
            return None
        config = getattr(model, "config", None)
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        tokenizer = getattr(self.candidate, "tokenizer_", None)
        value = getattr(tokenizer, "model_max_length", None)
        if isinstance(value, int) and 0 < value < 10**6:  # tokenizers say 1e30 for "none"
            return value
        return None

    def prompt_overhead_tokens(self) -> int:
        """Tokens the model adds to every prompt: its own system prompt, and the reply it may generate."""
        system = getattr(self.candidate, "system_prompt_", None)
        overhead = self.count_tokens(system) if isinstance(system, str) and system else 0
        return overhead + (self.generation_limit or 0)

    def install_deadline_hooks(self) -> int:
        """Let a running model call be stopped: a forward pre-hook on the torch model and on each of
        its layers (the members of its ModuleLists) raises :class:`RequestDeadlineExceeded` once the
        deadline the serving thread set (:func:`_deadline_scope`) has passed. A generation stops at
        its next token, a long prompt within one layer. Returns the number of hooks (0: not a torch
        model; such calls run to their end, the client still gets its 504 on time)."""
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            return 0
        roots = [v for v in vars(self.candidate).values() if isinstance(v, torch.nn.Module)]
        hooks = 0
        for root in roots:
            if getattr(root, "_tunewise_deadline_hooks", 0):
                hooks += root._tunewise_deadline_hooks
                continue
            targets = [root]
            for module in root.modules():
                if isinstance(module, torch.nn.ModuleList):
                    targets.extend(module.children())
            for module in targets:
                module.register_forward_pre_hook(_deadline_hook)
            root._tunewise_deadline_hooks = len(targets)  # once per torch model, which candidates may share
            hooks += len(targets)
        return hooks

    def count_tokens(self, text: str) -> int:
        """Tokens of the model's tokenizer; words for a model without one (nn_reply)."""
        tokenizer = getattr(self.candidate, "tokenizer_", None)
        if tokenizer is not None:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return len(_WORDS.findall(text))

    def cut(self, text: str, max_tokens: int) -> tuple[str, int, bool]:
        """``text`` cut to ``max_tokens`` tokens: (reply, its token count, whether it was cut)."""
        tokenizer = getattr(self.candidate, "tokenizer_", None)
        if tokenizer is not None:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= max_tokens:
                return text, len(ids), False
            return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True), max_tokens, True
        words = list(_WORDS.finditer(text))
        if len(words) <= max_tokens:
            return text, len(words), False
        return text[: words[max_tokens - 1].end()], max_tokens, True

    def predict(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """items: (input, context JSON) -> one answer dict per item, in order."""
        frame = pd.DataFrame({"id": [str(i) for i in range(len(items))], "input": [t for t, _ in items],
                              "context": [c for _, c in items]})
        predictions = self.candidate.predict(frame)
        out = []
        for row in predictions.itertuples(index=False):
            score = float(row.score) if row.score is not None and np.isfinite(row.score) else None
            out_of_scope = self.threshold is not None and score is not None and score < self.threshold
            out.append({"prediction": self.out_of_scope_label if out_of_scope else str(row.prediction),
                        "model_prediction": str(row.prediction), "score": score, "out_of_scope": bool(out_of_scope)})
        return out


class RequestDeadlineExceeded(RuntimeError):
    """A model call ran past the deadline of the requests it serves (see ``serve.request_timeout_s``)."""


_DEADLINE = threading.local()  # per model thread: the monotonic time its current call must end by


def _deadline_hook(module: Any, args: Any) -> None:
    deadline = getattr(_DEADLINE, "at", None)
    if deadline is not None and time.monotonic() > deadline:
        raise RequestDeadlineExceeded("the request timed out; the model call was stopped")


@contextlib.contextmanager
def _deadline_scope(deadline: float | None):
    previous = getattr(_DEADLINE, "at", None)
    _DEADLINE.at = deadline
    try:
        yield
    finally:
        _DEADLINE.at = previous


def load_models(run_dir: str | Path, candidates: set[str], cfg: Any = None) -> dict[str, ServedModel]:
    """Fitted candidates by name (``tunewise.candidates.factory.run_candidate``): fine-tuned ones from
    train/<name>/adapter (no refit), cheap and prompted ones refitted on the run's split (seconds for
    the cheap ones), the ensemble from its members."""
    from tunewise.candidates.factory import run_candidate  # on use: loads scipy, sklearn
    from tunewise.candidates.registry import CANDIDATES, CandidateError  # on use: loads scipy, sklearn

    run_dir = Path(run_dir)
    cfg = _project_config(run_dir, cfg)
    summary_path = run_dir / "evaluate" / "summary.json"
    evaluated = {c["name"]: c for c in json.loads(summary_path.read_text()).get("candidates", [])} if summary_path.exists() else {}
    oos_label = (cfg.evaluate if cfg is not None else EvaluateConfig()).out_of_scope_label
    models: dict[str, ServedModel] = {}
    for name in sorted(candidates):
        started = time.perf_counter()
        if name not in CANDIDATES:
            raise ServeError(f"candidate {name!r}: not trained in {run_dir / 'train'} and not a registered "
                             f"candidate (known: {', '.join(sorted(CANDIDATES))})")
        try:
            candidate = run_candidate(name, cfg, run_dir)
        except CandidateError as exc:
            raise ServeError(f"candidate {name!r}: {exc}") from None
        threshold = evaluated.get(name, {}).get("out_of_scope_threshold")
        models[name] = ServedModel(name, candidate, threshold, oos_label)
        log.info("loaded %s in %.1fs", name, time.perf_counter() - started)
    tasks = {m.task for m in models.values()}
    if len(tasks) > 1:
        raise ServeError(f"arms mix tasks {sorted(tasks)}: serve candidates of one task")
    return models


# =============================================================================================
# Micro-batching


@dataclass
class _Pending:
    item: tuple[str, str]
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # time.monotonic() by which the request must be answered


class MicroBatcher:
    """Per arm: requests that arrive while a batch waits (``max_wait_ms``) or runs go into the next
    batch; one ``predict`` per batch in the model's thread, so the event loop never blocks."""

    def __init__(self, model: ServedModel, executor: concurrent.futures.Executor, max_batch: int, max_wait_ms: float,
                 on_batch: Any = None, batch_threads: int | None = None, batch_threads_min_rows: int = 8) -> None:
        self.model = model
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.batch_threads = batch_threads
        self.batch_threads_min_rows = batch_threads_min_rows
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def submit(self, text: str, context: str, deadline: float | None = None) -> tuple[dict[str, Any], int]:
        """The answer and the size of the batch it came in. ``deadline`` (time.monotonic()): a request
        still queued then is dropped, and a model call runs only until the last deadline of its batch."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending((text, context), future, deadline=deadline))
        return await future

    def _predict(self, items: list[tuple[str, str]], deadline: float | None = None) -> list[dict[str, Any]]:
        """One model call; a large batch gets ``batch_threads`` (set per call in the model's thread):
        on CPU one request's matrices are too small to share across cores, a full batch's are not."""
        with _deadline_scope(deadline):
            if deadline is not None and time.monotonic() > deadline:
                raise RequestDeadlineExceeded("the request timed out before the model started")
            if not self.batch_threads or len(items) < self.batch_threads_min_rows:
                return self.model.predict(items)
            from tunewise.candidates.finetuned import torch_threads  # on use: loads scipy, sklearn

            with torch_threads(self.batch_threads):
                return self.model.predict(items)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            # requests that timed out while queued (their handler answered 504) are not computed
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            deadlines = [p.deadline for p in batch]
            # the batch runs while any of its requests still waits; None: no deadline
            deadline = None if any(d is None for d in deadlines) else max(deadlines)
            try:
                results = await loop.run_in_executor(self.executor, self._predict, [p.item for p in batch], deadline)
            except Exception as exc:  # noqa: BLE001
                if len(batch) == 1 or isinstance(exc, RequestDeadlineExceeded):
                    for p in batch:
                        p.future.done() or p.future.set_exception(exc)
                    continue
                # one by one, so a single input the model chokes on fails alone, not its batch-mates
                for p in batch:
                    if p.future.done():
                        continue
                    try:
                        (result,) = await loop.run_in_executor(self.executor, self._predict, [p.item], p.deadline)
                    except Exception as one:  # noqa: BLE001
                        p.future.done() or p.future.set_exception(one)
                    else:
                        p.future.done() or p.future.set_result((result, 1))
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            for p, result in zip(batch, results):
                if not p.future.done():
                    p.future.set_result((result, len(batch)))


# =============================================================================================
# Request and response models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _UnicodeText(BaseModel):
    """Refuses (422) a body whose strings hold an unpaired UTF-16 surrogate. Python's json, which
    parses the bodies, accepts an escape such as "\\ud800" alone, and pydantic lets it through in
    some fields (a chat message's content, classify's context); the string has no UTF-8 form, so
    the model and the request log failed on it: 503 and no log row (issue 18, found while fuzzing
    the schema). A pair ("\\ud83d\\ude00") is one character and passes."""

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        stack = [data]  # a loop, not recursion: nesting as deep as json accepts cannot overflow it
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError("a string holds an unpaired surrogate (a \\ud800-\\udfff escape without "
                                     "its pair), which is not Unicode text") from None
            elif isinstance(value, dict):
                stack.extend(value.keys())
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
        return data


class ClassifyRequest(_Strict, _UnicodeText):
    text: str = Field(..., min_length=1, description="the message to classify")
    user: str | None = Field(None, max_length=256, description="stable user id: the same user keeps the same arm")
    arm: str | None = Field(None, description="force an arm (testing); default: the user's sticky arm")
    context: list[dict[str, Any]] | None = Field(None, description="earlier chat messages, OpenAI format")


class ClassifyResponse(BaseModel):
    request_id: str
    arm: str = Field(..., description="the arm assigned to this request")
    served_by: str = Field(..., description="the arm that answered (the incumbent when the assigned arm failed)")
    model: str = Field(..., description="candidate name")
    label: str = Field(..., description="the answer; the out-of-scope label when the model was not confident")
    score: float | None = Field(None, description="probability of the model's label")
    out_of_scope: bool = Field(False, description="True when the score fell below the evaluation's threshold")
    model_label: str | None = Field(None, description="the model's own label before the threshold")
    latency_ms: float
    dropped_turns: int = Field(0, description="oldest context turns dropped to fit the model's context "
                               "(serve.context_overflow: truncate)")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # OpenAI content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in (None, "text"))
        return self.content or ""


class ChatRequest(_UnicodeText):
    # extra allowed: OpenAI clients send temperature, top_p, n, ... that a deterministic model ignores
    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="an arm name forces that arm; anything else is ignored")
    messages: list[ChatMessage] = Field(..., min_length=1)
    user: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1, description="most tokens in the reply (OpenAI's older name)")
    max_completion_tokens: int | None = Field(None, ge=1, description="most tokens in the reply")
    stream: bool = False
    arm: str | None = None


class FeedbackRequest(_Strict):
    request_id: str = Field(..., min_length=1, max_length=64)
    label: str | None = Field(None, description="the correct label (classify)")
    thumbs: Literal["up", "down"] | None = None
    rating: float | None = Field(None, ge=1, le=5, description="1 (bad) to 5 (good)")


class FeedbackResponse(BaseModel):
    request_id: str
    stored: list[str] = Field(..., description="feedback kinds stored now (new, or a label that replaced another)")
    duplicates: list[str] = Field(..., description="feedback kinds already stored before (kept once): the same "
                                  "label again, or any second thumbs or rating")
    replaced: list[str] = Field(default_factory=list, description="kinds whose earlier value this feedback "
                                "replaced: a different label for the same request (the latest label wins; "
                                "the earlier one stays in the feedback history)")


class ArmsUpdate(_Strict):
    weights: dict[str, float]
    reason: str | None = Field(None, max_length=500)

    @field_validator("weights")
    @classmethod
    def _valid(cls, value: dict[str, float]) -> dict[str, float]:
        normalise_weights(value)  # finite, >= 0, not all zero, normalisable: else 422 with the reason
        return value


class ErrorResponse(_Strict):
    """Every error answer, 4xx and 5xx: one sentence, never a trace (the user guide's error shape)."""

    detail: str = Field(..., description="what is wrong, in a sentence")


# The error answers in the OpenAPI schema (issue 18: schemathesis checks the schema against what the
# server answers). FastAPI would otherwise document only its own 422 shape (a list of objects),
# which the handler below replaces with {"detail": "<sentence>"}.
_ERROR_DESCRIPTIONS = {
    400: "Host header not accepted (no API key set: loopback names only), or a body that cannot be read "
         "(not UTF-8)",
    401: "missing or wrong API key (or admin key)",
    403: "admin function (or a forced arm) from a non-loopback client while no admin key is set",
    404: "unknown request id",
    408: "request body not received within serve.body_timeout_s",
    413: "request body, chat history or context over a limit (serve.max_body_bytes, max_turns, "
         "max_context_chars, the model's context length)",
    422: "invalid request: the reason in a sentence",
    503: "no model could answer, or an unexpected error (with a reference for the server log); retry",
    504: "not answered within serve.request_timeout_s (the model's work on it is stopped)",
}
# in front of every route: the guard middleware (400, 408, 413) and the catch-all handler (503)
_EVERY_ROUTE = (400, 408, 413, 503)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[code]}
            for code in sorted({*codes, *_EVERY_ROUTE})}


# =============================================================================================
# The app


class _Metrics:
    """Prometheus metrics in a registry of the app's own (tests run several apps in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("tunewise_requests", "answered requests", ["endpoint", "arm", "status"],
                                registry=self.registry)
        self.latency = Histogram("tunewise_request_latency_seconds", "request latency, queueing and log write included",
                                 ["endpoint", "arm"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.arm_failures = Counter("tunewise_arm_failures", "model failures per arm (answered by the incumbent "
                                    "when possible)", ["arm"], registry=self.registry)
        self.rejected = Counter("tunewise_rejected_requests", "requests refused with a 4xx", ["path", "status"],
                                registry=self.registry)
        self.internal_errors = Counter("tunewise_internal_errors", "unexpected server errors", registry=self.registry)
        self.log_failures = Counter("tunewise_log_write_failures", "log rows that could not be written",
                                    registry=self.registry)
        self.feedback = Counter("tunewise_feedback", "feedback stored", ["kind", "duplicate"], registry=self.registry)
        self.batch_size = Histogram("tunewise_batch_size", "requests per model call", ["arm"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.weights = Gauge("tunewise_arm_weight", "current traffic weight", ["arm"], registry=self.registry)
        self.timeouts = Counter("tunewise_request_timeouts", "requests not answered within serve.request_timeout_s "
                                "(504; the model call is stopped)", ["arm"], registry=self.registry)


class _GuardMiddleware:
    """In front of every route:

    - the Host header (when ``allowed_hosts`` is given: no API key is set): only those names, any
      port, else 400; a page on another site whose name was rebound to 127.0.0.1 (DNS rebinding)
      sends its own name and is refused;
    - bodies over ``max_bytes`` are refused with 413 (Content-Length first, then the streamed size,
      so a chunked upload cannot get around it);
    - a body not fully received within ``body_timeout_s`` (a Content-Length larger than what is
      sent, a client that stalls) is answered 408 and the connection closed, so no connection hangs;
    - every 4xx response is counted.
    """

    def __init__(self, app: Any, max_bytes: int, metrics: _Metrics, body_timeout_s: float = 10.0,
                 allowed_hosts: frozenset[str] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.body_timeout_s = body_timeout_s
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                self.metrics.rejected.labels(_route_label(path), str(message["status"])).inc()
            await send(message)

        headers = dict(scope.get("headers") or [])
        if self.allowed_hosts is not None:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed_hosts:
                # before the body is read: closing the connection avoids reading what a rebinding page sent
                await _refuse(counting_send, 400, f"Host header {host or '(none)'!r} is not accepted: without an "
                              f"API key the server answers only to {', '.join(sorted(self.allowed_hosts))}")
                return
        declared = headers.get(b"content-length")
        has_body = (declared not in (None, b"0")) or b"transfer-encoding" in headers
        if scope.get("method") not in ("POST", "PUT", "PATCH") and not has_body:
            await self.app(scope, receive, counting_send)
            return
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await _refuse(counting_send, 413, f"request body larger than {self.max_bytes} bytes")
                return
        chunks, size = [], 0
        deadline = time.monotonic() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                await _refuse(counting_send, 408, f"request body not received within {self.body_timeout_s:g} s "
                              f"({size} of {declared.decode('latin-1') if declared else 'unknown'} bytes)")
                return
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _refuse(counting_send, 413, f"request body larger than {self.max_bytes} bytes")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, counting_send)


async def _refuse(send: Any, status: int, detail: str) -> None:
    """An error in the documented shape ({"detail": ...}), and the connection closed after it."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _host_name(value: str) -> str:
    """The name of a Host header without its port: ``[::1]:8000`` -> ``[::1]``, ``LocalHost.:80`` -> ``localhost``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") <= 1 else value


_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def _route_label(path: str) -> str:
    # bounded label values: unknown paths share one label so a scanner cannot blow up the metrics
    known = ("/v1/classify", "/v1/chat/completions", "/v1/feedback", "/v1/arms", "/admin/arms", "/healthz", "/metrics")
    return path if path in known else "other"


class _State:
    def __init__(self, run_dir: Path, config: ServeConfig, specs: list[ArmSpec], models: dict[str, ServedModel],
                 store: Any, api_key: str | None, admin_key: str | None = None) -> None:
        self.run_dir = run_dir
        self.config = config
        self.specs = {s.name: s for s in specs}
        self.models = models
        self.store = store
        self.api_key = api_key
        self.admin_key = admin_key
        self.metrics = _Metrics()
        self.weights: dict[str, float] = {s.name: s.weight for s in specs}
        self.weights_version = 0  # bumped by /admin/arms: a re-read started before it is not applied
        self.incumbent = config.incumbent or (INCUMBENT if INCUMBENT in self.specs else specs[0].name)
        if self.incumbent not in self.specs:
            raise ServeError(f"incumbent {self.incumbent!r} is not one of the arms {sorted(self.specs)}")
        self.task = next(iter(models.values())).task
        self.batchers: dict[str, MicroBatcher] = {}
        self.writer: Any = None
        self.started = time.time()

    def model_of(self, arm: str) -> ServedModel:
        return self.models[self.specs[arm].candidate]

    def apply_weights(self, stored: Mapping[str, tuple[str, float]]) -> bool:
        """Serve with the stored weights (what every replica reads); False, keeping the current
        ones, when the stored ones are unusable (not finite, negative, all zero)."""
        weights = {name: float(stored[name][1]) if name in stored else w for name, w in self.weights.items()}
        try:
            normalise_weights(weights)
        except ValueError as exc:
            log.warning("stored arm weights %s are unusable (%s); keeping %s", weights, exc, self.weights)
            return False
        self.weights = weights
        for name, w in self.weights.items():
            self.metrics.weights.labels(name).set(w)
        return True


# Chat-template tokens around each message (role markers, end of turn): a margin, not an exact count
_TURN_OVERHEAD_TOKENS = 5


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") in (None, "text"))
    return "" if content is None else str(content)


def create_app(run_dir: str | Path, config: ServeConfig | None = None, *, arms: str | Mapping[str, float] | list[ArmSpec] | None = None,
               store_url: str | None = None, project_config: Any = None, models: dict[str, ServedModel] | None = None,
               reset_weights: bool = False, allow_failed_gate: bool = False, insecure: bool = False) -> Any:
    """The FastAPI app serving ``run_dir``'s candidates. Models load when the app starts (lifespan),
    so uvicorn answers /healthz only once they are ready; every arm's candidate is checked to exist
    before (ServeError naming the arm). A run made by ``tunewise retrain`` whose gate failed is
    refused unless ``allow_failed_gate``. ``insecure`` turns off the Host header check (serving on a
    non-loopback address without an API key, ``--insecure``)."""
    from tunewise.monitoring.store import Store, default_store_url  # on use: loads sqlalchemy

    run_dir = Path(run_dir)
    gate = retrain_gate(run_dir)
    if gate is not None and not gate.get("passed") and not allow_failed_gate:
        raise ServeError(f"{run_dir} was retrained and failed the gate ({'; '.join(gate.get('reasons', []))}); "
                         "serve the previous run, or pass --allow-failed-gate to serve it anyway")
    config = _widen_config(config)
    specs = arms if isinstance(arms, list) else resolve_arms(run_dir, arms if arms is not None else config.arms)
    if models is None:
        check_arms(run_dir, specs)
    else:
        missing = sorted({s.candidate for s in specs} - set(models))
        if missing:
            raise ServeError(f"arms name candidates {missing} that are not among the models given ({sorted(models)})")
    # No run lock (runner.run_lock), by design: serve writes only its request log (by default
    # runs/<id>/serve/requests.db), which none of the commands that take the lock writes (run_stages
    # clears stage folders only; export, curve, retrain, add-labels and report --live write elsewhere),
    # and the database serialises the log's own writers (promote, rollback, other replicas). A lock held
    # for the server's lifetime would refuse retrain (it holds the served run's lock), export, curve
    # and report --live on the run being served. tests/test_hardening_kill.py exports while serving.
    url = store_url or config.store_url or default_store_url(run_dir)
    api_key = os.environ.get(config.api_key_env) or None
    admin_key = os.environ.get(config.admin_key_env) or None
    allowed_hosts = None
    if api_key is None and not insecure:
        own = {config.host.lower()} if _is_loopback(config.host) and ":" not in config.host else set()  # 127.0.0.2
        allowed_hosts = _LOOPBACK_HOSTS | own
    holder: dict[str, _State] = {}
    metrics_holder = _Metrics()  # the middleware needs it before the lifespan runs

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        quiet_known_warnings()
        cores = torch.get_num_threads()  # torch's default: the machine's cores (or OMP_NUM_THREADS)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        batch_threads = config.batch_threads or (cores if cores > torch.get_num_threads() else None)
        loaded = models
        if loaded is None:
            loaded = await asyncio.to_thread(load_models, run_dir, {s.candidate for s in specs}, project_config)
        for model in loaded.values():
            model.install_deadline_hooks()
        store = await asyncio.to_thread(Store, url)
        state = _State(run_dir, config, specs, loaded, store, api_key, admin_key)
        state.metrics = metrics_holder
        configured = {s.name: (s.candidate, s.weight) for s in specs}
        await asyncio.to_thread(store.init_arms, configured, reset_weights)
        if not state.apply_weights(await asyncio.to_thread(store.arm_weights)):
            # an older server stored weights it could not serve with (all zero): the configured ones
            # go back into the log, so the log and the running server agree
            repaired = normalise_weights({n: w for n, (_, w) in configured.items()})
            await asyncio.to_thread(store.set_weights, repaired,
                                    "stored weights were unusable; reset to the configured ones")
            state.apply_weights(await asyncio.to_thread(store.arm_weights))
        state.writer = store.writer()
        # one thread per model: a model never runs two batches at once (arms may share a model),
        # different models can
        executors = {name: concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
                     for name in loaded}
        for spec in specs:
            batcher = MicroBatcher(state.model_of(spec.name), executors[spec.candidate],
                                   spec.max_batch or config.max_batch, config.max_wait_ms,
                                   on_batch=lambda n, arm=spec.name: metrics_holder.batch_size.labels(arm).observe(n),
                                   batch_threads=batch_threads,
                                   batch_threads_min_rows=config.batch_threads_min_rows)
            batcher.start()
            state.batchers[spec.name] = batcher
        refresher = asyncio.get_running_loop().create_task(_refresh_weights(state))
        holder["state"] = state
        app.state.tunewise = state
        try:
            yield
        finally:
            refresher.cancel()
            for batcher in state.batchers.values():
                await batcher.stop()
            # drain: every queued log row is committed before the process ends
            await asyncio.to_thread(store.close)
            for executor in executors.values():
                executor.shutdown(wait=False)

    app = FastAPI(title="tunewise serve", version="1", lifespan=lifespan,
                  description="A/B and canary serving of a tunewise run's candidates, with a request log.")
    app.add_middleware(_GuardMiddleware, max_bytes=config.max_body_bytes, metrics=metrics_holder,
                       body_timeout_s=config.body_timeout_s, allowed_hosts=allowed_hosts)

    def state() -> _State:
        return holder["state"]

    def _presented_key(request: Request) -> str:
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = given or auth[7:].strip()
        return given

    def _matches(given: str, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(given.encode(), key.encode())

    def require_key(request: Request) -> None:
        s = holder["state"]
        if s.api_key is None:
            return
        given = _presented_key(request)
        # the admin key may do what the API key does
        if not (_matches(given, s.api_key) or _matches(given, s.admin_key)):
            raise HTTPException(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)")

    def _admin_refusal(request: Request) -> HTTPException | None:
        """None when the client may use admin functions: it shows the admin key, or, when no admin
        key is set, it is a loopback client (behind a proxy on this host: X-Forwarded-For counts)."""
        s = holder["state"]
        if s.admin_key is not None:
            if _matches(_presented_key(request), s.admin_key):
                return None
            return HTTPException(401, f"missing or wrong admin key ({s.config.admin_key_env}; Authorization: Bearer "
                                      "KEY or X-API-Key)")
        client = request.client.host if request.client else None
        if _is_loopback(client):
            return None
        return HTTPException(403, f"admin functions answer only to loopback clients while {s.config.admin_key_env} "
                                  "is not set; set it and send it as the key")

    def require_admin(request: Request) -> None:
        refusal = _admin_refusal(request)
        if refusal is not None:
            raise refusal

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # its location is a character offset, not a field
                problems.append(f"malformed JSON ({e.get('ctx', {}).get('error', 'cannot be parsed')})")
                continue
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            message = e.get("msg", "invalid")
            problems.append(f"{where}: {message}" if where else message)
        return JSONResponse({"detail": "invalid request: " + "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.exception("unexpected error (reference %s) on %s", reference, request.url.path)
        metrics_holder.internal_errors.inc()
        # no trace to the client; 503 so clients retry
        return JSONResponse({"detail": f"the server could not answer this request (reference {reference})"},
                            status_code=503)

    def _pick_arm(s: _State, forced: str | None, user: str | None, request_id: str, request: Request) -> str:
        if forced is not None:
            if forced not in s.specs:
                raise HTTPException(422, f"unknown arm {forced!r}; arms: {', '.join(sorted(s.specs))}")
            refusal = _admin_refusal(request)
            if refusal is not None:
                refusal.detail = f"forcing an arm is an admin function: {refusal.detail}"
                raise refusal
            return forced
        return assign_arm(user if user else request_id, s.weights)

    def _bounded_history(s: _State, arm: str, field_name: str, history: list[dict[str, str]],
                         text: str) -> tuple[list[dict[str, str]], int]:
        """The history (earlier messages, {role, content}) within the limits: turns and characters
        refused with 413; beyond the context limit of the arm's model or of the incumbent (which may
        answer instead): refused, or with ``context_overflow: truncate`` the oldest non-system
        turns dropped until it fits. Returns (history, turns dropped)."""
        cfg = s.config
        turns = len(history) + 1
        if turns > cfg.max_turns:
            raise HTTPException(413, f"{field_name}: {turns} messages; the limit is {cfg.max_turns} per request "
                                     "(serve.max_turns): send fewer earlier turns")
        chars = sum(len(m["content"]) for m in history) + len(text)
        if chars > cfg.max_context_chars:
            raise HTTPException(413, f"{field_name}: {chars} characters in all messages together; the limit is "
                                     f"{cfg.max_context_chars} (serve.max_context_chars): send fewer earlier turns")
        checks = []
        for model in {id(m): m for m in (s.model_of(arm), s.model_of(s.incumbent))}.values():
            limits = [n for n in (model.context_tokens, cfg.max_context_tokens) if n]
            if limits:
                checks.append((model, min(limits)))
        if not checks:
            return history, 0
        kept = list(history)
        counts = {id(model): [model.count_tokens(m["content"]) + _TURN_OVERHEAD_TOKENS for m in kept]
                  for model, _ in checks}
        fixed = {id(model): model.count_tokens(text) + _TURN_OVERHEAD_TOKENS + model.prompt_overhead_tokens()
                 for model, _ in checks}

        def over() -> tuple[int, int, str] | None:
            for model, limit in checks:
                needed = fixed[id(model)] + sum(counts[id(model)])
                if needed > limit:
                    return needed, limit, model.name
            return None

        dropped = 0
        while (problem := over()) is not None:
            droppable = [i for i, m in enumerate(kept) if m["role"] != "system"]
            if cfg.context_overflow != "truncate" or not droppable:
                needed, limit, name = problem
                what = ("even without earlier turns the message does not fit" if cfg.context_overflow == "truncate"
                        else "drop the oldest turns and send it again")
                raise HTTPException(413, f"{field_name}: about {needed} tokens with the model's prompt and reply "
                                         f"budget; {name} takes {limit} (its context length, or serve.max_context_tokens): "
                                         f"{what}")
            i = droppable[0]
            del kept[i]
            for model, _ in checks:
                del counts[id(model)][i]
            dropped += 1
        return kept, dropped

    async def _answer(s: _State, endpoint: str, arm: str, user: str | None, text: str, context: str,
                      request_id: str, max_tokens: int | None = None) -> dict[str, Any]:
        started = time.perf_counter()
        if len(text) > s.config.max_input_chars:
            raise HTTPException(422, f"input is {len(text)} characters; the limit is {s.config.max_input_chars}")
        timeout = s.config.request_timeout_s
        deadline = time.monotonic() + timeout  # queueing, the model and a fallback all count

        async def ask(name: str) -> tuple[dict[str, Any], int]:
            return await asyncio.wait_for(s.batchers[name].submit(text, context, deadline),
                                          max(deadline - time.monotonic(), 0.0))

        served_by, status, error, timed_out = arm, "ok", None, False
        try:
            result, batch = await ask(arm)
        except (TimeoutError, RequestDeadlineExceeded):
            result, timed_out = None, True
        except Exception as exc:  # noqa: BLE001 - the incumbent answers instead, the failure is counted
            s.metrics.arm_failures.labels(arm).inc()
            log.error("arm %s failed: %s: %s", arm, type(exc).__name__, exc)
            error = f"{arm}: {type(exc).__name__}: {exc}"[:500]
            result = None
            if arm != s.incumbent:
                try:
                    result, batch = await ask(s.incumbent)
                    served_by, status = s.incumbent, "fallback"
                except (TimeoutError, RequestDeadlineExceeded):
                    timed_out = True
                except Exception as exc2:  # noqa: BLE001
                    s.metrics.arm_failures.labels(s.incumbent).inc()
                    error += f"; {s.incumbent}: {type(exc2).__name__}"
        if timed_out:
            s.metrics.timeouts.labels(arm).inc()
            error = ((error + "; ") if error else "") + (f"timeout: not answered within {timeout:g} s "
                                                         "(serve.request_timeout_s)")
            log.warning("request %s on arm %s timed out after %.1f s", request_id, arm, time.perf_counter() - started)
        model = s.model_of(served_by)
        reply_tokens, finish = None, "stop"
        if result is not None and model.task == "generate":
            # the reply is cut here, before it is logged, so the log holds what the client got; the
            # model generated up to its own limit (one batch serves requests with different limits)
            reply, reply_tokens, cut = model.cut(result["prediction"], max_tokens or s.config.max_tokens)
            limit = model.generation_limit
            finish = "length" if cut or (limit is not None and reply_tokens >= limit) else "stop"
            result = {**result, "prediction": reply}
        latency_ms = (time.perf_counter() - started) * 1000
        row = {"id": request_id, "ts": time.time(), "endpoint": endpoint, "user": user, "arm": arm,
               "served_by": served_by, "candidate": model.name, "input": text if s.config.store_inputs else None,
               "output": result["prediction"] if result else None, "score": result["score"] if result else None,
               "out_of_scope": int(result["out_of_scope"]) if result else None, "latency_ms": latency_ms,
               "batch_size": batch if result else None, "status": status if result else "error", "error": error}
        try:
            # awaited before answering: an answered request is always in the log (see tunewise.monitoring.store)
            await asyncio.wait_for(asyncio.wrap_future(s.writer.submit("request", row)), timeout=60)
        except Exception as exc:  # noqa: BLE001 - still answer; the missing row is counted
            s.metrics.log_failures.inc()
            log.error("request %s not logged: %s", request_id, exc)
        s.metrics.requests.labels(endpoint, served_by, row["status"]).inc()
        s.metrics.latency.labels(endpoint, arm).observe(time.perf_counter() - started)
        if timed_out:
            raise HTTPException(504, f"no answer within {timeout:g} s (request {request_id}); the model's work on it "
                                     "was stopped and the request is logged as an error")
        if result is None:
            raise HTTPException(503, f"no model could answer (request {request_id}); the failure is logged")
        return {"result": result, "served_by": served_by, "model": model.name, "latency_ms": latency_ms,
                "reply_tokens": reply_tokens, "finish_reason": finish}

    @app.post("/v1/classify", response_model=ClassifyResponse, dependencies=[Depends(require_key)],
              responses=_errors(401, 403, 422, 504))
    async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
        s = state()
        if s.task != "classify":
            raise HTTPException(422, "this server's models generate replies: use /v1/chat/completions")
        request_id = uuid.uuid4().hex
        arm = _pick_arm(s, body.arm, body.user, request_id, request)
        history = [{"role": str(m.get("role", "")), "content": _message_text(m)} for m in (body.context or [])]
        kept, dropped = _bounded_history(s, arm, "context", history, body.text)
        context = json.dumps(kept if dropped else (body.context or []))
        answer = await _answer(s, "classify", arm, body.user, body.text, context, request_id)
        result = answer["result"]
        return ClassifyResponse(request_id=request_id, arm=arm, served_by=answer["served_by"], model=answer["model"],
                                label=result["prediction"], score=result["score"], out_of_scope=result["out_of_scope"],
                                model_label=result["model_prediction"], latency_ms=round(answer["latency_ms"], 3),
                                dropped_turns=dropped)

    @app.post("/v1/chat/completions", dependencies=[Depends(require_key)], responses=_errors(401, 403, 422, 504))
    async def chat(body: ChatRequest, request: Request) -> dict[str, Any]:
        s = state()
        if body.stream:
            raise HTTPException(422, "stream: streaming is not supported; send stream=false")
        for name in ("max_tokens", "max_completion_tokens"):
            asked = getattr(body, name)
            if asked is not None and asked > s.config.max_tokens:
                raise HTTPException(422, f"{name} {asked} is above the server's limit {s.config.max_tokens}")
        limits = [n for n in (body.max_tokens, body.max_completion_tokens) if n is not None]
        users = [i for i, m in enumerate(body.messages) if m.role == "user"]
        if not users:
            raise HTTPException(422, "messages: no user message to answer")
        last = users[-1]
        text = body.messages[last].text()
        if not text.strip():
            raise HTTPException(422, "messages: the last user message is empty")
        if len(body.messages) > s.config.max_turns:  # before anything is counted: 1,000 turns cost nothing
            raise HTTPException(413, f"messages: {len(body.messages)} messages; the limit is {s.config.max_turns} "
                                     "per request (serve.max_turns): send fewer earlier turns")
        forced = body.arm or (body.model if body.model in s.specs else None)
        request_id = uuid.uuid4().hex
        arm = _pick_arm(s, forced, body.user, request_id, request)
        history = [{"role": m.role, "content": m.text()} for m in body.messages[:last]]
        history, dropped = _bounded_history(s, arm, "messages", history, text)
        context = json.dumps(history)
        answer = await _answer(s, "chat", arm, body.user, text, context, request_id,
                               max_tokens=min(limits) if limits else None)
        content = answer["result"]["prediction"]
        model = s.model_of(answer["served_by"])
        prompt_tokens = sum(model.count_tokens(m["content"]) for m in history) + model.count_tokens(text)
        completion_tokens = answer["reply_tokens"] if answer["reply_tokens"] is not None else model.count_tokens(content)
        return {
            "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": int(time.time()),
            "model": answer["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": answer["finish_reason"]}],
            # the model's tokenizer on the messages' texts (chat-template tokens not counted); words
            # for a model without a tokenizer
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
            "tunewise": {"request_id": request_id, "arm": arm, "served_by": answer["served_by"],
                         "score": answer["result"]["score"], "out_of_scope": answer["result"]["out_of_scope"],
                         "dropped_turns": dropped},
        }

    @app.post("/v1/feedback", response_model=FeedbackResponse, dependencies=[Depends(require_key)],
              responses=_errors(401, 404, 422))
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        s = state()
        given = {k: v for k, v in (("label", body.label), ("thumbs", body.thumbs), ("rating", body.rating)) if v is not None}
        if not given:
            raise HTTPException(422, "give at least one of label, thumbs (up/down) or rating (1-5)")
        found = await asyncio.to_thread(s.store.request_exists, body.request_id)
        if found is None:
            raise HTTPException(404, f"unknown request id {body.request_id!r}: no request with this id in the log")
        if "label" in given:
            if s.task != "classify":
                raise HTTPException(422, "label feedback is for classification; use thumbs or rating")
            served = s.models.get(next((sp.candidate for sp in s.specs.values() if sp.name == found["served_by"]), ""))
            allowed = served.feedback_labels() if served else set().union(*(m.feedback_labels() for m in s.models.values()))
            if body.label not in allowed:
                raise HTTPException(422, f"label {body.label!r} is not in the label set ({len(allowed)} labels: "
                                         f"{', '.join(sorted(allowed)[:20])}{', ...' if len(allowed) > 20 else ''})")
        stored, duplicates, replaced = [], [], []
        now = time.time()
        for kind, value in given.items():
            row = {"request_id": body.request_id, "kind": kind, "value": str(value), "ts": now}
            outcome = await asyncio.wait_for(asyncio.wrap_future(s.writer.submit("feedback", row)), timeout=60)
            # the store says "new", "replaced" (a different label: the latest wins) or "duplicate"
            if outcome == "duplicate":
                duplicates.append(kind)
            else:
                stored.append(kind)
                if outcome == "replaced":
                    replaced.append(kind)
            s.metrics.feedback.labels(kind, str(outcome == "duplicate").lower()).inc()
        return FeedbackResponse(request_id=body.request_id, stored=stored, duplicates=duplicates, replaced=replaced)

    @app.get("/healthz", responses=_errors())
    async def healthz() -> dict[str, Any]:
        s = state()
        return {"status": "ok", "task": s.task, "incumbent": s.incumbent, "weights": s.weights,
                "arms": {n: sp.candidate for n, sp in s.specs.items()}, "uptime_s": round(time.time() - s.started, 1),
                "log_queue": s.writer.pending if s.writer else None}

    @app.get("/metrics", response_class=PlainTextResponse, responses=_errors())  # Prometheus text
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics_holder.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/arms", dependencies=[Depends(require_key)], responses=_errors(401))
    async def get_arms() -> dict[str, Any]:
        s = state()
        return {"weights": s.weights, "arms": {n: sp.candidate for n, sp in s.specs.items()}, "incumbent": s.incumbent}

    @app.post("/admin/arms", dependencies=[Depends(require_key), Depends(require_admin)],
              responses=_errors(401, 403, 422))
    async def set_arms(body: ArmsUpdate) -> dict[str, Any]:
        s = state()
        unknown = sorted(set(body.weights) - set(s.specs))
        if unknown:
            raise HTTPException(422, f"unknown arms {unknown}; arms: {', '.join(sorted(s.specs))}")
        # arms not named get weight 0: the update is the whole split, normalised to 1
        try:
            weights = normalise_weights({name: body.weights.get(name, 0.0) for name in s.specs})
        except ValueError as exc:
            raise HTTPException(422, f"weights: {exc}") from None
        s.weights_version += 1  # a re-read of the log that started before this write is not applied
        await asyncio.to_thread(s.store.set_weights, weights, body.reason)
        # what the log now holds is what this server serves with: read back, not assumed
        if not s.apply_weights(await asyncio.to_thread(s.store.arm_weights)):
            raise HTTPException(503, "the weights were written but could not be read back; the server keeps "
                                     f"{s.weights}")
        log.warning("arm weights set to %s (%s)", s.weights, body.reason or "no reason given")
        return {"weights": s.weights, "incumbent": s.incumbent}

    return app


async def _refresh_weights(state: _State) -> None:
    """Re-read the weights: another replica, or promote/rollback through it, may have changed them."""
    while True:
        await asyncio.sleep(state.config.arms_refresh_s)
        try:
            version = state.weights_version
            stored = await asyncio.to_thread(state.store.arm_weights)
            if version == state.weights_version:  # else /admin/arms wrote (and applied) newer ones meanwhile
                state.apply_weights(stored)
        except Exception as exc:  # noqa: BLE001 - keep serving with the weights we have
            log.warning("could not re-read arm weights: %s", exc)


# =============================================================================================
# Running


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
               keep_alive_s: float = 75.0) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30,
                timeout_keep_alive=keep_alive_s)


class ServerThread:
    """A uvicorn server in a thread of this process (tests, benches); ``stop()`` shuts it down cleanly."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=75))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 120.0) -> ServerThread:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise ServeError(f"server at {self.url} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> ServerThread:
    return ServerThread(app, host, port).start()


def main(argv: list[str] | None = None) -> None:
    """``python -m tunewise.serving.app RUN_DIR``: serve without a project config (tests, scripts)."""
    parser = argparse.ArgumentParser(prog="python -m tunewise.serving.app", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--arms", default=None, help="ARM[:CANDIDATE]=WEIGHT,...")
    parser.add_argument("--store", default=None, help="SQLAlchemy URL of the request log")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default serve.torch_threads: 1)")
    parser.add_argument("--batch-threads", type=int, default=None,
                        help="torch threads for large micro-batches (default: the machine's cores)")
    parser.add_argument("--arm-batch", action="append", default=[], metavar="ARM=N",
                        help="this arm's max batch (e.g. single=1 serves it one request at a time); repeatable")
    parser.add_argument("--reset-weights", action="store_true")
    parser.add_argument("--allow-failed-gate", action="store_true", help="serve a retrained run whose gate failed")
    parser.add_argument("--request-timeout", type=float, default=None,
                        help="seconds before an unanswered request gets 504 (default serve.request_timeout_s: 30)")
    parser.add_argument("--insecure", action="store_true",
                        help="listen on a non-loopback --host without an API key (refused otherwise)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    given = {k: v for k, v in (("torch_threads", args.threads), ("batch_threads", args.batch_threads),
                               ("request_timeout_s", args.request_timeout)) if v is not None}
    try:
        config = ServeConfig(host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             **given)
        warning = check_bind(args.host, config, args.insecure)
        batches = {name: int(n) for name, n in (item.split("=", 1) for item in args.arm_batch)}
        specs = [dataclasses.replace(s, max_batch=batches.get(s.name)) for s in resolve_arms(args.run_dir, args.arms)]
        app = create_app(args.run_dir, config, arms=specs, store_url=args.store, reset_weights=args.reset_weights,
                         allow_failed_gate=args.allow_failed_gate, insecure=args.insecure)
    except (ServeError, ValueError) as exc:  # ValueError: a bad --arm-batch or setting
        parser.exit(2, f"error: {exc}\n")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    run_server(app, args.host, args.port, keep_alive_s=config.keep_alive_s)


if __name__ == "__main__":
    main()
