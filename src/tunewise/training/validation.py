"""Validation during training: the metrics the recipe's loop watches (early stopping, best weights),
computed on the validation examples with the model in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.sections import TrainConfig
from tunewise.training.build import BuiltModel
from tunewise.training.data import Example, collate, inference_batches
from tunewise.training.inference import classifier_probabilities, generate_texts
from tunewise.training.plan import RunPlan
from tunewise.training.runtime import autocast


def validate(
    plan: RunPlan,
    config: TrainConfig,
    built: BuiltModel,
    loss_module: Any,
    val_examples: list[Example],
    val_frame: pd.DataFrame,
    *,
    device: str,
    precision: str,
) -> dict[str, Any]:
    """The validation metrics at one step: accuracy, macro-F1 and loss for classify; loss (and chrF on
    a sample of generated replies when ``generate_sample`` is set) for generate."""
    # unwrapped from DDP: only rank 0 validates, and a forward through DDP would wait for the other ranks
    inner = loss_module.module if hasattr(loss_module, "module") else loss_module
    batch = max(plan.batch_size, 16)
    if plan.task == "classify":
        proba = classifier_probabilities(
            built.model,
            val_examples,
            pad_id=built.pad_id,
            batch_size=batch,
            device=device,
            precision=precision,
            prefix=built.prefix,
        )
        labels = np.array([e.label for e in val_examples])
        return {k: round(v, 6) for k, v in classification_metrics(labels, proba).items()}
    metrics: dict[str, Any] = {
        "loss": round(
            _mean_loss(inner, val_examples, pad_id=built.pad_id, batch_size=batch, device=device, precision=precision),
            6,
        )
    }
    if config.generate_sample and len(val_frame):
        import sacrebleu

        sample = val_frame.head(config.generate_sample)
        replies, _ = generate_texts(
            built.model,
            built.tokenizer,
            sample,
            system_prompt=config.system_prompt,
            max_new_tokens=config.max_new_tokens,
            batch_size=len(sample),
            description="validation replies",
        )
        metrics["chrf"] = round(float(sacrebleu.corpus_chrf(replies, [sample["target"].astype(str).tolist()]).score), 4)
    return metrics


def _mean_loss(
    loss_module: Any, examples: Sequence[Example], *, pad_id: int, batch_size: int, device: str, precision: str
) -> float:
    import torch

    total, count = 0.0, 0
    was_training = loss_module.training
    loss_module.eval()
    with torch.inference_mode(), autocast(device, precision):
        for _, batch in inference_batches(examples, batch_size):
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
