"""The one place a candidate is built from a project's config.

Everything that needs a candidate gets it here: the baseline and train stages, the evaluate
stage's refits, serving, learning curves, ``tunewise suggest`` and distillation's teachers and
students.

- :func:`build_candidate` ``(name, config, **overrides)``: an unfitted candidate. A fine-tuned one
  takes the ``models`` and ``train`` sections (with ``train.overrides[name]``) and the seed; any
  other takes the ``baseline`` and ``models`` sections, the knowledge base and the task
  description: the sections each stage's cache key holds. The ensemble's pool is the fine-tuned
  and cheap candidates the config runs, each built the same way.
- :func:`run_candidate` ``(name, config, run_dir)``: the run's fitted candidate. A fine-tuned one is
  loaded from ``train/<name>/adapter`` (never retrained), the ensemble is made of the members its
  evaluation recorded (each obtained this way), any other is built and fitted on the run's split.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from tunewise.candidates.api import api_llm_settings
from tunewise.candidates.base import load_fitted
from tunewise.candidates.ensemble import EnsembleCandidate, candidate_members
from tunewise.candidates.finetuned import DEFAULT_FINETUNED, FineTunedCandidate, load_candidate
from tunewise.candidates.registry import (
    DEFAULT_CANDIDATES,
    Candidate,
    CandidateError,
    candidate_class,
    candidate_kwargs,
    make_candidate,
)
from tunewise.config.sections import BaselineConfig, EvaluateConfig, ModelsConfig, TrainConfig
from tunewise.core.artifacts import read_json
from tunewise.core.layout import RunLayout

if TYPE_CHECKING:
    from tunewise.config.sections import ProjectConfig

__all__ = ["build_candidate", "candidate_settings", "load_run_candidate", "run_candidate", "run_candidates"]


def candidate_settings(
    config: BaselineConfig | None,
    models: ModelsConfig | None,
    *,
    knowledge_base: str | Path | None = None,
    task_description: str | None = None,
) -> dict[str, Any]:
    """The pool of settings the baseline stage's candidates draw their constructor arguments from."""

    config = config or BaselineConfig()
    models = models or ModelsConfig()
    return {
        "llm": models.llm,
        "encoder": models.encoder,
        "offline": models.offline,
        "trust_remote_code": models.trust_remote_code,
        "system_prompt": config.system_prompt,
        "task_description": task_description,
        "few_shot_k": config.few_shot_k,
        "max_new_tokens": config.max_new_tokens,
        "rag_top_k": config.rag_top_k,
        "label_score": config.label_score,
        "calibrate": config.calibrate,
        "batch_size": config.batch_size,
        "max_input_tokens": config.max_input_tokens,
        "shortlist": config.shortlist,
        "shortlist_recall": config.shortlist_recall,
        "precision": config.precision,
        "scoring_workers": config.scoring_workers,
        "prompt_search": config.prompt_search,
        "prompt_search_rows": config.prompt_search_rows,
        "prompt_search_final_rows": config.prompt_search_final_rows,
        "knowledge_base": str(knowledge_base) if knowledge_base else None,
        # the api_* candidates' endpoint, prices and limits (baseline.api_llm, tunewise.candidates.api.ApiLlmConfig)
        **api_llm_settings(getattr(config, "api_llm", None)),
    }


def _fine_tuned_settings(name: str, config: Any) -> dict[str, Any]:
    models = getattr(config, "models", None) or ModelsConfig()
    train = getattr(config, "train", None) or TrainConfig()
    return {
        "llm": models.llm,
        "encoder": models.encoder,
        "offline": models.offline,
        "trust_remote_code": models.trust_remote_code,
        "train_config": train.for_candidate(name),
        "seed": getattr(config, "seed", 0),
        # the classifiers weight this class in their loss (train.out_of_scope_weight)
        "out_of_scope_label": (getattr(config, "evaluate", None) or EvaluateConfig()).out_of_scope_label,
    }


def _settings(cls: type[Candidate], config: Any) -> dict[str, Any]:
    """The pool of settings ``cls`` draws its constructor arguments from, for ``config``."""
    if isinstance(config, Mapping):
        return dict(config)
    if cls.kind == "finetuned" and not cls.combines:
        return _fine_tuned_settings(cls.name, config)
    if config is None:
        return candidate_settings(None, None)
    return candidate_settings(
        config.baseline,
        config.models,
        knowledge_base=config.knowledge_base_dir(),
        task_description=config.data.task_description,
    )


def run_candidates(cfg: ProjectConfig) -> tuple[list[str], list[str]]:
    """(baseline stage's candidates, train stage's candidates) this config runs, defaults included."""
    baseline = list(cfg.baseline.candidates or DEFAULT_CANDIDATES[cfg.task])
    if cfg.baseline.candidates is None and not cfg.data.knowledge_base and "rag_llm_gen" in baseline:
        baseline.remove("rag_llm_gen")  # the baseline stage skips it without a knowledge base
    train = list(DEFAULT_FINETUNED[cfg.task] if cfg.train.candidates is None else cfg.train.candidates)
    return baseline, train


def _pool(config: Any) -> list[str]:
    """The ensemble's pool: the candidates the config runs (a classify project's defaults without
    a project config) that its members rule can pick."""
    if config is None or isinstance(config, Mapping):
        names = [*DEFAULT_CANDIDATES[EnsembleCandidate.task], *DEFAULT_FINETUNED[EnsembleCandidate.task]]
    else:
        baseline, train = run_candidates(config)
        names = [*baseline, *train]  # the evaluate stage's order: baseline predictions, then train
    kinds = {}
    for name in names:
        cls = candidate_class(name)
        if cls.task == EnsembleCandidate.task and not cls.combines:
            kinds[name] = cls.kind
    return EnsembleCandidate.pool_names(names, kinds)


def build_candidate(name: str, config: ProjectConfig | Mapping[str, Any] | None = None, **overrides: Any) -> Candidate:
    """An unfitted candidate ``name`` with its constructor arguments taken from ``config``.

    ``config``: a project's config (see the module's docstring for which sections a candidate
    takes), a mapping (a pool of settings: each candidate takes the entries its constructor
    declares, so ``{}`` gives every default), or None (the default sections). ``overrides`` join
    the pool (``output_dir``, ``checkpoint_dir``, ``no_cache``). An unknown name, or an argument the
    constructor refuses, raises :class:`CandidateError` naming the closest name or the parameters.
    """
    cls = candidate_class(name)
    if cls.combines:  # the ensemble: a pool of candidates, each built here
        return cls(candidates=[build_candidate(member, config, **overrides) for member in _pool(config)])
    settings = {**_settings(cls, config), **overrides}
    return make_candidate(name, **candidate_kwargs(name, settings))


def _split(run_dir: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    paths = RunLayout(run_dir).splits(("train", "validation"))
    if not paths["train"].exists():
        raise CandidateError(
            f"{paths['train']} not found: run `tunewise split` first ({name!r} is fitted on the run's train split)"
        )
    validation = paths["validation"]
    return pd.read_parquet(paths["train"]), pd.read_parquet(validation) if validation.exists() else None


def run_candidate(
    name: str,
    config: ProjectConfig | Mapping[str, Any] | None,
    run_dir: str | Path,
    train: pd.DataFrame | None = None,
    validation: pd.DataFrame | None = None,
    **overrides: Any,
) -> Candidate:
    """The run's fitted candidate ``name``.

    - fine-tuned: loaded from ``<run_dir>/train/<name>/adapter`` (never retrained here);
    - one that combines others (the ensemble): its members recorded in the run's evaluation
      (``evaluate/summary.json``), each obtained as here, combined as its evaluation combined them;
    - any other: :func:`build_candidate` from ``config`` and ``overrides``, fitted on ``train`` and
      ``validation``; by default on the run's ``split/train.parquet`` and ``split/validation.parquet``,
      and a cheap candidate the baseline stage saved with the same settings on the same rows is
      loaded instead (:func:`load_run_candidate`).
    """
    run_dir = Path(run_dir)
    cls = candidate_class(name)
    if issubclass(cls, FineTunedCandidate):
        return load_candidate(run_dir / "train", name)
    if cls.combines:
        summary = RunLayout(run_dir).summary("evaluate")
        members = candidate_members(read_json(summary)).get(name) if summary.exists() else None
        if not members:
            raise CandidateError(f"{name!r}: {summary} records no members for it; run `tunewise evaluate` first")
        if train is None and any(not issubclass(candidate_class(m), FineTunedCandidate) for m in members):
            train, validation = _split(run_dir, name)
        return cls.from_members([run_candidate(m, config, run_dir, train, validation, **overrides) for m in members])
    if train is None:
        train, validation = _split(run_dir, name)
        fitted = load_run_candidate(name, config, run_dir, train, **overrides)
        if fitted is not None:
            return fitted
    return build_candidate(name, config, **overrides).fit(train, validation)


def load_run_candidate(
    name: str,
    config: ProjectConfig | Mapping[str, Any] | None,
    run_dir: str | Path,
    train: pd.DataFrame | None = None,
    **overrides: Any,
) -> Candidate | None:
    """The cheap candidate ``name`` as the baseline stage fitted it (``baseline/models/<name>``),
    when it was fitted with these settings on these training rows (default: the run's
    ``split/train.parquet``); None when there is none such (then fit it)."""
    if not candidate_class(name).saves_fitted:
        return None
    if train is None:
        path = RunLayout(run_dir).split("train")
        if not path.exists():
            return None
        train = pd.read_parquet(path)
    candidate = build_candidate(name, config, **overrides)
    return candidate if load_fitted(candidate, RunLayout(run_dir).fitted(name), train) is None else None
