"""The recipe's steps 1 and 2: record frames checked, tokenised into examples, and the run planned
from them (``prepare``); the examples batched by length for training (``length_grouped_batches``)
and for inference (``inference_batches``), and padded per batch (``collate``). A generate example
is the chat conversation (earlier turns from ``context``, then the message) with labels on the
reply; a classify example is the text the classifier reads. No torch at import: ``collate``
imports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunewise.config.sections import TrainConfig
from tunewise.core.perturb import augment_frame
from tunewise.core.records import answer_column
from tunewise.core.sampling import stratified_sample_ids
from tunewise.llm.chat import context_messages as _context_messages, end_of_turn_ids as _end_of_turn_ids
from tunewise.models.loading import resolve_encoder, resolve_llm
from tunewise.training.plan import RunPlan, plan_run
from tunewise.training.runtime import rank_and_world_size
from tunewise.training.settings import DEFAULTS, EVAL_MAX_ROWS, TrainError

if TYPE_CHECKING:
    import torch


IGNORE_INDEX = -100  # label of positions that carry no loss (prompt tokens, padding)


def prepare(
    task: str,
    method: str,
    train_frame: pd.DataFrame,
    validation_frame: pd.DataFrame | None,
    config: TrainConfig,
    *,
    model_spec: str,
    offline: bool = True,
    trust_remote_code: bool = False,
    seed: int = 0,
    source: str = "training data",
) -> tuple[RunPlan, Any, Path, list[Example], list[Example], pd.DataFrame, pd.DataFrame]:
    """Steps 1-2 of the recipe: checks, tokenizer, examples and the plan (no model weights loaded).

    Returns (plan, tokenizer, base folder, train examples, validation examples, train frame after
    augmentation, validation frame used during training).
    """
    if (method, task) not in DEFAULTS:
        raise TrainError(
            f"method {method!r} does not do task {task!r}; supported: {', '.join(f'{m}+{t}' for m, t in DEFAULTS)}"
        )
    batch_size = config.batch_size or DEFAULTS[(method, task)]["batch_size"]
    check_training_data(task, train_frame, validation_frame, batch_size=batch_size, source=source)
    if config.augment:
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
        raise TrainError(
            f"{source}: no training row has a reply token within max_length {max_length}; raise train.max_length"
        )
    val_frame = validation_frame if validation_frame is not None else train_frame.iloc[0:0]
    val_frame = _stratified_head(val_frame, config.eval_max_rows or EVAL_MAX_ROWS[task], task, seed)
    val_examples = [e for e in encode(val_frame, max_length) if e is not None] if len(val_frame) else []
    rank, world_size = rank_and_world_size()
    plan = plan_run(
        task,
        method,
        [len(e.input_ids) for e in kept],
        sum(e.n_targets for e in kept),
        len(val_examples),
        labels,
        config,
        max_length=max_length,
        dropped=dropped,
        truncated=truncated,
        world_size=world_size,
    )
    if len(kept) < plan.batch_size:
        raise TrainError(
            f"{source}: {len(kept)} usable training rows is fewer than one batch (train.batch_size = "
            f"{plan.batch_size}); lower train.batch_size or add data"
        )
    return plan, tokenizer, base_path, kept, val_examples, train_frame, val_frame


# =============================================================================================
# 1. Data checks: before anything heavy happens


def class_loss_weights(
    labels: Sequence[str], train_labels: pd.Series, out_of_scope_label: str | None, setting: float | str
) -> dict[str, Any] | None:
    """The classify loss's weight per class: 1, except the out-of-scope class (``train.out_of_scope_weight``).

    Out-of-scope rows pool many unrelated intents into one class; at full weight that class pulled
    lora_llm's in-scope answers 0.8 points below the same model trained without it (BANKING77, 19
    held-out intents, 190 rows against 118 a class). ``balanced`` gives the class the weight of an
    average in-scope class (its mean rows / the out-of-scope rows), never more than 1, as
    scikit-learn's ``class_weight="balanced"`` would for that one class. None when the training
    data has no out-of-scope rows.
    """
    if out_of_scope_label is None or out_of_scope_label not in labels:
        return None
    counts = train_labels.astype(str).value_counts()
    oos_rows = int(counts.get(out_of_scope_label, 0))
    in_scope_rows = counts.drop(out_of_scope_label, errors="ignore")
    if oos_rows == 0 or in_scope_rows.empty:
        return None
    mean_in_scope = float(in_scope_rows.mean())
    weight = min(1.0, mean_in_scope / oos_rows) if setting == "balanced" else float(setting)
    weights = [weight if label == out_of_scope_label else 1.0 for label in labels]
    return {
        "label": out_of_scope_label,
        "setting": setting,
        "weight": round(weight, 6),
        "rows": oos_rows,
        "mean_in_scope_rows": round(mean_in_scope, 2),
        "weights": weights,
    }


def check_training_data(
    task: str, train: pd.DataFrame, validation: pd.DataFrame | None, *, batch_size: int, source: str = "training data"
) -> None:
    """Raise TrainError for data that cannot train: missing columns, empty answers, one class, < a batch."""
    column = answer_column(task)
    for frame, where in ((train, source), (validation, "validation data")):
        if frame is None:
            continue
        missing = [c for c in ("id", "input", column) if c not in frame.columns]
        if missing:
            raise TrainError(
                f"{where}: missing column(s) {missing} (task {task}); columns: {', '.join(map(str, frame.columns))}"
            )
    answers = train[column]
    empty = answers.isna() | (answers.astype(str).str.strip() == "")
    if empty.any():
        first = train.loc[empty, "id"].iloc[0]
        raise TrainError(
            f"{source}: {int(empty.sum())} row(s) have an empty {column} (first id {first}); "
            "curate drops them, or fix the data"
        )
    if task == "classify":
        classes = answers.astype(str).unique()
        if len(classes) < 2:
            raise TrainError(
                f"{source}: every training row has the label {classes[0]!r} ({len(train)} rows); "
                "a classifier needs at least two classes. Add examples of the other classes, or "
                "check data.columns.label points at the label column"
            )
    if len(train) < batch_size:
        raise TrainError(
            f"{source}: {len(train)} training rows is fewer than one batch (train.batch_size = "
            f"{batch_size}); set train.batch_size to at most {max(1, len(train))}, or add training data"
        )


# =============================================================================================
# 2. Examples: tokenised once, batched by length


def load_tokenizer(
    method: str, model_spec: str, *, offline: bool = True, trust_remote_code: bool = False
) -> tuple[Any, Path]:
    """The tokenizer only (no weights): enough to check lengths and plan the run."""
    from transformers import AutoTokenizer

    resolved = (resolve_llm if method == "lora" else resolve_encoder)(model_spec, offline=offline)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise TrainError(f"{model_spec}: the tokenizer has neither a pad nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, resolved.path


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


def raw_contexts(frame: pd.DataFrame) -> list[Any]:
    return frame["context"].tolist() if "context" in frame.columns else [None] * len(frame)


def encode_classification(
    tokenizer: Any, frame: pd.DataFrame, labels: Sequence[str], max_length: int | None
) -> list[Example]:
    """Token ids of each row's text (special tokens in user text are kept as plain text)."""
    index = {label: i for i, label in enumerate(labels)}
    texts = [classification_text(t, c) for t, c in zip(frame["input"].fillna("").astype(str), raw_contexts(frame))]
    encoded = tokenizer(
        texts,
        add_special_tokens=True,
        truncation=max_length is not None,
        max_length=max_length,
        split_special_tokens=True,
    )["input_ids"]
    answers = frame["label"].astype(str).tolist() if "label" in frame.columns else [None] * len(frame)
    return [Example(list(ids), label=index.get(a, -1)) for ids, a in zip(encoded, answers)]


def encode_replies(
    tokenizer: Any, frame: pd.DataFrame, max_length: int | None, system_prompt: str | None
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
    for text, context, reply in zip(texts, raw_contexts(frame), replies):
        messages = conversation(text, context, system_prompt)
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": reply}], tokenize=False)
        if not full.startswith(prompt):
            raise TrainError(
                "the tokenizer's chat template rewrites earlier turns when a reply is added; "
                "tunewise cannot tell the prompt from the reply with this template"
            )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        cut = next((i + 1 for i, t in enumerate(reply_ids) if t in end_ids), len(reply_ids))
        reply_ids = reply_ids[:cut]  # the template's newline after the end-of-turn token is not learned
        ids = (prompt_ids + reply_ids)[:max_length] if max_length else prompt_ids + reply_ids
        labels = ([IGNORE_INDEX] * len(prompt_ids) + reply_ids)[: len(ids)]
        out.append(Example(ids, labels=labels) if len(ids) > len(prompt_ids) else None)
    return out


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    mega_batch_factor: int = 50,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
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


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
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
# Inference batches: length-sorted, cut where padding would grow


# A sorted run of examples is cut where padding would exceed this share of the real tokens: on CPU
# the padded positions cost as much as real ones, and a micro-batch of 32 random requests padded to
# its longest row wastes ~40% (measured: 31 ms/row at one chunk of 32 vs 22 ms/row in chunks of ~8).
MAX_PADDING_SHARE = 0.15
MIN_CHUNK_ROWS = 4  # below this, per-call overhead outweighs the padding saved


def inference_batches(examples: Sequence[Example], batch_size: int) -> Iterator[tuple[np.ndarray, list[Example]]]:
    """Length-sorted chunks for inference, at most ``batch_size`` rows, cut early where padding
    would exceed ``MAX_PADDING_SHARE``; yields (positions in ``examples``, chunk)."""
    lengths = np.asarray([len(e.input_ids) for e in examples])
    order = np.argsort(lengths, kind="stable")
    rows: list[int] = []
    real = 0
    for i in order:
        length = int(lengths[i])  # ascending, so this row sets the chunk's padded length
        padded = (len(rows) + 1) * length
        if rows and (
            len(rows) >= batch_size
            or (len(rows) >= MIN_CHUNK_ROWS and padded - real - length > MAX_PADDING_SHARE * (real + length))
        ):
            yield np.asarray(rows), [examples[j] for j in rows]
            rows, real = [], 0
        rows.append(int(i))
        real += length
    if rows:
        yield np.asarray(rows), [examples[j] for j in rows]


# =============================================================================================
# prepare's helpers


def _stratified_head(frame: pd.DataFrame, n: int, task: str, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame.reset_index(drop=True)
    ids = set(stratified_sample_ids(frame, n, seed, "label" if task == "classify" else None))
    return frame[frame["id"].astype(str).isin(ids)].reset_index(drop=True)


def _round_up(value: int, multiple: int = 8) -> int:
    return int(math.ceil(value / multiple) * multiple)
