"""The dry run: what a run would cost (tokens, steps, memory, time here and on reference GPUs,
dollars), measured from a few real optimiser steps and priced from FLOPs, before it runs.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import asdict
from typing import Any

import pandas as pd

from tunewise.config.sections import TrainConfig
from tunewise.core.pricing import FLOPS_PER_TOKEN, GPU_UTILISATION, REFERENCE_GPUS
from tunewise.training.build import BuiltModel, build_for_plan, build_optimizer, set_checkpointing
from tunewise.training.data import collate, length_grouped_batches, prepare
from tunewise.training.plan import RunPlan
from tunewise.training.runtime import (
    Runtime,
    activation_gib,
    autocast,
    bound_heap_growth,
    layers_keeping_activations,
    load_base_config,
    resolve_runtime,
)
from tunewise.training.settings import Method

# =============================================================================================
# Dry run: what a run would cost, before it runs


# Reference GPUs, their utilisation and FLOPs per token: tunewise.core.pricing (REFERENCE_GPUS,
# GPU_UTILISATION, FLOPS_PER_TOKEN, imported above).


def dry_run(
    task: str,
    train_frame: pd.DataFrame,
    validation_frame: pd.DataFrame | None,
    *,
    method: Method = "lora",
    config: TrainConfig | None = None,
    model_spec: str,
    offline: bool = True,
    trust_remote_code: bool = False,
    seed: int = 0,
    calibration_steps: int = 3,
    source: str = "training data",
) -> dict[str, Any]:
    """Tokens, steps, memory and time of a run, without running it.

    Time on this machine comes from ``calibration_steps`` real optimiser steps (forward, backward,
    step) on batches of the run, so it reflects this machine's load as it is now. Time and cost on
    reference GPUs come from FLOPs: FLOPS_PER_TOKEN x parameters x tokens / (peak x utilisation).
    ``convergence``: the planned steps (the default budget or the user's caps) with the validations
    they bring, here and on the reference GPUs: the time to train to convergence at most.
    """
    import torch

    config = config or TrainConfig()
    plan, tokenizer, base_path, examples, val_examples, train_frame, _ = prepare(
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
    base_config = load_base_config(base_path, method, trust_remote_code)
    runtime = resolve_runtime(config, plan, base_config)
    device = runtime.device
    if device == "cpu":
        bound_heap_growth()
    total_tokens = int(plan.tokens_per_epoch * plan.total_steps / plan.steps_per_epoch)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    threads_before = torch.get_num_threads()
    torch.set_num_threads(runtime.threads)
    try:
        torch.manual_seed(seed)
        built = build_for_plan(
            task, method, base_path, tokenizer, plan, config, runtime, trust_remote_code=trust_remote_code
        )
        built.loss_module.to(device).train()
        optimizer = build_optimizer(built.model, method, plan.learning_rate, config.weight_decay)
        batches = length_grouped_batches([len(e.input_ids) for e in examples], plan.batch_size, seed=seed, epoch=0)
        timed_tokens, timed_seconds = 0, 0.0
        prefix_seconds_per_token = 0.0
        if built.prefix is not None:  # the run caches the frozen layers' output: time that pass, then cached steps
            calibration = [examples[j] for indices in batches[: calibration_steps + 1] for j in indices]
            t0 = time.perf_counter()
            built.prefix.encode(
                calibration,
                pad_id=built.pad_id,
                batch_size=max(plan.batch_size, 32),
                device=device,
                precision=runtime.precision,
                description="dry run: frozen layers",
            )
            prefix_seconds_per_token = (time.perf_counter() - t0) / max(1, sum(len(e.input_ids) for e in calibration))
        for i, indices in enumerate(batches[: calibration_steps + 1]):
            batch = {k: v.to(device) for k, v in collate([examples[j] for j in indices], built.pad_id).items()}
            set_checkpointing(built, runtime, batch["input_ids"].numel())
            t0 = time.perf_counter()
            with autocast(device, runtime.precision):
                loss_sum, n = built.loss_module(**batch)
            (loss_sum / max(int(n), 1)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i > 0:  # the first step warms up kernels and allocations: not timed
                timed_seconds += time.perf_counter() - t0
                timed_tokens += int(batch["attention_mask"].sum())
    finally:
        torch.set_num_threads(threads_before)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tokens_per_second = timed_tokens / timed_seconds if timed_seconds else None
    base_parameters = built.n_parameters - built.n_trainable if method == "lora" else built.n_parameters
    flops = FLOPS_PER_TOKEN[method] * base_parameters * total_tokens
    # Validation: a forward pass (2N a token) over the validation rows, `validations` times.
    validations = math.ceil(plan.total_steps / plan.eval_every) if val_examples else 0
    validation_tokens = validations * sum(len(e.input_ids) for e in val_examples)
    validation_flops = 2 * built.n_parameters * validation_tokens
    gpus = []
    for gpu in REFERENCE_GPUS:
        seconds = flops / (gpu["peak_bf16_tflops"] * 1e12 * GPU_UTILISATION)
        with_validation = (flops + validation_flops) / (gpu["peak_bf16_tflops"] * 1e12 * GPU_UTILISATION)
        gpus.append(
            {
                **gpu,
                "utilisation": GPU_UTILISATION,
                "seconds": _significant(seconds),
                "usd": _significant(seconds / 3600 * gpu["usd_per_hour"]),
                "seconds_to_convergence": _significant(with_validation),
            }
        )
    here = None
    if tokens_per_second:  # forward only: FLOPS_PER_TOKEN[method] / 2 times the training step's speed
        here = (total_tokens + validation_tokens * 2 / FLOPS_PER_TOKEN[method]) / tokens_per_second
        # the frozen layers' pass over every training and validation token, once
        here += prefix_seconds_per_token * (plan.tokens_per_epoch + sum(len(e.input_ids) for e in val_examples))
    convergence_plan = {
        "steps": plan.total_steps,
        "epochs": plan.epochs,
        "step_cap": plan.step_cap,
        "budget_rule": plan.budget_rule,
        "eval_every": plan.eval_every,
        "validations": validations,
        "validation_rows": len(val_examples),
        "this_machine_seconds": round(here, 3) if here is not None else None,
        "reference_gpus": {g["gpu"]: g["seconds_to_convergence"] for g in gpus},
        "note": "time for every planned step plus the validations (an upper bound: early stopping on validation "
        "usually ends a run inside the budget); generate's chrF replies at each validation not counted",
    }
    if plan.max_minutes and here:
        steps_in_time = int(plan.total_steps * min(1.0, plan.max_minutes * 60 / here))
        convergence_plan["max_minutes"] = plan.max_minutes
        convergence_plan["steps_within_max_minutes"] = steps_in_time
        if steps_in_time < plan.total_steps:
            convergence_plan["warning"] = (
                f"train.max_minutes = {plan.max_minutes:g} stops the run near step "
                f"{steps_in_time} of {plan.total_steps} on this machine: under-trained "
                "unless early stopping comes first"
            )
    return {
        "task": task,
        "method": method,
        "base_model": model_spec,
        "plan": asdict(plan),
        "tokens_total": total_tokens,
        "parameters": built.n_parameters,
        "trainable_parameters": built.n_trainable,
        "convergence": convergence_plan,
        "memory": {
            "estimate_mib": round(_memory_estimate_mib(built, plan, runtime, base_config, config), 1),
            "measured_peak_rss_mib": round(peak_rss, 1),
            "rss_before_model_mib": round(rss_before, 1),
            "note": "estimate: weights + gradients and AdamW state of the trainable weights + activations of the "
            "largest batch (after gradient checkpointing); measured: this process's peak resident memory "
            "so far (ru_maxrss), calibration included",
        },
        "this_machine": {
            "calibration_steps": max(0, min(calibration_steps, len(batches) - 1)),
            "tokens_per_second": round(tokens_per_second, 1) if tokens_per_second else None,
            # three decimals: a tiny model's whole plan can take under 0.05 s on a fast machine
            "seconds": round(total_tokens / tokens_per_second, 3) if tokens_per_second else None,
            **asdict(runtime),
        },
        "flops": {
            "per_token_factor": FLOPS_PER_TOKEN[method],
            "total": flops,
            "note": "6N per token for full fine-tuning; about 4N for LoRA (forward 2N + activation "
            "gradients 2N, no weight gradients for frozen weights); N = base parameters",
        },
        "reference_gpus": gpus,
    }


def _significant(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


def _memory_estimate_mib(
    built: BuiltModel, plan: RunPlan, runtime: Runtime, base_config: Any, config: TrainConfig
) -> float:
    """Weights (fp32, plus a bf16 copy under autocast) + gradients and two AdamW moments of the
    trainable weights + activations of the largest batch (see activation_gib; with gradient
    checkpointing: each layer's input plus one layer's activations) + the LM head's logits on the
    reply positions (generate: about half the tokens, with their gradient)."""
    tokens = plan.batch_size * plan.longest
    layers = max(1, layers_keeping_activations(config, plan, base_config))
    hidden = int(getattr(base_config, "hidden_size", 0) or 0)
    vocab = int(getattr(base_config, "vocab_size", 0) or 0)
    weights = built.n_parameters * (4 + (2 if runtime.precision == "bf16" else 0))
    training_state = built.n_trainable * 4 * 3
    activations = activation_gib(base_config, tokens, runtime.precision, layers=layers) * 2**30
    if runtime.checkpoint_every_n_layers:
        kept = 1 - 1 / runtime.checkpoint_every_n_layers  # share of layers that keep their activations
        activations = (
            activations * (kept + 1 / layers) + tokens * layers * hidden * 4 / runtime.checkpoint_every_n_layers
        )
    logits = tokens / 2 * vocab * 4 * 2 if plan.task == "generate" else 0
    return (weights + training_state + activations + logits) / 2**20
