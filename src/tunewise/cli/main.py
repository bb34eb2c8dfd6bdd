"""The ``tunewise`` command: a thin layer that assembles commands calling the library.

Known errors (config, data, missing model) become one message and exit code 1; ``--json`` gives
machine-readable output for scripts (huggingface_hub CLI's habit).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunewise.cli.common import (
    ConfigOpt,
    JsonOpt,
    RunIdOpt,
    err,
    fail_with,
    known_errors,
    load_project,
    out,
    prepare_process,
)
from tunewise.cli.pipeline_commands import (
    ForceOpt,
    print_stage_table,
    print_verdict,
    register as register_pipeline,
    register_stage_commands,
    run_and_show,
    run_stages_or_fail,
)
from tunewise.cli.serve import register as _register_serve
from tunewise.cli.workflow_commands import register as register_workflows
from tunewise.config.sections import ConfigError
from tunewise.core.runs import existing_run_lock
from tunewise.demo.run import write_demo_project
from tunewise.models.doctor import doctor_report
from tunewise.reporting.live import live_store_url
from tunewise.reporting.report import ReportError, build_report

app = typer.Typer(
    name="tunewise",
    help="Will fine-tuning an LLM on your data pay off? Curate, measure baselines, fine-tune, evaluate, decide.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    callback=prepare_process,
)

register_pipeline(app)  # init, run, curate, evaluate, train (tunewise.cli.pipeline_commands)
register_workflows(app)  # export, curve, suggest, add-labels, distill (tunewise.cli.workflow_commands)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the demo data, config and runs")] = Path("demo"),
    task: Annotated[str, typer.Option("--task", help="classify or generate")] = "classify",
    seed: Annotated[int, typer.Option("--seed", help="data seed: same seed, same bytes")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Generate the demo support data set (with known defects) and run every stage on it."""

    t0 = time.perf_counter()
    human = err if as_json else out  # with --json, stdout carries the JSON only
    try:
        cfg_path, files = write_demo_project(out_dir, task=task, seed=seed)
    except known_errors() as exc:
        fail_with(exc)
    human.print(
        f"demo data: [bold]{files.data}[/bold] ({sum(files.defect_counts.values())} injected defects, "
        f"truth in {files.truth.name}); config: [bold]{cfg_path}[/bold]"
    )
    cfg = load_project(cfg_path)
    run_and_show(cfg, "demo", None, None, as_json)
    print_verdict(cfg, "demo", human)
    human.print(f"demo finished in {time.perf_counter() - t0:.1f}s")


@app.command()
def doctor(as_json: JsonOpt = False) -> None:
    """Show what is installed, where the models are, torch threads and devices, and what is missing."""

    rows = doctor_report()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    table = Table(title="tunewise doctor")
    for col in ("item", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "warn": "yellow", "missing": "red"}
    for r in rows:
        table.add_row(
            r["item"],
            f"[{style.get(r['status'], 'white')}]{r['status']}[/]",
            str(r.get("detail", "")),
            r.get("fix") or "",
        )
    out.print(table)
    if any(r["status"] == "missing" for r in rows):
        raise typer.Exit(1)


@app.command()
def report(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    force: ForceOpt = None,
    live: Annotated[
        str | None,
        typer.Option(
            "--live",
            help="a server's request log (runs/<id>/serve/requests.db "
            "or a SQLAlchemy URL): adds the Live traffic section",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="window of the live section: 30m, 24h, 7d or an ISO date (default monitor.since, else the whole log)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write the run's report page and summary.json; with --live, add what the server's log says."""

    cfg = load_project(config)
    url = None
    if live is not None:
        try:  # a wrong --live fails before the stage runs
            url = live_store_url(live)
        except ReportError as exc:
            fail_with(exc)
    elif since is not None:
        fail_with(ConfigError("--since needs --live: it is the window of the live section"))
    if url is None:
        run_and_show(cfg, run_id, ["report"], list(force or []) + ["report"], as_json)
        return
    # The stage builds the page without live data (live data is not part of its cache key: it
    # changes every minute), then the page is rebuilt with the live section.
    results = run_stages_or_fail(cfg, run_id, ["report"], list(force or []) + ["report"])
    run_dir = cfg.resolve(cfg.runs_dir) / run_id

    try:
        with existing_run_lock(run_dir):  # the page is rewritten outside run_stages
            written = build_report(run_dir, base_dir=cfg.base_dir, live=url, live_since=since)
    except (ReportError, *known_errors()) as exc:
        fail_with(exc)
    summary = json.loads(written["summary"].read_text(encoding="utf-8"))
    live_summary = summary["live"]
    if as_json:
        print(
            json.dumps(
                {
                    "run_dir": str(run_dir),
                    "stages": results,
                    "page": str(written["html"]),
                    "live_json": str(written["live"]),
                    "live": live_summary,
                },
                default=str,
            )
        )
        return
    print_stage_table(results)
    window = live_summary["window"]
    out.print(
        f"live: {window['requests']} request(s) in the window from {live_summary['store']}",
        markup=False,
        highlight=False,
    )
    for name, arm in live_summary["arms"].items():
        metric = arm["online_metric"]
        shown = "n/a" if metric is None else f"{metric:.3f}"
        out.print(
            f"  {name} ({arm['candidate']}): {arm['requests']} requests, {arm['errors']} errors, "
            f"{live_summary['metric'] or 'online metric'} {shown} (n={arm['feedback_n']})"
            + (f", {arm['verdict']}" if arm["verdict"] else ""),
            markup=False,
            highlight=False,
        )
    if live_summary["actions"]:
        out.print(f"[bold yellow]live actions ({len(live_summary['actions'])}):[/bold yellow]")
        for action in live_summary["actions"]:
            out.print(f"  - {action}", markup=False, highlight=False)
    else:
        out.print("live actions: none")
    out.print(f"report: [bold]{written['html']}[/bold]")


register_stage_commands(app)  # ingest, split, baseline, ... (the stages without a command above)
_register_serve(app)  # serve, monitor, retrain, promote, rollback (tunewise.cli.serve)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
