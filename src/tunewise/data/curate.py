"""Curation: a pipeline of named, independent checks over the normalised records.

datatrove's and cleanlab Datalab's habits: a check only *finds* (it returns findings in the common
issue vocabulary); the shared runner here applies the configured action (drop, flag, redact,
relabel), keeps the issues table and the counts, and passes the surviving rows to the next check.
Nothing is lost silently: every dropped, changed or doubted row has an issues-table row.

Checks run in a fixed order because some decisions depend on others: label variants are merged
before conflicts are judged, conflicts are resolved before exact duplicates are collapsed (so a
relabelled copy becomes a plain duplicate), and row-level junk is removed before the expensive
embedding-based checks see it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tunewise.config.checks import CheckSettings
from tunewise.config.sections import ConfigError, ProjectConfig
from tunewise.core.errors import TunewiseError
from tunewise.core.progress import console, progress
from tunewise.core.records import answer_column
from tunewise.data.issues import IssueTable
from tunewise.models.loading import embed

# config action -> issues-table action
ACTION_NAMES = {"drop": "dropped", "flag": "flagged", "redact": "redacted", "relabel": "relabeled"}


@dataclass
class Finding:
    """One row a check doubts. ``index`` is the row's position in the frame the check saw."""

    index: int
    issue: str
    detail: str
    # column -> new value, used when the action is redact or relabel (None: nothing to apply)
    change: dict[str, Any] | None = None
    # the row this one duplicates or conflicts with (an id), for the report and for scoring
    of: str | None = None
    # a config action for this finding only, overriding the check's (e.g. "flag": a row the check
    # doubts but must not drop, such as the last row of a class)
    action: str | None = None


class SkipCheck(Exception):
    """Raised by a check that cannot run on this data; the reason lands in the summary."""


class CheckContractError(TunewiseError, RuntimeError):
    """A check broke its contract (e.g. reported an issue name it does not declare): a bug in it."""

    hint = (
        "declare the issue name in the check's `issues` (and in tunewise.data.issues.ISSUE_KINDS when it is "
        "new), or fix the check; tests/test_checks_conformance.py runs the contract over every check"
    )


class Engine:
    """How work is handed out. The local engine runs everything in this process."""

    name = "local"

    def map_batches(self, fn: Callable[[list[Any]], Any], items: Sequence[Any], batch_size: int) -> list[Any]:
        return [fn(list(items[i : i + batch_size])) for i in range(0, len(items), batch_size)]

    def map_frame(self, fn: Callable[[pd.DataFrame], Any], frame: pd.DataFrame, shard_rows: int) -> list[Any]:
        """Apply ``fn`` to consecutive row shards of ``frame``; results in shard order."""
        return [fn(frame.iloc[i : i + shard_rows]) for i in range(0, max(len(frame), 1), shard_rows)]

    def shutdown(self) -> None:
        pass


class RayEngine(Engine):
    """Hands shards to Ray tasks: same checks, same findings, more machines.

    ``address`` None starts (or joins) a local Ray; ``"auto"`` or ``"ray://host:10001"`` joins a
    cluster (see docs/user-guide.md). Row-local checks and embedding batches are distributed;
    checks that need all rows at once (duplicates, conflicts, label errors) run on the driver
    over data the workers prepared.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            ray.init(
                address=address,
                num_cpus=num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
            )
            self._started = True

    def _run(self, fn: Callable[[Any], Any], parts: list[Any]) -> list[Any]:
        remote = self._ray.remote(fn)
        return self._ray.get([remote.remote(part) for part in parts])

    def map_batches(self, fn, items, batch_size):
        return self._run(fn, [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)])

    def map_frame(self, fn, frame, shard_rows):
        return self._run(fn, [frame.iloc[i : i + shard_rows] for i in range(0, max(len(frame), 1), shard_rows)])

    def shutdown(self) -> None:
        if self._started:
            self._ray.shutdown()


def make_engine(name: str = "local", address: str | None = None) -> Engine:
    if name == "local":
        return Engine()
    if name == "ray":
        try:
            return RayEngine(address=address)
        except ImportError:
            raise ConfigError("--engine ray needs Ray: pip install 'tunewise[ray]'") from None
    raise ConfigError(f"unknown engine {name!r}; choose local or ray")


@dataclass
class CurateContext:
    """Shared, lazily computed resources: every check that needs embeddings gets the same ones."""

    config: ProjectConfig
    engine: Engine
    _embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    # label per row id as curation received the rows (classify): thin_classes names classes whose
    # every row was dropped (a relabelled class lives on under its new name)
    labels_in: pd.Series | None = None
    # what each check wants in its summary beyond its counts (a label mapping, a balance table),
    # by check name: kept here, not on the check, so find() stays free of state (and a check
    # shipped to a worker process returns nothing on self)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def note(self, check: str, **data: Any) -> None:
        """Add ``data`` to ``check``'s entry in the curate summary."""
        self.notes.setdefault(check, {}).update(data)

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def answer(self) -> str:
        return answer_column(self.config.task)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised embeddings from the project's encoder, cached by text across checks."""

        missing = [t for t in dict.fromkeys(texts) if t not in self._embeddings]
        if missing:
            spec = self.config.models.encoder
            chunks = self.engine.map_batches(lambda batch: embed(batch, spec=spec), missing, 4096)
            for t, v in zip(missing, np.concatenate(chunks) if chunks else []):
                self._embeddings[t] = v
        return np.stack([self._embeddings[t] for t in texts]) if len(texts) else np.zeros((0, 384), np.float32)


class Check:
    """Base of every curation check: declare the names and the settings model, implement ``find``.

    ``issues`` is a contract: the runner refuses a finding under any other name
    (:class:`CheckContractError`) and counts each declared name per action in the summary.
    """

    name: ClassVar[str]  # config key under `curate:`
    issues: ClassVar[tuple[str, ...]]  # issue kinds it may report
    # its config section (tunewise.config.checks): actions, what the threshold means, its range
    settings_model: ClassVar[type[CheckSettings]]
    actions: ClassVar[tuple[str, ...]]  # config actions it can take, first the default: from settings_model
    tasks: ClassVar[tuple[str, ...]] = ("classify", "generate")
    # True when a row's findings depend on that row alone: the engine may then shard the rows.
    row_local: ClassVar[bool] = False
    shard_rows: ClassVar[int] = 20_000

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "settings_model" in cls.__dict__:
            cls.actions = cls.settings_model.actions

    def __init__(self, settings: CheckSettings, project: ProjectConfig) -> None:
        self.settings = settings
        self.project = project

    @property
    def action(self) -> str:
        return self.settings.action or self.actions[0]

    @property
    def threshold(self) -> float | None:
        """The configured threshold, or the settings model's default when the config leaves it empty
        (None only for a check without a threshold)."""
        value = self.settings.threshold
        return value if value is not None else self.settings_model.default_threshold()

    def transform(self, frame: pd.DataFrame, ctx: CurateContext) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Optional silent clean-up applied to every row before ``find`` (e.g. Unicode NFC).

        Returns the new frame and counts of what changed; these changes are not per-row issues
        because they do not alter meaning, but they are counted in the summary.
        """
        return frame, {}

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        """The findings on ``frame``; keeps no state on ``self`` (extra summary: ``ctx.note``)."""
        raise NotImplementedError


# name -> class; "registered" and "run by default" are separate (the config's `enabled`).
CHECKS: dict[str, type[Check]] = {}
CHECK_ORDER = (
    "standardise",
    "empty_garbage",
    "too_short",
    "too_long",
    "pii",
    "off_topic",
    "label_conflicts",
    "exact_duplicates",
    "near_duplicates",
    "semantic_duplicates",
    "label_errors",
    "thin_classes",
    "generation",
)


def register(cls: type[Check]) -> type[Check]:
    if cls.name not in CHECK_ORDER:
        raise ValueError(f"check {cls.name!r} has no place in CHECK_ORDER")
    CHECKS[cls.name] = cls
    return cls


def load_checks() -> None:
    from tunewise.data import checks  # noqa: F401  (modules register themselves)


def build_checks(cfg: ProjectConfig) -> list[Check]:
    """Instantiate the enabled checks in order; refuse actions a check cannot take."""
    load_checks()
    out = []
    for name in CHECK_ORDER:
        settings: CheckSettings = getattr(cfg.curate, name)
        cls = CHECKS.get(name)
        if cls is None or not settings.enabled:
            continue
        if settings.action is not None and settings.action not in cls.actions:
            raise ConfigError(
                f"curate.{name}.action: '{settings.action}' is not valid for this check; choose from {', '.join(cls.actions)}"
            )
        out.append(cls(settings, cfg))
    return out


@dataclass
class CurateResult:
    frame: pd.DataFrame
    issues: IssueTable
    summary: dict[str, Any]


def curate_frame(
    frame: pd.DataFrame, cfg: ProjectConfig, *, engine: Engine | None = None, prior_issues: IssueTable | None = None
) -> CurateResult:
    """Run every enabled check over ``frame``; returns the cleaned rows, issues and a summary."""
    engine = engine or Engine()
    ctx = CurateContext(cfg, engine)
    issues = IssueTable("curate")
    if prior_issues is not None:
        issues.extend(prior_issues)
    frame = frame.reset_index(drop=True).copy()
    rows_in = len(frame)
    if "label" in frame.columns and cfg.task == "classify":
        ctx.labels_in = pd.Series(frame["label"].astype(str).to_numpy(), index=frame["id"].astype(str).to_numpy())
    per_check: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    checks = build_checks(cfg)
    # one progress line over the checks; a check's own long loops (near-duplicates, embeddings)
    # show their own lines inside it
    with progress("curate", sum(cfg.task in c.tasks for c in checks), unit="checks") as advance:
        for check in checks:
            if cfg.task not in check.tasks:
                skipped[check.name] = f"not used for task {cfg.task}"
                continue
            advance(0, description=f"curate: {check.name} ({len(frame):,} rows)")
            t0 = time.perf_counter()
            try:
                frame, transformed, findings = _run_check(check, frame, ctx)
            except SkipCheck as why:
                skipped[check.name] = str(why)
                console.print(f"[yellow]curate: {check.name} skipped: {why}[/yellow]")
                advance(1)
                continue
            undeclared = sorted({f.issue for f in findings} - set(check.issues))
            if undeclared:
                raise CheckContractError(
                    f"curate: check {check.name} reported issue(s) {', '.join(undeclared)} "
                    f"it does not declare (declared: {', '.join(check.issues)})"
                )
            frame, counts = _apply(frame, findings, check, issues, examples)
            if check.name == "thin_classes" and cfg.curate.synthesize:
                frame, counts["added"] = _add_synthetic(check, frame, ctx, issues)
            counts.update(transformed)
            counts.update(ctx.notes.get(check.name, {}))
            counts["seconds"] = round(time.perf_counter() - t0, 3)
            per_check[check.name] = counts
            advance(1)
    summary = {
        "engine": engine.name,
        "rows_in": rows_in,
        "rows_out": len(frame),
        "issue_counts": issues.counts(),
        "action_counts": _count_rows(issues, lambda r: r["action"]),
        # "<action>_<issue>" over the whole issues table (ingest's rows too), e.g. dropped_exact_duplicate
        "issue_action_counts": _count_rows(issues, lambda r: f"{r['action']}_{r['issue']}"),
        "checks": per_check,
        "skipped": skipped,
        "examples": examples,
    }
    return CurateResult(frame.reset_index(drop=True), issues, summary)


def _run_check(check: Check, frame: pd.DataFrame, ctx: CurateContext) -> tuple[pd.DataFrame, dict, list[Finding]]:
    if not check.row_local or type(ctx.engine) is Engine:
        frame, transformed = check.transform(frame, ctx)
        return frame, transformed, check.find(frame, ctx)

    # Sharded: each shard is transformed and checked where it lands; indices are shard-relative,
    # so shift them back by the shard's start. The shard context carries no engine (no nesting).
    def one_shard(shard: pd.DataFrame) -> tuple[pd.DataFrame, dict, list[Finding]]:
        shard_ctx = CurateContext(ctx.config, Engine())
        start = shard.index[0] if len(shard) else 0
        shard = shard.reset_index(drop=True)
        shard, counts = check.transform(shard, shard_ctx)
        found = check.find(shard, shard_ctx)
        for f in found:
            f.index += start
        return shard, counts, found

    parts = ctx.engine.map_frame(one_shard, frame, check.shard_rows)
    merged = pd.concat([p[0] for p in parts], ignore_index=True) if parts else frame
    counts: dict[str, Any] = {}
    for _, c, _ in parts:
        for k, v in c.items():
            if isinstance(v, dict):  # e.g. a label mapping: shards' mappings agree, merge them
                counts.setdefault(k, {}).update(v)
            else:
                counts[k] = counts.get(k, 0) + v
    return merged, counts, [f for _, _, found in parts for f in found]


def _apply(
    frame: pd.DataFrame,
    findings: list[Finding],
    check: Check,
    issues: IssueTable,
    examples: dict[str, list[dict[str, Any]]],
) -> tuple[pd.DataFrame, dict[str, Any]]:
    config_action = check.action
    counts: dict[str, Any] = {"found": len(findings)}
    # per declared issue and action ("dropped_near_duplicate": 3), zeros included: every check's
    # entry has the same keys whatever the data. Any finding can end up flagged (its own action,
    # or nothing certain to apply), so flagged_ and dropped_ are always there.
    outcomes = dict.fromkeys(["dropped", "flagged"] + [ACTION_NAMES[a] for a in check.actions])
    counts.update({f"{action}_{issue}": 0 for issue in check.issues for action in outcomes})
    drop: set[int] = set()
    ids = frame["id"].tolist()
    for f in findings:
        this_action = f.action or config_action
        action = ACTION_NAMES[this_action]
        if this_action in ("redact", "relabel"):
            if f.change:
                for column, value in f.change.items():
                    frame.at[f.index, column] = value
            else:
                action = "flagged"  # nothing certain to apply (e.g. a tie in a label conflict)
        elif this_action == "drop":
            drop.add(f.index)
        detail = f.detail + (f" (of {f.of})" if f.of is not None else "")
        row = frame.loc[f.index]
        issues.add(
            ids[f.index], f.issue, detail, action, source=row.get("source_file"), line=_int(row.get("source_line"))
        )
        counts[action] = counts.get(action, 0) + 1
        counts[f"{action}_{f.issue}"] = counts.get(f"{action}_{f.issue}", 0) + 1
        bucket = examples.setdefault(f.issue, [])
        if len(bucket) < 3:
            bucket.append({"id": ids[f.index], "input": str(row["input"])[:200], "detail": detail, "action": action})
    if drop:
        frame = frame.drop(index=sorted(drop)).reset_index(drop=True)
    return frame, counts


def _add_synthetic(
    check: Check, frame: pd.DataFrame, ctx: CurateContext, issues: IssueTable
) -> tuple[pd.DataFrame, int]:
    """Append a check's synthetic rows (paraphrases for thin classes), each with an issue row."""
    new, added = check.synthesize(frame, ctx)  # type: ignore[attr-defined]
    if new is None or len(new) == 0:
        return frame, 0
    ids = new["id"].tolist()
    for f in added:
        issues.add(ids[f.index], "synthetic", f.detail + (f" (of {f.of})" if f.of else ""), "added", source="synthetic")
    merged = pd.concat([frame, new], ignore_index=True)
    merged["source_line"] = merged["source_line"].astype("Int64")
    return merged, len(new)


def _int(value: Any) -> int | None:
    try:
        return None if value is None or pd.isna(value) else int(value)
    except (TypeError, ValueError):
        return None


def _count_rows(issues: IssueTable, key: Callable[[dict[str, Any]], str]) -> dict[str, int]:
    """Issues-table rows counted by ``key(row)``, in name order."""
    return dict(sorted(Counter(key(r) for r in issues.rows).items()))
