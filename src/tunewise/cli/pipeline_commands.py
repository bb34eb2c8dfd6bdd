"""The pipeline's commands: ``init``, ``run``, ``curate``, ``evaluate``, ``train`` and one command per
other stage (``ingest``, ``split``, ``baseline``, ...), each running its stage through the runner.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunewise.cli.common import ConfigOpt, JsonOpt, RunIdOpt, err, fail_with, known_errors, load_project, out
from tunewise.config.sections import ConfigError, ProjectConfig
from tunewise.core.artifacts import read_json
from tunewise.core.runs import existing_run_lock
from tunewise.evaluation.gate import gate_exit_code
from tunewise.evaluation.human_sheet import SheetError, fold_ratings
from tunewise.pipeline.runner import load_stages, run_stages
from tunewise.pipeline.stages.train import dry_run as plan_training, fit_worker
from tunewise.pipeline.tracking import Tracker
from tunewise.training import distributed
from tunewise.workflows.init_project import init_project

ForceOpt = Annotated[list[str] | None, typer.Option("--force", help="re-run this stage even if cached (repeatable)")]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Ray cluster address (default: start a local Ray)")
]


def check_engine(engine: str) -> None:
    if engine not in ("local", "ray"):
        fail_with(ConfigError(f"--engine must be local or ray, got {engine!r}"))


def run_stages_or_fail(
    cfg: ProjectConfig, run_id: str, only: list[str] | None, force: list[str] | None, options: dict | None = None
) -> dict:

    try:
        with Tracker(cfg, run_id) as tracker:
            return run_stages(cfg, run_id, only=only, force=set(force or ()), tracker=tracker, options=options)
    except known_errors() as exc:
        fail_with(exc)
        raise  # unreachable


def run_and_show(
    cfg: ProjectConfig,
    run_id: str,
    only: list[str] | None,
    force: list[str] | None,
    as_json: bool,
    options: dict | None = None,
) -> dict:
    results = run_stages_or_fail(cfg, run_id, only, force, options)
    run_dir = cfg.resolve(cfg.runs_dir) / run_id
    if as_json:
        print(json.dumps({"run_dir": str(run_dir), "stages": results}, default=str))
    else:
        print_stage_table(results)
        out.print(f"run folder: [bold]{run_dir}[/bold]")
    return results


def print_stage_table(results: dict) -> None:
    table = Table(title="stages")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("key metrics")
    for name, marker in results.items():
        metrics = marker.get("metrics", {})
        shown = ", ".join(f"{k}={v}" for k, v in list(metrics.items())[:6] if not isinstance(v, (dict, list)))
        table.add_row(name, f"{marker.get('seconds', 0):.1f}", shown)
    out.print(table)


def init(
    data_file: Annotated[Path, typer.Argument(help="training data (csv, tsv, jsonl, json, parquet)")],
    test: Annotated[Path | None, typer.Option("--test", help="frozen held-out test file, used as it is")] = None,
    task: Annotated[str | None, typer.Option("--task", help="classify or generate (inferred when omitted)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="config file to write")] = Path("tunewise.yaml"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing config")] = False,
) -> None:
    """Inspect a data file and write a commented tunewise.yaml with sensible defaults."""

    if task not in (None, "classify", "generate"):
        fail_with(ConfigError(f"--task must be classify or generate, got {task!r}"))
    try:
        path, info = init_project(data_file, test_file=test, task=task, out=output, overwrite=force)
    except known_errors() as exc:
        fail_with(exc)
    out.print(
        f"wrote [bold]{path}[/bold]: {info['file_format']} file, {info['record_format']} records, task {info['task']}"
    )
    if info.get("test"):
        out.print(f"test file: {info['test']['file_format']} file, {info['test']['n_sample_rows']:,} rows looked at")
    for note in info.get("notes", []):
        out.print(f"[yellow]note: {note}[/yellow]", highlight=False)
    out.print(f"columns: {info.get('columns_used')}; slice columns: {info.get('slice_candidates')}")
    out.print("next: [bold]tunewise run[/bold]")


def run(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    force: ForceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run every pipeline stage in order, reusing stages whose inputs did not change."""
    cfg = load_project(config)
    run_and_show(cfg, run_id, None, force, as_json)
    print_verdict(cfg, run_id, err if as_json else out)  # with --json, stdout carries the JSON only


VERDICT_COLOURS = {"FINE_TUNE": "green", "USE_ALTERNATIVE": "cyan", "NOT_YET": "yellow", "INCONCLUSIVE": "magenta"}


def print_verdict(cfg: ProjectConfig, run_id: str, console=out) -> None:
    run_dir = cfg.resolve(cfg.runs_dir) / run_id
    page = run_dir / "report" / "index.html"
    for source in (run_dir / "report" / "summary.json", run_dir / "decide" / "decision.json"):
        if source.exists():
            decision = json.loads(source.read_text()).get("decision", {})
            verdict = decision.get("verdict")
            if verdict:
                colour = VERDICT_COLOURS.get(verdict, "yellow")
                console.print(
                    f"verdict: [bold {colour}]{verdict}[/bold {colour}]  (recommended: {decision.get('recommended')})"
                )
                if decision.get("reasons"):
                    console.print(f"  because {decision['reasons'][0]}", markup=False, highlight=False)
                break
    if page.exists():
        console.print(f"report: [bold]{page}[/bold]")


def _stage_command(app: typer.Typer, name: str, help_text: str) -> None:
    def command(
        config: ConfigOpt = Path("tunewise.yaml"),
        run_id: RunIdOpt = "default",
        force: ForceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        cfg = load_project(config)
        run_and_show(cfg, run_id, [name], list(force or []) + [name], as_json)

    command.__doc__ = help_text
    app.command(name=name)(command)


def register_stage_commands(app: typer.Typer) -> None:
    """The stages without a command of their own above (ingest, split, baseline, ...), after every
    other command, so ``tunewise --help`` lists them last."""

    # Commands written out above (curate, train, evaluate: extra options) keep their own definition.
    defined = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands if c.callback}
    for name, spec in load_stages().items():
        if name not in defined:
            _stage_command(app, name, spec.help)


def curate(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    force: ForceOpt = None,
    engine: Annotated[str, typer.Option("--engine", help="local, or ray to hand shards to a Ray cluster")] = "local",
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find and fix duplicates, conflicts, label errors, off-topic rows, PII and thin classes."""
    check_engine(engine)
    cfg = load_project(config)
    run_and_show(
        cfg,
        run_id,
        ["curate"],
        list(force or []) + ["curate"],
        as_json,
        options={"engine": engine, "ray_address": ray_address},
    )


def evaluate(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    force: ForceOpt = None,
    fail_under: Annotated[
        bool, typer.Option("--fail-under", help="exit 1 when the gate fails (for CI regression gates)")
    ] = False,
    human_sheet: Annotated[
        bool,
        typer.Option(
            "--human-sheet",
            help="write the blind side-by-side sheet for people "
            "(CSV and HTML form) even when evaluate.human_sheet_size is 0",
        ),
    ] = False,
    human_ratings: Annotated[
        Path | None,
        typer.Option("--human-ratings", help="a filled sheet (CSV): fold it back in as a win rate with its interval"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score every candidate on held-out data with intervals, paired tests, slices and the gate."""

    cfg = load_project(config)
    if human_sheet and cfg.evaluate.human_sheet_size == 0:
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"human_sheet_size": 50})})
    evaluate_dir = cfg.resolve(cfg.runs_dir) / run_id / "evaluate"
    # Folding ratings in must not re-run (and re-sample) the evaluation the sheet came from.
    rerun = [] if human_ratings is not None else ["evaluate"]
    run_and_show(cfg, run_id, ["evaluate"], list(force or []) + rerun, as_json)
    summary = read_json(evaluate_dir / "summary.json")
    human = err if as_json else out  # with --json, stdout carries the JSON only
    if human_sheet:
        sheet = summary.get("human_sheet", {})
        if sheet.get("sheet_csv"):
            human.print(
                f"human sheet: [bold]{evaluate_dir / 'human' / sheet['sheet_html']}[/bold] (form) and "
                f"{evaluate_dir / 'human' / sheet['sheet_csv']} ({sheet['n_items']} items, "
                f"{' vs '.join(sheet['candidates'])}); fill it, then: tunewise evaluate --human-ratings FILE"
            )
        else:
            err.print("human sheet: not written (no fine-tuned candidate and baseline pair to compare)")
    if human_ratings is not None:
        _fold_human_ratings(evaluate_dir, human_ratings, human)
    if fail_under:
        gate = summary.get("gate", {})
        err.print(f"gate: {'passed' if gate.get('passed') else 'FAILED'}; " + "; ".join(gate.get("reasons", [])))
        raise typer.Exit(gate_exit_code(summary))


def _fold_human_ratings(evaluate_dir: Path, filled: Path, console=out) -> None:

    try:
        with existing_run_lock(evaluate_dir.parent):  # it rewrites evaluate/summary.json outside run_stages
            ratings = fold_ratings(evaluate_dir, filled)
    except (SheetError, OSError, *known_errors()) as exc:
        fail_with(exc)
    if ratings["win_rate"] is None:
        console.print(f"human ratings: no decided items yet ({ratings['ties']} ties, {ratings['unrated']} unrated)")
        return
    low, high = ratings["ci95"]
    console.print(
        f"human ratings: {ratings['candidate']} preferred over {ratings['opponent']} in "
        f"{ratings['win_rate']:.0%} of {ratings['wins'] + ratings['losses']} decided items "
        f"(95% CI {low:.0%} to {high:.0%}); {ratings['ties']} ties, {ratings['unrated']} unrated"
    )


def train(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    force: ForceOpt = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="print tokens, steps, memory and time (here and on "
            "reference GPUs) from a short calibration; train nothing",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume/--no-resume",
            help="continue an interrupted run from its last checkpoint (same data order); --no-resume starts over",
        ),
    ] = True,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="training processes (torchrun / DDP: gloo on CPU, NCCL on GPUs); the batch size is per process",
        ),
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Fine-tune the configured candidates (LoRA on the LLM, the small encoder) with validation and early stopping."""

    cfg = load_project(config)
    if not resume:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": False})})
    if dry_run:
        _train_dry_run(cfg, run_id, as_json)
        return
    if nproc > 1 and not distributed.in_worker():
        raise typer.Exit(distributed.launch(nproc, sys.argv[1:]))
    if not distributed.in_worker():
        run_and_show(cfg, run_id, ["train"], list(force or []) + ["train"], as_json)
        return
    # A torchrun worker: rank 0 brings the earlier stages up to date before the others read the split.

    distributed.init_process_group()
    try:
        try:
            if distributed.rank() == 0:
                run_stages(cfg, run_id, only=["split"])
            distributed.barrier()
            if distributed.rank() == 0:
                run_and_show(cfg, run_id, ["train"], list(force or []) + ["train"], as_json)
            else:
                fit_worker(cfg, run_id)
        except known_errors() as exc:
            fail_with(exc)
    finally:
        distributed.destroy_process_group()


def _train_dry_run(cfg: ProjectConfig, run_id: str, as_json: bool) -> None:

    try:
        reports = plan_training(cfg, run_id)
    except known_errors() as exc:
        fail_with(exc)
    if as_json:
        print(json.dumps(reports, default=str))
        return
    for name, r in reports.items():
        plan, here = r["plan"], r["this_machine"]
        table = Table(title=f"train --dry-run: {name} ({r['method']}, {r['task']}, {r['base_model']})")
        table.add_column("item")
        table.add_column("value", overflow="fold")
        table.add_row("rows / epochs / steps", f"{plan['n_train']} / {plan['epochs']} / {plan['total_steps']}")
        conv = r.get("convergence") or {}
        cap = {
            "budget": f"default budget: {plan.get('budget_rule', '')}",
            "epochs": "capped by train.epochs",
            "max_steps": "capped by train.max_steps",
        }.get(plan.get("step_cap", ""), "")
        table.add_row(
            "planned steps",
            f"{plan['total_steps']:,} ({cap}); validation every {plan['eval_every']} "
            f"steps on {conv.get('validation_rows', 0)} rows",
        )
        table.add_row("batch x accumulation", f"{plan['batch_size']} x {plan['gradient_accumulation']}")
        table.add_row("max length / tokens", f"{plan['max_length']} / {r['tokens_total']:,}")
        table.add_row("parameters (trainable)", f"{r['parameters']:,} ({r['trainable_parameters']:,})")
        table.add_row(
            "memory",
            f"estimate {r['memory']['estimate_mib']:.0f} MiB; "
            f"measured peak {r['memory']['measured_peak_rss_mib']:.0f} MiB",
        )
        seconds = here["seconds"]
        table.add_row(
            "this machine",
            f"{here['tokens_per_second'] or 0:,.0f} tok/s on {here['threads']} thread(s), "
            f"{here['precision']}: about {_duration(seconds)}",
        )
        for gpu in r["reference_gpus"]:
            table.add_row(
                gpu["gpu"],
                f"about {_duration(gpu['seconds'])}, ${gpu['usd']:.4g} "
                f"(FLOPs estimate, {gpu['utilisation']:.0%} utilisation)",
            )
        if conv:
            gpus = ", ".join(f"{g} {_duration(s) if s >= 1 else '< 1 s'}" for g, s in conv["reference_gpus"].items())
            table.add_row(
                "time to convergence (at most)",
                f"this machine {_duration(conv['this_machine_seconds'])}; {gpus} (every planned step and "
                f"{conv['validations']} validations; early stopping usually ends sooner)",
            )
            if conv.get("warning"):
                table.add_row("time cap", f"[yellow]{conv['warning']}[/yellow]")
        out.print(table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def register(app: typer.Typer) -> None:
    """Add the pipeline commands to ``app``, in the order ``tunewise --help`` lists them."""
    app.command()(init)
    app.command()(run)
    app.command()(curate)
    app.command()(evaluate)
    app.command()(train)
