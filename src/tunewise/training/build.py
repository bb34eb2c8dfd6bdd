"""The recipe's steps 3 and 4: the model (base weights, then LoRA adapters, or the encoder with a
head; only the new weights trainable), then the optimiser and the scheduler that drives it.

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise.config.sections import TrainConfig
from tunewise.training.plan import RunPlan
from tunewise.training.runtime import Runtime, quiet_transformers
from tunewise.training.settings import DEFAULTS, ENCODER_HEAD_LR_FACTOR, TrainError, adapted_layer_count

if TYPE_CHECKING:
    import torch

    from tunewise.training.modules import FrozenPrefix


# =============================================================================================
# 3. Models: base weights, then the adapters (or the encoder and its head)


# The nn.Module classes (ReplyTokenLoss, ClassificationLoss, EncoderClassifier: the forward pass and the
# loss in one module, what DistributedDataParallel wraps) and FrozenPrefix live in
# tunewise.training.modules, imported where a model is built: it imports torch at its top.


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
    prefix: FrozenPrefix | None = None  # classify with adapters on the top layers only: their frozen inputs
    adapted_layers: tuple[int, int] | None = None  # (first, total) transformer layers that carry adapters


def build_model(
    task: str,
    method: str,
    base_path: Path,
    tokenizer: Any,
    labels: list[str],
    config: TrainConfig,
    *,
    checkpoint_every_n_layers: int | None = None,
    trust_remote_code: bool = False,
    precision: str = "fp32",
    attention: str = "sdpa",
) -> BuiltModel:
    """Base weights, then the adapters (or head); only the new weights are trainable."""
    import torch

    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    from tunewise.training import modules as classes  # torch: imported on use (see its module docstring)

    prefix, adapted_layers = None, None
    with quiet_transformers():
        if method == "encoder":
            from transformers import AutoModel

            encoder = AutoModel.from_pretrained(
                base_path, dtype=torch.float32, attn_implementation=attention, use_safetensors=True, **common
            )
            if config.freeze_word_embeddings:
                # the vocabulary matrix is half of MiniLM's weights: its dense gradient and AdamW
                # update took a third of a CPU step, and rows of tokens the data never uses learn nothing
                encoder.get_input_embeddings().weight.requires_grad_(False)
            model = classes.EncoderClassifier(encoder, len(labels))
            loss_module = classes.ClassificationLoss(model)
        else:
            from peft import LoraConfig, get_peft_model

            dropout = (
                config.lora_dropout if config.lora_dropout is not None else DEFAULTS[(method, task)]["lora_dropout"]
            )
            lora = {
                "r": config.lora_r,
                "lora_alpha": config.lora_alpha,
                "lora_dropout": dropout,
                "target_modules": list(config.target_modules),
            }
            if task == "classify":
                from transformers import AutoModelForSequenceClassification

                base = AutoModelForSequenceClassification.from_pretrained(
                    base_path,
                    num_labels=len(labels),
                    id2label=dict(enumerate(labels)),
                    label2id={label: i for i, label in enumerate(labels)},
                    pad_token_id=tokenizer.pad_token_id,
                    dtype=torch.float32,
                    attn_implementation=attention,
                    use_safetensors=True,
                    **common,
                )
                # the pooled token is the last one that is not padding: the model must know the pad id
                base.config.pad_token_id = tokenizer.pad_token_id
                lora_config = LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **lora)
            else:
                from transformers import AutoModelForCausalLM

                base = AutoModelForCausalLM.from_pretrained(
                    base_path, dtype=torch.float32, attn_implementation="sdpa", use_safetensors=True, **common
                )
                lora_config = LoraConfig(task_type="CAUSAL_LM", **lora)
            _check_target_modules(base, lora_config.target_modules)
            n_layers = int(getattr(base.config, "num_hidden_layers", 0) or 0)
            adapted = adapted_layer_count(task, n_layers, config.lora_layers)
            if n_layers and adapted < n_layers:
                lora_config.layers_to_transform = list(range(n_layers - adapted, n_layers))
            if checkpoint_every_n_layers:
                base.config.use_cache = False  # a KV cache is useless in training and clashes with recomputation
                if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x: every n-th layer
                    base.activation_checkpointing_enable(
                        {"use_reentrant": False}, every_n_layers=checkpoint_every_n_layers
                    )
                else:
                    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                # no enable_input_require_grads(): non-reentrant checkpointing does not need inputs that
                # require grad, and with them backward ran through the frozen layers below the adapters
            model = get_peft_model(base, lora_config)
            loss_module = (classes.ClassificationLoss if task == "classify" else classes.ReplyTokenLoss)(model)
            if n_layers:
                adapted_layers = (n_layers - adapted, n_layers)
            if precision == "bf16" and task == "classify":  # generation runs outside autocast: fp32 weights there
                _frozen_linear_weights_to_bf16(model)
            if task == "classify" and config.cache_frozen_layers and not checkpoint_every_n_layers:
                prefix = classes.FrozenPrefix.of(model, n_layers - adapted)
                loss_module.prefix = prefix
    n_parameters = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    checkpointed = [
        m
        for m in model.modules()
        if getattr(m, "gradient_checkpointing", False) is True and hasattr(m, "_gradient_checkpointing_func")
    ]
    return BuiltModel(
        model,
        loss_module,
        tokenizer,
        int(tokenizer.pad_token_id),
        Path(base_path),
        n_parameters,
        n_trainable,
        checkpointed,
        prefix,
        adapted_layers,
    )


def build_for_plan(
    task: str,
    method: str,
    base_path: Path,
    tokenizer: Any,
    plan: RunPlan,
    config: TrainConfig,
    runtime: Runtime,
    *,
    trust_remote_code: bool = False,
) -> BuiltModel:
    """:func:`build_model` as the plan and the runtime decided it (labels, checkpointing, precision,
    attention kernel): the one call the recipe and the dry run share, so the dry run times the model
    that trains."""
    return build_model(
        task,
        method,
        base_path,
        tokenizer,
        plan.labels,
        config,
        trust_remote_code=trust_remote_code,
        checkpoint_every_n_layers=runtime.checkpoint_every_n_layers,
        precision=runtime.precision,
        attention=training_attention(task, runtime.device, plan.max_length, config.attention),
    )


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


def set_checkpointing(built: BuiltModel, runtime: Runtime, batch_tokens: int) -> None:
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
        raise TrainError(
            f"train.target_modules: {missing} not found in the model; its linear layers are: {', '.join(linear)}"
        )


# =============================================================================================
# 4. Optimiser and scheduler


def build_optimizer(model: Any, method: str, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable weights; no decay on biases and norms (1-D tensors)."""
    import torch

    groups: dict[tuple[float, float], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr = learning_rate * (ENCODER_HEAD_LR_FACTOR if method == "encoder" and name.startswith("head.") else 1)
        decay = weight_decay if param.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    return torch.optim.AdamW(
        [{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()], lr=learning_rate
    )


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
