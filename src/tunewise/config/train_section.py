"""The ``train:`` section: how the fine-tuned candidates train (budget, optimiser, LoRA, validation
and early stopping, data, checkpoints, compute).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from tunewise.config.base import Section

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(Section):
    """The ``train:`` section of tunewise.yaml. ``None`` means: sized from the data (see plan_run)."""

    candidates: list[str] | None = Field(
        None,
        description="fine-tuned candidates to train; default for classify: lora_llm, encoder_ft; "
        "for generate: lora_llm_gen",
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="settings for one candidate over the ones in this section, e.g. "
        "{lora_llm: {max_steps: 100}, encoder_ft: {learning_rate: 1e-4}}",
    )
    # -- how long
    epochs: int | None = Field(
        None,
        ge=1,
        le=100,
        description="cap on passes over the training data; default: a "
        "budget sized from the data (at least 3 epochs, 3,000 examples and 100 per class "
        "seen; at most 20 epochs), inside which early stopping on validation decides",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="cap on optimiser steps; default: none (the data-sized budget and early stopping decide)",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="cap on training time of one candidate, in minutes "
        "(validation included, summed over resumed runs); default: none",
    )
    batch_size: int | None = Field(
        None, ge=1, le=4096, description="examples per forward pass; default 16 (classify) or 8 (generate)"
    )
    gradient_accumulation: int = Field(
        1, ge=1, le=1024, description="forward passes per optimiser step (effective batch = batch_size x this)"
    )
    max_length: int | None = Field(
        None,
        ge=8,
        description="longest example in tokens (longer ones are cut); "
        "default: the longest in the training data, rounded up to 8, capped",
    )
    max_length_cap: int = Field(512, ge=8, description="upper bound for the data-sized max_length")
    # -- optimiser and schedule
    learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="peak learning rate; default 1e-3 "
        "(lora classify), 2e-4 (lora generate), 5e-5 (encoder; its new head 20x)",
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of the steps spent warming up linearly")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay (not on biases and norms)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping (global L2 norm); null: off")
    out_of_scope_weight: Literal["balanced"] | Annotated[float, Field(gt=0, le=10)] = Field(
        "balanced",
        description="classify: loss weight of the out-of-scope class (evaluate.out_of_scope_label) when "
        "the training data has it; balanced: the class weighs like the average in-scope class "
        "(never more than 1). Held-out intents pooled into one class cost lora_llm 0.8 in-scope points at 1",
    )
    # -- LoRA
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="dropout on the LoRA input; default 0.05 "
        "(generate), 0 (classify: drawing the masks took 16% of a step there; early "
        "stopping on validation regularises)",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        description="module names that get LoRA adapters (attention and MLP projections)",
    )
    lora_layers: int | None = Field(
        None,
        ge=1,
        description="transformer layers, counted from the top, that get "
        "LoRA adapters; default: all (generate), the top third (classify: the lower "
        "layers stay frozen and their output is computed once, see cache_frozen_layers)",
    )
    cache_frozen_layers: bool = Field(
        True,
        description="classify with adapters on the top layers only: run the "
        "frozen lower layers once per example and reuse their output every epoch "
        "(the same model, a fraction of the compute)",
    )
    freeze_word_embeddings: bool = Field(
        True,
        description="encoder_ft: keep the token embedding matrix frozen (half of MiniLM's weights; "
        "measured 1.5x faster a CPU step; position embeddings, layers and head still train)",
    )
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto",
        description="attention kernel in training; auto: eager for classify rows up to 128 tokens on a CPU "
        "(SDPA's fused CPU backward was 20x slower on short rows), else sdpa",
    )
    cache_memory_gib: float = Field(
        2.0,
        gt=0,
        description="largest cache of frozen-layer outputs (4 bytes x "
        "tokens x hidden size); above it every step runs the whole model",
    )
    # -- validation, early stopping, overfitting
    eval_every: int | None = Field(
        None,
        ge=1,
        description="optimiser steps between validations; default: about 4 per epoch (at least 4, at most 40 per run)",
    )
    eval_max_rows: int | None = Field(
        None,
        ge=1,
        description="validation rows used during training (a stratified head of the validation split); "
        "default: 1,024 (classify), 256 (generate)",
    )
    monitor: Literal["auto", "loss", "accuracy", "macro_f1", "chrf"] = Field(
        "auto",
        description="validation metric that picks the best checkpoint; auto: macro_f1 (classify), loss (generate)",
    )
    early_stopping: bool = Field(True, description="stop when the monitored metric stops improving")
    patience: int = Field(3, ge=1, description="validations without improvement before early stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")
    overfit_window: int = Field(
        2,
        ge=1,
        description="stop (with a warning) when validation worsened this many "
        "times in a row while training loss fell each time",
    )
    generate_sample: int = Field(
        8,
        ge=0,
        description="generate: validation rows whose replies are generated at each validation for chrF (0: loss only)",
    )
    max_new_tokens: int = Field(128, ge=1, le=4096, description="generate: longest generated reply, in tokens")
    system_prompt: str | None = Field(
        None,
        description="generate: system message of every conversation; "
        "default: none (the chat template's own default applies)",
    )
    # -- data
    augment: int = Field(
        0,
        ge=0,
        le=10,
        description="perturbed copies of each training row (typos, casing, "
        "punctuation, filler words; tunewise.core.perturb); 0: off",
    )
    augment_kinds: list[str] | None = Field(None, description="perturbations to draw from; default: all")
    # -- checkpoints
    checkpoint_every: int | None = Field(
        None, ge=1, description="optimiser steps between checkpoints; default: at every validation"
    )
    resume: bool = Field(
        True, description="continue from the last checkpoint of an interrupted run with the same settings and data"
    )
    # -- compute
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16: matmuls under bf16 autocast (weights and optimiser stay fp32); auto: bf16 where "
        "the hardware has native bf16 (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), else fp32. "
        "Measured 2.5x faster than fp32 on an AVX512-BF16 CPU; emulated bf16 would be slower, so it is refused",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    gradient_checkpointing: bool | None = Field(
        None,
        description="recompute activations in backward (far less memory; all layers: 30-50% more compute); "
        "default (null): just enough layers to keep the largest batch's activations under activation_memory_gib",
    )
    activation_memory_gib: float = Field(
        0.75,
        gt=0,
        description="activation memory (estimated) that the automatic gradient checkpointing keeps a batch under",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads; default: os.cpu_count(), or 1 when "
        "a short probe runs faster on 1 (a machine busy with other processes: one thread "
        "measured up to 6x faster than two there)",
    )
    sample_size: int | None = Field(
        500,
        ge=1,
        description="generate candidates predict a stratified sample of "
        "this many test and validation rows (same ids as the baseline stage when "
        "baseline.sample_size is the same); null: all",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one module name (e.g. q_proj, v_proj)")
        return value

    @field_validator("augment_kinds")
    @classmethod
    def _known_kinds(cls, value: list[str] | None) -> list[str] | None:
        from tunewise.core.perturb import PERTURBATIONS  # on use: loads pyarrow

        unknown = [v for v in value or [] if v not in PERTURBATIONS]
        if unknown:
            raise ValueError(f"unknown perturbation(s) {unknown}; known: {', '.join(PERTURBATIONS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_length is not None and self.max_length > self.max_length_cap:
            raise ValueError(
                f"max_length {self.max_length} is above max_length_cap {self.max_length_cap}; raise max_length_cap too"
            )
        if self.monitor == "chrf" and self.generate_sample == 0:
            raise ValueError("monitor: chrf needs generate_sample > 0 (replies to score)")
        for name, settings in self.overrides.items():
            if "overrides" in settings or "candidates" in settings:
                raise ValueError(f"overrides.{name}: 'overrides' and 'candidates' cannot be set per candidate")
            self.for_candidate(name)  # an unknown key or bad value fails here, at load time
        return self

    def for_candidate(self, name: str) -> TrainConfig:
        """This section with ``overrides[name]`` applied: the settings ``name`` trains with."""
        settings = self.overrides.get(name)
        if not settings:
            return self
        try:
            return TrainConfig.model_validate({**self.model_dump(exclude={"overrides"}), **settings})
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"overrides.{name}: {problems}") from None
