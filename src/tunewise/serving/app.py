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
import dataclasses
import hmac
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tunewise.models.loading import quiet_known_warnings  # every command calls it too; the server when it starts
from tunewise.monitoring.feedback import INCUMBENT
from tunewise.serving.arms import (
    ArmSpec,
    _is_loopback,
    assign_arm,
    check_arms,
    check_bind,
    normalise_weights,
    resolve_arms,
)
from tunewise.serving.base import ServeConfig, ServeError, _widen_config, log
from tunewise.serving.batching import MicroBatcher
from tunewise.serving.guard import _LOOPBACK_HOSTS, _GuardMiddleware, _Metrics
from tunewise.serving.protocol import (
    ArmsUpdate,
    ChatRequest,
    ClassifyRequest,
    ClassifyResponse,
    FeedbackRequest,
    FeedbackResponse,
    _errors,
)
from tunewise.serving.retrain import retrain_gate
from tunewise.serving.served_model import RequestDeadlineExceeded, ServedModel, load_models

__all__ = [
    "ServerThread",
    "create_app",
    "run_server",
    "start_in_thread",
]


# =============================================================================================
# Start-up checks: where to listen, which arms, which warnings


# =============================================================================================
# Arms: which candidates, with which weights, and the sticky assignment


# =============================================================================================
# Models


# =============================================================================================
# Micro-batching


# =============================================================================================
# Request and response models


# =============================================================================================
# The app


class _State:
    def __init__(
        self,
        run_dir: Path,
        config: ServeConfig,
        specs: list[ArmSpec],
        models: dict[str, ServedModel],
        store: Any,
        api_key: str | None,
        admin_key: str | None = None,
    ) -> None:
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
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") in (None, "text")
        )
    return "" if content is None else str(content)


def create_app(
    run_dir: str | Path,
    config: ServeConfig | None = None,
    *,
    arms: str | Mapping[str, float] | list[ArmSpec] | None = None,
    store_url: str | None = None,
    project_config: Any = None,
    models: dict[str, ServedModel] | None = None,
    reset_weights: bool = False,
    allow_failed_gate: bool = False,
    insecure: bool = False,
) -> Any:
    """The FastAPI app serving ``run_dir``'s candidates. Models load when the app starts (lifespan),
    so uvicorn answers /healthz only once they are ready; every arm's candidate is checked to exist
    before (ServeError naming the arm). A run made by ``tunewise retrain`` whose gate failed is
    refused unless ``allow_failed_gate``. ``insecure`` turns off the Host header check (serving on a
    non-loopback address without an API key, ``--insecure``)."""
    from tunewise.monitoring.store import Store, default_store_url  # on use: loads sqlalchemy

    run_dir = Path(run_dir)
    gate = retrain_gate(run_dir)
    if gate is not None and not gate.get("passed") and not allow_failed_gate:
        raise ServeError(
            f"{run_dir} was retrained and failed the gate ({'; '.join(gate.get('reasons', []))}); "
            "serve the previous run, or pass --allow-failed-gate to serve it anyway"
        )
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
            await asyncio.to_thread(
                store.set_weights, repaired, "stored weights were unusable; reset to the configured ones"
            )
            state.apply_weights(await asyncio.to_thread(store.arm_weights))
        state.writer = store.writer()
        # one thread per model: a model never runs two batches at once (arms may share a model),
        # different models can
        executors = {
            name: concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
            for name in loaded
        }
        for spec in specs:
            batcher = MicroBatcher(
                state.model_of(spec.name),
                executors[spec.candidate],
                spec.max_batch or config.max_batch,
                config.max_wait_ms,
                on_batch=lambda n, arm=spec.name: metrics_holder.batch_size.labels(arm).observe(n),
                batch_threads=batch_threads,
                batch_threads_min_rows=config.batch_threads_min_rows,
            )
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

    app = FastAPI(
        title="tunewise serve",
        version="1",
        lifespan=lifespan,
        description="A/B and canary serving of a tunewise run's candidates, with a request log.",
    )
    app.add_middleware(
        _GuardMiddleware,
        max_bytes=config.max_body_bytes,
        metrics=metrics_holder,
        body_timeout_s=config.body_timeout_s,
        allowed_hosts=allowed_hosts,
    )

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
            return HTTPException(
                401, f"missing or wrong admin key ({s.config.admin_key_env}; Authorization: Bearer KEY or X-API-Key)"
            )
        client = request.client.host if request.client else None
        if _is_loopback(client):
            return None
        return HTTPException(
            403,
            f"admin functions answer only to loopback clients while {s.config.admin_key_env} "
            "is not set; set it and send it as the key",
        )

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
        return JSONResponse(
            {"detail": f"the server could not answer this request (reference {reference})"}, status_code=503
        )

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

    def _bounded_history(
        s: _State, arm: str, field_name: str, history: list[dict[str, str]], text: str
    ) -> tuple[list[dict[str, str]], int]:
        """The history (earlier messages, {role, content}) within the limits: turns and characters
        refused with 413; beyond the context limit of the arm's model or of the incumbent (which may
        answer instead): refused, or with ``context_overflow: truncate`` the oldest non-system
        turns dropped until it fits. Returns (history, turns dropped)."""
        cfg = s.config
        turns = len(history) + 1
        if turns > cfg.max_turns:
            raise HTTPException(
                413,
                f"{field_name}: {turns} messages; the limit is {cfg.max_turns} per request "
                "(serve.max_turns): send fewer earlier turns",
            )
        chars = sum(len(m["content"]) for m in history) + len(text)
        if chars > cfg.max_context_chars:
            raise HTTPException(
                413,
                f"{field_name}: {chars} characters in all messages together; the limit is "
                f"{cfg.max_context_chars} (serve.max_context_chars): send fewer earlier turns",
            )
        checks = []
        for model in {id(m): m for m in (s.model_of(arm), s.model_of(s.incumbent))}.values():
            limits = [n for n in (model.context_tokens, cfg.max_context_tokens) if n]
            if limits:
                checks.append((model, min(limits)))
        if not checks:
            return history, 0
        kept = list(history)
        counts = {
            id(model): [model.count_tokens(m["content"]) + _TURN_OVERHEAD_TOKENS for m in kept] for model, _ in checks
        }
        fixed = {
            id(model): model.count_tokens(text) + _TURN_OVERHEAD_TOKENS + model.prompt_overhead_tokens()
            for model, _ in checks
        }

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
                what = (
                    "even without earlier turns the message does not fit"
                    if cfg.context_overflow == "truncate"
                    else "drop the oldest turns and send it again"
                )
                raise HTTPException(
                    413,
                    f"{field_name}: about {needed} tokens with the model's prompt and reply "
                    f"budget; {name} takes {limit} (its context length, or serve.max_context_tokens): "
                    f"{what}",
                )
            i = droppable[0]
            del kept[i]
            for model, _ in checks:
                del counts[id(model)][i]
            dropped += 1
        return kept, dropped

    async def _answer(
        s: _State,
        endpoint: str,
        arm: str,
        user: str | None,
        text: str,
        context: str,
        request_id: str,
        max_tokens: int | None = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if len(text) > s.config.max_input_chars:
            raise HTTPException(422, f"input is {len(text)} characters; the limit is {s.config.max_input_chars}")
        timeout = s.config.request_timeout_s
        deadline = time.monotonic() + timeout  # queueing, the model and a fallback all count

        async def ask(name: str) -> tuple[dict[str, Any], int]:
            return await asyncio.wait_for(
                s.batchers[name].submit(text, context, deadline), max(deadline - time.monotonic(), 0.0)
            )

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
            error = ((error + "; ") if error else "") + (
                f"timeout: not answered within {timeout:g} s (serve.request_timeout_s)"
            )
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
        row = {
            "id": request_id,
            "ts": time.time(),
            "endpoint": endpoint,
            "user": user,
            "arm": arm,
            "served_by": served_by,
            "candidate": model.name,
            "input": text if s.config.store_inputs else None,
            "output": result["prediction"] if result else None,
            "score": result["score"] if result else None,
            "out_of_scope": int(result["out_of_scope"]) if result else None,
            "latency_ms": latency_ms,
            "batch_size": batch if result else None,
            "status": status if result else "error",
            "error": error,
        }
        try:
            # awaited before answering: an answered request is always in the log (see tunewise.monitoring.store)
            await asyncio.wait_for(asyncio.wrap_future(s.writer.submit("request", row)), timeout=60)
        except Exception as exc:  # noqa: BLE001 - still answer; the missing row is counted
            s.metrics.log_failures.inc()
            log.error("request %s not logged: %s", request_id, exc)
        s.metrics.requests.labels(endpoint, served_by, row["status"]).inc()
        s.metrics.latency.labels(endpoint, arm).observe(time.perf_counter() - started)
        if timed_out:
            raise HTTPException(
                504,
                f"no answer within {timeout:g} s (request {request_id}); the model's work on it "
                "was stopped and the request is logged as an error",
            )
        if result is None:
            raise HTTPException(503, f"no model could answer (request {request_id}); the failure is logged")
        return {
            "result": result,
            "served_by": served_by,
            "model": model.name,
            "latency_ms": latency_ms,
            "reply_tokens": reply_tokens,
            "finish_reason": finish,
        }

    @app.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        dependencies=[Depends(require_key)],
        responses=_errors(401, 403, 422, 504),
    )
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
        return ClassifyResponse(
            request_id=request_id,
            arm=arm,
            served_by=answer["served_by"],
            model=answer["model"],
            label=result["prediction"],
            score=result["score"],
            out_of_scope=result["out_of_scope"],
            model_label=result["model_prediction"],
            latency_ms=round(answer["latency_ms"], 3),
            dropped_turns=dropped,
        )

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
            raise HTTPException(
                413,
                f"messages: {len(body.messages)} messages; the limit is {s.config.max_turns} "
                "per request (serve.max_turns): send fewer earlier turns",
            )
        forced = body.arm or (body.model if body.model in s.specs else None)
        request_id = uuid.uuid4().hex
        arm = _pick_arm(s, forced, body.user, request_id, request)
        history = [{"role": m.role, "content": m.text()} for m in body.messages[:last]]
        history, dropped = _bounded_history(s, arm, "messages", history, text)
        context = json.dumps(history)
        answer = await _answer(
            s, "chat", arm, body.user, text, context, request_id, max_tokens=min(limits) if limits else None
        )
        content = answer["result"]["prediction"]
        model = s.model_of(answer["served_by"])
        prompt_tokens = sum(model.count_tokens(m["content"]) for m in history) + model.count_tokens(text)
        completion_tokens = (
            answer["reply_tokens"] if answer["reply_tokens"] is not None else model.count_tokens(content)
        )
        return {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answer["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": answer["finish_reason"],
                }
            ],
            # the model's tokenizer on the messages' texts (chat-template tokens not counted); words
            # for a model without a tokenizer
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "tunewise": {
                "request_id": request_id,
                "arm": arm,
                "served_by": answer["served_by"],
                "score": answer["result"]["score"],
                "out_of_scope": answer["result"]["out_of_scope"],
                "dropped_turns": dropped,
            },
        }

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        dependencies=[Depends(require_key)],
        responses=_errors(401, 404, 422),
    )
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        s = state()
        given = {
            k: v for k, v in (("label", body.label), ("thumbs", body.thumbs), ("rating", body.rating)) if v is not None
        }
        if not given:
            raise HTTPException(422, "give at least one of label, thumbs (up/down) or rating (1-5)")
        found = await asyncio.to_thread(s.store.request_exists, body.request_id)
        if found is None:
            raise HTTPException(404, f"unknown request id {body.request_id!r}: no request with this id in the log")
        if "label" in given:
            if s.task != "classify":
                raise HTTPException(422, "label feedback is for classification; use thumbs or rating")
            served = s.models.get(next((sp.candidate for sp in s.specs.values() if sp.name == found["served_by"]), ""))
            allowed = (
                served.feedback_labels() if served else set().union(*(m.feedback_labels() for m in s.models.values()))
            )
            if body.label not in allowed:
                raise HTTPException(
                    422,
                    f"label {body.label!r} is not in the label set ({len(allowed)} labels: "
                    f"{', '.join(sorted(allowed)[:20])}{', ...' if len(allowed) > 20 else ''})",
                )
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
        return {
            "status": "ok",
            "task": s.task,
            "incumbent": s.incumbent,
            "weights": s.weights,
            "arms": {n: sp.candidate for n, sp in s.specs.items()},
            "uptime_s": round(time.time() - s.started, 1),
            "log_queue": s.writer.pending if s.writer else None,
        }

    @app.get("/metrics", response_class=PlainTextResponse, responses=_errors())  # Prometheus text
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics_holder.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/arms", dependencies=[Depends(require_key)], responses=_errors(401))
    async def get_arms() -> dict[str, Any]:
        s = state()
        return {"weights": s.weights, "arms": {n: sp.candidate for n, sp in s.specs.items()}, "incumbent": s.incumbent}

    @app.post(
        "/admin/arms", dependencies=[Depends(require_key), Depends(require_admin)], responses=_errors(401, 403, 422)
    )
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
            raise HTTPException(
                503, f"the weights were written but could not be read back; the server keeps {s.weights}"
            )
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


def run_server(
    app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning", keep_alive_s: float = 75.0
) -> None:
    import uvicorn

    uvicorn.run(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30, timeout_keep_alive=keep_alive_s
    )


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
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=75)
        )
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
    parser.add_argument(
        "--batch-threads",
        type=int,
        default=None,
        help="torch threads for large micro-batches (default: the machine's cores)",
    )
    parser.add_argument(
        "--arm-batch",
        action="append",
        default=[],
        metavar="ARM=N",
        help="this arm's max batch (e.g. single=1 serves it one request at a time); repeatable",
    )
    parser.add_argument("--reset-weights", action="store_true")
    parser.add_argument("--allow-failed-gate", action="store_true", help="serve a retrained run whose gate failed")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        help="seconds before an unanswered request gets 504 (default serve.request_timeout_s: 30)",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="listen on a non-loopback --host without an API key (refused otherwise)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    given = {
        k: v
        for k, v in (
            ("torch_threads", args.threads),
            ("batch_threads", args.batch_threads),
            ("request_timeout_s", args.request_timeout),
        )
        if v is not None
    }
    try:
        config = ServeConfig(
            host=args.host, port=args.port, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, **given
        )
        warning = check_bind(args.host, config, args.insecure)
        batches = {name: int(n) for name, n in (item.split("=", 1) for item in args.arm_batch)}
        specs = [dataclasses.replace(s, max_batch=batches.get(s.name)) for s in resolve_arms(args.run_dir, args.arms)]
        app = create_app(
            args.run_dir,
            config,
            arms=specs,
            store_url=args.store,
            reset_weights=args.reset_weights,
            allow_failed_gate=args.allow_failed_gate,
            insecure=args.insecure,
        )
    except (ServeError, ValueError) as exc:  # ValueError: a bad --arm-batch or setting
        parser.exit(2, f"error: {exc}\n")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    run_server(app, args.host, args.port, keep_alive_s=config.keep_alive_s)


if __name__ == "__main__":
    main()
