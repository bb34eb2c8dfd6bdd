"""The routes: each reads the running server's state (``request.app.state.tunewise``), checks
what is particular to its endpoint and hands the rest to :mod:`tunewise.serving.answering`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response

from tunewise.serving.access import pick_arm, require_admin, require_key
from tunewise.serving.answering import answer, bounded_history, message_text
from tunewise.serving.arms import normalise_weights
from tunewise.serving.base import log
from tunewise.serving.protocol import (
    ArmsUpdate,
    ChatRequest,
    ClassifyRequest,
    ClassifyResponse,
    FeedbackRequest,
    FeedbackResponse,
    error_responses,
)
from tunewise.serving.state import state_of

__all__ = ["router"]

router = APIRouter()


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    dependencies=[Depends(require_key)],
    responses=error_responses(401, 403, 422, 504),
)
async def classify(body: ClassifyRequest, request: Request) -> ClassifyResponse:
    s = state_of(request)
    if s.task != "classify":
        raise HTTPException(422, "this server's models generate replies: use /v1/chat/completions")
    request_id = uuid.uuid4().hex
    arm = pick_arm(s, body.arm, body.user, request_id, request)
    history = [{"role": str(m.get("role", "")), "content": message_text(m)} for m in (body.context or [])]
    kept, dropped = bounded_history(s, arm, "context", history, body.text)
    context = json.dumps(kept if dropped else (body.context or []))
    answered = await answer(s, "classify", arm, body.user, body.text, context, request_id)
    result = answered["result"]
    return ClassifyResponse(
        request_id=request_id,
        arm=arm,
        served_by=answered["served_by"],
        model=answered["model"],
        label=result["prediction"],
        score=result["score"],
        out_of_scope=result["out_of_scope"],
        model_label=result["model_prediction"],
        latency_ms=round(answered["latency_ms"], 3),
        dropped_turns=dropped,
    )


@router.post("/v1/chat/completions", dependencies=[Depends(require_key)], responses=error_responses(401, 403, 422, 504))
async def chat(body: ChatRequest, request: Request) -> dict[str, Any]:
    s = state_of(request)
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
    arm = pick_arm(s, forced, body.user, request_id, request)
    history = [{"role": m.role, "content": m.text()} for m in body.messages[:last]]
    history, dropped = bounded_history(s, arm, "messages", history, text)
    context = json.dumps(history)
    answered = await answer(
        s, "chat", arm, body.user, text, context, request_id, max_tokens=min(limits) if limits else None
    )
    content = answered["result"]["prediction"]
    model = s.model_of(answered["served_by"])
    prompt_tokens = sum(model.count_tokens(m["content"]) for m in history) + model.count_tokens(text)
    completion_tokens = (
        answered["reply_tokens"] if answered["reply_tokens"] is not None else model.count_tokens(content)
    )
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answered["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": answered["finish_reason"],
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
            "served_by": answered["served_by"],
            "score": answered["result"]["score"],
            "out_of_scope": answered["result"]["out_of_scope"],
            "dropped_turns": dropped,
        },
    }


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    dependencies=[Depends(require_key)],
    responses=error_responses(401, 404, 422),
)
async def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    s = state_of(request)
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
        allowed = served.feedback_labels() if served else set().union(*(m.feedback_labels() for m in s.models.values()))
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


@router.get("/healthz", responses=error_responses())
async def healthz(request: Request) -> dict[str, Any]:
    s = state_of(request)
    return {
        "status": "ok",
        "task": s.task,
        "incumbent": s.incumbent,
        "weights": s.weights,
        "arms": {n: sp.candidate for n, sp in s.specs.items()},
        "uptime_s": round(time.time() - s.started, 1),
        "log_queue": s.writer.pending if s.writer else None,
    }


@router.get("/metrics", response_class=PlainTextResponse, responses=error_responses())  # Prometheus text
async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/arms", dependencies=[Depends(require_key)], responses=error_responses(401))
async def get_arms(request: Request) -> dict[str, Any]:
    s = state_of(request)
    return {"weights": s.weights, "arms": {n: sp.candidate for n, sp in s.specs.items()}, "incumbent": s.incumbent}


@router.post(
    "/admin/arms", dependencies=[Depends(require_key), Depends(require_admin)], responses=error_responses(401, 403, 422)
)
async def set_arms(body: ArmsUpdate, request: Request) -> dict[str, Any]:
    s = state_of(request)
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
        raise HTTPException(503, f"the weights were written but could not be read back; the server keeps {s.weights}")
    log.warning("arm weights set to %s (%s)", s.weights, body.reason or "no reason given")
    return {"weights": s.weights, "incumbent": s.incumbent}
