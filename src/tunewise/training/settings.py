"""What a training run is set up with, beside ``TrainConfig`` (tunewise.config.sections): the per-method
defaults, the rules that size the default budget and the validation rhythm, and ``TrainError``,
raised for settings or data that cannot train. The bottom of the package: every other module of
tunewise.training may read it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from tunewise.core.errors import TunewiseError

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
# Validation rows early stopping reads by default (train.eval_max_rows). Classify: macro F1 over
# tens of classes on 256 rows (3 or 4 a class) is noise; it stopped lora_llm's BANKING77
# out-of-scope runs early (step 777: 1.7 in-scope points below its reference; with 1,024 rows the
# same seed trained to its budget and lost none; the other seed also trained to its budget and
# still lost 0.8, a cost of the out-of-scope class, not of early stopping; docs/benchmarks.md). A classifier's validation pass is one forward a row, cheap beside training;
# a generation's is a loss over every reply token, so generate keeps 256.
EVAL_MAX_ROWS = {"classify": 1024, "generate": 256}
ENCODER_HEAD_LR_FACTOR = 20  # the encoder's head starts from random weights: it learns 20x faster


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
