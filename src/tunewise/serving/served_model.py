"""A served model: a run's fitted candidate behind one lock, with a per-request deadline."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.candidates.base import best_in_scope
from tunewise.config.sections import EvaluateConfig
from tunewise.core.layout import RunLayout
from tunewise.evaluation.neighbours import NEIGHBOURS_FILE, OutOfScopeNeighbours
from tunewise.serving.base import ServeError, log, run_project_config

_WORDS = re.compile(r"\S+")  # the "tokens" of a model without a tokenizer


class ServedModel:
    """A fitted candidate, with the out-of-scope threshold the evaluation chose for it."""

    def __init__(
        self,
        name: str,
        candidate: Any,
        threshold: float | None,
        out_of_scope_label: str,
        threshold_score: str = "confidence",
        oos_neighbours: OutOfScopeNeighbours | None = None,
        neighbour_threshold: float | None = None,
    ) -> None:
        self.name = name
        self.candidate = candidate
        self.task = candidate.task
        self.threshold = threshold if candidate.task == "classify" else None
        # what the threshold cuts: the top probability, or the in-scope margin (the evaluation's choice)
        self.threshold_score = threshold_score
        # the evaluation's second cut: nearer the out-of-scope training rows than this is out of scope
        self.oos_neighbours = oos_neighbours if self.threshold is not None and neighbour_threshold is not None else None
        self.neighbour_threshold = neighbour_threshold if self.oos_neighbours is not None else None
        self.out_of_scope_label = out_of_scope_label
        self.labels = list(getattr(candidate, "labels_", []) or [])
        if hasattr(candidate, "scoring_workers"):
            # the server sets torch's threads per micro-batch itself (serving.batching): one batch at a time
            candidate.scoring_workers = 1

    def feedback_labels(self) -> set[str]:
        return {*self.labels, self.out_of_scope_label}

    @property
    def generation_limit(self) -> int | None:
        """Most tokens the model itself generates (its max_new_tokens), when it has one."""
        limit = getattr(self.candidate, "max_new_tokens", None)
        if limit is None and hasattr(self.candidate, "_config"):  # fine-tuned: the train config's
            limit = getattr(self.candidate._config(), "max_new_tokens", None)
        return int(limit) if limit else None

    @property
    def context_tokens(self) -> int | None:
        """The context length in tokens (position limit) of a model that reads the whole chat history
        into its prompt: a causal LM (prompted or fine-tuned). None for the others: an encoder
        classifier truncates its input by design, cheap models have no limit."""
        model = getattr(self.candidate, "model_", None)
        can_generate = getattr(model, "can_generate", None)
        try:
            causal = bool(callable(can_generate) and can_generate())
        except Exception:  # noqa: BLE001 - a model that cannot say is not limited here
            causal = False
        if not causal:
            return None
        config = getattr(model, "config", None)
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        tokenizer = getattr(self.candidate, "tokenizer_", None)
        value = getattr(tokenizer, "model_max_length", None)
        if isinstance(value, int) and 0 < value < 10**6:  # tokenizers say 1e30 for "none"
            return value
        return None

    def prompt_overhead_tokens(self) -> int:
        """Tokens the model adds to every prompt: its own system prompt, and the reply it may generate."""
        system = getattr(self.candidate, "system_prompt_", None)
        overhead = self.count_tokens(system) if isinstance(system, str) and system else 0
        return overhead + (self.generation_limit or 0)

    def install_deadline_hooks(self) -> int:
        """Let a running model call be stopped: a forward pre-hook on the torch model and on each of
        its layers (the members of its ModuleLists) raises :class:`RequestDeadlineExceeded` once the
        deadline the serving thread set (:func:`deadline_scope`) has passed. A generation stops at
        its next token, a long prompt within one layer. Returns the number of hooks (0: not a torch
        model; such calls run to their end, the client still gets its 504 on time)."""
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            return 0
        roots = [v for v in vars(self.candidate).values() if isinstance(v, torch.nn.Module)]
        hooks = 0
        for root in roots:
            if getattr(root, "_tunewise_deadline_hooks", 0):
                hooks += root._tunewise_deadline_hooks
                continue
            targets = [root]
            for module in root.modules():
                if isinstance(module, torch.nn.ModuleList):
                    targets.extend(module.children())
            for module in targets:
                module.register_forward_pre_hook(_deadline_hook)
            root._tunewise_deadline_hooks = len(targets)  # once per torch model, which candidates may share
            hooks += len(targets)
        return hooks

    def count_tokens(self, text: str) -> int:
        """Tokens of the model's tokenizer; words for a model without one (nn_reply)."""
        tokenizer = getattr(self.candidate, "tokenizer_", None)
        if tokenizer is not None:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return len(_WORDS.findall(text))

    def cut(self, text: str, max_tokens: int) -> tuple[str, int, bool]:
        """``text`` cut to ``max_tokens`` tokens: (reply, its token count, whether it was cut)."""
        tokenizer = getattr(self.candidate, "tokenizer_", None)
        if tokenizer is not None:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= max_tokens:
                return text, len(ids), False
            return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True), max_tokens, True
        words = list(_WORDS.finditer(text))
        if len(words) <= max_tokens:
            return text, len(words), False
        return text[: words[max_tokens - 1].end()], max_tokens, True

    def predict(self, items: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """items: (input, context JSON) -> one answer dict per item, in order."""
        frame = pd.DataFrame(
            {
                "id": [str(i) for i in range(len(items))],
                "input": [t for t, _ in items],
                "context": [c for _, c in items],
            }
        )
        predictions = self.candidate.predict(frame)
        out = []
        margins = best = None
        if self.threshold is not None and self.threshold_score == "in_scope_margin" and len(predictions):
            found = best_in_scope(
                np.stack([np.asarray(p, dtype=np.float64) for p in predictions["proba"]]),
                self.labels,
                self.out_of_scope_label,
            )
            if found is not None:
                best, margins = found
            if margins is None:
                raise ValueError(
                    f"{self.name}: the threshold cuts the in-scope margin but {self.out_of_scope_label!r} "
                    "is not one of the model's labels"
                )
        near_oos = np.zeros(len(predictions), bool)
        if self.oos_neighbours is not None and len(predictions):
            near_oos = self.oos_neighbours.margin(frame["input"].tolist()) < self.neighbour_threshold
        for i, row in enumerate(predictions.itertuples(index=False)):
            score = float(row.score) if row.score is not None and np.isfinite(row.score) else None
            cut_on = score if margins is None else float(margins[i])
            out_of_scope = self.threshold is not None and (
                bool(near_oos[i]) or (cut_on is not None and cut_on < self.threshold)
            )
            answer = str(row.prediction)
            if best is not None and not out_of_scope and answer == self.out_of_scope_label:
                # the evaluation's margin cut sits below 0: a class answer above it is answered in scope
                answer = self.labels[int(best[i])]
            out.append(
                {
                    "prediction": self.out_of_scope_label if out_of_scope else answer,
                    "model_prediction": str(row.prediction),
                    "score": score,
                    "out_of_scope": bool(out_of_scope),
                }
            )
        return out


class RequestDeadlineExceeded(RuntimeError):
    """A model call ran past the deadline of the requests it serves (see ``serve.request_timeout_s``)."""


_DEADLINE = threading.local()  # per model thread: the monotonic time its current call must end by


def _deadline_hook(module: Any, args: Any) -> None:
    deadline = getattr(_DEADLINE, "at", None)
    if deadline is not None and time.monotonic() > deadline:
        raise RequestDeadlineExceeded("the request timed out; the model call was stopped")


@contextlib.contextmanager
def deadline_scope(deadline: float | None):
    previous = getattr(_DEADLINE, "at", None)
    _DEADLINE.at = deadline
    try:
        yield
    finally:
        _DEADLINE.at = previous


def load_models(run_dir: str | Path, candidates: set[str], cfg: Any = None) -> dict[str, ServedModel]:
    """Fitted candidates by name (``tunewise.candidates.factory.run_candidate``): fine-tuned ones from
    train/<name>/adapter (no refit), cheap and prompted ones refitted on the run's split (seconds for
    the cheap ones), the ensemble from its members."""
    from tunewise.candidates.factory import run_candidate  # on use: loads scipy, sklearn
    from tunewise.candidates.registry import CANDIDATES, CandidateError  # on use: loads scipy, sklearn

    run_dir = Path(run_dir)
    cfg = run_project_config(run_dir, cfg)
    summary_path = RunLayout(run_dir).summary("evaluate")
    evaluated = (
        {c["name"]: c for c in json.loads(summary_path.read_text()).get("candidates", [])}
        if summary_path.exists()
        else {}
    )
    oos_label = (cfg.evaluate if cfg is not None else EvaluateConfig()).out_of_scope_label
    models: dict[str, ServedModel] = {}
    neighbours: OutOfScopeNeighbours | None = None
    for name in sorted(candidates):
        started = time.perf_counter()
        if name not in CANDIDATES:
            raise ServeError(
                f"candidate {name!r}: not trained in {run_dir / 'train'} and not a registered "
                f"candidate (known: {', '.join(sorted(CANDIDATES))})"
            )
        try:
            candidate = run_candidate(name, cfg, run_dir)
        except CandidateError as exc:
            raise ServeError(f"candidate {name!r}: {exc}") from None
        threshold = evaluated.get(name, {}).get("out_of_scope_threshold")
        threshold_score = evaluated.get(name, {}).get("out_of_scope_threshold_score", "confidence")
        neighbour_threshold = evaluated.get(name, {}).get("out_of_scope_neighbour_threshold")
        if threshold is not None and neighbour_threshold is not None and neighbours is None:
            saved = RunLayout(run_dir).stage("evaluate") / NEIGHBOURS_FILE
            if not saved.exists():
                raise ServeError(
                    f"candidate {name!r}: the evaluation cut on out-of-scope neighbours but {saved} is missing; "
                    "run `tunewise evaluate` again"
                )
            try:  # one copy for every arm: the training rows'
                neighbours = OutOfScopeNeighbours.load(saved)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:  # a truncated or foreign file
                raise ServeError(
                    f"candidate {name!r}: {saved} is not a readable out-of-scope neighbours file "
                    f"({type(exc).__name__}: {exc}); run `tunewise evaluate --force evaluate` again"
                ) from None
        models[name] = ServedModel(
            name, candidate, threshold, oos_label, threshold_score, neighbours, neighbour_threshold
        )
        log.info("loaded %s in %.1fs", name, time.perf_counter() - started)
    tasks = {m.task for m in models.values()}
    if len(tasks) > 1:
        raise ServeError(f"arms mix tasks {sorted(tasks)}: serve candidates of one task")
    return models
