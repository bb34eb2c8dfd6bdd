"""Commands over a run's results: ``export``, ``curve``, ``suggest``, ``add-labels``, ``distill``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tunewise.cli.common import ConfigOpt, JsonOpt, RunIdOpt, err, fail_with, known_errors, load_project, out
from tunewise.cli.pipeline_commands import RayAddressOpt, check_engine
from tunewise.config.sections import ConfigError
from tunewise.core.runs import check_run_id
from tunewise.decision.curve import CurveError, run_curve
from tunewise.workflows.distill import DistillError, distill as run_distill
from tunewise.workflows.export import ExportError, export as export_model
from tunewise.workflows.labelling import LabellingError, add_labels as add_rows, suggest as suggest_rows


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

    cfg = load_project(config)
    try:
        folder = export_model(
            cfg.resolve(cfg.runs_dir) / check_run_id(run_id),
            merge=merge,
            candidate=candidate,
            out_dir=output,
            force=force,
        )
    except (ExportError, *known_errors()) as exc:
        fail_with(exc)
    out.print(f"exported to [bold]{folder}[/bold]")


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

    check_engine(engine)
    cfg = load_project(config)
    try:
        parsed = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        fail_with(ConfigError(f"--fractions: {fractions!r} is not a comma-separated list of numbers"))
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
    except (CurveError, *known_errors()) as exc:
        fail_with(exc)
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

    cfg = load_project(config)
    try:
        result = suggest_rows(cfg, pool, k, run_id=run_id, candidate=candidate, out=output)
    except (LabellingError, *known_errors()) as exc:
        fail_with(exc)
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

    cfg = load_project(config)
    try:
        result = add_rows(cfg, file, run_id=run_id)
    except (LabellingError, *known_errors()) as exc:
        fail_with(exc)
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

    cfg = load_project(config)
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
    except (DistillError, *known_errors()) as exc:
        fail_with(exc)
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


def register(app: typer.Typer) -> None:
    """Add the commands over a run's results to ``app``, in the order ``tunewise --help`` lists them."""
    app.command()(export)
    app.command()(curve)
    app.command()(suggest)
    app.command(name="add-labels")(add_labels)
    app.command()(distill)
