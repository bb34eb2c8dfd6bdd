"""Commands ``serve``, ``monitor``, ``retrain``, ``promote`` and ``rollback``; ``tunewise.cli.main`` calls :func:`register`.

- ``tunewise serve --run-id RUN [--arms incumbent=0.9,candidate=0.1]``: the A/B server (tunewise.serving.app);
- ``tunewise monitor --run-id RUN [--since 24h]``: verdicts, drift and budgets from the log
  (tunewise.monitoring.monitor); exit code 3 when the result needs action, for cron or CI;
- ``tunewise retrain --run-id RUN``: feedback-labelled rows through add-labels and the pipeline into a
  new run that must pass the same gate (tunewise.serving.retrain); exit code 3 when it fails;
- ``tunewise promote [--arm candidate] [--weight 1.0]`` / ``tunewise rollback [--arm candidate]``:
  change a running server's weights through ``POST /admin/arms`` (no restart; replicas on one
  PostgreSQL log pick them up within ``serve.arms_refresh_s``).
"""

# no `from __future__ import annotations`: typer reads the option types, defined inside register(), at runtime

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from tunewise.cli.common import ConfigOpt, JsonOpt, RunIdOpt, err, fail_with, known_errors, load_project, out
from tunewise.config.sections import MonitorConfig
from tunewise.monitoring.monitor import ACTION_EXIT_CODE, monitor_run
from tunewise.serving.arms import check_bind, parse_arms
from tunewise.serving.base import ServeConfig, ServeError
from tunewise.serving.retrain import RetrainError, retrain as run_retrain

__all__ = ["register"]


def _serve_section(cfg: Any) -> Any:

    return getattr(cfg, "serve", None) or ServeConfig()


def _monitor_section(cfg: Any) -> Any:

    return getattr(cfg, "monitor", None) or MonitorConfig()


def _store_url(cfg: Any, run_id: str, given: str | None) -> str:
    from tunewise.monitoring.store import default_store_url  # on use: loads sqlalchemy

    return given or _serve_section(cfg).store_url or default_store_url(cfg.resolve(cfg.runs_dir) / run_id)


def register(app: typer.Typer) -> None:
    UrlOpt = Annotated[
        str | None,
        typer.Option(
            "--url", help="the server, e.g. http://127.0.0.1:8000 (default: serve.host and serve.port of the config)"
        ),
    ]
    ArmOpt = Annotated[str, typer.Option("--arm", help="the arm to move traffic to or from")]
    ReasonOpt = Annotated[str | None, typer.Option("--reason", help="kept in the log's arm history")]

    @app.command()
    def serve(
        config: ConfigOpt = Path("tunewise.yaml"),
        run_id: RunIdOpt = "default",
        arms: Annotated[
            str | None,
            typer.Option(
                "--arms",
                help="ARM[:CANDIDATE]=WEIGHT,...; incumbent and "
                "candidate name the gate's baseline and the recommended candidate",
            ),
        ] = None,
        host: Annotated[str | None, typer.Option("--host", help="default serve.host (127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option("--port", help="default serve.port (8000)")] = None,
        store: Annotated[
            str | None,
            typer.Option("--store", help="SQLAlchemy URL of the request log (postgresql+psycopg://... for replicas)"),
        ] = None,
        reset_weights: Annotated[
            bool,
            typer.Option(
                "--reset-weights", help="start from --arms even when the log holds weights set by promote/rollback"
            ),
        ] = False,
        allow_failed_gate: Annotated[
            bool,
            typer.Option("--allow-failed-gate", help="serve a run made by `tunewise retrain` although its gate failed"),
        ] = False,
        insecure: Annotated[
            bool,
            typer.Option(
                "--insecure",
                help="listen on a non-loopback --host without an API "
                "key (refused otherwise); also turns off the Host header check",
            ),
        ] = False,
    ) -> None:
        """Serve the run's incumbent and candidate with a traffic split, feedback and a request log."""
        from tunewise.serving.app import create_app, run_server  # on use: loads fastapi

        cfg = load_project(config)
        section = _serve_section(cfg)
        updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
        section = ServeConfig(**section.model_copy(update=updates).model_dump())
        run_dir = cfg.resolve(cfg.runs_dir) / run_id
        if not run_dir.is_dir():
            fail_with(FileNotFoundError(f"{run_dir}: no such run; run `tunewise run --run-id {run_id}` first"))
        try:
            # everything is checked before "serving" is printed: where to listen, every arm's candidate
            warning = check_bind(section.host, section, insecure)
            app_ = create_app(
                run_dir,
                section,
                arms=parse_arms(arms) if arms else None,
                store_url=store,
                project_config=cfg,
                reset_weights=reset_weights,
                allow_failed_gate=allow_failed_gate,
                insecure=insecure,
            )
        except (ServeError, *known_errors()) as exc:
            fail_with(exc)
        if warning:
            err.print(f"[yellow]warning: {warning}[/yellow]")
        out.print(f"serving {run_dir} on http://{section.host}:{section.port} (docs: /docs, metrics: /metrics)")
        run_server(app_, section.host, section.port, keep_alive_s=section.keep_alive_s)

    @app.command()
    def monitor(
        config: ConfigOpt = Path("tunewise.yaml"),
        run_id: RunIdOpt = "default",
        since: Annotated[str | None, typer.Option("--since", help="30m, 24h, 7d or an ISO date")] = None,
        store: Annotated[str | None, typer.Option("--store", help="SQLAlchemy URL of the request log")] = None,
        incumbent: Annotated[str | None, typer.Option("--incumbent", help="arm the others are compared with")] = None,
        no_embedding: Annotated[bool, typer.Option("--no-embedding", help="skip the embedding drift check")] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Online metrics, promote / keep testing / roll back, drift and budgets; exit 3 when action is needed."""
        from tunewise.monitoring.store import StoreError  # on use: loads sqlalchemy

        cfg = load_project(config)
        run_dir = cfg.resolve(cfg.runs_dir) / run_id
        try:
            report = monitor_run(
                _store_url(cfg, run_id, store),
                run_dir,
                _monitor_section(cfg),
                since=since,
                incumbent=incumbent,
                encoder=None if no_embedding else cfg.models.encoder,
                task=cfg.task,
            )
        except (StoreError, ValueError) as exc:
            fail_with(exc)
        if as_json:
            print(json.dumps(report, default=str))
        else:
            _print_report(report, out)
        if report["needs_action"]:
            raise typer.Exit(ACTION_EXIT_CODE)

    @app.command()
    def retrain(
        config: ConfigOpt = Path("tunewise.yaml"),
        run_id: RunIdOpt = "default",
        store: Annotated[
            str | None, typer.Option("--store", help="SQLAlchemy URL of the request log (default: the run's serve log)")
        ] = None,
        new_run_id: Annotated[
            str | None, typer.Option("--new-run-id", help="run to train into (default: RUN-retrain-<time>)")
        ] = None,
        since: Annotated[
            str | None, typer.Option("--since", help="feedback on requests since: 30m, 24h, 7d or an ISO date")
        ] = None,
        thumbs_up: Annotated[
            bool,
            typer.Option("--thumbs-up/--no-thumbs-up", help="a thumbs-up confirms the served answer as a training row"),
        ] = True,
        min_rows: Annotated[int, typer.Option("--min-rows", min=1, help="fewest feedback rows worth a retrain")] = 1,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="count the usable feedback rows; change nothing")
        ] = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Feedback-labelled rows -> add-labels -> the pipeline into a new run -> the same gate; exit 3 when
        the new run fails the gate (`tunewise serve` then refuses it)."""
        from tunewise.monitoring.store import StoreError  # on use: loads sqlalchemy

        cfg = load_project(config)
        try:
            record = run_retrain(
                cfg,
                run_id=run_id,
                store_url=_store_url(cfg, run_id, store),
                new_run_id=new_run_id,
                since=since,
                thumbs_up=thumbs_up,
                min_rows=min_rows,
                dry_run=dry_run,
            )
        except (RetrainError, StoreError, *known_errors()) as exc:
            fail_with(exc)
        if as_json:
            print(json.dumps(record, default=str))
        else:
            skipped = ", ".join(f"{n} {why}" for why, n in record["skipped"].items()) or "none"
            out.print(
                f"feedback: {record['rows']} usable row(s) from {record['requests_in_window']} logged requests "
                f"({record['rows_by_source'] or 'none'}); skipped: {skipped}"
            )
            if not dry_run:
                gate = record["gate"]
                out.print(
                    f"added {record['added']['added']} row(s) to {record['added']['added_file']}; "
                    f"new run {record['new_run']} in {record['pipeline_seconds']:.0f}s"
                )
                colour = "green" if gate["passed"] else "red"
                out.print(
                    f"[{colour}]gate: {'PASSED' if gate['passed'] else 'FAILED'}[/{colour}] "
                    f"(verdict {gate['verdict']}, recommended {gate['recommended']})"
                )
                for reason in gate["reasons"]:
                    out.print(f"  - {reason}")
                if gate["passed"]:
                    out.print(f"serve it: tunewise serve --run-id {record['new_run']}")
        if not dry_run and not record["gate"]["passed"]:
            raise typer.Exit(ACTION_EXIT_CODE)

    @app.command()
    def promote(
        config: ConfigOpt = Path("tunewise.yaml"),
        url: UrlOpt = None,
        arm: ArmOpt = "candidate",
        weight: Annotated[
            float,
            typer.Option(
                "--weight",
                min=0.0,
                max=1.0,
                help="the arm's new share of traffic; 1.0 sends it everything, less steps a canary up",
            ),
        ] = 1.0,
        reason: ReasonOpt = None,
    ) -> None:
        """Give an arm a larger share of live traffic on a running server (no restart)."""
        base, key = _server(config, url)
        current = _call("GET", f"{base}/v1/arms", key)["weights"]
        if arm not in current:
            fail_with(ValueError(f"unknown arm {arm!r}; the server's arms: {', '.join(sorted(current))}"))
        weights = _with_share(current, arm, weight)
        result = _call(
            "POST", f"{base}/admin/arms", key, {"weights": weights, "reason": reason or f"promote {arm} to {weight}"}
        )
        out.print("weights now: " + ", ".join(f"{n}={w:.3g}" for n, w in result["weights"].items()))

    @app.command()
    def rollback(
        config: ConfigOpt = Path("tunewise.yaml"),
        url: UrlOpt = None,
        arm: ArmOpt = "candidate",
        reason: ReasonOpt = None,
    ) -> None:
        """Take an arm out of live traffic on a running server; the incumbent answers instead."""
        base, key = _server(config, url)
        arms = _call("GET", f"{base}/v1/arms", key)
        current, incumbent = arms["weights"], arms["incumbent"]
        if arm not in current:
            fail_with(ValueError(f"unknown arm {arm!r}; the server's arms: {', '.join(sorted(current))}"))
        if arm == incumbent:
            fail_with(ValueError(f"{arm!r} is the incumbent (the fallback); roll back a candidate arm"))
        weights = {n: (0.0 if n == arm else w) for n, w in current.items()}
        if sum(weights.values()) <= 0:
            weights[incumbent] = 1.0
        result = _call("POST", f"{base}/admin/arms", key, {"weights": weights, "reason": reason or f"rollback {arm}"})
        out.print("weights now: " + ", ".join(f"{n}={w:.3g}" for n, w in result["weights"].items()))

    def _server(config: Path, url: str | None) -> tuple[str, str | None]:
        """The server's URL and the key to send: the admin key (POST /admin/arms needs it when it is
        set; the server takes it wherever the API key is asked for), else the API key."""

        section = ServeConfig(
            **(_serve_section(load_project(config)) if config.exists() else ServeConfig()).model_dump()
        )
        if url is None:
            url = f"http://{section.host}:{section.port}"
        key = os.environ.get(section.admin_key_env) or os.environ.get(section.api_key_env)
        return url.rstrip("/"), key

    def _call(method: str, url: str, key: str | None, body: dict | None = None) -> dict:
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = httpx.request(method, url, json=body, headers=headers, timeout=30)
        except httpx.HTTPError as exc:
            fail_with(ConnectionError(f"cannot reach the server at {url}: {exc}"))
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:200]
            fail_with(RuntimeError(f"{method} {url}: HTTP {response.status_code}: {detail}"))
        return response.json()


def _with_share(current: dict[str, float], arm: str, share: float) -> dict[str, float]:
    """``arm`` gets ``share``; the others split the rest in their current proportions."""
    others = {n: w for n, w in current.items() if n != arm}
    rest = sum(others.values())
    weights = {arm: share}
    for name, w in others.items():
        weights[name] = (1 - share) * (w / rest if rest > 0 else 1 / len(others))
    return weights


def _print_report(report: dict, out: Any) -> None:
    from rich.table import Table

    window = report["window"]
    out.print(
        f"window: {window['requests']} requests; online metric: {report['online_metric'] or 'none (no feedback)'}"
    )
    table = Table(title="arms")
    for col in ("arm", "assigned", "answered", "error rate", "p50 ms", "p99 ms", "feedback", "online", "interval"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    fmt = lambda v, f="{:.3g}": "-" if v is None else f.format(v)  # noqa: E731
    for arm, e in report["arms"].items():
        ci = e.get("online_ci")
        table.add_row(
            arm,
            str(e["requests_assigned"]),
            str(e["requests_answered"]),
            fmt(e["error_rate"], "{:.2%}"),
            fmt(e["latency_p50_ms"], "{:.1f}"),
            fmt(e["latency_p99_ms"], "{:.1f}"),
            str(e["feedback_n"]),
            fmt(e["online_metric"], "{:.3f}"),
            f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-",
        )
    out.print(table)
    for arm, v in report["verdicts"].items():
        extra = f"; about {v['requests_needed']} more requests" if v.get("requests_needed") else ""
        out.print(f"[bold]{arm}[/bold] vs {report['incumbent']}: [bold]{v['verdict']}[/bold] - {v['reason']}{extra}")
    drift = report.get("drift", {})
    for key, entry in drift.items():
        if isinstance(entry, dict) and "psi" in entry:
            out.print(f"drift {key}: PSI {entry['psi']:.3f} ({entry['level']})")
        elif isinstance(entry, dict) and "distance" in entry:
            out.print(f"drift embedding: distance {entry['distance']:.4f}, permutation p={entry['p_value']:.3g}")
        elif isinstance(entry, dict) and entry.get("reason"):
            out.print(f"drift {key}: not computed ({entry['reason']})")
    for arm, entry in report.get("decay", {}).items():
        if "drop" in entry:
            out.print(
                f"decay {arm}: {entry['earlier']:.3f} (n={entry['earlier_n']}) -> {entry['recent']:.3f} "
                f"(n={entry['recent_n']}), p={entry['p_value']:.3g}"
            )
    retrain = report.get("retrain", {})
    if retrain.get("advised"):
        out.print(
            f"[bold]retrain advised[/bold]: {retrain['feedback_rows']} labelled or confirmed feedback row(s) "
            f"usable; run `{retrain.get('command', 'tunewise retrain')}`"
        )
    if report["actions"]:
        out.print("[bold red]action needed:[/bold red]")
        for action in report["actions"]:
            out.print(f"  - {action}")
    else:
        out.print("[green]no action needed[/green]")
