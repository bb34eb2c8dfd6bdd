"""Checks of a loaded config that pydantic's field types cannot make: values that name other things.

A candidate name, a curation check's action, the incumbent's predictions file: each is only
known to be wrong once the registries (candidates, checks) or the file system are asked. Without
this, such a mistake surfaced when its stage ran, after ingest, curation and the split had taken
their time (and a wrong ``evaluate.baseline`` even ended in a verdict with exit code 0).
:func:`load_config` reads a config and runs :func:`check_config`, so every command refuses the
config before any work starts, with the file, line and key path of each problem:

    tunewise.yaml:31: evaluate.baseline: unknown candidate 'foo'; known: embed_lr, few_shot_llm, ...
"""

from __future__ import annotations

import difflib
from pathlib import Path

from tunewise.candidates.factory import run_candidates as of_config
from tunewise.candidates.registry import CANDIDATES
from tunewise.config.sections import ConfigError, ProjectConfig, key_lines, read_config
from tunewise.data.curate import CHECKS, load_checks
from tunewise.evaluation.base import PREDICTIONS_PREFIX  # evaluate.baseline: predictions:FILE


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown candidate {name!r}{hint}; known: {', '.join(known) or '(none)'}"


def run_candidates(cfg: ProjectConfig) -> tuple[list[str], list[str]]:
    """(baseline stage's candidates, train stage's candidates) this config runs, defaults included."""
    return of_config(cfg)


def config_problems(cfg: ProjectConfig) -> list[tuple[tuple[str, ...], str]]:
    """Every problem as (key path, message); empty when the config is fine."""
    task = cfg.task
    problems: list[tuple[tuple[str, ...], str]] = []

    # curate.<check>.action: an action the check cannot take
    load_checks()
    for name, cls in CHECKS.items():
        settings = getattr(cfg.curate, name)
        if settings.action is not None and settings.action not in cls.actions:
            problems.append(
                (
                    ("curate", name, "action"),
                    f"'{settings.action}' is not valid for this check; choose from {', '.join(cls.actions)}",
                )
            )
    # (a threshold's range is its settings model's: tunewise.config.checks, checked by pydantic)

    # baseline.candidates: registered, of the project's task; not one that combines others (the
    # ensemble): the evaluate stage builds it from its members, when evaluate.ensemble is on
    of_task = sorted(n for n, c in CANDIDATES.items() if c.task == task and not c.combines)
    combined = (
        sorted(n for n, c in CANDIDATES.items() if c.task == task and c.combines) if cfg.evaluate.ensemble else []
    )
    for i, name in enumerate(cfg.baseline.candidates or []):
        where = ("baseline", "candidates", str(i))
        cls = CANDIDATES.get(name)
        if cls is None:
            problems.append((where, _unknown(name, of_task)))
        elif cls.combines:
            problems.append(
                (
                    where,
                    f"{name!r} combines other candidates' predictions: the evaluate stage builds it "
                    "(evaluate.ensemble); remove it here",
                )
            )
        elif cls.task != task:
            problems.append(
                (
                    where,
                    f"{name!r} is a {cls.task} candidate but the project's task is {task}; "
                    f"{task} candidates: {', '.join(of_task)}",
                )
            )
        elif name == "rag_llm_gen" and not cfg.data.knowledge_base:
            problems.append(
                (
                    where,
                    "rag_llm_gen needs a knowledge base: set data.knowledge_base to a folder of "
                    ".md/.txt files, or remove rag_llm_gen",
                )
            )

    # train.candidates and train.overrides: registered fine-tuned candidates of the task
    fine_tuned = sorted(n for n, c in CANDIDATES.items() if c.kind == "finetuned" and c.task == task and not c.combines)
    for i, name in enumerate(cfg.train.candidates or []):
        where = ("train", "candidates", str(i))
        cls = CANDIDATES.get(name)
        if cls is None:
            problems.append((where, _unknown(name, fine_tuned)))
        elif cls.combines:
            problems.append(
                (
                    where,
                    f"{name!r} combines other candidates' predictions: the evaluate stage builds it "
                    f"(evaluate.ensemble); fine-tuned {task} candidates: {', '.join(fine_tuned)}",
                )
            )
        elif cls.kind != "finetuned" or cls.task != task:
            problems.append(
                (
                    where,
                    f"{name!r} is a {cls.kind} {cls.task} candidate; fine-tuned {task} "
                    f"candidates: {', '.join(fine_tuned)}",
                )
            )
    for name in cfg.train.overrides:
        if name not in fine_tuned:
            problems.append(
                (
                    ("train", "overrides", name),
                    _unknown(name, fine_tuned).replace(
                        "unknown candidate", "settings for an unknown fine-tuned candidate", 1
                    ),
                )
            )

    # data.knowledge_base: a folder
    kb = cfg.knowledge_base_dir()
    if kb is not None and not kb.is_dir():
        problems.append((("data", "knowledge_base"), f"{kb} is not a folder; point it at a folder of .md/.txt files"))

    # evaluate.baseline: predictions:FILE that exists, or a candidate this config runs
    baseline = cfg.evaluate.baseline
    where = ("evaluate", "baseline")
    if baseline is not None and baseline.startswith(PREDICTIONS_PREFIX):
        raw = baseline[len(PREDICTIONS_PREFIX) :].strip()
        path = cfg.incumbent_predictions_file()
        if not raw:
            problems.append((where, "predictions: needs a file, e.g. predictions:data/current_system.csv"))
        elif path is None or not path.exists():
            problems.append(
                (where, f"predictions file {path} does not exist (relative paths start at the config's folder)")
            )
        elif not path.is_file():
            problems.append((where, f"predictions file {path} is not a file"))
        elif path.stat().st_size == 0:
            problems.append((where, f"predictions file {path} is empty (0 bytes)"))
    elif baseline is not None:
        baseline_names, train_names = run_candidates(cfg)
        ran = list(dict.fromkeys(baseline_names + train_names + combined))
        cls = CANDIDATES.get(baseline)
        if cls is None or (cls.combines and baseline not in combined):
            problems.append(
                (
                    where,
                    _unknown(baseline, sorted(of_task + combined))
                    + "; or predictions:FILE for your current system's answers",
                )
            )
        elif cls.task != task:
            problems.append((where, f"{baseline!r} is a {cls.task} candidate but the project's task is {task}"))
        elif baseline not in ran:
            problems.append(
                (
                    where,
                    f"{baseline!r} is not among the candidates this config runs "
                    f"({', '.join(ran)}): add it to baseline.candidates"
                    + (" or train.candidates" if cls is not None and cls.kind == "finetuned" else "")
                    + ", or name one of them",
                )
            )
    return problems


def load_config(path: str | Path, *, precheck: bool = True) -> ProjectConfig:
    """Read and validate a config file (:func:`tunewise.config.sections.read_config`). With
    ``precheck`` (the default) the values that name other things are checked too, so a wrong name
    fails here, before any stage runs."""
    cfg = read_config(path)
    if precheck:
        check_config(cfg, source=str(path), text=Path(path).read_text(encoding="utf-8-sig"))
    return cfg


def check_config(cfg: ProjectConfig, *, source: str = "<config>", text: str | None = None) -> None:
    """Raise :class:`ConfigError` listing every problem of :func:`config_problems`, each as
    ``FILE[:LINE]: key.path: message``."""
    problems = config_problems(cfg)
    if not problems:
        return
    lines = key_lines(text) if text else {}
    messages = []
    for path, message in problems:
        line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
        shown = ".".join(p for p in path if not p.isdigit())
        messages.append(f"{source}:{line}: {shown}: {message}" if line else f"{source}: {shown}: {message}")
    raise ConfigError("\n".join(messages))


__all__ = ["check_config", "config_problems", "load_config", "run_candidates"]
