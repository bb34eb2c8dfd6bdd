"""The run plan: every size of a run (batch, epochs, steps, warm-up, validation rhythm), resolved
from the settings and the data before any weights load (the recipe's step 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tunewise.config.sections import TrainConfig
from tunewise.training.settings import (
    DEFAULTS,
    EVALS_PER_EPOCH,
    EXAMPLES_PER_CLASS,
    MAX_DEFAULT_EPOCHS,
    MAX_EVALS_PER_RUN,
    MIN_DEFAULT_EPOCHS,
    MIN_EVALS_PER_RUN,
    TARGET_EXAMPLES_SEEN,
    TrainError,
)


@dataclass
class RunPlan:
    task: str
    method: str
    n_train: int
    n_validation: int
    labels: list[str]
    batch_size: int
    gradient_accumulation: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    max_length: int
    longest: int  # the longest training example after truncation, in tokens
    learning_rate: float
    eval_every: int
    checkpoint_every: int
    monitor: str
    tokens_per_epoch: int  # non-padding tokens the model reads per epoch
    targets_per_epoch: int  # loss terms per epoch: reply tokens (generate) or rows (classify)
    dropped_no_reply: int = 0  # generate: rows whose prompt alone fills max_length
    truncated: int = 0  # rows cut at max_length
    world_size: int = 1
    step_cap: str = (
        "budget"  # what sets total_steps: "budget" (sized from the data), "epochs" or "max_steps" (user caps)
    )
    budget_epochs: int = 0  # the default budget in epochs (what runs when the user caps nothing)
    budget_rule: str = ""  # how the default budget was sized
    max_minutes: float | None = None  # the user's time cap


def default_epochs(n_train: int, n_classes: int) -> tuple[int, str]:
    """The default budget in epochs and the rule that sized it (see MIN_DEFAULT_EPOCHS)."""
    n_train = max(n_train, 1)
    wanted = max(TARGET_EXAMPLES_SEEN, EXAMPLES_PER_CLASS * n_classes)
    epochs = int(min(MAX_DEFAULT_EPOCHS, max(MIN_DEFAULT_EPOCHS, math.ceil(wanted / n_train))))
    per_class = f" and {EXAMPLES_PER_CLASS} a class ({n_classes} classes)" if n_classes else ""
    return epochs, (
        f"{epochs} epochs of {n_train:,} rows: at least {MIN_DEFAULT_EPOCHS} passes, "
        f"{TARGET_EXAMPLES_SEEN:,} examples seen{per_class}, at most {MAX_DEFAULT_EPOCHS} passes; "
        "early stopping on validation decides within it"
    )


def plan_run(
    task: str,
    method: str,
    train_lengths: Sequence[int],
    n_targets: int,
    n_validation: int,
    labels: list[str],
    config: TrainConfig,
    *,
    max_length: int,
    dropped: int = 0,
    truncated: int = 0,
    world_size: int = 1,
) -> RunPlan:
    """Resolve the sized defaults.

    Steps: the default budget (``default_epochs``) unless the user capped ``epochs`` or
    ``max_steps`` (the smaller cap wins); early stopping on validation ends most runs before.
    ``step_cap`` says which limit sets ``total_steps``: "budget", "epochs" or "max_steps".
    Validation: about EVALS_PER_EPOCH times an epoch (between MIN_ and MAX_EVALS_PER_RUN a run).
    """
    defaults = DEFAULTS[(method, task)]
    n_train = len(train_lengths)
    batch_size = config.batch_size or defaults["batch_size"]
    budget_epochs, budget_rule = default_epochs(n_train, len(labels) if task == "classify" else 0)
    epochs = config.epochs or budget_epochs
    step_cap = "epochs" if config.epochs else "budget"
    batches_per_epoch = max(1, math.ceil(n_train / batch_size) // world_size)  # as length_grouped_batches cuts
    steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation)
    total_steps = max(1, epochs * steps_per_epoch)
    if config.max_steps and config.max_steps < total_steps:
        total_steps, step_cap = config.max_steps, "max_steps"
    epochs = math.ceil(total_steps / steps_per_epoch)  # a capped run says how many epochs it really starts
    if config.eval_every:
        eval_every = config.eval_every
    else:
        eval_every = max(math.ceil(steps_per_epoch / EVALS_PER_EPOCH), math.ceil(total_steps / MAX_EVALS_PER_RUN))
        eval_every = max(1, min(eval_every, math.ceil(total_steps / MIN_EVALS_PER_RUN)))
    monitor = config.monitor if config.monitor != "auto" else ("macro_f1" if task == "classify" else "loss")
    if task == "classify" and monitor in ("chrf",) or task == "generate" and monitor in ("accuracy", "macro_f1"):
        raise TrainError(
            f"train.monitor: {monitor} is not a {task} metric; use "
            f"{'loss, accuracy or macro_f1' if task == 'classify' else 'loss or chrf'}"
        )
    return RunPlan(
        task=task,
        method=method,
        n_train=n_train,
        n_validation=n_validation,
        labels=list(labels),
        batch_size=batch_size,
        gradient_accumulation=config.gradient_accumulation,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=int(math.ceil(config.warmup_ratio * total_steps)),
        max_length=max_length,
        longest=int(max(train_lengths, default=0)),
        learning_rate=config.learning_rate or defaults["learning_rate"],
        eval_every=eval_every,
        checkpoint_every=config.checkpoint_every or eval_every,
        monitor=monitor,
        tokens_per_epoch=int(sum(train_lengths)),
        targets_per_epoch=int(n_targets),
        dropped_no_reply=dropped,
        truncated=truncated,
        world_size=world_size,
        step_cap=step_cap,
        budget_epochs=budget_epochs,
        budget_rule=budget_rule,
        max_minutes=config.max_minutes,
    )
