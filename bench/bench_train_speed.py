"""Benchmark: LoRA SFT speed of tunewise against a plain TRL SFTTrainer + PEFT run, and peak memory.

Targets (from the issue): on the demo's reply data with the embedded LLM, tokens per second at least
1.5x (aim 2x) a plain TRL SFTTrainer + PEFT run with the same model, LoRA settings, maximum length,
batch size and steps on the same machine, with validation loss no more than 2% worse; achieved
GFLOP/s reported against a matrix-multiply peak measured in the same run; peak memory of a LoRA
run at length 256, batch 8 under 3 GiB.

    .venv/bin/python bench/bench_train_speed.py            # full run: 40 steps a side
    .venv/bin/python bench/bench_train_speed.py --trl-runs default   # one TRL run only
    .venv/bin/python bench/bench_train_speed.py --quick    # smoke run: 6 steps, one TRL run, ~3 min

The full run took 30 min on the shared 2-core machine at load average 3-8 (memory runs 3 min,
tunewise 4 min, each TRL run 8-9 min); --trl-runs default saves one TRL run.

Order: the peak-memory runs first (fresh processes, while this one is small), then tunewise, then
TRL with its defaults (gradient checkpointing on, as SFTConfig ships it), then TRL with gradient
checkpointing off (skip with --trl-runs default); the load average is printed around each run.
The targets are judged against TRL's defaults; the run without checkpointing shows how much of the
speed-up is only TRL's default of recomputing every layer.

All runs share: SmolLM2-135M-Instruct (the embedded folder, fp32 weights, SDPA attention), LoRA
r 8 / alpha 16 / dropout 0.05 on q,k,v,o,gate,up,down, max length 256, batch 8, the same number
of optimiser steps (one epoch or less), AdamW at lr 2e-4 with cosine decay after 6% warm-up,
weight decay 0, clipping at norm 1, loss on the reply tokens only, bf16 autocast when tunewise's
``precision: auto`` picks bf16 (else fp32), the torch thread count tunewise picked, seed 0. TRL gets a conversational prompt-completion dataset (TRL trains on the
completion only by default), no evaluation, no saving, use_cpu, 0 data-loader workers.

Known differences that are TRL's own behaviour, kept because the comparison is against plain TRL:
TRL's completion ends with the template's newline after ``<|im_end|>`` (one more trained token a
row; tunewise stops at ``<|im_end|>``); TRL samples rows at random and pads each batch to its
longest row, tunewise groups rows of similar length; TRL's AdamW is transformers' default optimiser.

Printed figures:
- tokens/s: non-padding tokens of the batches trained on / seconds of the training loop. tunewise:
  summary["tokens_per_second"] (per-step time: collate, forward, backward, optimiser step; model
  loading and the end-of-run validation excluded). TRL: Trainer's non-padding token count
  (include_num_input_tokens_seen="non_padding") / time from on_train_begin to on_train_end of a
  TrainerCallback (model loading and dataset tokenisation excluded; batch fetching included).
- speedup: tunewise tokens/s / TRL tokens/s (wall clock: the target). The machine is shared, so the
  same ratio per CPU second of the loop (time.process_time, taken by the same hooks) is printed as
  a cross-check that is less sensitive to other processes' load.
- validation loss: mean NLL per reply token on the same validation rows for both trained models,
  from one function here (tunewise's encode_replies tokenisation, fp32 forward, no autocast);
  relative difference = (tunewise - TRL) / TRL.
- GFLOP/s: FLOPS_PER_TOKEN["lora"] (4) x base parameters x tokens / seconds (model FLOPs: the same
  formula for both sides, so recomputation under gradient checkpointing counts as no work);
  matmul peak: best of a few torch.matmul of 2048x2048 in bf16 and fp32 with the same thread
  count, measured after the tunewise run and again at the end (the higher is kept).
- peak memory: peak resident memory of a fresh subprocess (imports included) that trains tunewise
  LoRA (its default settings otherwise: automatic precision, threads and gradient checkpointing)
  for a few steps at max_length 256, batch 8, on rows whose replies are repeated to reach 256
  tokens. Read as VmHWM from /proc/self/status: ru_maxrss of a child started by subprocess also
  holds the parent's resident size at fork (Linux keeps it across exec), which is why the memory
  runs go first; both are printed. The peak differs a lot between identical runs (2.78 to 3.68
  GiB seen; with MALLOC_MMAP_THRESHOLD_=131072 it was a steady 2.16 GiB, but training ran about
  half as fast: glibc heap fragmentation, not tensors), so it runs --memory-repeats times (3) and
  the highest peak is the figure.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import pandas as pd

TARGET_SPEEDUP = 1.5
AIM_SPEEDUP = 2.0
TARGET_LOSS_WORSE = 0.02
TARGET_PEAK_GIB = 3.0
MAX_LENGTH = 256
BATCH = 8
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
LEARNING_RATE = 2e-4
WARMUP_RATIO = 0.06
SEED = 0


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


def demo_frames(n_train: int, n_val: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fixed train and validation record frames from the demo reply data (empty replies dropped)."""
    from tunewise.demo.data import generate_demo

    with tempfile.TemporaryDirectory(prefix="tunewise-bench-demo-") as folder:
        files = generate_demo(folder, task="generate", seed=SEED)
        data = pd.read_csv(files.data)
    data = data[data["reply"].fillna("").astype(str).str.strip() != ""]
    data = data.sample(frac=1.0, random_state=SEED).reset_index(drop=True)  # fixed order, intents mixed
    records = pd.DataFrame(
        {
            "id": data["id"].astype(str),
            "input": data["text"].fillna("").astype(str),
            "context": "[]",
            "target": data["reply"].astype(str),
        }
    )
    if len(records) < n_train + n_val:
        sys.exit(f"the demo data has {len(records)} rows with replies; asked for {n_train} + {n_val}")
    return records.iloc[:n_train].reset_index(drop=True), records.iloc[n_train : n_train + n_val].reset_index(drop=True)


def train_config(steps: int, **overrides):
    from tunewise.config.sections import TrainConfig

    settings = {
        "batch_size": BATCH,
        "max_length": MAX_LENGTH,
        "lora_r": LORA["r"],
        "lora_alpha": LORA["alpha"],
        "lora_dropout": LORA["dropout"],
        "learning_rate": LEARNING_RATE,
        "lr_schedule": "cosine",
        "warmup_ratio": WARMUP_RATIO,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "max_steps": steps,
        "epochs": 1,
        "early_stopping": False,
        "eval_every": steps,
        "generate_sample": 0,
        "precision": "auto",
        "resume": False,
    }
    return TrainConfig(**{**settings, **overrides})


def reply_nll(model, examples, pad_id: int, batch_size: int = 8) -> float:
    """Mean NLL per reply token (labels != -100, shifted by one), fp32, no autocast: one yardstick for both."""
    import torch
    import torch.nn.functional as F

    from tunewise.training.data import IGNORE_INDEX, collate

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # little padding
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            targets = batch["labels"][:, 1:]
            keep = targets != IGNORE_INDEX
            total += float(F.cross_entropy(logits[:, :-1][keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    model.train(was_training)
    return total / max(count, 1)


def matmul_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` torch.matmul throughput, bf16 and fp32, at ``threads`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    try:
        for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            a = torch.randn(size, size).to(dtype)
            b = torch.randn(size, size).to(dtype)
            torch.matmul(a, b)  # warm-up: kernel selection, page faults
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - started)
            out[name] = 2 * size**3 / best / 1e9
    finally:
        torch.set_num_threads(before)
    return out


@contextlib.contextmanager
def _clocked_progress(marks: list[float], real):
    """Wraps tunewise.training.recipe's progress(): the loop calls advance(start step) before its first step and
    advance(1) after each step, so the first and last marks bracket the steps (CPU seconds)."""

    @contextlib.contextmanager
    def progress(*args, **kwargs):
        with real(*args, **kwargs) as advance:

            def clocked(n: int = 1, **fields) -> None:
                marks.append(time.process_time())
                advance(n, **fields)

            yield clocked

    yield progress


def run_tunewise(train_df, val_df, steps: int) -> dict:
    import tunewise.training.recipe as tunewise_train
    from tunewise.models.loading import DEFAULT_LLM

    marks: list[float] = []
    real = tunewise_train.progress
    with _clocked_progress(marks, real) as clocked:
        tunewise_train.progress = clocked
        try:
            result = tunewise_train.train(
                "generate",
                train_df,
                val_df,
                method="lora",
                config=train_config(steps),
                model_spec=DEFAULT_LLM,
                seed=SEED,
                out_dir=None,
            )
        finally:
            tunewise_train.progress = real
    summary = result.summary
    runtime = summary["runtime"]
    return {
        "model": result.model,
        "tokenizer": result.tokenizer,
        "pad_id": result.pad_id,
        "tokens": summary["tokens_seen"],
        "seconds": summary["seconds"],
        "tokens_per_second": summary["tokens_per_second"],
        "cpu_seconds": marks[-1] - marks[0],
        "steps": summary["steps_done"],
        "epochs": summary["steps_done"] / summary["plan"]["steps_per_epoch"],
        "threads": runtime["threads"],
        "precision": runtime["precision"],
        "checkpoint_every_n_layers": runtime["checkpoint_every_n_layers"],
        "base_parameters": summary["parameters"] - summary["trainable_parameters"],
        "trainable_parameters": summary["trainable_parameters"],
        "own_validation_loss": (summary["best_metrics"] or {}).get("loss"),
        "last_train_loss": result.curves["train"][-1]["loss"],
    }


def run_trl(train_df, steps: int, *, threads: int, precision: str, gradient_checkpointing: bool) -> dict:
    """A plain SFTTrainer + LoraConfig run with the settings tunewise used."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        PrinterCallback,
        TrainerCallback,
    )
    from trl import SFTConfig, SFTTrainer

    from tunewise.config.train_section import DEFAULT_TARGET_MODULES
    from tunewise.models.loading import DEFAULT_LLM, resolve_llm

    class LoopClock(TrainerCallback):
        """Wall time of the training loop only (model load and tokenisation happen before it)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.threads = torch.get_num_threads()
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.started
            self.cpu_seconds = time.process_time() - self.cpu_started

    torch.set_num_threads(threads)
    path = resolve_llm(DEFAULT_LLM).path
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # same weights as tunewise loads them: fp32 (the folder's dtype may be bf16), SDPA attention
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True, use_safetensors=True
    )
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": text}] for text in train_df["input"]],
            "completion": [[{"role": "assistant", "content": reply}] for reply in train_df["target"]],
        }
    )
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=list(DEFAULT_TARGET_MODULES),
        task_type="CAUSAL_LM",
    )
    output_dir = tempfile.mkdtemp(prefix="tunewise-bench-trl-")
    config = SFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="cosine",
        warmup_steps=WARMUP_RATIO,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=MAX_LENGTH,
        bf16=precision == "bf16",
        gradient_checkpointing=gradient_checkpointing,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=SEED,
        data_seed=SEED,
        logging_steps=max(1, steps // 4),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
    )
    clock = LoopClock()
    torch.manual_seed(SEED)  # LoRA initialisation happens inside SFTTrainer, before Trainer seeds
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # its log lines would mix with this script's figures
    output = trainer.train()
    tokens = int(trainer.state.num_input_tokens_seen)
    history = [h for h in trainer.state.log_history if "loss" in h]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "model": trainer.model,
        "tokens": tokens,
        "seconds": clock.seconds,
        "tokens_per_second": tokens / clock.seconds,
        "cpu_seconds": clock.cpu_seconds,
        "train_runtime": output.metrics.get("train_runtime"),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "threads": clock.threads,
        "trainable_parameters": trainable,
        "last_train_loss": history[-1]["loss"] if history else None,
        "optimizer": type(
            trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
        ).__name__,
    }


def _vm_hwm_gib() -> float:
    """This process's peak resident memory since exec (VmHWM). Not ru_maxrss: Linux carries the
    forked parent's resident size across exec into the child's ru_maxrss."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def memory_child(steps: int) -> None:
    """In a fresh process: tunewise LoRA at max_length 256, batch 8, every row cut at 256 tokens."""
    import peft  # noqa: F401  (imported before the baseline reading: every run pays for them)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from tunewise.models.loading import DEFAULT_LLM
    from tunewise.training import train

    train_df, _ = demo_frames(BATCH * steps, 1)
    baseline_gib = _vm_hwm_gib()
    # long replies (not long prompts): a prompt that fills max_length leaves no reply token to learn
    train_df = train_df.assign(target=(train_df["target"] + " ") * 8)
    config = train_config(steps, eval_every=None)
    result = train(
        "generate", train_df, None, method="lora", config=config, model_spec=DEFAULT_LLM, seed=SEED, out_dir=None
    )
    print(
        json.dumps(
            {
                "peak_rss_gib": _vm_hwm_gib(),
                "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # KiB on Linux
                "before_train_gib": baseline_gib,
                "longest": result.plan.longest,
                "tokens": result.summary["tokens_seen"],
                "steps": result.summary["steps_done"],
                "precision": result.summary["runtime"]["precision"],
                "threads": result.summary["runtime"]["threads"],
                "checkpoint_every_n_layers": result.summary["runtime"]["checkpoint_every_n_layers"],
                "tokens_per_second": result.summary["tokens_per_second"],
            }
        )
    )


def run_memory_child(steps: int) -> dict:
    env = {**os.environ, "TUNEWISE_PROGRESS": "off", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, "--memory-child", "--memory-steps", str(steps)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"memory child failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps a side")
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--val-rows", type=int, default=64)
    parser.add_argument("--memory-steps", type=int, default=3, help="steps of the peak-memory run")
    parser.add_argument(
        "--trl-runs",
        choices=["default", "both"],
        default="both",
        help="default: TRL as SFTConfig ships it (gradient checkpointing on); "
        "both: also a TRL run with gradient checkpointing off",
    )
    parser.add_argument(
        "--memory-repeats",
        type=int,
        default=3,
        help="fresh processes for the peak-memory run (its peak varies from run to run); the highest counts",
    )
    parser.add_argument("--skip-memory", action="store_true", help="no peak-memory subprocess")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 steps, 16 validation rows, one TRL run")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_steps)
        return 0
    if args.quick:
        args.steps, args.val_rows, args.trl_runs, args.memory_steps, args.memory_repeats = 6, 16, "default", 2, 1
    os.environ.setdefault("TUNEWISE_PROGRESS", "off")
    load_start = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average at start {_load()}", flush=True)

    # -- peak memory first, in fresh processes, while this one is still small
    memory = None
    if not args.skip_memory:
        print(f"memory run: starting, load average {_load()}", flush=True)
        repeats = [run_memory_child(args.memory_steps) for _ in range(max(1, args.memory_repeats))]
        memory = max(repeats, key=lambda r: r["peak_rss_gib"])
        memory["all_peaks_gib"] = [round(r["peak_rss_gib"], 2) for r in repeats]
        memory["all_ru_maxrss_gib"] = [round(r["ru_maxrss_gib"], 2) for r in repeats]
        print(f"memory run: done, load average {_load()}", flush=True)

    import torch

    from tunewise.core.pricing import FLOPS_PER_TOKEN
    from tunewise.models.loading import DEFAULT_LLM
    from tunewise.training.data import encode_replies, load_tokenizer

    train_df, val_df = demo_frames(args.train_rows, args.val_rows)
    tokenizer, _ = load_tokenizer("lora", DEFAULT_LLM)
    val_examples = [e for e in encode_replies(tokenizer, val_df, MAX_LENGTH, None) if e is not None]
    print(
        f"data: {len(train_df)} training rows, {len(val_df)} validation rows ({len(val_examples)} usable), "
        f"{args.steps} steps of batch {BATCH}, max_length {MAX_LENGTH}; torch {torch.__version__}"
    )

    # -- tunewise
    print(f"tunewise: starting, load average {_load()}", flush=True)
    tw = run_tunewise(train_df, val_df, args.steps)
    print(f"tunewise: done, load average {_load()}", flush=True)
    tw["val_loss"] = reply_nll(tw["model"], val_examples, tw["pad_id"])
    threads, precision = tw["threads"], tw["precision"]
    peak_after_tw = matmul_peak_gflops(threads)
    pad_id = tw["pad_id"]
    del tw["model"], tw["tokenizer"]
    gc.collect()

    # -- TRL, as shipped, then (optionally) without gradient checkpointing
    trl_runs: dict[str, dict] = {}
    for label, checkpointing in (("trl_default", True), ("trl_no_checkpointing", False)):
        if label == "trl_no_checkpointing" and args.trl_runs != "both":
            continue
        print(f"{label}: starting, load average {_load()}", flush=True)
        run = run_trl(train_df, args.steps, threads=threads, precision=precision, gradient_checkpointing=checkpointing)
        print(f"{label}: done, load average {_load()}", flush=True)
        run["val_loss"] = reply_nll(run["model"], val_examples, pad_id)
        run["gradient_checkpointing"] = checkpointing
        del run["model"]
        gc.collect()
        trl_runs[label] = run

    peak_end = matmul_peak_gflops(threads)
    peak = {k: max(peak_after_tw[k], peak_end[k]) for k in peak_after_tw}
    load_end = os.getloadavg()

    # -- figures
    base = tw["base_parameters"]
    flops_factor = FLOPS_PER_TOKEN["lora"]
    peak_used = peak[precision]

    def gflops(run: dict) -> float:
        return flops_factor * base * run["tokens"] / run["seconds"] / 1e9

    print()
    print(
        f"{'run':<22}{'steps':>6}{'epochs':>7}{'tokens':>8}{'seconds':>9}{'tok/s':>8}{'CPU s':>8}{'tok/CPU s':>10}"
        f"{'GFLOP/s':>9}{'of peak':>9}{'val loss':>10}{'last train loss':>17}"
    )
    for label, run in (("tunewise", tw), *trl_runs.items()):
        print(
            f"{label:<22}{run['steps']:>6}{run['epochs']:>7.2f}{run['tokens']:>8}{run['seconds']:>9.1f}"
            f"{run['tokens_per_second']:>8.1f}{run['cpu_seconds']:>8.1f}{run['tokens'] / run['cpu_seconds']:>10.1f}"
            f"{gflops(run):>9.1f}{gflops(run) / peak_used:>9.1%}{run['val_loss']:>10.4f}{run['last_train_loss']:>17.4f}"
        )
    print(
        f"tunewise: precision {precision}, threads {threads}, gradient checkpointing every "
        f"{tw['checkpoint_every_n_layers'] or '-'} layer(s) on batches over the activation budget, "
        f"trainable parameters {tw['trainable_parameters']:,}, base parameters {base:,}, "
        f"own validation loss (bf16 autocast when bf16) {tw['own_validation_loss']}"
    )
    for label, run in trl_runs.items():
        print(
            f"{label}: threads {run['threads']}, optimizer {run['optimizer']}, gradient checkpointing "
            f"{run['gradient_checkpointing']}, trainable parameters {run['trainable_parameters']:,}, "
            f"Trainer train_runtime {run['train_runtime']:.1f}s (includes loop set-up)"
        )
    print(
        f"matmul peak 2048x2048 at {threads} thread(s): bf16 {peak['bf16']:.1f} GFLOP/s, fp32 {peak['fp32']:.1f} "
        f"GFLOP/s (after tunewise: bf16 {peak_after_tw['bf16']:.1f}, fp32 {peak_after_tw['fp32']:.1f}; at end: "
        f"bf16 {peak_end['bf16']:.1f}, fp32 {peak_end['fp32']:.1f}); ratios above use {precision}"
    )
    if memory:
        print(
            f"memory run (first, fresh processes): {memory['steps']} steps, longest {memory['longest']} tokens, "
            f"{memory['tokens']} tokens, precision {memory['precision']}, threads {memory['threads']}, checkpointing "
            f"every {memory['checkpoint_every_n_layers'] or '-'} layer(s), {memory['tokens_per_second']} tok/s; "
            f"peak RSS (VmHWM) {memory['all_peaks_gib']} GiB, ru_maxrss {memory['all_ru_maxrss_gib']} GiB, "
            f"{memory['before_train_gib']:.2f} GiB before train() (libraries and data); the highest peak counts"
        )
    print(
        f"load average (1 min): start {load_start[0]:.2f}, end {load_end[0]:.2f} on {os.cpu_count()} cores; "
        "order: memory runs, tunewise, then " + ", then ".join(trl_runs)
    )

    reference = trl_runs["trl_default"]
    speedup = tw["tokens_per_second"] / reference["tokens_per_second"]
    loss_worse = (tw["val_loss"] - reference["val_loss"]) / reference["val_loss"]
    speed_target = f">= {TARGET_SPEEDUP}x (aim {AIM_SPEEDUP}x)"
    loss_target = f"<= +{TARGET_LOSS_WORSE:.0%}"
    rows = []
    for label, run in trl_runs.items():
        name = "defaults" if label == "trl_default" else "no ckpt"
        ratio = tw["tokens_per_second"] / run["tokens_per_second"]
        cpu_ratio = (tw["tokens"] / tw["cpu_seconds"]) / (run["tokens"] / run["cpu_seconds"])
        worse = (tw["val_loss"] - run["val_loss"]) / run["val_loss"]
        rows += [
            (f"speedup vs TRL ({name})", f"{ratio:.2f}x", speed_target, ratio >= TARGET_SPEEDUP),
            ("  same, per CPU second", f"{cpu_ratio:.2f}x", "cross-check", None),
            (f"val loss vs TRL ({name})", f"{worse:+.2%}", loss_target, worse <= TARGET_LOSS_WORSE),
        ]
    rows.append(
        (
            "tunewise GFLOP/s of peak",
            f"{gflops(tw):.1f} / {peak_used:.1f} = {gflops(tw) / peak_used:.1%}",
            "reported",
            None,
        )
    )
    if memory:
        rows.append(
            (
                "peak memory 256 x 8",
                f"{memory['peak_rss_gib']:.2f} GiB",
                f"< {TARGET_PEAK_GIB} GiB",
                memory["peak_rss_gib"] < TARGET_PEAK_GIB,
            )
        )
    print()
    print(f"{'figure':<28}{'value':<26}{'target':<24}result")
    for name, value, target, ok in rows:
        print(f"{name:<28}{value:<26}{target:<24}{'-' if ok is None else 'PASS' if ok else 'FAIL'}")
    print(
        f"machine: {os.cpu_count()} cores, load average start {load_start[0]:.2f} / end {load_end[0]:.2f}, "
        f"torch threads {threads}, precision {precision}, aim {AIM_SPEEDUP}x "
        f"{'reached' if speedup >= AIM_SPEEDUP else 'not reached'} (vs TRL defaults)"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "tunewise": tw,
                    "trl": trl_runs,
                    "matmul_peak_gflops": peak,
                    "memory": memory,
                    "speedup": speedup,
                    "val_loss_relative": loss_worse,
                    "load_avg": [load_start[0], load_end[0]],
                },
                default=str,
            )
        )
    checks = [ok for *_, ok in rows if ok is not None]
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
