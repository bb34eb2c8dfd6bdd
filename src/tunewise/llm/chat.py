"""Chat helpers shared by the prompting candidates, training and evaluation: one definition each.

- the record's ``context`` column (a JSON list of earlier chat messages) read into turns and
  system texts (:func:`context_messages`);
- the chat template rendered with the generation prompt (:func:`render`);
- the token ids that end an assistant turn (:func:`end_of_turn_ids`): training cuts a reply's
  labels after the first of them and generation stops at any of them, so a fine-tuned model stops
  where it learned to, whatever the model's template;
- greedy batched generation of replies (:func:`generate_replies`).

torch and transformers are imported inside :func:`generate_replies` only.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pandas as pd

from tunewise.core.progress import progress

__all__ = ["END_OF_TURN_TOKENS", "context_messages", "contexts", "end_of_turn_ids", "generate_replies", "render"]

# End-of-turn tokens of the common chat templates: ChatML (SmolLM2, Qwen), Llama 3, Gemma.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")


def context_messages(value: Any) -> tuple[list[dict[str, str]], list[str]]:
    """Earlier turns from a record's ``context`` (JSON list of chat messages): (turns, system texts)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return [], []
    messages = json.loads(value) if isinstance(value, str) else list(value)
    turns, system = [], []
    for message in messages:
        role, content = message.get("role"), str(message.get("content", ""))
        if role == "system":
            system.append(content)  # merged into the system prompt; chat templates allow only one
        elif role in ("user", "assistant"):
            turns.append({"role": role, "content": content})
    return turns, system


def contexts(frame: pd.DataFrame) -> list[tuple[list[dict[str, str]], list[str]]]:
    """:func:`context_messages` of every row of ``frame`` (no turns when it has no context column)."""
    if "context" not in frame.columns:
        return [([], [])] * len(frame)
    return [context_messages(v) for v in frame["context"].tolist()]


def render(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Each conversation through the tokenizer's chat template, ending with the generation prompt."""
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


def end_of_turn_ids(tokenizer: Any, model: Any = None) -> set[int]:
    """Token ids that end an assistant turn.

    The tokenizer's end-of-sequence token, the end-of-turn tokens of the common chat templates
    that its vocabulary holds (:data:`END_OF_TURN_TOKENS`; a template may end a turn with one that
    is not the tokenizer's eos), and, given ``model``, the end-of-sequence ids of its generation
    config.
    """
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in END_OF_TURN_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    if model is not None:
        configured = model.generation_config.eos_token_id
        ids.update(
            configured if isinstance(configured, (list, tuple)) else [configured] if configured is not None else []
        )
    return ids


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    description: str = "generating",
) -> tuple[list[str], np.ndarray]:
    """Greedy replies to chat conversations, batched with left padding, shortest prompts first.

    Returns the replies in input order and the amortised milliseconds per conversation.
    """
    import torch
    from transformers import GenerationConfig

    texts = render(tokenizer, conversations)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    order = np.argsort(lengths, kind="stable")
    # Greedy, explicitly: a model's own generation config may ask for sampling.
    greedy = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(end_of_turn_ids(tokenizer, model)) or None,
    )
    replies: list[str] = [""] * len(texts)
    latency_ms = np.zeros(len(texts), dtype=np.float64)
    device = next(model.parameters()).device
    with torch.inference_mode(), progress(description, len(texts)) as advance:
        for start in range(0, len(texts), batch_size):
            started = time.perf_counter()
            rows = order[start : start + batch_size]
            encoded = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                padding_side="left",
                add_special_tokens=False,
                return_tensors="pt",
            ).to(device)
            output = model.generate(**encoded, generation_config=greedy)
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for i, text in zip(rows, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                replies[i] = text.strip()
            latency_ms[rows] = (time.perf_counter() - started) * 1000 / len(rows)
            advance(len(rows))
    return replies, latency_ms
