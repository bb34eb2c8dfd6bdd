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
(evaluate/summary.json: the cut and what it cuts, the top probability or the in-scope margin) are
answered with the out-of-scope label: the bot hands over to a person
instead of guessing, as the evaluation measured.

Where things live: this module builds the app (start-up checks, lifespan, middleware, error
handlers) and runs it; :mod:`~tunewise.serving.routes` holds the routes,
:mod:`~tunewise.serving.access` the key and admin checks and the arm choice,
:mod:`~tunewise.serving.answering` the chat history limits and the answer (fallback, deadline, log
row), :mod:`~tunewise.serving.state` what a running server holds (``app.state.tunewise``).

Command: ``tunewise serve --run-id RUN [--arms incumbent=0.9,candidate=0.1]``, or for scripts and
tests without a config file ``python -m tunewise.serving.app RUN_DIR --port 8000 [--arms ...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tunewise.models.loading import quiet_known_warnings  # every command calls it too; the server when it starts
from tunewise.serving.arms import ArmSpec, check_arms, check_bind, is_loopback, normalise_weights, resolve_arms
from tunewise.serving.base import ServeConfig, ServeError, log, widen_config
from tunewise.serving.batching import MicroBatcher
from tunewise.serving.guard import LOOPBACK_HOSTS, GuardMiddleware, ServeMetrics
from tunewise.serving.retrain import retrain_gate
from tunewise.serving.routes import router
from tunewise.serving.served_model import ServedModel, load_models
from tunewise.serving.state import ServingState, refresh_weights

__all__ = [
    "ServerThread",
    "create_app",
    "run_server",
    "start_in_thread",
]


# =============================================================================================
# The app


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
    config = widen_config(config)
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
        own = {config.host.lower()} if is_loopback(config.host) and ":" not in config.host else set()  # 127.0.0.2
        allowed_hosts = LOOPBACK_HOSTS | own
    metrics_holder = ServeMetrics()  # the middleware needs it before the lifespan runs

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
        state = ServingState(run_dir, config, specs, loaded, store, api_key, admin_key)
        state.metrics = metrics_holder  # one registry: the middleware, the routes and /metrics share it
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
        refresher = asyncio.get_running_loop().create_task(refresh_weights(state))
        app.state.tunewise = state  # what the routes and the key checks read (state.state_of)
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
        GuardMiddleware,
        max_bytes=config.max_body_bytes,
        metrics=metrics_holder,
        body_timeout_s=config.body_timeout_s,
        allowed_hosts=allowed_hosts,
    )

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

    app.include_router(router)
    return app


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
