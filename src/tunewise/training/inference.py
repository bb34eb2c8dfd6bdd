"""Predictions of a trained model, public: the validation inside the loop, the fine-tuned
candidates (tunewise.candidates.finetuned) and so serving use them. Class probabilities of a classifier in
length-sorted batches, greedy replies of a generator in the training conversation format, and a
trained model loaded back from the ``adapter/`` folder ``train`` wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tunewise.core.artifacts import read_json
from tunewise.core.progress import progress
from tunewise.llm.chat import generate_replies
from tunewise.training.data import Example, collate, conversation, inference_batches, raw_contexts
from tunewise.training.runtime import autocast, quiet_transformers
from tunewise.training.settings import TrainError

if TYPE_CHECKING:
    from tunewise.training.modules import FrozenPrefix


def classifier_probabilities(
    classifier: Any,
    examples: Sequence[Example],
    *,
    pad_id: int,
    batch_size: int = 32,
    device: str = "cpu",
    precision: str = "fp32",
    prefix: FrozenPrefix | None = None,
    description: str | None = None,
) -> np.ndarray:
    """Softmax probabilities (rows in ``examples`` order) of a classifier that maps ids to logits;
    examples that carry a cached ``prefix`` run through ``prefix.logits`` (the adapted layers only)."""
    import torch

    n_out = None
    out: np.ndarray | None = None
    was_training = classifier.training
    classifier.eval()
    shown = progress(description, len(examples), unit="rows") if description else contextlib.nullcontext(None)
    with torch.inference_mode(), autocast(device, precision), shown as advance:
        for rows, batch in inference_batches(examples, batch_size):
            tensors = collate(batch, pad_id)
            if advance is not None:
                advance(len(rows))
            if prefix is not None and "inputs_embeds" in tensors:
                output = prefix.logits(tensors["inputs_embeds"].to(device), tensors["attention_mask"].to(device))
            else:
                output = classifier(
                    input_ids=tensors["input_ids"].to(device), attention_mask=tensors["attention_mask"].to(device)
                )
            logits = (output.logits if hasattr(output, "logits") else output).float()
            proba = torch.softmax(logits, dim=-1).double().cpu().numpy()
            if out is None:
                n_out = proba.shape[1]
                out = np.zeros((len(examples), n_out))
            out[rows] = proba
    classifier.train(was_training)
    return out if out is not None else np.zeros((0, 0))


def generate_texts(
    peft_model: Any,
    tokenizer: Any,
    frame: pd.DataFrame,
    *,
    system_prompt: str | None,
    max_new_tokens: int,
    batch_size: int = 8,
    description: str = "generating",
) -> tuple[list[str], np.ndarray]:
    """Greedy replies of the fine-tuned model to ``frame``'s messages (the training conversation format)."""
    conversations = [
        conversation(t, c, system_prompt) for t, c in zip(frame["input"].fillna("").astype(str), raw_contexts(frame))
    ]
    was_training = peft_model.training
    peft_model.eval()
    try:
        return generate_replies(
            peft_model,
            tokenizer,
            conversations,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            description=description,
        )
    finally:
        peft_model.train(was_training)


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
    with quiet_transformers():
        if info["method"] == "encoder":
            from transformers import AutoModel

            encoder = AutoModel.from_pretrained(folder, dtype=torch.float32, use_safetensors=True, **common)
            from tunewise.training.modules import EncoderClassifier  # torch at its top: imported on use

            model = EncoderClassifier(encoder, len(info["labels"]))
            model.head.load_state_dict(load_file(folder / "head.safetensors"))
        else:
            from peft import PeftModel

            if info["task"] == "classify":
                from transformers import AutoModelForSequenceClassification

                labels = info["labels"]
                base = AutoModelForSequenceClassification.from_pretrained(
                    base_path,
                    num_labels=len(labels),
                    id2label=dict(enumerate(labels)),
                    label2id={label: i for i, label in enumerate(labels)},
                    pad_token_id=tokenizer.pad_token_id,
                    dtype=torch.float32,
                    attn_implementation="sdpa",
                    use_safetensors=True,
                    **common,
                )
            else:
                from transformers import AutoModelForCausalLM

                base = AutoModelForCausalLM.from_pretrained(
                    base_path, dtype=torch.float32, attn_implementation="sdpa", use_safetensors=True, **common
                )
            model = PeftModel.from_pretrained(base, folder)
    model.eval()
    return model, tokenizer, info
