"""The HTTP protocol: typed request and response models and the one error model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunewise.serving.arms import normalise_weights


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
                    raise ValueError(
                        "a string holds an unpaired surrogate (a \\ud800-\\udfff escape without "
                        "its pair), which is not Unicode text"
                    ) from None
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
    out_of_scope: bool = Field(
        False,
        description="True when the score (or the in-scope margin, when the evaluation cut on it) fell below the evaluation's threshold",
    )
    model_label: str | None = Field(None, description="the model's own label before the threshold")
    latency_ms: float
    dropped_turns: int = Field(
        0, description="oldest context turns dropped to fit the model's context (serve.context_overflow: truncate)"
    )


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
    duplicates: list[str] = Field(
        ...,
        description="feedback kinds already stored before (kept once): the same "
        "label again, or any second thumbs or rating",
    )
    replaced: list[str] = Field(
        default_factory=list,
        description="kinds whose earlier value this feedback "
        "replaced: a different label for the same request (the latest label wins; "
        "the earlier one stays in the feedback history)",
    )


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
    400: "Host header not accepted (no API key set: loopback names only), or a body that cannot be read (not UTF-8)",
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


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {
        code: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[code]}
        for code in sorted({*codes, *_EVERY_ROUTE})
    }
