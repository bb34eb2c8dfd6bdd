"""The fine-tuning recipe: ``train`` (its docstring maps the steps), read top to bottom, then its
loop and the loop's helpers. Validation metrics are computed in tunewise.training.validation.
"""

from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.sections import TrainConfig
from tunewise.core.artifacts import write_json
from tunewise.core.progress import console, progress
from tunewise.core.records import rows_fingerprint
from tunewise.training import checkpoint, plots, validation
from tunewise.training.build import (
    BuiltModel,
    build_for_plan,
    build_optimizer,
    build_scheduler,
    set_checkpointing,
    training_attention,
)
from tunewise.training.data import Example, class_loss_weights, collate, length_grouped_batches, prepare
from tunewise.training.early_stopping import EarlyStopping, convergence
from tunewise.training.plan import RunPlan
from tunewise.training.runtime import (
    Runtime,
    autocast,
    bound_heap_growth,
    is_oom,
    load_base_config,
    rank_and_world_size,
    resolve_runtime,
)
from tunewise.training.settings import Method, TrainError


def train(
    task: str,
    train_frame: pd.DataFrame,
    validation_frame: pd.DataFrame | None,
    *,
    method: Method = "lora",
    config: TrainConfig | None = None,
    model_spec: str,
    offline: bool = True,
    trust_remote_code: bool = False,
    out_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    seed: int = 0,
    name: str = "model",
    source: str = "training data",
    stop_after_steps: int | None = None,
    out_of_scope_label: str | None = None,
) -> TrainResult:
    """Fine-tune ``model_spec`` on ``train_frame`` (record frames): LoRA on the base LLM (classification
    head or reply generation), or a full fine-tune of the small sentence encoder with a linear head.
    This function is the recipe, read top to bottom (torchtune's ``lora_finetune_single_device``
    habit): no callbacks, no trainer framework. The loop follows it; each step's parts are the
    modules beside this one (in brackets).

        1. settings and data are checked          bad settings are refused before any weights load (data)
        2. tokenizer, examples, the run plan      sizes (epochs, steps, warm-up, length) from the data (data, plan)
        3. model                                  base weights, then LoRA (or the encoder + head) (build, modules)
        4. optimiser, then scheduler              the scheduler wraps the optimiser: built after it (build)
        5. resume                                 after 3 and 4: it loads their state (checkpoint)
        6. the loop                               forward, loss, backward, clip, step; eval; checkpoint
        7. the best weights, curves, summary      (early_stopping, checkpoint, plots)

    The methods and tasks are described in tunewise.training.build, speed and memory in
    tunewise.training.runtime, checkpoints in tunewise.training.checkpoint, validation metrics in
    tunewise.training.validation.

    Distributed data parallel: the loss is computed by one ``nn.Module`` (the model's forward plus the
    loss), so it can be wrapped in ``DistributedDataParallel``; batches are sharded by rank (the
    length-grouped batches play the role of a ``DistributedSampler``); only rank 0 logs, evaluates,
    writes checkpoints and shows progress. ``tunewise train --nproc N`` launches the processes
    (tunewise.training.distributed).

    ``out_dir`` receives adapter/, curves.json, curves.png and train_summary.json (rank 0 only);
    ``checkpoint_dir`` the resumable checkpoints (default ``out_dir/checkpoints``; none without
    either). ``stop_after_steps`` ends the run after that optimiser step as if the process had
    been stopped there, with its checkpoint written: what a time-boxed job or a test of resume does.
    ``out_of_scope_label`` (classify): the class weighted by ``config.out_of_scope_weight`` in the loss.
    """
    import torch

    config = config or TrainConfig()
    started = time.perf_counter()
    # -- 1, 2. checks, tokenizer, examples, plan: a bad setting fails here, before weights load
    plan, tokenizer, base_path, examples, val_examples, train_frame, val_frame = prepare(
        task,
        method,
        train_frame,
        validation_frame,
        config,
        model_spec=model_spec,
        offline=offline,
        trust_remote_code=trust_remote_code,
        seed=seed,
        source=source,
    )
    runtime = resolve_runtime(config, plan, load_base_config(base_path, method, trust_remote_code))
    device, precision = runtime.device, runtime.precision
    if device == "cpu":
        bound_heap_growth()
    rank, world_size = rank_and_world_size()
    is_main = rank == 0
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else (out / "checkpoints" if out else None)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(runtime.threads)
    try:
        torch.manual_seed(seed)  # LoRA and head initialisation, dropout
        # -- 3. model: base weights, adapters; then to the device
        built = build_for_plan(
            task, method, base_path, tokenizer, plan, config, runtime, trust_remote_code=trust_remote_code
        )
        class_weights = (
            class_loss_weights(plan.labels, train_frame["label"], out_of_scope_label, config.out_of_scope_weight)
            if task == "classify"
            else None
        )
        if class_weights is not None:
            built.loss_module.set_class_weight(class_weights["weights"])
        built.loss_module.to(device)
        loss_module = built.loss_module
        _cache_frozen_layers(built, name, examples + val_examples, config, runtime, batch_size=max(plan.batch_size, 32))
        if world_size > 1:  # each rank computes its batches' gradients; DDP averages them
            from torch.nn.parallel import DistributedDataParallel

            loss_module = DistributedDataParallel(loss_module)
        # -- 4. optimiser over the trainable weights, then the scheduler that drives its learning rate
        optimizer = build_optimizer(built.model, method, plan.learning_rate, config.weight_decay)
        scheduler = build_scheduler(optimizer, config.lr_schedule, plan.warmup_steps, plan.total_steps)
        watch = EarlyStopping(
            mode="min" if plan.monitor == "loss" else "max",
            patience=config.patience,
            min_delta=config.min_delta,
            overfit_window=config.overfit_window,
            enabled=config.early_stopping,
        )
        # resume itself is not a training setting: a run started with --no-resume can be resumed later; nor is
        # the time cap (it changes no step of the plan): a run stopped by it resumes with a larger one
        fingerprint = checkpoint.run_fingerprint(
            config.model_dump(mode="json", exclude={"resume", "max_minutes"}),
            task,
            method,
            model_spec,
            seed,
            rows_fingerprint(train_frame, task),
            plan.labels,
            world_size,
        )
        # -- 5. resume: after 3 and 4, because it restores their state
        state: dict[str, Any] = {
            "step": 0,
            "epoch": 0,
            "window_in_epoch": 0,
            "data_seed": seed,
            "threads": runtime.threads,
            "fingerprint": fingerprint,
            "train": [],
            "validation": [],
            "watch": watch.state(),
            "tokens_seen": 0,
            "seconds": 0.0,
        }
        best_state: dict[str, Any] | None = None
        resumed_from = None
        # a damaged checkpoint is skipped with a warning (the one before it is tried), never a crash
        restored = (
            checkpoint.resume_checkpoint(
                ckpt_dir, fingerprint, built.model, optimizer, scheduler, name=name, is_main=is_main
            )
            if ckpt_dir is not None and config.resume
            else None
        )
        if restored is not None:
            latest, state, best_state = restored
            if config.num_threads is None and state.get("threads"):
                # the same thread count as before: it decides the order of float sums
                runtime.threads = int(state["threads"])
                torch.set_num_threads(runtime.threads)
            watch.load(state["watch"])
            resumed_from = state["step"]
            if is_main:
                console.print(f"train {name}: resuming from {latest} (step {state['step']} of {plan.total_steps})")
        # -- 6. the loop
        loop = _loop(
            name,
            plan,
            config,
            built,
            loss_module,
            optimizer,
            scheduler,
            watch,
            state,
            examples,
            val_examples,
            val_frame,
            runtime=runtime,
            ckpt_dir=ckpt_dir if is_main else None,
            is_main=is_main,
            rank=rank,
            world_size=world_size,
            stop_after_steps=stop_after_steps,
            best_state=best_state,
        )
        stop_reason, message, best_state = loop.stop_reason, loop.message, loop.best_state
        # -- 7. the best weights back into the model; outputs
        if best_state is not None and stop_reason != "interrupted":
            checkpoint.load_trainable_state(built.model, best_state)
        built.model.eval()
    finally:
        torch.set_num_threads(threads_before)
    curves = {
        "monitor": plan.monitor,
        "best_step": watch.best_step,
        "best": watch.best,
        "train": state["train"],
        "validation": state["validation"],
    }
    seconds = state["seconds"]
    converged = convergence(plan, watch, stop_reason, state["validation"], config.patience)
    if is_main and converged["under_trained"]:
        console.print(f"[yellow]train {name}: {converged['under_trained_reason']}[/yellow]")
    summary = {
        "name": name,
        "task": task,
        "method": method,
        "base_model": model_spec,
        "base_path": str(base_path),
        "plan": asdict(plan),
        "steps_done": state["step"],
        "epochs_done": round(state["step"] / plan.steps_per_epoch, 3),
        "stop_reason": stop_reason,
        "stop_message": message,
        "under_trained": converged["under_trained"],
        "under_trained_reason": converged["under_trained_reason"],
        "monitor": plan.monitor,
        "validation_curve": converged["validation_curve"],
        "best_step": watch.best_step,
        "best": {plan.monitor: watch.best},
        "best_metrics": next((e for e in state["validation"] if e["step"] == watch.best_step), None),
        "resumed_from_step": resumed_from,
        "seconds": round(seconds, 3),
        "elapsed_seconds": round(state.get("elapsed", seconds), 3),
        "wall_seconds_this_process": round(time.perf_counter() - started, 3),
        "tokens_seen": state["tokens_seen"],
        "tokens_per_second": round(state["tokens_seen"] / seconds, 1) if seconds else None,
        "parameters": built.n_parameters,
        "trainable_parameters": built.n_trainable,
        "device": device,
        "adapted_layers": (
            f"{built.adapted_layers[0] + 1}-{built.adapted_layers[1]} of {built.adapted_layers[1]}"
            if built.adapted_layers
            else None
        ),
        "frozen_layers_cached": built.prefix is not None,
        "attention": training_attention(task, device, plan.max_length, config.attention),
        "runtime": asdict(runtime),
        "out_of_scope_weight": (
            {k: v for k, v in class_weights.items() if k != "weights"} if class_weights is not None else None
        ),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "system_prompt": config.system_prompt,
        "config": config.model_dump(mode="json"),
        "seed": seed,
    }
    if out is not None and is_main:
        checkpoint.save_adapter(
            built.model,
            method,
            tokenizer,
            out / "adapter",
            {
                "task": task,
                "method": method,
                "base_model": model_spec,
                "base_path": str(base_path),
                "labels": plan.labels,
                "max_length": plan.max_length,
                "system_prompt": config.system_prompt,
                "best_step": watch.best_step,
            },
        )
        write_json(out / "curves.json", curves)
        plots.plot_curves(curves, out / "curves.png", f"{name}: {task}, {method}")
        write_json(out / "train_summary.json", summary)
    return TrainResult(
        built.model,
        tokenizer,
        plan.labels,
        plan,
        summary,
        curves,
        out,
        built.pad_id,
        device,
        precision,
        config.system_prompt,
        plan.max_length,
    )


@dataclass
class TrainResult:
    """What ``train`` hands back: the model with its best weights loaded, and what happened."""

    model: Any  # PeftModel (lora) or EncoderClassifier (encoder), in eval mode
    tokenizer: Any
    labels: list[str]  # classify: class names in output order
    plan: RunPlan
    summary: dict[str, Any]
    curves: dict[str, Any]
    out_dir: Path | None
    pad_id: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    system_prompt: str | None = None
    max_length: int = 512


def _cache_frozen_layers(
    built: BuiltModel, name: str, examples: list[Example], config: TrainConfig, runtime: Runtime, *, batch_size: int
) -> None:
    """Compute the frozen layers' output of every example once (see FrozenPrefix), memory allowing."""
    if built.prefix is None:
        return
    needed = built.prefix.bytes_for(examples)
    if needed > config.cache_memory_gib * 2**30:
        console.print(
            f"[dim]train {name}: the frozen layers' output would take {needed / 2**30:.1f} GiB, over "
            f"train.cache_memory_gib = {config.cache_memory_gib:g}; every step runs the whole model[/dim]"
        )
        built.prefix = built.loss_module.prefix = None
        return
    first = built.prefix.first_adapted
    built.prefix.encode(
        examples,
        pad_id=built.pad_id,
        batch_size=batch_size,
        device=runtime.device,
        precision=runtime.precision,
        description=f"train {name}: frozen layers 1-{first}, once",
    )


@dataclass
class LoopResult:
    stop_reason: str  # "early_stopping", "overfitting", "interrupted", or the limit that ended the plan
    message: str | None  # what to tell the user about the stop
    best_state: dict[str, Any] | None  # the best trainable weights (None only when interrupted before any)


def _loop(
    name: str,
    plan: RunPlan,
    config: TrainConfig,
    built: BuiltModel,
    loss_module: Any,
    optimizer: Any,
    scheduler: Any,
    watch: EarlyStopping,
    state: dict[str, Any],
    examples: list[Example],
    val_examples: list[Example],
    val_frame: pd.DataFrame,
    *,
    runtime: Runtime,
    ckpt_dir: Path | None,
    is_main: bool,
    rank: int,
    world_size: int,
    stop_after_steps: int | None,
    best_state: dict[str, Any] | None,
) -> LoopResult:
    """The training loop: steps, validation, early stopping, checkpoints, until a stop reason."""
    import torch

    device, precision = runtime.device, runtime.precision
    trainable = [p for p in built.model.parameters() if p.requires_grad]
    lengths = [len(e.input_ids) for e in examples]
    loss_module.train()
    stop_reason, message = "completed", None
    state.setdefault("since_eval", [])  # training losses since the last validation (the overfitting watch)
    state.setdefault("elapsed", state.get("seconds", 0.0))  # wall seconds of steps + validation, over resumed runs
    time_limit = plan.max_minutes * 60 if plan.max_minutes else None
    last_good_step = state["step"]

    def write_checkpoint() -> None:
        nonlocal last_good_step
        if ckpt_dir is not None:
            state["watch"] = watch.state()
            checkpoint.save_checkpoint(ckpt_dir, built.model, best_state, optimizer, scheduler, state)
            last_good_step = state["step"]

    def validate() -> dict[str, Any]:
        return validation.validate(
            plan, config, built, loss_module, val_examples, val_frame, device=device, precision=precision
        )

    with progress(f"train {name}", plan.total_steps, unit="steps") as advance:
        advance(state["step"])
        while state["step"] < plan.total_steps and stop_reason == "completed":
            batches = length_grouped_batches(
                lengths,
                plan.batch_size,
                seed=state["data_seed"],
                epoch=state["epoch"],
                rank=rank,
                world_size=world_size,
            )
            windows = [
                batches[i : i + plan.gradient_accumulation] for i in range(0, len(batches), plan.gradient_accumulation)
            ]
            for window_index in range(state["window_in_epoch"], len(windows)):
                window = windows[window_index]
                step_started = tick = time.perf_counter()
                # The loss is the mean over every target (reply token or row) of the whole
                # accumulation window, so accumulating k batches equals one batch k times bigger.
                n_targets = sum(examples[i].n_targets for idx in window for i in idx)
                if world_size > 1:
                    import torch.distributed as dist

                    counts = torch.tensor([n_targets], device=device)
                    dist.all_reduce(counts)
                    n_targets = int(counts) / world_size  # DDP averages gradients over ranks
                window_loss, window_tokens = 0.0, 0
                try:
                    for micro, indices in enumerate(window):
                        batch = {
                            k: v.to(device) for k, v in collate([examples[i] for i in indices], built.pad_id).items()
                        }
                        set_checkpointing(built, runtime, batch["input_ids"].numel())
                        last_micro = micro == len(window) - 1
                        # Under DDP, gradients are synchronised on the window's last backward only.
                        sync = contextlib.nullcontext() if world_size == 1 or last_micro else loss_module.no_sync()
                        with sync:
                            with autocast(device, precision):
                                loss_sum, _ = loss_module(**batch)  # forward
                            loss = loss_sum / max(n_targets, 1)  # loss
                            if not torch.isfinite(loss):
                                raise _NonFinite(float(loss.detach()))
                            loss.backward()  # backward
                        window_loss += float(loss_sum.detach())
                        window_tokens += int(batch["attention_mask"].sum())
                    if config.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()  # optimiser step
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                except _NonFinite as error:
                    optimizer.zero_grad(set_to_none=True)
                    raise TrainError(
                        f"train {name}: the loss became {error.value} at step {state['step'] + 1} (learning rate "
                        f"{scheduler.get_last_lr()[0]:.2e}). Training stopped; {_last_good(ckpt_dir, last_good_step)}. "
                        f"Lower train.learning_rate (e.g. to {plan.learning_rate / 4:.1e}), keep max_grad_norm on, "
                        "or check the data for extreme inputs."
                    ) from None
                except RuntimeError as error:
                    if not is_oom(error):
                        raise
                    raise TrainError(
                        f"train {name}: out of memory at step {state['step'] + 1} (batch {plan.batch_size} x up to "
                        f"{plan.max_length} tokens). {_last_good(ckpt_dir, last_good_step).capitalize()}. Lower "
                        "train.batch_size (raise gradient_accumulation to keep the effective batch), lower "
                        "train.max_length, or set gradient_checkpointing: true."
                    ) from None
                if world_size > 1:  # the logged loss and tokens are the whole window's, over every rank
                    totals = torch.tensor([window_loss, float(window_tokens)], dtype=torch.float64, device=device)
                    dist.all_reduce(totals)
                    window_loss, window_tokens = float(totals[0]) / world_size, int(totals[1])
                state["step"] += 1
                state["window_in_epoch"] = window_index + 1
                seconds = time.perf_counter() - step_started
                state["seconds"] += seconds
                state["tokens_seen"] += window_tokens
                train_loss = window_loss / max(n_targets, 1)
                state["since_eval"].append(train_loss)
                state["train"].append(
                    {
                        "step": state["step"],
                        "epoch": state["epoch"],
                        "loss": round(train_loss, 6),
                        "lr": scheduler.get_last_lr()[0],
                        "tokens": window_tokens,
                    }
                )
                if is_main:
                    advance(
                        1,
                        description=f"train {name} loss {train_loss:.3f} "
                        f"{window_tokens / max(seconds, 1e-9):,.0f} tok/s",
                    )
                # -- the time cap (rank 0's clock decides): the run ends after this step, validated
                time_up = time_limit is not None and state["elapsed"] + time.perf_counter() - tick >= time_limit
                if time_limit is not None and world_size > 1:
                    time_up = _broadcast_flag(time_up, device)
                # -- validation, best weights, early stopping / overfitting watch (rank 0 decides)
                if state["step"] % plan.eval_every == 0 or state["step"] == plan.total_steps or time_up:
                    if is_main and val_examples:
                        metrics = validate()
                        mean_train = float(np.mean(state["since_eval"])) if state["since_eval"] else train_loss
                        state["since_eval"] = []
                        decision = watch.update(state["step"], metrics[plan.monitor], mean_train)
                        state["validation"].append(
                            {"step": state["step"], **metrics, "train_loss": round(mean_train, 6)}
                        )
                        if decision.improved:
                            best_state = checkpoint.trainable_state(built.model)
                        if decision.stop:
                            stop_reason, message = decision.reason or "stopped", decision.message
                            color = "yellow" if decision.reason == "overfitting" else "dim"
                            console.print(f"[{color}]train {name}: {decision.message}[/{color}]")
                    if time_up and stop_reason == "completed":  # a validation that said stop wins: converged
                        minutes = (state["elapsed"] + time.perf_counter() - tick) / 60
                        stop_reason, message = (
                            "max_minutes",
                            (f"reached the time cap train.max_minutes = {plan.max_minutes:g} ({minutes:.1f} min)"),
                        )
                    stop_reason = _broadcast_stop(stop_reason, world_size, device)
                state["elapsed"] += time.perf_counter() - tick
                done = state["step"] >= plan.total_steps or stop_reason != "completed"
                interrupted = stop_after_steps is not None and state["step"] >= stop_after_steps and not done
                if state["step"] % plan.checkpoint_every == 0 or done or interrupted:
                    write_checkpoint()
                if done:
                    break
                if interrupted:
                    stop_reason, message = "interrupted", f"stopped after step {state['step']} as asked"
                    break
            else:  # the epoch ran to its end
                state["epoch"] += 1
                state["window_in_epoch"] = 0
                continue
            break
    if best_state is None and stop_reason != "interrupted":
        best_state = checkpoint.trainable_state(built.model)  # no validation data: the last weights are the best
    if stop_reason == "completed":  # the planned steps ran out: name the limit that set them
        stop_reason, message = plan.step_cap, _cap_message(plan)
    return LoopResult(stop_reason, message, best_state)


def _cap_message(plan: RunPlan) -> str:
    if plan.step_cap == "max_steps":
        return f"reached the step cap train.max_steps = {plan.total_steps}"
    if plan.step_cap == "epochs":
        return f"ran the {plan.epochs} epoch(s) of train.epochs"
    return f"ran the whole default budget ({plan.budget_rule})"


class _NonFinite(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


def _last_good(ckpt_dir: Path | None, step: int) -> str:
    if ckpt_dir is None:
        return "no checkpoint was being written"
    latest = checkpoint.latest_checkpoint(ckpt_dir)
    return f"the last good checkpoint (step {step}) is kept at {latest}" if latest else "no checkpoint was written yet"


STOP_CODES = ("completed", "early_stopping", "overfitting", "max_minutes", "stopped")


def _broadcast_stop(stop_reason: str, world_size: int, device: str) -> str:
    """Rank 0 decides about early stopping and the time cap; every rank must stop at the same step."""
    if world_size == 1:
        return stop_reason
    import torch
    import torch.distributed as dist

    code = torch.tensor(
        [STOP_CODES.index(stop_reason) if stop_reason in STOP_CODES else len(STOP_CODES) - 1], device=device
    )
    dist.broadcast(code, src=0)
    return STOP_CODES[int(code)]


def _broadcast_flag(value: bool, device: str) -> bool:
    """Rank 0's value of a flag, on every rank."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(value)], device=device)
    dist.broadcast(flag, src=0)
    return bool(int(flag))
