"""The fine-tuning recipe: LoRA on the base LLM (classification head or reply generation), or a full
fine-tune of the small sentence encoder with a linear head. One file, read top to bottom
(torchtune's ``lora_finetune_single_device`` habit): no callbacks, no trainer framework.

    train()                                    the recipe
      1. settings and data are checked          bad settings are refused before any weights load
      2. tokenizer, examples, the run plan      sizes (epochs, steps, warm-up, length) from the data
      3. model                                  base weights, then LoRA (or the encoder + head)
      4. optimiser, then scheduler              the scheduler wraps the optimiser: built after it
      5. resume                                 after 3 and 4: it loads their state
      6. the loop                               forward, loss, backward, clip, step; eval; checkpoint
      7. the best weights, curves, summary

Methods and tasks:

- ``lora`` + ``classify``: ``AutoModelForSequenceClassification`` on the LLM (Llama: the last real
  token's hidden state into a linear ``score`` layer), LoRA on the attention and MLP projections,
  the new ``score`` layer trained in full (``modules_to_save``). Picked over constrained label
  generation (fine-tune the LLM to answer with the label name, then score every label's tokens)
  for cost: on the demo data, with the same 100 steps of 16 rows at lr 1e-3, the head took 2.3x
  less training compute (39k tokens vs 93k: no chat template around the text, one pooled token)
  and predicted about 2x faster. Constrained generation was more accurate after those 100 steps
  (91.2% vs 86.4% validation accuracy, 125 rows): the LLM already knows the label words, while
  the head starts from random weights; more steps narrow the gap (88% at 210 steps).
- ``lora`` + ``generate``: supervised fine-tuning on the chat template, loss on the reply tokens
  only. The LM head (49k outputs for SmolLM2) runs only on the positions that have a label: over
  the full sequence it is a quarter of a 135M model's compute, and its logits (49k floats a token,
  and their gradient) are the largest tensors of a step.
- ``encoder`` + ``classify``: every weight of the sentence encoder trained, mean pooling, linear head.

Speed and memory (measured on SmolLM2-135M, demo replies, batch 8, max_length 256, 1 thread of a
shared AVX512-BF16 CPU; numbers in the train report): batches are grouped by length (shuffled
mega-batches, sorted inside: little padding) and padded per batch; attention is torch SDPA;
``precision: auto`` runs the matmuls under bf16 autocast where the hardware has native bf16
(2x the tokens/s of fp32 here). Activations, not weights, fill the memory of a small model (2.3 MB
a token in fp32): gradient checkpointing is switched on for just enough layers (every n-th) to keep
the largest batch under ``activation_memory_gib``, and stays off for short batches.

Distributed data parallel: the loss is computed by one ``nn.Module`` (the model's forward plus the
loss), so it can be wrapped in ``DistributedDataParallel``; batches are sharded by rank (the
length-grouped batches play the role of a ``DistributedSampler``); only rank 0 logs, evaluates,
writes checkpoints and shows progress. ``tunewise train --nproc N`` launches the processes (tunewise.distributed).

Checkpoints hold the trainable weights (safetensors), optimiser and scheduler state, the torch RNG
state, the step and the position in the epoch; the data order is a function of (seed, epoch), so a
resumed run sees the same batches in the same order as one that was never stopped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import resource
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .artifacts import atomic_path, read_json, write_json, write_text
from .chat import context_messages as _context_messages, end_of_turn_ids as _end_of_turn_ids, generate_replies
from .config import DEFAULT_TARGET_MODULES, TrainConfig
from .errors import TunewiseError
from .pricing import FLOPS_PER_TOKEN, GPU_UTILISATION, REFERENCE_GPUS
from .progress import console, progress
from .records import answer_column
from .sampling import stratified_sample_ids

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "REFERENCE_GPUS",
    "EarlyStopping",
    "Example",
    "RunPlan",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "WatchDecision",
    "check_training_data",
    "classifier_probabilities",
    "conversation",
    "dry_run",
    "encode_classification",
    "encode_replies",
    "length_grouped_batches",
    "load_trained",
    "plan_run",
    "train",
]

IGNORE_INDEX = -100  # label of positions that carry no loss (prompt tokens, padding)
Method = Literal["lora", "encoder"]


class TrainError(TunewiseError, ValueError):
    """Training cannot start or cannot go on; the message says what to change."""

    hint = "check the train section of the config; `tunewise train --dry-run` shows the plan without training"


# =============================================================================================
# Settings


# Per-method defaults; every one is overridable in TrainConfig.
DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # classify: the score head starts from random weights; 1e-3 reached 86% demo validation accuracy in
    # 100 steps where 3e-4 needed 210 steps for 88% (78% at step 108)
    ("lora", "classify"): {"learning_rate": 1e-3, "batch_size": 16, "lora_dropout": 0.0},
    ("lora", "generate"): {"learning_rate": 2e-4, "batch_size": 8, "lora_dropout": 0.05},
    ("encoder", "classify"): {"learning_rate": 5e-5, "batch_size": 16},
}
# The default budget: a ceiling sized from the data, inside which early stopping on validation
# decides when to stop (no fixed step cap). A fixed cap stopped BANKING77's LoRA classifier after
# 100 steps, an eighth of an epoch, at 42.6% (92.5% after 2 epochs); its encoder early-stopped at
# 2 of 3.5 epochs. So: at least MIN_DEFAULT_EPOCHS passes, at least TARGET_EXAMPLES_SEEN examples,
# and (classify) at least EXAMPLES_PER_CLASS examples per class on average (10 rows per class:
# 10 epochs, what BANKING77's 10-shot encoder needed), at most MAX_DEFAULT_EPOCHS passes.
MIN_DEFAULT_EPOCHS = 3
TARGET_EXAMPLES_SEEN = 3000
EXAMPLES_PER_CLASS = 100
MAX_DEFAULT_EPOCHS = 20
# Validation: about EVALS_PER_EPOCH times an epoch, so `patience` validations are a fraction of an
# epoch; at least MIN_EVALS_PER_RUN (a short capped run still has a curve) and at most
# MAX_EVALS_PER_RUN (a long run on tiny data does not validate every step).
EVALS_PER_EPOCH = 4
MIN_EVALS_PER_RUN = 4
MAX_EVALS_PER_RUN = 40
ENCODER_HEAD_LR_FACTOR = 20  # the encoder's head starts from random weights: it learns 20x faster


# =============================================================================================
# 1. Data checks: before anything heavy happens


def check_training_data(task: str, train: pd.DataFrame, validation: pd.DataFrame | None, *, batch_size: int,
                        source: str = "training data") -> None:
    """Raise TrainError for data that cannot train: missing columns, empty answers, one class, < a batch."""
    column = answer_column(task)
    for frame, where in ((train, source), (validation, "validation data")):
        if frame is None:
            continue
        missing = [c for c in ("id", "input", column) if c not in frame.columns]
        if missing:
            raise TrainError(f"{where}: missing column(s) {missing} (task {task}); columns: {', '.join(map(str, frame.columns))}")
    answers = train[column]
    empty = answers.isna() | (answers.astype(str).str.strip() == "")
    if empty.any():
        first = train.loc[empty, "id"].iloc[0]
        raise TrainError(f"{source}: {int(empty.sum())} row(s) have an empty {column} (first id {first}); "
                         "curate drops them, or fix the data")
    if task == "classify":
        classes = answers.astype(str).unique()
        if len(classes) < 2:
            raise TrainError(f"{source}: every training row has the label {classes[0]!r} ({len(train)} rows); "
                             "a classifier needs at least two classes. Add examples of the other classes, or "
                             "check data.columns.label points at the label column")
    if len(train) < batch_size:
        raise TrainError(f"{source}: {len(train)} training rows is fewer than one batch (train.batch_size = "
                         f"{batch_size}); set train.batch_size to at most {max(1, len(train))}, or add training data")


# =============================================================================================
# 2. Examples: tokenised once, batched by length


@dataclass
class Example:
    """One tokenised training or validation row."""

    input_ids: list[int]
    labels: list[int] | None = None  # generate: the token targets (IGNORE_INDEX on prompt tokens)
    label: int | None = None  # classify: the class index (-1 for a class unseen in training)
    prefix: Any = None  # classify: the frozen lower layers' output (a tokens x hidden tensor), see FrozenPrefix

    @property
    def n_targets(self) -> int:
        """Loss terms this example adds: reply tokens (generate) or 1 (classify)."""
        if self.labels is not None:
            return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)
        return 1


def conversation(text: str, context: Any = None, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The chat messages a generate example is made of (without the reply): system, earlier turns, user."""
    turns, system = _context_messages(context)
    system_parts = ([system_prompt] if system_prompt else []) + system
    head = [{"role": "system", "content": "\n\n".join(system_parts)}] if system_parts else []
    return [*head, *turns, {"role": "user", "content": text}]


def classification_text(text: str, context: Any = None) -> str:
    """What the classifier reads: earlier turns of the conversation (if any), then the message."""
    turns, _ = _context_messages(context)
    if not turns:
        return text
    return "\n".join(f"{t['role']}: {t['content']}" for t in turns) + f"\nuser: {text}"


def _contexts(frame: pd.DataFrame) -> list[Any]:
    return frame["context"].tolist() if "context" in frame.columns else [None] * len(frame)


def encode_classification(tokenizer: Any, frame: pd.DataFrame, labels: Sequence[str], max_length: int | None
                          ) -> list[Example]:
    """Token ids of each row's text (special tokens in user text are kept as plain text)."""
    index = {label: i for i, label in enumerate(labels)}
    texts = [classification_text(t, c) for t, c in zip(frame["input"].fillna("").astype(str), _contexts(frame))]
    encoded = tokenizer(texts, add_special_tokens=True, truncation=max_length is not None, max_length=max_length,
                        split_special_tokens=True)["input_ids"]
    answers = frame["label"].astype(str).tolist() if "label" in frame.columns else [None] * len(frame)
    return [Example(list(ids), label=index.get(a, -1)) for ids, a in zip(encoded, answers)]


def encode_replies(tokenizer: Any, frame: pd.DataFrame, max_length: int | None, system_prompt: str | None
                   ) -> list[Example | None]:
    """Chat-template examples with labels on the reply tokens only (the end-of-turn token included).

    The prompt (system, earlier turns, user message, generation prompt) and the reply are tokenised
    apart, so the reply starts exactly where generation starts at prediction time. Examples longer
    than ``max_length`` are cut at the end; one whose prompt alone fills ``max_length`` has no reply
    token left and comes back as None (counted and reported by the caller).
    """
    end_ids = _end_of_turn_ids(tokenizer)
    texts = frame["input"].fillna("").astype(str).tolist()
    replies = frame["target"].fillna("").astype(str).tolist() if "target" in frame.columns else [""] * len(frame)
    out: list[Example | None] = []
    for text, context, reply in zip(texts, _contexts(frame), replies):
        messages = conversation(text, context, system_prompt)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], tokenize=False)
        if not full.startswith(prompt):
            raise TrainError("the tokenizer's chat template rewrites earlier turns when a reply is added; "
                             "tunewise cannot tell the prompt from the reply with this template")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        cut = next((i + 1 for i, t in enumerate(reply_ids) if t in end_ids), len(reply_ids))
        reply_ids = reply_ids[:cut]  # the template's newline after the end-of-turn token is not learned
        ids = (prompt_ids + reply_ids)[:max_length] if max_length else prompt_ids + reply_ids
        labels = ([IGNORE_INDEX] * len(prompt_ids) + reply_ids)[: len(ids)]
        out.append(Example(ids, labels=labels) if len(ids) > len(prompt_ids) else None)
    return out


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int,
                           mega_batch_factor: int = 50, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Batches of example indices for one epoch: random, yet of similar lengths inside a batch.

    The indices are shuffled (seeded by ``seed`` and ``epoch``, so a resumed run sees the same
    order), cut into mega-batches of ``mega_batch_factor`` batches, sorted by length inside each
    mega-batch and cut into batches (transformers' LengthGroupedSampler does the same). The batch
    with the longest example goes first, so a batch that does not fit in memory fails at once.
    With ``world_size`` > 1 every rank takes an equal share of the batches (the role of a
    DistributedSampler). Hand-written because the DataLoader samplers give no per-epoch seed
    that survives a restart without pickling the sampler.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    mega = batch_size * mega_batch_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    longest = max(range(len(batches)), key=lambda i: max(lengths[batches[i]]), default=0)
    if batches:
        batches[0], batches[longest] = batches[longest], batches[0]
    usable = len(batches) // world_size * world_size
    return batches[rank:usable:world_size]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, "torch.Tensor"]:
    """Pad a batch to its own longest example (right padding)."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = torch.as_tensor(example.input_ids)
        attention_mask[row, : len(example.input_ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if examples[0].prefix is not None:  # the frozen layers' output stands in for the ids
        hidden = torch.zeros((len(examples), width, examples[0].prefix.shape[-1]), dtype=examples[0].prefix.dtype)
        for row, example in enumerate(examples):
            hidden[row, : len(example.input_ids)] = example.prefix
        batch["inputs_embeds"] = hidden
    if examples[0].labels is not None:
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            labels[row, : len(example.labels)] = torch.as_tensor(example.labels)
        batch["labels"] = labels
    else:
        batch["labels"] = torch.as_tensor([e.label for e in examples], dtype=torch.long)
    return batch


# =============================================================================================
# The run plan: every size, resolved from the settings and the data


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
    step_cap: str = "budget"  # what sets total_steps: "budget" (sized from the data), "epochs" or "max_steps" (user caps)
    budget_epochs: int = 0  # the default budget in epochs (what runs when the user caps nothing)
    budget_rule: str = ""  # how the default budget was sized
    max_minutes: float | None = None  # the user's time cap


def default_epochs(n_train: int, n_classes: int) -> tuple[int, str]:
    """The default budget in epochs and the rule that sized it (see MIN_DEFAULT_EPOCHS)."""
    n_train = max(n_train, 1)
    wanted = max(TARGET_EXAMPLES_SEEN, EXAMPLES_PER_CLASS * n_classes)
    epochs = int(min(MAX_DEFAULT_EPOCHS, max(MIN_DEFAULT_EPOCHS, math.ceil(wanted / n_train))))
    per_class = f" and {EXAMPLES_PER_CLASS} a class ({n_classes} classes)" if n_classes else ""
    return epochs, (f"{epochs} epochs of {n_train:,} rows: at least {MIN_DEFAULT_EPOCHS} passes, "
                    f"{TARGET_EXAMPLES_SEEN:,} examples seen{per_class}, at most {MAX_DEFAULT_EPOCHS} passes; "
                    "early stopping on validation decides within it")


def plan_run(task: str, method: str, train_lengths: Sequence[int], n_targets: int, n_validation: int,
             labels: list[str], config: TrainConfig, *, max_length: int, dropped: int = 0, truncated: int = 0,
             world_size: int = 1) -> RunPlan:
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
        raise TrainError(f"train.monitor: {monitor} is not a {task} metric; use "
                         f"{'loss, accuracy or macro_f1' if task == 'classify' else 'loss or chrf'}")
    return RunPlan(
        task=task, method=method, n_train=n_train, n_validation=n_validation, labels=list(labels),
        batch_size=batch_size, gradient_accumulation=config.gradient_accumulation, epochs=epochs,
        steps_per_epoch=steps_per_epoch, total_steps=total_steps,
        warmup_steps=int(math.ceil(config.warmup_ratio * total_steps)), max_length=max_length,
        longest=int(max(train_lengths, default=0)),
        learning_rate=config.learning_rate or defaults["learning_rate"], eval_every=eval_every,
        checkpoint_every=config.checkpoint_every or eval_every, monitor=monitor,
        tokens_per_epoch=int(sum(train_lengths)), targets_per_epoch=int(n_targets), dropped_no_reply=dropped,
        truncated=truncated, world_size=world_size, step_cap=step_cap, budget_epochs=budget_epochs,
        budget_rule=budget_rule, max_minutes=config.max_minutes,
    )


def _round_up(value: int, multiple: int = 8) -> int:
    return int(math.ceil(value / multiple) * multiple)


# =============================================================================================
# 3. Models: the forward pass and the loss in one module (what DistributedDataParallel wraps)


# The nn.Module classes (ReplyTokenLoss, ClassificationLoss, EncoderClassifier) live in
# tunewise.train_modules, imported where a model is built: it imports torch at its top.


@dataclass
class BuiltModel:
    model: Any  # what predictions use: a PeftModel, or an EncoderClassifier
    loss_module: Any  # model + loss; what the loop calls (and DDP wraps)
    tokenizer: Any
    pad_id: int
    base_path: Path  # the resolved base model folder
    n_parameters: int
    n_trainable: int
    checkpointed_layers: list = field(default_factory=list)  # layers set up for gradient checkpointing
    prefix: "FrozenPrefix | None" = None  # classify with adapters on the top layers only: their frozen inputs
    adapted_layers: tuple[int, int] | None = None  # (first, total) transformer layers that carry adapters


class FrozenPrefix:
    """The frozen lower layers of a decoder classifier whose adapters sit on its top layers only.

    Below the first adapted layer nothing trains, so those layers' output is a function of the
    input ids alone: ``encode`` computes it once per example and every training step and
    validation runs only the adapted layers (``logits``). With adapters on the top third, a step
    costs about a third of a full one, and the first epoch pays a forward of the rest once.
    transformers has no API to start a forward at layer k, so the decoder's layer list is swapped
    for a slice around each call and the library's own forward (masks, rotary positions, final
    norm) does the rest; the score head then reads the last real token, as the model's own
    sequence-classification forward does with right padding.
    """

    def __init__(self, classifier: Any, first_adapted: int) -> None:
        self.classifier = classifier  # e.g. LlamaForSequenceClassification (inside the PeftModel)
        self.decoder = getattr(classifier, classifier.base_model_prefix)
        self.layers = self.decoder.layers
        self.first_adapted = first_adapted
        import torch

        # the two slices, built once: every step swaps one in (a plain list, not a submodule of ours)
        self._slices = {"frozen": torch.nn.ModuleList(list(self.layers)[:first_adapted]),
                        "adapted": torch.nn.ModuleList(list(self.layers)[first_adapted:])}

    @classmethod
    def of(cls, peft_model: Any, first_adapted: int) -> "FrozenPrefix | None":
        """The prefix of a PEFT sequence classifier, or None where the model is not shaped for it."""
        import torch

        classifier = getattr(getattr(peft_model, "base_model", None), "model", None)
        decoder = getattr(classifier, getattr(classifier, "base_model_prefix", ""), None)
        layers = getattr(decoder, "layers", None)
        if (not isinstance(layers, torch.nn.ModuleList) or not hasattr(classifier, "score")
                or not 0 < first_adapted < len(layers)):
            return None
        return cls(classifier, first_adapted)

    @contextlib.contextmanager
    def _only(self, part: str) -> Iterator[None]:
        self.decoder.layers = self._slices[part]
        try:
            yield
        finally:
            self.decoder.layers = self.layers

    def encode(self, examples: Sequence[Example], *, pad_id: int, batch_size: int, device: str, precision: str,
               description: str) -> None:
        """Set ``prefix`` on every example: the last frozen layer's output on its real tokens."""
        import torch

        captured: dict[str, Any] = {}

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            captured["hidden"] = output[0] if isinstance(output, tuple) else output

        hook = self.layers[self.first_adapted - 1].register_forward_hook(keep)
        was_training = self.classifier.training
        self.classifier.eval()  # no dropout: the cached output is the layers' deterministic one
        try:
            # no_grad, not inference_mode: the cached tensors feed training steps later
            with (torch.no_grad(), _autocast(device, precision), self._only("frozen"),
                  progress(description, len(examples), unit="rows") as advance):
                for rows, batch in _batched(examples, batch_size):
                    tensors = collate(batch, pad_id)
                    self.decoder(input_ids=tensors["input_ids"].to(device),
                                 attention_mask=tensors["attention_mask"].to(device), use_cache=False)
                    hidden = captured["hidden"].float().cpu()
                    for row, example in zip(range(len(batch)), batch, strict=True):
                        example.prefix = hidden[row, : len(example.input_ids)].clone()
                    advance(len(rows))
        finally:
            hook.remove()
            self.classifier.train(was_training)

    def logits(self, inputs_embeds: Any, attention_mask: Any) -> Any:
        """The classifier's logits from the cached prefix (a batch padded by ``collate``)."""
        import torch

        with self._only("adapted"):
            hidden = self.decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  use_cache=False).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token
        return self.classifier.score(hidden[torch.arange(len(hidden), device=hidden.device), last])

    def bytes_for(self, examples: Sequence[Example]) -> int:
        hidden = int(self.classifier.config.hidden_size)
        return sum(len(e.input_ids) for e in examples) * hidden * 4


def _quiet_transformers() -> contextlib.AbstractContextManager:
    """Silence transformers' load report (missing `score` weights are expected: the head is new)."""
    import transformers

    @contextlib.contextmanager
    def quiet() -> Iterator[None]:
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
        try:
            yield
        finally:
            transformers.logging.set_verbosity(level)
            if bars:
                transformers.utils.logging.enable_progress_bar()

    return quiet()


def load_tokenizer(method: str, model_spec: str, *, offline: bool = True, trust_remote_code: bool = False
                   ) -> tuple[Any, Path]:
    """The tokenizer only (no weights): enough to check lengths and plan the run."""
    from transformers import AutoTokenizer

    from .models import resolve_encoder, resolve_llm

    resolved = (resolve_llm if method == "lora" else resolve_encoder)(model_spec, offline=offline)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainError(f"{model_spec}: the tokenizer has neither a pad nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, resolved.path


def build_model(task: str, method: str, base_path: Path, tokenizer: Any, labels: list[str], config: TrainConfig,
                *, checkpoint_every_n_layers: int | None = None, trust_remote_code: bool = False,
                precision: str = "fp32", attention: str = "sdpa") -> BuiltModel:
    """Base weights, then the adapters (or head); only the new weights are trainable."""
    import torch

    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    from . import train_modules as classes  # torch: imported on use (see the module docstring)
    prefix, adapted_layers = None, None
    with _quiet_transformers():
        if method == "encoder":
            from transformers import AutoModel

            encoder = AutoModel.from_pretrained(base_path, dtype=torch.float32, use_safetensors=True, **common)
            model = classes.EncoderClassifier(encoder, len(labels))
            loss_module = classes.ClassificationLoss(model)
        else:
            from peft import LoraConfig, get_peft_model

            dropout = config.lora_dropout if config.lora_dropout is not None else DEFAULTS[(method, task)]["lora_dropout"]
            lora = {"r": config.lora_r, "lora_alpha": config.lora_alpha, "lora_dropout": dropout,
                    "target_modules": list(config.target_modules)}
            if task == "classify":
                from transformers import AutoModelForSequenceClassification

                base = AutoModelForSequenceClassification.from_pretrained(
                    base_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={label: i for i, label in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id,
                    dtype=torch.float32, attn_implementation=attention, use_safetensors=True, **common)
                # the pooled token is the last one that is not padding: the model must know the pad id
                base.config.pad_token_id = tokenizer.pad_token_id
                lora_config = LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **lora)
            else:
                from transformers import AutoModelForCausalLM

                base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, attn_implementation="sdpa",
                                                            use_safetensors=True, **common)
                lora_config = LoraConfig(task_type="CAUSAL_LM", **lora)
            _check_target_modules(base, lora_config.target_modules)
            n_layers = int(getattr(base.config, "num_hidden_layers", 0) or 0)
            adapted = adapted_layer_count(task, n_layers, config.lora_layers)
            if n_layers and adapted < n_layers:
                lora_config.layers_to_transform = list(range(n_layers - adapted, n_layers))
            if checkpoint_every_n_layers:
                base.config.use_cache = False  # a KV cache is useless in training and clashes with recomputation
                if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x: every n-th layer
                    base.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=checkpoint_every_n_layers)
                else:
                    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                base.enable_input_require_grads()
            model = get_peft_model(base, lora_config)
            loss_module = (classes.ClassificationLoss if task == "classify" else classes.ReplyTokenLoss)(model)
            if n_layers:
                adapted_layers = (n_layers - adapted, n_layers)
            if precision == "bf16" and task == "classify":  # generation runs outside autocast: fp32 weights there
                _frozen_linear_weights_to_bf16(model)
            if task == "classify" and config.cache_frozen_layers and not checkpoint_every_n_layers:
                prefix = FrozenPrefix.of(model, n_layers - adapted)
                loss_module.prefix = prefix
    n_parameters = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    checkpointed = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True
                    and hasattr(m, "_gradient_checkpointing_func")]
    return BuiltModel(model, loss_module, tokenizer, int(tokenizer.pad_token_id), Path(base_path), n_parameters,
                      n_trainable, checkpointed, prefix, adapted_layers)


# Longest classify example that trains with plain ("eager") attention on a CPU: SDPA's fused CPU
# kernel took 20-44 ms a layer in backward on BANKING77's 15-token rows (a fifth of a step), where
# eager's small matmuls took about 1 ms; its B x heads x L^2 scores stay small at this length.
EAGER_ATTENTION_MAX_LENGTH = 128


def training_attention(task: str, device: str, max_length: int, setting: str = "auto") -> str:
    if setting != "auto":
        return setting
    return "eager" if task == "classify" and device == "cpu" and max_length <= EAGER_ATTENTION_MAX_LENGTH else "sdpa"


def _frozen_linear_weights_to_bf16(model: Any) -> None:
    """Store the frozen linear weights in bf16 (the adapters, the head, norms and embeddings stay fp32).

    Under bf16 autocast every linear layer casts its fp32 weight to bf16 on every call: with the
    whole base frozen that copy ran at each step for every weight and rivalled the matmuls in a
    profile. Cast once instead; autocast then multiplies the same bf16 values, so the results do
    not change. Merged exports reload the base in fp32 (load_trained), so no precision is lost there.
    """
    import torch

    # a weight tied to an embedding (a causal LM's head) stays fp32: the lookup is not autocast
    tied = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and id(module.weight) not in tied:
            module.weight.data = module.weight.data.to(torch.bfloat16)
            if module.bias is not None and not module.bias.requires_grad:
                module.bias.data = module.bias.data.to(torch.bfloat16)


# LoRA on the top third of a classifier's layers: on BANKING77 (SmolLM2-135M, 30 layers) the top 10
# trained 2.6x faster a step than all 30 (backward stops at the lowest adapted layer), and with the
# frozen layers' output cached (FrozenPrefix) the rest of the forward is paid once, not every epoch.
CLASSIFY_ADAPTED_SHARE = 1 / 3


def adapted_layer_count(task: str, n_layers: int, wanted: int | None) -> int:
    """How many top layers get adapters: ``train.lora_layers``, else all (generate) or the top third."""
    if not n_layers:
        return wanted or 0
    if wanted is not None:
        if wanted > n_layers:
            raise TrainError(f"train.lora_layers = {wanted}, but the model has {n_layers} layers")
        return wanted
    return n_layers if task == "generate" else max(1, math.ceil(n_layers * CLASSIFY_ADAPTED_SHARE))


def set_checkpointing(built: BuiltModel, runtime: "Runtime", batch_tokens: int) -> None:
    """Recompute activations only in batches whose activations would pass the budget.

    transformers reads each layer's ``gradient_checkpointing`` flag at call time, so flipping it per
    batch is exact: checkpointing changes memory and time, never the numbers (the recomputation
    replays the same dropout masks).
    """
    if built.checkpointed_layers:
        needed = batch_tokens * runtime.activation_gib_per_token > runtime.activation_budget_gib
        for layer in built.checkpointed_layers:
            layer.gradient_checkpointing = needed


def _check_target_modules(model: Any, wanted: Any) -> None:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(wanted) - present)
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise TrainError(f"train.target_modules: {missing} not found in the model; its linear layers are: {', '.join(linear)}")


# =============================================================================================
# 4. Optimiser and scheduler


def build_optimizer(model: Any, method: str, learning_rate: float, weight_decay: float) -> "torch.optim.Optimizer":
    """AdamW over the trainable weights; no decay on biases and norms (1-D tensors)."""
    import torch

    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = learning_rate * (ENCODER_HEAD_LR_FACTOR if method == "encoder" and name.startswith("head.") else 1)
        decay = weight_decay if param.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    return torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                             lr=learning_rate)


def build_scheduler(optimizer: Any, schedule: str, warmup_steps: int, total_steps: int) -> Any:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    if schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup_steps)
    make = get_cosine_schedule_with_warmup if schedule == "cosine" else get_linear_schedule_with_warmup
    return make(optimizer, warmup_steps, total_steps)


# =============================================================================================
# Early stopping and the overfitting watch


@dataclass
class WatchDecision:
    improved: bool
    stop: bool
    reason: str | None = None  # "early_stopping" | "overfitting"
    message: str | None = None


@dataclass
class EarlyStopping:
    """Picks the best checkpoint and says when to stop.

    - improvement: the monitored metric beats the best so far by more than ``min_delta``
      (higher is better for accuracy, macro_f1 and chrf; lower for loss);
    - early stopping: ``patience`` validations in a row without improvement;
    - overfitting watch: the metric got worse at each of the last ``overfit_window`` validations
      (each one worse than the one before) while the mean training loss since the previous
      validation fell each time. That is memorising, not a plateau: stop with a warning,
      even with early stopping turned off, and keep the best checkpoint.
    """

    mode: Literal["max", "min"]
    patience: int = 3
    min_delta: float = 0.0
    overfit_window: int = 2
    enabled: bool = True
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, metric, train loss)
    best: float | None = None
    best_step: int | None = None
    since_best: int = 0

    def _better(self, a: float, b: float, delta: float = 0.0) -> bool:
        return a > b + delta if self.mode == "max" else a < b - delta

    def update(self, step: int, metric: float, train_loss: float) -> WatchDecision:
        self.history.append((step, float(metric), float(train_loss)))
        improved = self.best is None or self._better(metric, self.best, self.min_delta)
        if improved:
            self.best, self.best_step, self.since_best = float(metric), step, 0
        else:
            self.since_best += 1
        k = self.overfit_window
        if len(self.history) > k:
            recent = self.history[-(k + 1):]
            worse = all(self._better(a[1], b[1]) for a, b in zip(recent, recent[1:]))
            falling = all(b[2] < a[2] for a, b in zip(recent, recent[1:]))
            if worse and falling:
                return WatchDecision(improved, True, "overfitting",
                                     f"validation got worse {k} times in a row (step {recent[0][0]} to {step}) while the "
                                     f"training loss kept falling ({recent[0][2]:.4f} -> {recent[-1][2]:.4f}): the model "
                                     f"is memorising the training data. Stopped; the best checkpoint (step "
                                     f"{self.best_step}) is kept. Fewer epochs, more data, `augment`, or a lower "
                                     f"learning rate may help.")
        if self.enabled and self.since_best >= self.patience:
            return WatchDecision(improved, True, "early_stopping",
                                 f"no improvement in {self.patience} validations; best at step {self.best_step}")
        return WatchDecision(improved, False)

    def state(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "best_step": self.best_step, "since_best": self.since_best}

    def load(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]  # type: ignore[misc]
        self.best, self.best_step, self.since_best = state["best"], state["best_step"], state["since_best"]


# =============================================================================================
# Evaluation


# A sorted run of examples is cut where padding would exceed this share of the real tokens: on CPU
# the padded positions cost as much as real ones, and a micro-batch of 32 random requests padded to
# its longest row wastes ~40% (measured: 31 ms/row at one chunk of 32 vs 22 ms/row in chunks of ~8).
MAX_PADDING_SHARE = 0.15
MIN_CHUNK_ROWS = 4  # below this, per-call overhead outweighs the padding saved


def _batched(examples: Sequence[Example], batch_size: int) -> Iterator[tuple[np.ndarray, list[Example]]]:
    """Length-sorted chunks for inference, at most ``batch_size`` rows, cut early where padding
    would exceed ``MAX_PADDING_SHARE``; yields (positions in ``examples``, chunk)."""
    lengths = np.asarray([len(e.input_ids) for e in examples])
    order = np.argsort(lengths, kind="stable")
    rows: list[int] = []
    real = 0
    for i in order:
        length = int(lengths[i])  # ascending, so this row sets the chunk's padded length
        padded = (len(rows) + 1) * length
        if rows and (len(rows) >= batch_size
                     or (len(rows) >= MIN_CHUNK_ROWS and padded - real - length > MAX_PADDING_SHARE * (real + length))):
            yield np.asarray(rows), [examples[j] for j in rows]
            rows, real = [], 0
        rows.append(int(i))
        real += length
    if rows:
        yield np.asarray(rows), [examples[j] for j in rows]


def _autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    import torch

    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")


def classifier_probabilities(classifier: Any, examples: Sequence[Example], *, pad_id: int, batch_size: int = 32,
                             device: str = "cpu", precision: str = "fp32", prefix: FrozenPrefix | None = None,
                             description: str | None = None) -> np.ndarray:
    """Softmax probabilities (rows in ``examples`` order) of a classifier that maps ids to logits;
    examples that carry a cached ``prefix`` run through ``prefix.logits`` (the adapted layers only)."""
    import torch

    n_out = None
    out: np.ndarray | None = None
    was_training = classifier.training
    classifier.eval()
    shown = progress(description, len(examples), unit="rows") if description else contextlib.nullcontext(None)
    with torch.inference_mode(), _autocast(device, precision), shown as advance:
        for rows, batch in _batched(examples, batch_size):
            tensors = collate(batch, pad_id)
            if advance is not None:
                advance(len(rows))
            if prefix is not None and "inputs_embeds" in tensors:
                output = prefix.logits(tensors["inputs_embeds"].to(device), tensors["attention_mask"].to(device))
            else:
                output = classifier(input_ids=tensors["input_ids"].to(device),
                                    attention_mask=tensors["attention_mask"].to(device))
            logits = (output.logits if hasattr(output, "logits") else output).float()
            proba = torch.softmax(logits, dim=-1).double().cpu().numpy()
            if out is None:
                n_out = proba.shape[1]
                out = np.zeros((len(examples), n_out))
            out[rows] = proba
    classifier.train(was_training)
    return out if out is not None else np.zeros((0, 0))


def _mean_loss(loss_module: Any, examples: Sequence[Example], *, pad_id: int, batch_size: int, device: str,
               precision: str) -> float:
    import torch

    total, count = 0.0, 0
    was_training = loss_module.training
    loss_module.eval()
    with torch.inference_mode(), _autocast(device, precision):
        for _, batch in _batched(examples, batch_size):
            tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            loss_sum, n = loss_module(**tensors)
            total += float(loss_sum)
            count += int(n)
    loss_module.train(was_training)
    return total / max(count, 1)


def classification_metrics(labels: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    predicted = proba.argmax(axis=1)
    known = labels >= 0
    n_labels = proba.shape[1]
    loss = float(-np.log(np.clip(proba[known, labels[known]], 1e-12, None)).mean()) if known.any() else float("nan")
    return {
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, labels=list(range(n_labels)), average="macro", zero_division=0)),
        "loss": loss,
    }


def generate_texts(peft_model: Any, tokenizer: Any, frame: pd.DataFrame, *, system_prompt: str | None,
                   max_new_tokens: int, batch_size: int = 8, description: str = "generating") -> tuple[list[str], np.ndarray]:
    """Greedy replies of the fine-tuned model to ``frame``'s messages (the training conversation format)."""
    conversations = [conversation(t, c, system_prompt) for t, c in
                     zip(frame["input"].fillna("").astype(str), _contexts(frame))]
    was_training = peft_model.training
    peft_model.eval()
    try:
        return generate_replies(peft_model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                                batch_size=batch_size, description=description)
    finally:
        peft_model.train(was_training)


# =============================================================================================
# 5. Checkpoints


def trainable_state(model: Any) -> dict[str, "torch.Tensor"]:
    """The weights that training changes (LoRA matrices and saved modules, or everything for the encoder)."""
    return {name: p.detach().cpu().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, "torch.Tensor"]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in state]
    unknown = [name for name in state if name not in params]
    if missing or unknown:
        raise TrainError(f"checkpoint does not match the model: {len(missing)} trainable weight(s) missing "
                         f"(e.g. {missing[:1]}), {len(unknown)} unknown (e.g. {unknown[:1]})")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


CHECKPOINT_MANIFEST = "manifest.json"
# The newest checkpoint and the one before it: a fallback when the newest is found damaged.
KEEP_CHECKPOINTS = 2


class CorruptCheckpoint(Exception):
    """A checkpoint folder that cannot be trusted (truncated or changed file, unreadable state)."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("step-"))
    except ValueError:
        return -1


def _save_checkpoint(directory: Path, model: Any, best_state: dict[str, Any] | None, optimizer: Any, scheduler: Any,
                     state: dict[str, Any]) -> Path:
    """Write ``step-NNNNNN/`` under ``directory`` atomically, then point ``latest`` at it.

    The folder is filled under a temporary name, a manifest records every file's size and sha256,
    the files are flushed to disk (fsync), and the folder is renamed (atomic within one file
    system); ``latest`` is rewritten atomically after it. A kill or power cut at any moment leaves
    the previous checkpoint intact and pointed to, and a file damaged later is caught on load by
    its checksum. The previous checkpoint is kept as a fallback; older ones are removed. A write
    that fails (disk full, read-only folder) raises :class:`TrainError` naming the folder.
    """
    import torch
    from safetensors.torch import save_file

    from .artifacts import file_digest, make_private_dirs

    name = f"step-{state['step']:06d}"
    final = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    try:
        make_private_dirs(directory)  # trained weights can reproduce training rows: owner-only
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        if best_state is not None:
            save_file(best_state, tmp / "best.safetensors")
        # Our own file, read back with weights_only=True: tensors, numbers and strings only.
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   tmp / "trainer_state.pt")
        write_json(tmp / "state.json", state)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        write_json(tmp / CHECKPOINT_MANIFEST, {
            "format": 1, "step": state["step"],
            "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files}})
        for p in tmp.iterdir():
            _fsync(p)
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(directory)
        write_text(directory / "latest", name + "\n")
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, (OSError, RuntimeError)) and type(exc).__name__ != "SafetensorError":
            raise
        previous = _latest_checkpoint(directory)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise TrainError(f"could not write the checkpoint {final}: {exc}. Training stopped; {kept}. Free disk space "
                         f"or make {directory} writable, then run again to resume.") from exc
    # keep this one and the newest older one (a fallback if this one is later found damaged)
    older = sorted((p for p in directory.glob("step-*") if p.name != name and _step_of(p) < state["step"]),
                   key=_step_of, reverse=True)
    keep = {name, *(p.name for p in older[:KEEP_CHECKPOINTS - 1])}
    for old in directory.glob("step-*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _latest_checkpoint(directory: Path) -> Path | None:
    """The folder ``latest`` points to, if it is there (else the newest step folder)."""
    candidates = _checkpoint_candidates(directory)
    return candidates[0] if candidates else None


def _checkpoint_candidates(directory: Path) -> list[Path]:
    """Checkpoint folders to try, best first: the one ``latest`` points to, then the others from
    the newest step down (a damaged or missing pointer does not hide them)."""
    if not directory.is_dir():
        return []
    folders = sorted((p for p in directory.glob("step-*") if (p / "state.json").exists() and _step_of(p) >= 0),
                     key=_step_of, reverse=True)
    try:
        pointed = directory / (directory / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError, ValueError):
        pointed = None
    if pointed is not None and pointed in folders:
        folders.remove(pointed)
        folders.insert(0, pointed)
    return folders


def _verify_checkpoint(folder: Path) -> None:
    """Raise :class:`CorruptCheckpoint` when a file differs from the manifest written with it.

    Checkpoints from before manifests have none; reading them (:func:`_read_checkpoint`) is then
    the check."""
    from .artifacts import file_digest

    manifest_path = folder / CHECKPOINT_MANIFEST
    if not manifest_path.exists():
        return
    try:
        manifest = read_json(manifest_path)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"its manifest is unreadable ({exc})") from None
    for file_name, expected in files.items():
        path = folder / file_name
        if not path.is_file():
            raise CorruptCheckpoint(f"{file_name} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CorruptCheckpoint(f"{file_name} has {size:,} bytes, {expected['bytes']:,} were written (truncated?)")
        if file_digest(path) != expected["sha256"]:
            raise CorruptCheckpoint(f"{file_name} does not match the checksum recorded when it was written")


def _read_checkpoint(folder: Path) -> dict[str, Any]:
    """Everything in a checkpoint folder, verified and in memory; nothing is applied yet, so a
    damaged checkpoint cannot leave the model half-restored. :class:`CorruptCheckpoint` if any
    part is damaged."""
    import torch
    from safetensors.torch import load_file

    _verify_checkpoint(folder)
    try:
        state = read_json(folder / "state.json")
        trainable = load_file(folder / "trainable.safetensors")
        trainer_state = torch.load(folder / "trainer_state.pt", weights_only=True)
        best = load_file(folder / "best.safetensors") if (folder / "best.safetensors").exists() else None
    except Exception as exc:  # SafetensorError, EOFError, UnpicklingError, JSONDecodeError, ...
        raise CorruptCheckpoint(f"{type(exc).__name__}: {exc}") from None
    if (not isinstance(state, dict) or not {"step", "epoch", "window_in_epoch", "watch"} <= state.keys()
            or not isinstance(trainer_state, dict) or not {"optimizer", "scheduler", "torch_rng"} <= trainer_state.keys()):
        raise CorruptCheckpoint("state.json or trainer_state.pt lacks part of the training state")
    return {"state": state, "trainable": trainable, "trainer_state": trainer_state, "best": best}


def _apply_checkpoint(loaded: dict[str, Any], model: Any, optimizer: Any, scheduler: Any) -> tuple[dict[str, Any], dict | None]:
    import torch

    trainer_state = loaded["trainer_state"]
    load_trainable_state(model, loaded["trainable"])
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    # Restored last, after the model was built (LoRA initialisation draws random numbers).
    torch.set_rng_state(trainer_state["torch_rng"])
    if trainer_state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer_state["cuda_rng"])
    return loaded["state"], loaded["best"]


def _load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[dict[str, Any], dict | None]:
    return _apply_checkpoint(_read_checkpoint(folder), model, optimizer, scheduler)


def _resume(ckpt_dir: Path, fingerprint: str, model: Any, optimizer: Any, scheduler: Any, *, name: str,
            is_main: bool) -> tuple[Path, dict[str, Any], dict | None] | None:
    """Restore the newest usable checkpoint: (folder, state, best weights), or None to start over.

    A damaged checkpoint (a truncated file, a checksum mismatch, an unreadable state) is skipped
    with a warning and moved aside as ``corrupt-step-NNNNNN`` by rank 0 (kept for inspection, never
    tried again); the one before it is tried next. A checkpoint of other settings or data is
    ignored, as before. Never raises for a bad checkpoint: at worst training starts over.
    """
    def warn(text: str) -> None:
        if is_main:
            console.print(f"[yellow]train {name}: {text}[/yellow]")

    skipped: list[str] = []
    for folder in _checkpoint_candidates(ckpt_dir):
        try:
            loaded = _read_checkpoint(folder)
        except CorruptCheckpoint as exc:
            skipped.append(folder.name)
            warn(f"skipping damaged checkpoint {folder}: {exc}")
            if is_main:
                aside = folder.with_name(f"corrupt-{folder.name}")
                try:
                    shutil.rmtree(aside, ignore_errors=True)  # an older damaged copy of the same step
                    os.replace(folder, aside)
                except OSError:
                    pass
            continue
        if loaded["state"].get("fingerprint") != fingerprint:
            warn(f"ignoring checkpoint {folder}: settings or data changed")
            return None
        if skipped:
            warn(f"resuming from the older checkpoint {folder.name} instead of {', '.join(skipped)}")
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        try:
            state, best = _apply_checkpoint(loaded, model, optimizer, scheduler)
        except Exception as exc:  # a checkpoint that reads but does not fit: put the fresh weights back
            load_trainable_state(model, params)
            warn(f"skipping checkpoint {folder}: it does not fit this model ({exc})")
            return None
        return folder, state, best
    if skipped:
        warn("no usable checkpoint is left: training starts over from step 0")
    return None


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_fingerprint(frame: pd.DataFrame, task: str) -> str:
    cols = [c for c in ("id", "input", "context", answer_column(task)) if c in frame.columns]
    hashed = pd.util.hash_pandas_object(frame[cols].astype(str), index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


# =============================================================================================
# Outputs


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


def _plot_curves(curves: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [p["step"] for p in curves["train"]]
    left.plot(steps, [p["loss"] for p in curves["train"]], label="train loss", lw=1, alpha=0.8)
    evals = curves["validation"]
    if evals and all("loss" in e for e in evals):
        left.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="validation loss")
    left.set_xlabel("step")
    left.set_title("loss")
    left.legend()
    for metric in ("accuracy", "macro_f1", "chrf"):
        points = [(e["step"], e[metric]) for e in evals if metric in e]
        if points:
            right.plot(*zip(*points), "o-", label=metric)
    if curves.get("best_step") is not None:
        right.axvline(curves["best_step"], color="grey", ls="--", lw=1, label="best")
    right.set_xlabel("step")
    right.set_title("validation" if evals else "validation (none)")
    if right.get_legend_handles_labels()[0]:
        right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def save_adapter(result_model: Any, method: str, tokenizer: Any, folder: Path, extra: dict[str, Any]) -> Path:
    """Best weights in their portable form, atomically: a PEFT adapter folder, or the encoder + head."""
    from safetensors.torch import save_file

    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if method == "lora":
        result_model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
    else:
        result_model.encoder.save_pretrained(tmp)
        save_file({k: v.detach().contiguous() for k, v in result_model.head.state_dict().items()}, tmp / "head.safetensors")
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "tunewise_train.json", extra)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


# =============================================================================================
# The recipe


def _resolve_device(config: TrainConfig) -> str:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("train.device: cuda, but torch sees no CUDA device; use device: auto or cpu")
    return "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"


def _native_bf16(device: str) -> bool:
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:  # oneDNN's check: AVX512-BF16 or AMX; without them bf16 matmuls are emulated (slow)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass
class Runtime:
    """How this run computes: resolved from the settings, the hardware and the plan."""

    device: str
    precision: str  # "fp32" or "bf16"
    threads: int
    checkpoint_every_n_layers: int | None  # gradient checkpointing of every n-th layer; None: off
    activation_gib: float  # estimated activations of the largest batch without checkpointing
    activation_gib_per_token: float = 0.0
    activation_budget_gib: float = 0.0


def activation_gib(base_config: Any, tokens: int, precision: str) -> float:
    """Activation memory a transformer keeps for backward, for ``tokens`` tokens in one batch.

    Per layer and token about 16 vectors of the hidden size and 6 of the MLP size are saved
    (norm inputs and outputs, q/k/v, attention output, SwiGLU gate/up/product, LoRA dropout
    copies); measured on SmolLM2 with LoRA on all projections: 2.28 MB per token in fp32 (the
    formula gives 2.21), 0.65x that under bf16 autocast.
    """
    hidden = int(getattr(base_config, "hidden_size", 0) or 0)
    mlp = int(getattr(base_config, "intermediate_size", 0) or 4 * hidden)
    layers = int(getattr(base_config, "num_hidden_layers", 0) or 0)
    bytes_per_value = 4.0 if precision == "fp32" else 2.6
    return tokens * layers * (16 * hidden + 6 * mlp) * bytes_per_value / 2**30


def _fastest_thread_count(limit: int) -> int:
    """``limit`` threads, or 1 if a short probe (a small MLP stack, ~50 ms) runs faster on one.

    With other processes busy on the same cores, OpenMP threads wait for each other at every
    operation: on this project's shared 2-core machine two threads ran training steps 2x and
    inference 6x slower than one. Measured rather than guessed from the load average, which also
    counts this process's own earlier work.
    """
    import torch

    if limit <= 1:
        return 1
    before = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    x, w1, w2 = (torch.randn(shape, generator=generator) for shape in ((64, 576), (576, 1536), (1536, 576)))

    def probe(threads: int) -> float:
        torch.set_num_threads(threads)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            h = x
            for _ in range(4):
                h = torch.nn.functional.silu(h @ w1) @ w2
                h = h / (h.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)
            best = min(best, time.perf_counter() - started)
        return best

    try:
        return 1 if probe(1) < probe(limit) else limit
    finally:
        torch.set_num_threads(before)


def resolve_runtime(config: TrainConfig, plan: RunPlan, base_config: Any) -> Runtime:
    device = _resolve_device(config)
    native = _native_bf16(device)
    if config.precision == "bf16" and not native:
        raise TrainError(f"train.precision: bf16, but this {'GPU' if device == 'cuda' else 'CPU'} has no native bf16 "
                         "(CPU: AVX512-BF16 or AMX); emulated bf16 is slower than fp32: use precision: fp32 or auto")
    precision = "bf16" if config.precision == "bf16" or (config.precision == "auto" and native) else "fp32"
    largest = plan.batch_size * plan.longest
    estimate = activation_gib(base_config, largest, precision)
    every_n: int | None = None
    if config.gradient_checkpointing:
        every_n = 1
    elif config.gradient_checkpointing is None and plan.method == "lora" and estimate > config.activation_memory_gib:
        # Checkpointing a share f of the layers keeps (1 - f) of the activations: the smallest f that
        # fits the budget, as every n-th layer (n = 1: all), costs the least recomputation.
        share = 1 - config.activation_memory_gib / estimate
        every_n = max(1, int(1 / share))
    threads = config.num_threads or _fastest_thread_count(max(1, (os.cpu_count() or 1) // max(plan.world_size, 1)))
    # Forced on (gradient_checkpointing: true): a budget of 0 makes every batch recompute.
    budget = 0.0 if config.gradient_checkpointing else config.activation_memory_gib
    return Runtime(device, precision, threads, every_n, round(estimate, 3), activation_gib(base_config, 1, precision),
                   budget)


def _base_config(base_path: Path, method: str, trust_remote_code: bool) -> Any:
    """The base model's config (sizes), read without loading weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_path, local_files_only=True, trust_remote_code=trust_remote_code)


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _stratified_head(frame: pd.DataFrame, n: int, task: str, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame.reset_index(drop=True)
    ids = set(stratified_sample_ids(frame, n, seed, "label" if task == "classify" else None))
    return frame[frame["id"].astype(str).isin(ids)].reset_index(drop=True)


@functools.lru_cache(maxsize=1)
def _libc() -> Any:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): their allocators behave differently; nothing to do
        return None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 4 << 20


def _bound_heap_growth() -> None:
    """Serve allocations of 4 MiB and more straight from mmap on a CPU (glibc), for this process.

    A step allocates and frees hundreds of MB of differently sized tensors. glibc's default
    (a threshold that grows up to 32 MiB) keeps them on the heap, which fragments: the peak
    resident size of a batch-8, length-256 LoRA step of SmolLM2 varied between 2.5 and 3.7 GiB
    from run to run. Measured (4 steps, 2 threads): no bound 2.96 GiB at 244 tokens/s; 16 MiB
    2.75 GiB, 236; 8 MiB 2.7-2.8 GiB, 249; 4 MiB 1.89 GiB, 195; 1 MiB 1.62 GiB, 128-136 (every
    mmap'd page is zeroed by the kernel on first touch: small thresholds cost speed).
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.malloc_trim(0)  # what loading left on the heap


def _is_oom(error: BaseException) -> bool:
    text = str(error)
    return "out of memory" in text.lower() or "DefaultCPUAllocator" in text


def prepare(task: str, method: str, train_frame: pd.DataFrame, validation_frame: pd.DataFrame | None,
            config: TrainConfig, *, model_spec: str, offline: bool = True, trust_remote_code: bool = False,
            seed: int = 0, source: str = "training data") -> tuple[RunPlan, Any, Path, list[Example], list[Example], pd.DataFrame, pd.DataFrame]:
    """Steps 1-2 of the recipe: checks, tokenizer, examples and the plan (no model weights loaded).

    Returns (plan, tokenizer, base folder, train examples, validation examples, train frame after
    augmentation, validation frame used during training).
    """
    if (method, task) not in DEFAULTS:
        raise TrainError(f"method {method!r} does not do task {task!r}; "
                         f"supported: {', '.join(f'{m}+{t}' for m, t in DEFAULTS)}")
    batch_size = config.batch_size or DEFAULTS[(method, task)]["batch_size"]
    check_training_data(task, train_frame, validation_frame, batch_size=batch_size, source=source)
    if config.augment:
        from .perturb import augment_frame

        copies = augment_frame(train_frame, config.augment, kinds=config.augment_kinds, seed=seed)
        train_frame = pd.concat([train_frame, copies], ignore_index=True)
    labels = sorted(train_frame["label"].astype(str).unique()) if task == "classify" else []
    tokenizer, base_path = load_tokenizer(method, model_spec, offline=offline, trust_remote_code=trust_remote_code)
    model_limit = min(int(getattr(tokenizer, "model_max_length", 10**9) or 10**9), 10**9)
    cap = min(config.max_length_cap, model_limit)

    def encode(frame: pd.DataFrame, max_length: int | None) -> list[Example | None]:
        if task == "classify":
            return list(encode_classification(tokenizer, frame, labels, max_length))
        return encode_replies(tokenizer, frame, max_length, config.system_prompt)

    if config.max_length:
        max_length = config.max_length
        full = encode(train_frame, None)
    else:  # from the data: the longest training example, rounded up, capped
        full = encode(train_frame, None)
        longest = max((len(e.input_ids) for e in full if e is not None), default=8)
        max_length = min(cap, _round_up(longest))
    truncated = sum(1 for e in full if e is not None and len(e.input_ids) > max_length)
    encoded = encode(train_frame, max_length) if truncated else full
    kept = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(kept)
    if not kept:
        raise TrainError(f"{source}: no training row has a reply token within max_length {max_length}; "
                         "raise train.max_length")
    val_frame = validation_frame if validation_frame is not None else train_frame.iloc[0:0]
    val_frame = _stratified_head(val_frame, config.eval_max_rows, task, seed)
    val_examples = [e for e in encode(val_frame, max_length) if e is not None] if len(val_frame) else []
    rank, world_size = _distributed()
    plan = plan_run(task, method, [len(e.input_ids) for e in kept], sum(e.n_targets for e in kept), len(val_examples),
                    labels, config, max_length=max_length, dropped=dropped, truncated=truncated, world_size=world_size)
    if len(kept) < plan.batch_size:
        raise TrainError(f"{source}: {len(kept)} usable training rows is fewer than one batch (train.batch_size = "
                         f"{plan.batch_size}); lower train.batch_size or add data")
    return plan, tokenizer, base_path, kept, val_examples, train_frame, val_frame


def train(task: str, train_frame: pd.DataFrame, validation_frame: pd.DataFrame | None, *, method: Method = "lora",
          config: TrainConfig | None = None, model_spec: str, offline: bool = True, trust_remote_code: bool = False,
          out_dir: str | Path | None = None, checkpoint_dir: str | Path | None = None, seed: int = 0,
          name: str = "model", source: str = "training data", stop_after_steps: int | None = None) -> TrainResult:
    """Fine-tune ``model_spec`` on ``train_frame`` (record frames); see the module docstring.

    ``out_dir`` receives adapter/, curves.json, curves.png and train_summary.json (rank 0 only);
    ``checkpoint_dir`` the resumable checkpoints (default ``out_dir/checkpoints``; none without
    either). ``stop_after_steps`` ends the run after that optimiser step as if the process had
    been stopped there, with its checkpoint written: what a time-boxed job or a test of resume does.
    """
    import torch

    config = config or TrainConfig()
    started = time.perf_counter()
    # -- 1, 2. checks, tokenizer, examples, plan: a bad setting fails here, before weights load
    plan, tokenizer, base_path, examples, val_examples, train_frame, val_frame = prepare(
        task, method, train_frame, validation_frame, config, model_spec=model_spec, offline=offline,
        trust_remote_code=trust_remote_code, seed=seed, source=source)
    runtime = resolve_runtime(config, plan, _base_config(base_path, method, trust_remote_code))
    device, precision = runtime.device, runtime.precision
    if device == "cpu":
        _bound_heap_growth()
    rank, world_size = _distributed()
    is_main = rank == 0
    out = Path(out_dir) if out_dir is not None else None
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else (out / "checkpoints" if out else None)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(runtime.threads)
    try:
        torch.manual_seed(seed)  # LoRA and head initialisation, dropout
        # -- 3. model: base weights, adapters; then to the device
        built = build_model(task, method, base_path, tokenizer, plan.labels, config, trust_remote_code=trust_remote_code,
                            checkpoint_every_n_layers=runtime.checkpoint_every_n_layers, precision=runtime.precision,
                            attention=training_attention(task, runtime.device, plan.max_length, config.attention))
        built.loss_module.to(device)
        loss_module = built.loss_module
        _cache_frozen_layers(built, name, examples + val_examples, config, runtime, batch_size=max(plan.batch_size, 32))
        if world_size > 1:  # each rank computes its batches' gradients; DDP averages them
            from torch.nn.parallel import DistributedDataParallel

            loss_module = DistributedDataParallel(loss_module)
        # -- 4. optimiser over the trainable weights, then the scheduler that drives its learning rate
        optimizer = build_optimizer(built.model, method, plan.learning_rate, config.weight_decay)
        scheduler = build_scheduler(optimizer, config.lr_schedule, plan.warmup_steps, plan.total_steps)
        watch = EarlyStopping(mode="min" if plan.monitor == "loss" else "max", patience=config.patience,
                              min_delta=config.min_delta, overfit_window=config.overfit_window,
                              enabled=config.early_stopping)
        # resume itself is not a training setting: a run started with --no-resume can be resumed later; nor is
        # the time cap (it changes no step of the plan): a run stopped by it resumes with a larger one
        fingerprint = _fingerprint(config.model_dump(mode="json", exclude={"resume", "max_minutes"}), task, method,
                                   model_spec, seed, _data_fingerprint(train_frame, task), plan.labels, world_size)
        # -- 5. resume: after 3 and 4, because it restores their state
        state: dict[str, Any] = {"step": 0, "epoch": 0, "window_in_epoch": 0, "data_seed": seed, "threads": runtime.threads,
                                 "fingerprint": fingerprint, "train": [], "validation": [], "watch": watch.state(),
                                 "tokens_seen": 0, "seconds": 0.0}
        best_state: dict[str, Any] | None = None
        resumed_from = None
        # a damaged checkpoint is skipped with a warning (the one before it is tried), never a crash
        restored = (_resume(ckpt_dir, fingerprint, built.model, optimizer, scheduler, name=name, is_main=is_main)
                    if ckpt_dir is not None and config.resume else None)
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
            name, plan, config, built, loss_module, optimizer, scheduler, watch, state, examples, val_examples,
            val_frame, runtime=runtime, ckpt_dir=ckpt_dir if is_main else None, is_main=is_main,
            rank=rank, world_size=world_size, stop_after_steps=stop_after_steps, best_state=best_state)
        stop_reason, message, best_state = loop.stop_reason, loop.message, loop.best_state
        # -- 7. the best weights back into the model; outputs
        if best_state is not None and stop_reason != "interrupted":
            load_trainable_state(built.model, best_state)
        built.model.eval()
    finally:
        torch.set_num_threads(threads_before)
    curves = {"monitor": plan.monitor, "best_step": watch.best_step, "best": watch.best,
              "train": state["train"], "validation": state["validation"]}
    seconds = state["seconds"]
    converged = convergence(plan, watch, stop_reason, state["validation"], config.patience)
    if is_main and converged["under_trained"]:
        console.print(f"[yellow]train {name}: {converged['under_trained_reason']}[/yellow]")
    summary = {
        "name": name, "task": task, "method": method, "base_model": model_spec, "base_path": str(base_path),
        "plan": asdict(plan), "steps_done": state["step"], "epochs_done": round(state["step"] / plan.steps_per_epoch, 3),
        "stop_reason": stop_reason, "stop_message": message,
        "under_trained": converged["under_trained"], "under_trained_reason": converged["under_trained_reason"],
        "monitor": plan.monitor, "validation_curve": converged["validation_curve"],
        "best_step": watch.best_step, "best": {plan.monitor: watch.best},
        "best_metrics": next((e for e in state["validation"] if e["step"] == watch.best_step), None),
        "resumed_from_step": resumed_from, "seconds": round(seconds, 3),
        "elapsed_seconds": round(state.get("elapsed", seconds), 3),
        "wall_seconds_this_process": round(time.perf_counter() - started, 3),
        "tokens_seen": state["tokens_seen"], "tokens_per_second": round(state["tokens_seen"] / seconds, 1) if seconds else None,
        "parameters": built.n_parameters, "trainable_parameters": built.n_trainable, "device": device,
        "adapted_layers": (f"{built.adapted_layers[0] + 1}-{built.adapted_layers[1]} of {built.adapted_layers[1]}"
                           if built.adapted_layers else None),
        "frozen_layers_cached": built.prefix is not None,
        "attention": training_attention(task, device, plan.max_length, config.attention),
        "runtime": asdict(runtime),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "system_prompt": config.system_prompt, "config": config.model_dump(mode="json"), "seed": seed,
    }
    if out is not None and is_main:
        save_adapter(built.model, method, tokenizer, out / "adapter",
                     {"task": task, "method": method, "base_model": model_spec, "base_path": str(base_path),
                      "labels": plan.labels, "max_length": plan.max_length, "system_prompt": config.system_prompt,
                      "best_step": watch.best_step})
        write_json(out / "curves.json", curves)
        _plot_curves(curves, out / "curves.png", f"{name}: {task}, {method}")
        write_json(out / "train_summary.json", summary)
    return TrainResult(built.model, tokenizer, plan.labels, plan, summary, curves, out, built.pad_id, device,
                       precision, config.system_prompt, plan.max_length)


def _cache_frozen_layers(built: BuiltModel, name: str, examples: list[Example], config: TrainConfig,
                         runtime: Runtime, *, batch_size: int) -> None:
    """Compute the frozen layers' output of every example once (see FrozenPrefix), memory allowing."""
    if built.prefix is None:
        return
    needed = built.prefix.bytes_for(examples)
    if needed > config.cache_memory_gib * 2**30:
        console.print(f"[dim]train {name}: the frozen layers' output would take {needed / 2**30:.1f} GiB, over "
                      f"train.cache_memory_gib = {config.cache_memory_gib:g}; every step runs the whole model[/dim]")
        built.prefix = built.loss_module.prefix = None
        return
    first = built.prefix.first_adapted
    built.prefix.encode(examples, pad_id=built.pad_id, batch_size=batch_size, device=runtime.device,
                        precision=runtime.precision, description=f"train {name}: frozen layers 1-{first}, once")


@dataclass
class LoopResult:
    stop_reason: str  # "early_stopping", "overfitting", "interrupted", or the limit that ended the plan
    message: str | None  # what to tell the user about the stop
    best_state: dict[str, Any] | None  # the best trainable weights (None only when interrupted before any)


def _loop(name: str, plan: RunPlan, config: TrainConfig, built: BuiltModel, loss_module: Any, optimizer: Any,
          scheduler: Any, watch: EarlyStopping, state: dict[str, Any], examples: list[Example],
          val_examples: list[Example], val_frame: pd.DataFrame, *, runtime: Runtime, ckpt_dir: Path | None,
          is_main: bool, rank: int, world_size: int, stop_after_steps: int | None,
          best_state: dict[str, Any] | None) -> LoopResult:
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

    def checkpoint() -> None:
        nonlocal last_good_step
        if ckpt_dir is not None:
            state["watch"] = watch.state()
            _save_checkpoint(ckpt_dir, built.model, best_state, optimizer, scheduler, state)
            last_good_step = state["step"]

    def validate() -> dict[str, Any]:
        return _validate(plan, config, built, loss_module, val_examples, val_frame, device=device, precision=precision)

    with progress(f"train {name}", plan.total_steps, unit="steps") as advance:
        advance(state["step"])
        while state["step"] < plan.total_steps and stop_reason == "completed":
            batches = length_grouped_batches(lengths, plan.batch_size, seed=state["data_seed"], epoch=state["epoch"],
                                             rank=rank, world_size=world_size)
            windows = [batches[i : i + plan.gradient_accumulation]
                       for i in range(0, len(batches), plan.gradient_accumulation)]
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
                        batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], built.pad_id).items()}
                        set_checkpointing(built, runtime, batch["input_ids"].numel())
                        last_micro = micro == len(window) - 1
                        # Under DDP, gradients are synchronised on the window's last backward only.
                        sync = contextlib.nullcontext() if world_size == 1 or last_micro else loss_module.no_sync()
                        with sync:
                            with _autocast(device, precision):
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
                        "or check the data for extreme inputs.") from None
                except RuntimeError as error:
                    if not _is_oom(error):
                        raise
                    raise TrainError(
                        f"train {name}: out of memory at step {state['step'] + 1} (batch {plan.batch_size} x up to "
                        f"{plan.max_length} tokens). {_last_good(ckpt_dir, last_good_step).capitalize()}. Lower "
                        "train.batch_size (raise gradient_accumulation to keep the effective batch), lower "
                        "train.max_length, or set gradient_checkpointing: true.") from None
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
                state["train"].append({"step": state["step"], "epoch": state["epoch"], "loss": round(train_loss, 6),
                                       "lr": scheduler.get_last_lr()[0], "tokens": window_tokens})
                if is_main:
                    advance(1, description=f"train {name} loss {train_loss:.3f} "
                            f"{window_tokens / max(seconds, 1e-9):,.0f} tok/s")
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
                        state["validation"].append({"step": state["step"], **metrics, "train_loss": round(mean_train, 6)})
                        if decision.improved:
                            best_state = trainable_state(built.model)
                        if decision.stop:
                            stop_reason, message = decision.reason or "stopped", decision.message
                            color = "yellow" if decision.reason == "overfitting" else "dim"
                            console.print(f"[{color}]train {name}: {decision.message}[/{color}]")
                    if time_up and stop_reason == "completed":  # a validation that said stop wins: converged
                        minutes = (state["elapsed"] + time.perf_counter() - tick) / 60
                        stop_reason, message = "max_minutes", (f"reached the time cap train.max_minutes = "
                                                               f"{plan.max_minutes:g} ({minutes:.1f} min)")
                    stop_reason = _broadcast_stop(stop_reason, world_size, device)
                state["elapsed"] += time.perf_counter() - tick
                done = state["step"] >= plan.total_steps or stop_reason != "completed"
                interrupted = stop_after_steps is not None and state["step"] >= stop_after_steps and not done
                if state["step"] % plan.checkpoint_every == 0 or done or interrupted:
                    checkpoint()
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
        best_state = trainable_state(built.model)  # no validation data: the last weights are the best
    if stop_reason == "completed":  # the planned steps ran out: name the limit that set them
        stop_reason, message = plan.step_cap, _cap_message(plan)
    return LoopResult(stop_reason, message, best_state)


def _cap_message(plan: RunPlan) -> str:
    if plan.step_cap == "max_steps":
        return f"reached the step cap train.max_steps = {plan.total_steps}"
    if plan.step_cap == "epochs":
        return f"ran the {plan.epochs} epoch(s) of train.epochs"
    return f"ran the whole default budget ({plan.budget_rule})"


# stop reasons of a run that a limit the user set ended, not its curve. The default budget is not
# one: it is sized to converge, and with min_delta 0 a last validation 0.0006 above the one
# before (noise) would flag a converged run
CAPS = ("max_steps", "epochs", "max_minutes")
CAP_ADVICE = {"max_steps": "raise train.max_steps or remove it", "epochs": "raise train.epochs or remove it",
              "max_minutes": "raise train.max_minutes or remove it",
              "budget": "set train.epochs above the default budget"}


def convergence(plan: RunPlan, watch: EarlyStopping, stop_reason: str, validation: list[dict[str, Any]],
                patience: int) -> dict[str, Any]:
    """Whether a limit stopped training while validation was still improving (``under_trained``).

    Under-trained: a cap the user set (``max_steps``, ``epochs``, ``max_minutes``) ended
    the run while the monitored metric was still improving: the last validation was the best, or
    the best came within the last ``patience`` validations (early stopping had not seen a plateau).
    None when there was no validation to tell. Returns under_trained, its reason and the
    validation curve as [step, metric] pairs.
    """
    curve = [[int(e["step"]), e[plan.monitor]] for e in validation if plan.monitor in e]
    info: dict[str, Any] = {"under_trained": False, "under_trained_reason": None, "validation_curve": curve}
    if stop_reason == "interrupted":
        info["under_trained"] = None
        info["under_trained_reason"] = "interrupted before the end of its plan: resume it to finish"
        return info
    if stop_reason not in CAPS:
        return info
    if not curve or watch.best_step is None:
        info["under_trained"] = None
        info["under_trained_reason"] = f"stopped by {stop_reason} with no validation data: convergence unknown"
        return info
    since_best = sum(1 for step, _ in curve if step > watch.best_step)
    if since_best >= patience:
        return info  # a plateau of `patience` validations before the cap: converged enough
    where = ("the last validation" if since_best == 0
             else f"{since_best} validation(s) before the last, within patience {patience}")
    limit = {"max_steps": f"the step cap train.max_steps = {plan.total_steps}",
             "epochs": f"the epoch cap train.epochs = {plan.epochs}",
             "max_minutes": f"the time cap train.max_minutes = {plan.max_minutes or 0:g}",
             "budget": f"the default budget of {plan.budget_epochs} epochs"}[stop_reason]
    info["under_trained"] = True
    info["under_trained_reason"] = (
        f"under-trained: {limit} stopped training at step {curve[-1][0]} while validation {plan.monitor} was still "
        f"improving (best {watch.best:.4g} at step {watch.best_step}, {where}); {CAP_ADVICE[stop_reason]} to "
        "train to convergence")
    return info


class _NonFinite(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


def _last_good(ckpt_dir: Path | None, step: int) -> str:
    if ckpt_dir is None:
        return "no checkpoint was being written"
    latest = _latest_checkpoint(ckpt_dir)
    return f"the last good checkpoint (step {step}) is kept at {latest}" if latest else "no checkpoint was written yet"


STOP_CODES = ("completed", "early_stopping", "overfitting", "max_minutes", "stopped")


def _broadcast_stop(stop_reason: str, world_size: int, device: str) -> str:
    """Rank 0 decides about early stopping and the time cap; every rank must stop at the same step."""
    if world_size == 1:
        return stop_reason
    import torch
    import torch.distributed as dist

    code = torch.tensor([STOP_CODES.index(stop_reason) if stop_reason in STOP_CODES else len(STOP_CODES) - 1],
                        device=device)
    dist.broadcast(code, src=0)
    return STOP_CODES[int(code)]


def _broadcast_flag(value: bool, device: str) -> bool:
    """Rank 0's value of a flag, on every rank."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([int(value)], device=device)
    dist.broadcast(flag, src=0)
    return bool(int(flag))


def _validate(plan: RunPlan, config: TrainConfig, built: BuiltModel, loss_module: Any, val_examples: list[Example],
              val_frame: pd.DataFrame, *, device: str, precision: str) -> dict[str, Any]:
    inner = loss_module.module if hasattr(loss_module, "module") else loss_module
    batch = max(plan.batch_size, 16)
    if plan.task == "classify":
        proba = classifier_probabilities(built.model, val_examples, pad_id=built.pad_id, batch_size=batch,
                                         device=device, precision=precision, prefix=built.prefix)
        labels = np.array([e.label for e in val_examples])
        return {k: round(v, 6) for k, v in classification_metrics(labels, proba).items()}
    metrics: dict[str, Any] = {"loss": round(_mean_loss(inner, val_examples, pad_id=built.pad_id, batch_size=batch,
                                                         device=device, precision=precision), 6)}
    if config.generate_sample and len(val_frame):
        import sacrebleu

        sample = val_frame.head(config.generate_sample)
        replies, _ = generate_texts(built.model, built.tokenizer, sample, system_prompt=config.system_prompt,
                                    max_new_tokens=config.max_new_tokens, batch_size=len(sample),
                                    description="validation replies")
        metrics["chrf"] = round(float(sacrebleu.corpus_chrf(replies, [sample["target"].astype(str).tolist()]).score), 4)
    return metrics


# =============================================================================================
# Loading a trained model back (export, predictions from a finished run)


def load_trained(adapter_dir: str | Path, *, trust_remote_code: bool = False) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) from an ``adapter/`` folder that ``train`` wrote."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(adapter_dir)
    info_path = folder / "tunewise_train.json"
    if not info_path.exists():
        raise TrainError(f"{folder}: no tunewise_train.json; is this an adapter folder written by `tunewise train`?")
    info = read_json(info_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    base_path = Path(info["base_path"])
    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    with _quiet_transformers():
        if info["method"] == "encoder":
            from transformers import AutoModel

            encoder = AutoModel.from_pretrained(folder, dtype=torch.float32, use_safetensors=True, **common)
            from .train_modules import EncoderClassifier

            model = EncoderClassifier(encoder, len(info["labels"]))
            model.head.load_state_dict(load_file(folder / "head.safetensors"))
        else:
            from peft import PeftModel

            if info["task"] == "classify":
                from transformers import AutoModelForSequenceClassification

                labels = info["labels"]
                base = AutoModelForSequenceClassification.from_pretrained(
                    base_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                    label2id={label: i for i, label in enumerate(labels)}, pad_token_id=tokenizer.pad_token_id,
                    dtype=torch.float32, attn_implementation="sdpa", use_safetensors=True, **common)
            else:
                from transformers import AutoModelForCausalLM

                base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32, attn_implementation="sdpa",
                                                            use_safetensors=True, **common)
            model = PeftModel.from_pretrained(base, folder)
    model.eval()
    return model, tokenizer, info


# =============================================================================================
# Dry run: what a run would cost, before it runs


# Reference GPUs, their utilisation and FLOPs per token: tunewise.pricing (REFERENCE_GPUS,
# GPU_UTILISATION, FLOPS_PER_TOKEN, imported above and still importable from here).


def dry_run(task: str, train_frame: pd.DataFrame, validation_frame: pd.DataFrame | None, *, method: Method = "lora",
            config: TrainConfig | None = None, model_spec: str, offline: bool = True, trust_remote_code: bool = False,
            seed: int = 0, calibration_steps: int = 3, source: str = "training data") -> dict[str, Any]:
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
        task, method, train_frame, validation_frame, config, model_spec=model_spec, offline=offline,
        trust_remote_code=trust_remote_code, seed=seed, source=source)
    base_config = _base_config(base_path, method, trust_remote_code)
    runtime = resolve_runtime(config, plan, base_config)
    device = runtime.device
    if device == "cpu":
        _bound_heap_growth()
    total_tokens = int(plan.tokens_per_epoch * plan.total_steps / plan.steps_per_epoch)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    threads_before = torch.get_num_threads()
    torch.set_num_threads(runtime.threads)
    try:
        torch.manual_seed(seed)
        built = build_model(task, method, base_path, tokenizer, plan.labels, config, trust_remote_code=trust_remote_code,
                            checkpoint_every_n_layers=runtime.checkpoint_every_n_layers, precision=runtime.precision,
                            attention=training_attention(task, runtime.device, plan.max_length, config.attention))
        built.loss_module.to(device).train()
        optimizer = build_optimizer(built.model, method, plan.learning_rate, config.weight_decay)
        batches = length_grouped_batches([len(e.input_ids) for e in examples], plan.batch_size, seed=seed, epoch=0)
        timed_tokens, timed_seconds = 0, 0.0
        prefix_seconds_per_token = 0.0
        if built.prefix is not None:  # the run caches the frozen layers' output: time that pass, then cached steps
            calibration = [examples[j] for indices in batches[: calibration_steps + 1] for j in indices]
            t0 = time.perf_counter()
            built.prefix.encode(calibration, pad_id=built.pad_id, batch_size=max(plan.batch_size, 32), device=device,
                                precision=runtime.precision, description="dry run: frozen layers")
            prefix_seconds_per_token = (time.perf_counter() - t0) / max(1, sum(len(e.input_ids) for e in calibration))
        for i, indices in enumerate(batches[: calibration_steps + 1]):
            batch = {k: v.to(device) for k, v in collate([examples[j] for j in indices], built.pad_id).items()}
            set_checkpointing(built, runtime, batch["input_ids"].numel())
            t0 = time.perf_counter()
            with _autocast(device, runtime.precision):
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
        gpus.append({**gpu, "utilisation": GPU_UTILISATION, "seconds": _significant(seconds),
                     "usd": _significant(seconds / 3600 * gpu["usd_per_hour"]),
                     "seconds_to_convergence": _significant(with_validation)})
    here = None
    if tokens_per_second:  # forward only: FLOPS_PER_TOKEN[method] / 2 times the training step's speed
        here = (total_tokens + validation_tokens * 2 / FLOPS_PER_TOKEN[method]) / tokens_per_second
        # the frozen layers' pass over every training and validation token, once
        here += prefix_seconds_per_token * (plan.tokens_per_epoch + sum(len(e.input_ids) for e in val_examples))
    convergence_plan = {
        "steps": plan.total_steps, "epochs": plan.epochs, "step_cap": plan.step_cap, "budget_rule": plan.budget_rule,
        "eval_every": plan.eval_every, "validations": validations, "validation_rows": len(val_examples),
        "this_machine_seconds": round(here, 1) if here is not None else None,
        "reference_gpus": {g["gpu"]: g["seconds_to_convergence"] for g in gpus},
        "note": "time for every planned step plus the validations (an upper bound: early stopping on validation "
                "usually ends a run inside the budget); generate's chrF replies at each validation not counted",
    }
    if plan.max_minutes and here:
        steps_in_time = int(plan.total_steps * min(1.0, plan.max_minutes * 60 / here))
        convergence_plan["max_minutes"] = plan.max_minutes
        convergence_plan["steps_within_max_minutes"] = steps_in_time
        if steps_in_time < plan.total_steps:
            convergence_plan["warning"] = (f"train.max_minutes = {plan.max_minutes:g} stops the run near step "
                                           f"{steps_in_time} of {plan.total_steps} on this machine: under-trained "
                                           "unless early stopping comes first")
    return {
        "task": task, "method": method, "base_model": model_spec, "plan": asdict(plan),
        "tokens_total": total_tokens, "parameters": built.n_parameters, "trainable_parameters": built.n_trainable,
        "convergence": convergence_plan,
        "memory": {
            "estimate_mib": round(_memory_estimate_mib(built, plan, runtime, base_config), 1),
            "measured_peak_rss_mib": round(peak_rss, 1), "rss_before_model_mib": round(rss_before, 1),
            "note": "estimate: weights + gradients and AdamW state of the trainable weights + activations of the "
                    "largest batch (after gradient checkpointing); measured: this process's peak resident memory "
                    "so far (ru_maxrss), calibration included",
        },
        "this_machine": {
            "calibration_steps": max(0, min(calibration_steps, len(batches) - 1)), "tokens_per_second":
                round(tokens_per_second, 1) if tokens_per_second else None,
            "seconds": round(total_tokens / tokens_per_second, 1) if tokens_per_second else None,
            **asdict(runtime),
        },
        "flops": {"per_token_factor": FLOPS_PER_TOKEN[method], "total": flops,
                  "note": "6N per token for full fine-tuning; about 4N for LoRA (forward 2N + activation "
                          "gradients 2N, no weight gradients for frozen weights); N = base parameters"},
        "reference_gpus": gpus,
    }


def _significant(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


def _memory_estimate_mib(built: BuiltModel, plan: RunPlan, runtime: Runtime, base_config: Any) -> float:
    """Weights (fp32, plus a bf16 copy under autocast) + gradients and two AdamW moments of the
    trainable weights + activations of the largest batch (see activation_gib; with gradient
    checkpointing: each layer's input plus one layer's activations) + the LM head's logits on the
    reply positions (generate: about half the tokens, with their gradient)."""
    tokens = plan.batch_size * plan.longest
    layers = int(getattr(base_config, "num_hidden_layers", 1) or 1)
    hidden = int(getattr(base_config, "hidden_size", 0) or 0)
    vocab = int(getattr(base_config, "vocab_size", 0) or 0)
    weights = built.n_parameters * (4 + (2 if runtime.precision == "bf16" else 0))
    training_state = built.n_trainable * 4 * 3
    activations = activation_gib(base_config, tokens, runtime.precision) * 2**30
    if runtime.checkpoint_every_n_layers:
        kept = 1 - 1 / runtime.checkpoint_every_n_layers  # share of layers that keep their activations
        activations = activations * (kept + 1 / layers) + tokens * layers * hidden * 4 / runtime.checkpoint_every_n_layers
    logits = tokens / 2 * vocab * 4 * 2 if plan.task == "generate" else 0
    return (weights + training_state + activations + logits) / 2**20
