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

from tunewise.cli.common import ConfigOpt, JsonOpt, RunIdOpt, _fail, _known_errors, _load, err, out, prepare_process
from tunewise.cli.serve import register as _register_serve
from tunewise.config.sections import ConfigError, ProjectConfig
from tunewise.core.artifacts import read_json
from tunewise.core.runs import check_run_id, existing_run_lock
from tunewise.decision.curve import CurveError, run_curve
from tunewise.demo.run import write_demo_project
from tunewise.evaluation.gate import gate_exit_code
from tunewise.evaluation.human_sheet import SheetError, fold_ratings
from tunewise.models.loading import doctor_report
from tunewise.pipeline.runner import load_stages, run_stages
from tunewise.pipeline.stages.train import dry_run as plan_training, fit_worker
from tunewise.pipeline.tracking import Tracker
from tunewise.reporting.live import live_store_url
from tunewise.reporting.report import ReportError, build_report
from tunewise.training import distributed
from tunewise.workflows.distill import DistillError, distill as run_distill
from tunewise.workflows.export import ExportError, export as export_model
from tunewise.workflows.init_project import init_project
from tunewise.workflows.labelling import LabellingError, add_labels as add_rows, suggest as suggest_rows

app = typer.Typer(
    name="tunewise",
    help="Will fine-tuning an LLM on your data pay off? Curate, measure baselines, fine-tune, evaluate, decide.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    callback=prepare_process,
)

ForceOpt = Annotated[list[str] | None, typer.Option("--force", help="re-run this stage even if cached (repeatable)")]
RayAddressOpt = Annotated[
    str | None, typer.Option("--ray-address", help="Ray cluster address (default: start a local Ray)")
]


def _check_engine(engine: str) -> None:
    if engine not in ("local", "ray"):
        _fail(ConfigError(f"--engine must be local or ray, got {engine!r}"))


def _run_stages(
    cfg: ProjectConfig, run_id: str, only: list[str] | None, force: list[str] | None, options: dict | None = None
) -> dict:

    try:
        with Tracker(cfg, run_id) as tracker:
            return run_stages(cfg, run_id, only=only, force=set(force or ()), tracker=tracker, options=options)
    except _known_errors() as exc:
        _fail(exc)
        raise  # unreachable


def _run(
    cfg: ProjectConfig,
    run_id: str,
    only: list[str] | None,
    force: list[str] | None,
    as_json: bool,
    options: dict | None = None,
) -> dict:
    results = _run_stages(cfg, run_id, only, force, options)
    run_dir = cfg.resolve(cfg.runs_dir) / run_id
    if as_json:
        print(json.dumps({"run_dir": str(run_dir), "stages": results}, default=str))
    else:
        _print_stage_table(results)
        out.print(f"run folder: [bold]{run_dir}[/bold]")
    return results


def _print_stage_table(results: dict) -> None:
    table = Table(title="stages")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("key metrics")
    for name, marker in results.items():
        metrics = marker.get("metrics", {})
        shown = ", ".join(f"{k}={v}" for k, v in list(metrics.items())[:6] if not isinstance(v, (dict, list)))
        table.add_row(name, f"{marker.get('seconds', 0):.1f}", shown)
    out.print(table)


@app.command()
def init(
    data_file: Annotated[Path, typer.Argument(help="training data (csv, tsv, jsonl, json, parquet)")],
    test: Annotated[Path | None, typer.Option("--test", help="frozen held-out test file, used as it is")] = None,
    task: Annotated[str | None, typer.Option("--task", help="classify or generate (inferred when omitted)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="config file to write")] = Path("tunewise.yaml"),
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing config")] = False,
) -> None:
    """Inspect a data file and write a commented tunewise.yaml with sensible defaults."""

    if task not in (None, "classify", "generate"):
        _fail(ConfigError(f"--task must be classify or generate, got {task!r}"))
    try:
        path, info = init_project(data_file, test_file=test, task=task, out=output, overwrite=force)
    except _known_errors() as exc:
        _fail(exc)
    out.print(
        f"wrote [bold]{path}[/bold]: {info['file_format']} file, {info['record_format']} records, task {info['task']}"
    )
    if info.get("test"):
        out.print(f"test file: {info['test']['file_format']} file, {info['test']['n_sample_rows']:,} rows looked at")
    for note in info.get("notes", []):
        out.print(f"[yellow]note: {note}[/yellow]", highlight=False)
    out.print(f"columns: {info.get('columns_used')}; slice columns: {info.get('slice_candidates')}")
    out.print("next: [bold]tunewise run[/bold]")


@app.command()
def run(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    force: ForceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run every pipeline stage in order, reusing stages whose inputs did not change."""
    cfg = _load(config)
    _run(cfg, run_id, None, force, as_json)
    _print_verdict(cfg, run_id, err if as_json else out)  # with --json, stdout carries the JSON only


VERDICT_COLOURS = {"FINE_TUNE": "green", "USE_ALTERNATIVE": "cyan", "NOT_YET": "yellow", "INCONCLUSIVE": "magenta"}


def _print_verdict(cfg: ProjectConfig, run_id: str, console=out) -> None:
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


def _stage_command(name: str, help_text: str) -> None:
    def command(
        config: ConfigOpt = Path("tunewise.yaml"),
        run_id: RunIdOpt = "default",
        force: ForceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        cfg = _load(config)
        _run(cfg, run_id, [name], list(force or []) + [name], as_json)

    command.__doc__ = help_text
    app.command(name=name)(command)


def _register_stage_commands() -> None:

    # Commands written out above (curate, train, evaluate: extra options) keep their own definition.
    defined = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands if c.callback}
    for name, spec in load_stages().items():
        if name not in defined:
            _stage_command(name, spec.help)


@app.command()
def curate(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    force: ForceOpt = None,
    engine: Annotated[str, typer.Option("--engine", help="local, or ray to hand shards to a Ray cluster")] = "local",
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find and fix duplicates, conflicts, label errors, off-topic rows, PII and thin classes."""
    _check_engine(engine)
    cfg = _load(config)
    _run(
        cfg,
        run_id,
        ["curate"],
        list(force or []) + ["curate"],
        as_json,
        options={"engine": engine, "ray_address": ray_address},
    )


@app.command()
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

    cfg = _load(config)
    if human_sheet and cfg.evaluate.human_sheet_size == 0:
        cfg = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"human_sheet_size": 50})})
    evaluate_dir = cfg.resolve(cfg.runs_dir) / run_id / "evaluate"
    # Folding ratings in must not re-run (and re-sample) the evaluation the sheet came from.
    rerun = [] if human_ratings is not None else ["evaluate"]
    _run(cfg, run_id, ["evaluate"], list(force or []) + rerun, as_json)
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
    except (SheetError, OSError, *_known_errors()) as exc:
        _fail(exc)
    if ratings["win_rate"] is None:
        console.print(f"human ratings: no decided items yet ({ratings['ties']} ties, {ratings['unrated']} unrated)")
        return
    low, high = ratings["ci95"]
    console.print(
        f"human ratings: {ratings['candidate']} preferred over {ratings['opponent']} in "
        f"{ratings['win_rate']:.0%} of {ratings['wins'] + ratings['losses']} decided items "
        f"(95% CI {low:.0%} to {high:.0%}); {ratings['ties']} ties, {ratings['unrated']} unrated"
    )


@app.command()
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

    cfg = _load(config)
    if not resume:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": False})})
    if dry_run:
        _train_dry_run(cfg, run_id, as_json)
        return
    if nproc > 1 and not distributed.in_worker():
        raise typer.Exit(distributed.launch(nproc, sys.argv[1:]))
    if not distributed.in_worker():
        _run(cfg, run_id, ["train"], list(force or []) + ["train"], as_json)
        return
    # A torchrun worker: rank 0 brings the earlier stages up to date before the others read the split.

    distributed.init_process_group()
    try:
        try:
            if distributed.rank() == 0:
                run_stages(cfg, run_id, only=["split"])
            distributed.barrier()
            if distributed.rank() == 0:
                _run(cfg, run_id, ["train"], list(force or []) + ["train"], as_json)
            else:
                fit_worker(cfg, run_id)
        except _known_errors() as exc:
            _fail(exc)
    finally:
        distributed.destroy_process_group()


def _train_dry_run(cfg: ProjectConfig, run_id: str, as_json: bool) -> None:

    try:
        reports = plan_training(cfg, run_id)
    except _known_errors() as exc:
        _fail(exc)
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


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="run folder name under runs/")],
    config: ConfigOpt = Path("tunewise.yaml"),
    merge: Annotated[
        bool,
        typer.Option("--merge", help="fold the LoRA adapter into the base weights: a plain transformers model folder"),
    ] = False,
    candidate: Annotated[
        str | None, typer.Option("--candidate", help="which trained candidate (needed when the run trained several)")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="folder to write (default runs/<id>/export/<candidate>-<form>)"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an --output folder that holds other files")] = False,
) -> None:
    """Export a trained candidate: the adapter (safetensors) or, with --merge, a merged model."""

    cfg = _load(config)
    try:
        folder = export_model(
            cfg.resolve(cfg.runs_dir) / check_run_id(run_id),
            merge=merge,
            candidate=candidate,
            out_dir=output,
            force=force,
        )
    except (ExportError, *_known_errors()) as exc:
        _fail(exc)
    out.print(f"exported to [bold]{folder}[/bold]")


@app.command()
def curve(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    fractions: Annotated[
        str, typer.Option("--fractions", help="nested training subsets, comma-separated")
    ] = "0.1,0.25,0.5,1.0",
    candidates: Annotated[
        str | None,
        typer.Option(
            "--candidates",
            help="comma-separated (default: the "
            "decision's best fine-tune and the alternative it was weighed "
            "against; ensemble: measured through its strongest member)",
        ),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(
            "--target",
            help="accuracy to reach (default: the decision's target, the reference's score x (1 + threshold))",
        ),
    ] = None,
    engine: Annotated[str, typer.Option("--engine", help="local, or ray: each subset training a Ray task")] = "local",
    ray_address: RayAddressOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Learning curves: accuracy against data size, what 2x/5x/10x data would give, and the data the target needs."""

    _check_engine(engine)
    cfg = _load(config)
    try:
        parsed = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        _fail(ConfigError(f"--fractions: {fractions!r} is not a comma-separated list of numbers"))
    try:
        result = run_curve(
            cfg,
            run_id,
            fractions=parsed,
            target=target,
            engine=engine,
            ray_address=ray_address,
            candidates=[c for c in (candidates or "").split(",") if c] or None,
        )
    except (CurveError, *_known_errors()) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(result, default=str))
        return
    for note in result["notes"]:
        err.print(f"note: {note}")
    table = Table(title=f"learning curve ({result['n_train']:,} training rows now)")
    for column in ("candidate", "accuracy by rows", "levels off at", "2x", "5x", "10x", "target"):
        table.add_column(column)
    for name, entry in result["candidates"].items():
        measured = ", ".join(f"{n:,}: {a:.3f}" for n, a in zip(entry["n"], entry["test_accuracy"]))
        expected = [
            f"{e['accuracy']:.3f} ({e['ci95'][0]:.3f}-{e['ci95'][1]:.3f})"
            for k, e in entry["expected"].items()
            if k != "1x"
        ]
        table.add_row(
            name,
            measured,
            f"{entry['fit']['plateau_accuracy']:.3f}",
            *expected,
            entry.get("target", {}).get("message", "-"),
        )
    out.print(table)
    out.print(f"curve: [bold]{cfg.resolve(cfg.runs_dir) / run_id / 'curve'}[/bold]")


@app.command()
def suggest(
    pool: Annotated[
        Path,
        typer.Option("--pool", help="unlabelled rows (csv, tsv, jsonl, json, parquet) with the project's text column"),
    ],
    k: Annotated[int, typer.Option("--k", min=1, help="rows to suggest")],
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    candidate: Annotated[
        str | None,
        typer.Option(
            "--candidate", help="model that ranks the rows (default: the evaluation gate's candidate), e.g. embed_lr"
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="CSV to write (default runs/<id>/suggest/to_label.csv)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rows to label next: the model's most uncertain, spread over distinct confusions, none already labelled."""

    cfg = _load(config)
    try:
        result = suggest_rows(cfg, pool, k, run_id=run_id, candidate=candidate, out=output)
    except (LabellingError, *_known_errors()) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(result, default=str))
        return
    for problem in result["pool_unreadable"][:10]:
        err.print(f"warning: {problem}", highlight=False)
    for note in result["notes"]:
        err.print(f"note: {note}")
    table = Table(title=f"{result['suggested']} rows to label next ({result['candidate']}, {result['model']})")
    for column in ("id", "text", "model's guess", "confidence", "uncertainty", "cluster"):
        table.add_column(column, overflow="fold")
    for row in result["rows"][:20]:
        table.add_row(
            str(row["id"]),
            str(row["text"])[:80],
            str(row["suggested_label"]),
            f"{row['confidence']:.2f}",
            f"{row['uncertainty']:.2f}",
            str(row["cluster"]),
        )
    out.print(table)
    if result["suggested"] > 20:
        out.print(f"... and {result['suggested'] - 20} more in the CSV")
    out.print(
        f"pool: {result['pool_rows']:,} rows; skipped {result['skipped_labelled_exact']:,} already labelled "
        f"(same text), {result['skipped_labelled_near']:,} near-duplicates of labelled rows (cosine >= 0.95), "
        f"{result['skipped_pool_copies']:,} repeated in the pool, {result['pool_empty']:,} empty, "
        f"{len(result['pool_unreadable']):,} unreadable"
    )
    out.print(
        f"mean uncertainty: suggested {result['suggested_mean_uncertainty'] or 0:.3f}, "
        f"pool {result['pool_mean_uncertainty']:.3f}"
    )
    out.print(f"wrote [bold]{result['out']}[/bold]: fill the label column, then: tunewise add-labels {result['out']}")


@app.command(name="add-labels")
def add_labels(
    file: Annotated[
        Path,
        typer.Argument(
            help="labelled rows: the filled suggest CSV, or any csv/jsonl with text and label (reply for generate)"
        ),
    ],
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Add newly labelled rows to the project's data (the test split stays as it is); then: tunewise run."""

    cfg = _load(config)
    try:
        result = add_rows(cfg, file, run_id=run_id)
    except (LabellingError, *_known_errors()) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(result, default=str))
        return
    for warning in result["warnings"][:20]:
        err.print(f"warning: {warning}", highlight=False)
    if len(result["warnings"]) > 20:
        err.print(f"... and {len(result['warnings']) - 20} more warnings")
    table = Table(title=f"add-labels: {result['file']}")
    table.add_column("rows")
    table.add_column("count", justify="right")
    for name, key in (
        ("read", "rows_read"),
        ("added", "added"),
        ("skipped: blank label", "skipped_blank_label"),
        ("skipped: already in the data", "skipped_already_labelled"),
        ("skipped: empty text", "skipped_empty_text"),
        ("skipped: unreadable", "skipped_unreadable"),
        ("skipped: too long", "skipped_too_long"),
    ):
        table.add_row(name, f"{result[key]:,}")
    out.print(table)
    if result["new_labels"]:
        out.print("new classes: " + ", ".join(f"{label} ({n})" for label, n in result["new_labels"].items()))
    out.print(f"{result['added_file']}: {result['added_total']:,} added rows in all")
    test = result["test"]
    if test.get("new"):
        out.print(
            f"froze the {test['ids']:,} test ids of run {run_id} in {test['path']}: the test split stays as it is"
        )
    elif test.get("frozen"):
        out.print(f"test split: the {test['ids']:,} frozen ids in {test['path']}")
    else:
        out.print(f"test split: {test['reason']}")
    out.print("next: [bold]tunewise run[/bold]")


@app.command()
def distill(
    config: ConfigOpt = Path("tunewise.yaml"),
    run_id: RunIdOpt = "default",
    pool: Annotated[
        Path | None,
        typer.Option(
            "--pool",
            help="unlabelled rows (csv, tsv, jsonl, json, parquet) "
            "with the project's text column; a label column is ignored",
        ),
    ] = None,
    relabel_suspects: Annotated[
        bool,
        typer.Option(
            "--relabel-suspects",
            help="also let the teacher relabel the training rows curation flagged as likely label errors",
        ),
    ] = False,
    teacher: Annotated[
        str | None,
        typer.Option(
            "--teacher",
            help="api_zero_shot or api_few_shot (the endpoint of baseline.api_llm), or any candidate the run built",
        ),
    ] = None,
    agree: Annotated[
        bool,
        typer.Option(
            "--agree", help="label with api_zero_shot and api_few_shot and keep the rows where both give the same label"
        ),
    ] = False,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence",
            help="keep rows the teacher scores "
            "at least this (default: chosen on validation to reach "
            "the students' target)",
        ),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(
            "--target",
            help="accuracy the teacher's kept rows must reach on validation (default: the decision's target)",
        ),
    ] = None,
    students: Annotated[
        str | None,
        typer.Option(
            "--students", help="comma-separated students (default: train.candidates), e.g. encoder_ft,embed_lr"
        ),
    ] = None,
    out_run_id: Annotated[
        str | None, typer.Option("--out-run-id", help="run the students train in (default <run-id>-distilled)")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="ask the API again for rows it answered before")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="estimate what labelling would cost; send nothing")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Label a pool with a teacher (the hosted LLM), train the small models on it, compare and price both."""

    cfg = _load(config)
    try:
        result = run_distill(
            cfg,
            run_id,
            pool=pool,
            relabel_suspects=relabel_suspects,
            teacher=teacher,
            agree=agree,
            min_confidence=min_confidence,
            target=target,
            out_run_id=out_run_id,
            no_cache=no_cache,
            students=[s for s in (students or "").split(",") if s] or None,
            dry_run=dry_run,
        )
    except (DistillError, *_known_errors()) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps(result, default=str))
        return
    _print_distill(result)


def _print_distill(result: dict) -> None:
    for note in result["notes"]:
        err.print(f"note: {note}", highlight=False)
    pool = result.get("pool")
    if pool:
        skipped = pool["skipped"]
        out.print(
            f"pool {pool['file']}: {pool['rows_read']:,} rows read, {pool['to_label']:,} to label; skipped "
            f"{skipped['already_labelled']:,} already labelled, {skipped['same_as_validation_or_test']:,} "
            f"copies and {skipped['near_validation_or_test']:,} near-copies of validation/test rows, "
            f"{skipped['pool_copies']:,} repeated, {pool['empty']:,} empty, {pool['unreadable']:,} unreadable",
            highlight=False,
        )
    if result.get("suspects"):
        s = result["suspects"]
        out.print(
            f"suspected label errors: {s['suspects']:,} ({s['in_train']:,} in train, relabelled when the teacher "
            f"keeps another label; {s['in_validation_or_test']:,} in validation/test, left as they are)"
        )
    if result["status"] == "dry_run":
        for name, estimate in result["estimates"].items():
            out.print(
                f"{name}: {estimate.get('rows_to_request', 0):,} rows to request, at most "
                f"${estimate['usd']:.4f} ({estimate['method']})",
                highlight=False,
            )
        return
    out.print(result["rule"]["message"], highlight=False)
    labelled = result["labelled"]
    dropped = ", ".join(f"{n:,} {why}" for why, n in labelled["dropped"].items()) or "none"
    out.print(
        f"teacher rows: {labelled['kept']:,} of {labelled['labelled']:,} kept (dropped: {dropped}) in "
        f"[bold]{result['artifact']}[/bold]"
    )
    table = Table(title=f"students (run {result['out_run_id']}) on the gold test set")
    for column in ("student", "against", "rows", "student accuracy", "other accuracy", "difference (95% CI)", "p"):
        table.add_column(column, overflow="fold")
    for c in result["comparisons"]:
        m = c["metrics"]["accuracy"]
        low, high = m["difference_ci"]
        table.add_row(
            c["student"],
            c["against"],
            f"{c['n']:,}",
            f"{m['candidate']:.4f}",
            f"{m['baseline']:.4f}",
            f"{m['difference']:+.4f} ({low:+.4f} to {high:+.4f})",
            f"{m['p_value']:.3g}",
        )
    out.print(table)
    costs = result["costs"]
    money = Table(title="costs")
    money.add_column("item")
    money.add_column("USD", justify="right")
    money.add_column("arithmetic", overflow="fold")
    for line in costs["one_time"]:
        money.add_row(line["item"], f"{line['usd']:,.4f}", line["arithmetic"])
    for name, cost in costs["monthly"].items():
        usd = "-" if cost.get("usd") is None else f"{cost['usd']:,.2f}"
        money.add_row(f"{name}: a month", usd, cost["arithmetic"])
    out.print(money)
    if costs.get("note"):
        err.print(f"note: {costs['note']}")


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
    except _known_errors() as exc:
        _fail(exc)
    human.print(
        f"demo data: [bold]{files.data}[/bold] ({sum(files.defect_counts.values())} injected defects, "
        f"truth in {files.truth.name}); config: [bold]{cfg_path}[/bold]"
    )
    cfg = _load(cfg_path)
    _run(cfg, "demo", None, None, as_json)
    _print_verdict(cfg, "demo", human)
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

    cfg = _load(config)
    url = None
    if live is not None:
        try:  # a wrong --live fails before the stage runs
            url = live_store_url(live)
        except ReportError as exc:
            _fail(exc)
    elif since is not None:
        _fail(ConfigError("--since needs --live: it is the window of the live section"))
    if url is None:
        _run(cfg, run_id, ["report"], list(force or []) + ["report"], as_json)
        return
    # The stage builds the page without live data (live data is not part of its cache key: it
    # changes every minute), then the page is rebuilt with the live section.
    results = _run_stages(cfg, run_id, ["report"], list(force or []) + ["report"])
    run_dir = cfg.resolve(cfg.runs_dir) / run_id

    try:
        with existing_run_lock(run_dir):  # the page is rewritten outside run_stages
            written = build_report(run_dir, base_dir=cfg.base_dir, live=url, live_since=since)
    except (ReportError, *_known_errors()) as exc:
        _fail(exc)
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
    _print_stage_table(results)
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


_register_stage_commands()
_register_serve(app)  # serve, monitor, retrain, promote, rollback (tunewise.cli.serve)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
