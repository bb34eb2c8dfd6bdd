"""Who may do what: the API key, the admin key (or a loopback client without one), forced arms.

``require_key`` and ``require_admin`` are FastAPI dependencies of the routes.
"""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from tunewise.serving.arms import assign_arm, is_loopback
from tunewise.serving.state import ServingState, state_of

__all__ = ["admin_refusal", "pick_arm", "presented_key", "require_admin", "require_key"]


def presented_key(request: Request) -> str:
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        given = given or auth[7:].strip()
    return given


def _matches(given: str, key: str | None) -> bool:
    return key is not None and hmac.compare_digest(given.encode(), key.encode())


def require_key(request: Request) -> None:
    s = state_of(request)
    if s.api_key is None:
        return
    given = presented_key(request)
    # the admin key may do what the API key does
    if not (_matches(given, s.api_key) or _matches(given, s.admin_key)):
        raise HTTPException(401, "missing or wrong API key (Authorization: Bearer KEY or X-API-Key)")


def admin_refusal(request: Request) -> HTTPException | None:
    """None when the client may use admin functions: it shows the admin key, or, when no admin
    key is set, it is a loopback client (behind a proxy on this host: X-Forwarded-For counts)."""
    s = state_of(request)
    if s.admin_key is not None:
        if _matches(presented_key(request), s.admin_key):
            return None
        return HTTPException(
            401, f"missing or wrong admin key ({s.config.admin_key_env}; Authorization: Bearer KEY or X-API-Key)"
        )
    client = request.client.host if request.client else None
    if is_loopback(client):
        return None
    return HTTPException(
        403,
        f"admin functions answer only to loopback clients while {s.config.admin_key_env} "
        "is not set; set it and send it as the key",
    )


def require_admin(request: Request) -> None:
    refusal = admin_refusal(request)
    if refusal is not None:
        raise refusal


def pick_arm(state: ServingState, forced: str | None, user: str | None, request_id: str, request: Request) -> str:
    """The arm that answers: ``forced`` (an admin function), else the user's sticky arm (the
    request id's for a request without a user)."""
    if forced is not None:
        if forced not in state.specs:
            raise HTTPException(422, f"unknown arm {forced!r}; arms: {', '.join(sorted(state.specs))}")
        refusal = admin_refusal(request)
        if refusal is not None:
            refusal.detail = f"forcing an arm is an admin function: {refusal.detail}"
            raise refusal
        return forced
    return assign_arm(user if user else request_id, state.weights)
