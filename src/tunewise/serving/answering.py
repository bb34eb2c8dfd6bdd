"""Answering one request: the chat history within its limits, then the arm's model (the incumbent
when the arm fails), the deadline, the log row and the metrics.

The routes (:mod:`tunewise.serving.routes`) check what is particular to their endpoint and call
:func:`answer`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from fastapi import HTTPException

from tunewise.serving.base import log
from tunewise.serving.served_model import RequestDeadlineExceeded
from tunewise.serving.state import ServingState

__all__ = ["answer", "bounded_history", "message_text"]

# Chat-template tokens around each message (role markers, end of turn): a margin, not an exact count
_TURN_OVERHEAD_TOKENS = 5


def message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") in (None, "text")
        )
    return "" if content is None else str(content)


def bounded_history(
    state: ServingState, arm: str, field_name: str, history: list[dict[str, str]], text: str
) -> tuple[list[dict[str, str]], int]:
    """The history (earlier messages, {role, content}) within the limits: turns and characters
    refused with 413; beyond the context limit of the arm's model or of the incumbent (which may
    answer instead): refused, or with ``context_overflow: truncate`` the oldest non-system
    turns dropped until it fits. Returns (history, turns dropped)."""
    cfg = state.config
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
    for model in {id(m): m for m in (state.model_of(arm), state.model_of(state.incumbent))}.values():
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


async def answer(
    state: ServingState,
    endpoint: str,
    arm: str,
    user: str | None,
    text: str,
    context: str,
    request_id: str,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    if len(text) > state.config.max_input_chars:
        raise HTTPException(422, f"input is {len(text)} characters; the limit is {state.config.max_input_chars}")
    timeout = state.config.request_timeout_s
    deadline = time.monotonic() + timeout  # queueing, the model and a fallback all count

    async def ask(name: str) -> tuple[dict[str, Any], int]:
        return await asyncio.wait_for(
            state.batchers[name].submit(text, context, deadline), max(deadline - time.monotonic(), 0.0)
        )

    served_by, status, error, timed_out = arm, "ok", None, False
    try:
        result, batch = await ask(arm)
    except (TimeoutError, RequestDeadlineExceeded):
        result, timed_out = None, True
    except Exception as exc:  # noqa: BLE001 - the incumbent answers instead, the failure is counted
        state.metrics.arm_failures.labels(arm).inc()
        log.error("arm %s failed: %s: %s", arm, type(exc).__name__, exc)
        error = f"{arm}: {type(exc).__name__}: {exc}"[:500]
        result = None
        if arm != state.incumbent:
            try:
                result, batch = await ask(state.incumbent)
                served_by, status = state.incumbent, "fallback"
            except (TimeoutError, RequestDeadlineExceeded):
                timed_out = True
            except Exception as exc2:  # noqa: BLE001
                state.metrics.arm_failures.labels(state.incumbent).inc()
                error += f"; {state.incumbent}: {type(exc2).__name__}"
    if timed_out:
        state.metrics.timeouts.labels(arm).inc()
        error = ((error + "; ") if error else "") + (
            f"timeout: not answered within {timeout:g} s (serve.request_timeout_s)"
        )
        log.warning("request %s on arm %s timed out after %.1f s", request_id, arm, time.perf_counter() - started)
    model = state.model_of(served_by)
    reply_tokens, finish = None, "stop"
    if result is not None and model.task == "generate":
        # the reply is cut here, before it is logged, so the log holds what the client got; the
        # model generated up to its own limit (one batch serves requests with different limits)
        reply, reply_tokens, cut = model.cut(result["prediction"], max_tokens or state.config.max_tokens)
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
        "input": text if state.config.store_inputs else None,
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
        await asyncio.wait_for(asyncio.wrap_future(state.writer.submit("request", row)), timeout=60)
    except Exception as exc:  # noqa: BLE001 - still answer; the missing row is counted
        state.metrics.log_failures.inc()
        log.error("request %s not logged: %s", request_id, exc)
    state.metrics.requests.labels(endpoint, served_by, row["status"]).inc()
    state.metrics.latency.labels(endpoint, arm).observe(time.perf_counter() - started)
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
