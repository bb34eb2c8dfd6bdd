"""The ``serve:`` and ``monitor:`` sections: the A/B or canary server, and drift and decay watching."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunewise.config.base import Section


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="address to listen on; 127.0.0.1 keeps the server local")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    arms: dict[str, float] | None = Field(
        None,
        description="arm weights, ARM[:CANDIDATE]=WEIGHT; default incumbent (the gate's baseline) 0.9 and "
        "candidate (the decision's recommendation, else the gate's candidate) 0.1",
    )
    incumbent: str | None = Field(
        None, description="arm that answers when another arm fails; default the arm named incumbent, else the first"
    )
    store_url: str | None = Field(
        None,
        description="request log: a SQLAlchemy URL (postgresql+psycopg://... for "
        "several replicas); default SQLite runs/<id>/serve/requests.db",
    )
    api_key_env: str = Field(
        "TUNEWISE_API_KEY", description="environment variable holding the API key; no key set means no key required"
    )
    max_body_bytes: int = Field(65536, gt=0, description="larger request bodies are refused with 413")
    max_input_chars: int = Field(8000, gt=0, description="longer inputs are refused with 422")
    max_tokens: int = Field(256, gt=0, description="upper bound of max_tokens a chat request may ask for")
    max_batch: int = Field(32, ge=1, description="micro-batching: most requests one predict call takes")
    max_wait_ms: float = Field(5.0, ge=0, description="micro-batching: how long a batch waits to fill")
    arms_refresh_s: float = Field(
        1.0, gt=0, description="how often weights are re-read from the log (replicas on one database share them)"
    )
    store_inputs: bool = Field(True, description="keep input texts in the log (monitor's drift check needs them)")
    # Measured on 2 cores (bench/bench_serve.py): one request at a time serves 13.7 req/s with 1 thread
    # and 11.1 with 2 (the event loop needs a core); a batch of 32 runs 1.6x faster with 2 threads.
    torch_threads: int | None = Field(
        1,
        ge=1,
        description="torch threads for single requests and small batches; None: torch's default (the machine's cores)",
    )
    batch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads for a micro-batch of at least batch_threads_min_rows requests; "
        "default: the machine's cores (one request is too small to split across cores, a full batch is not)",
    )
    batch_threads_min_rows: int = Field(8, ge=2, description="micro-batches this large use batch_threads")
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="idle keep-alive connections are closed after this; above the clients' pool "
        "expiry so a client never reuses a connection the server is closing (uvicorn's 5 s default races)",
    )
    admin_key_env: str = Field(
        "TUNEWISE_ADMIN_KEY",
        description="environment variable holding the admin key "
        "(POST /admin/arms, forcing an arm); without it those answer loopback clients only",
    )
    max_turns: int = Field(
        32,
        ge=1,
        description="most chat messages in one request (history and the new message; "
        "context entries and the text on classify); more are refused with 413",
    )
    max_context_chars: int = Field(
        32000, gt=0, description="most characters of all messages of one request together; more are refused with 413"
    )
    max_context_tokens: int | None = Field(
        None,
        ge=16,
        description="most prompt tokens (messages, the model's "
        "system prompt and its reply budget); default the model's context length",
    )
    context_overflow: Literal["refuse", "truncate"] = Field(
        "refuse",
        description="a history beyond the context limit: refuse (413) or drop the oldest turns until "
        "it fits (the answer says how many were dropped)",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request not answered in this time gets 504 and "
        "its model computation is stopped, so the next request does not wait",
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="a request body not fully received in this time gets 408 and the connection is closed"
    )


class MonitorConfig(Section):
    since: str | None = Field(
        None, description="default window: a duration (24h, 7d, 30m) or an ISO date; default everything"
    )
    confidence_level: float = Field(0.95, gt=0.5, lt=1, description="level of intervals and of the verdict")
    power: float = Field(0.8, gt=0.5, lt=1, description="power for the traffic needed to decide")
    min_feedback: int = Field(30, ge=1, description="labelled feedback an arm needs before a verdict")
    min_detectable_effect: float = Field(
        0.05, gt=0, lt=1, description="smallest accuracy difference worth detecting (sizes the traffic needed)"
    )
    psi_warn: float = Field(0.1, ge=0, description="population stability index: moderate shift from here")
    psi_alert: float = Field(0.25, ge=0, description="population stability index: shift needing action from here")
    drift_window: int = Field(500, ge=10, description="the most recent requests the drift checks look at")
    drift_reference_rows: int = Field(1000, ge=10, description="training rows sampled as the drift reference")
    drift_permutations: int = Field(500, ge=50, description="permutations for the embedding drift p-value")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="embedding drift is flagged below this p-value")
    latency_p50_budget_ms: float = Field(200.0, gt=0, description="median latency budget per arm")
    latency_p99_budget_ms: float = Field(1000.0, gt=0, description="99th percentile latency budget per arm")
    error_rate_budget: float = Field(
        0.01, ge=0, le=1, description="share of failed requests (fallback or error) allowed per arm"
    )
    seed: int = Field(0, description="seed of the drift resampling")
