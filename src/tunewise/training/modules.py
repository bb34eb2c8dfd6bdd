"""The torch modules of the fine-tuning recipe: the forward pass and the loss in one module (what
DistributedDataParallel wraps), the encoder classifier, and ``FrozenPrefix`` (the frozen lower
layers of a classifier run once per example).

A module of its own because it imports torch at the top: the rest of tunewise.training must not,
since importing torch takes seconds; ``build.build_model`` and ``inference.load_trained`` import
this on use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tunewise.core.progress import progress
from tunewise.training.data import IGNORE_INDEX, Example, collate, inference_batches
from tunewise.training.runtime import autocast

LOSS_CHUNK_TOKENS = 512  # reply positions whose logits are computed at once (see ReplyTokenLoss)


class ReplyTokenLoss(nn.Module):
    """Summed cross-entropy over the reply tokens; the LM head runs on those positions only."""

    def __init__(self, causal_lm: Any) -> None:
        super().__init__()
        self.causal_lm = causal_lm  # a PeftModel (or a plain causal LM)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.causal_lm.get_base_model() if hasattr(self.causal_lm, "get_base_model") else self.causal_lm
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        head = model.get_output_embeddings()
        reply_hidden, reply_targets = hidden[:, :-1][keep], targets[keep]

        def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(head(h).float(), t, reduction="sum")

        # The logits (49k floats a reply token, and their gradient) were the largest tensors
        # of a step: at batch 8 x 256 about 1.2 GB. Chunked and recomputed in backward
        # (torchtune's CEWithChunkedOutputLoss habit), one chunk's logits live at a time.
        total = reply_hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, len(reply_targets), LOSS_CHUNK_TOKENS):
            h, t = reply_hidden[start : start + LOSS_CHUNK_TOKENS], reply_targets[start : start + LOSS_CHUNK_TOKENS]
            if torch.is_grad_enabled() and len(reply_targets) > LOSS_CHUNK_TOKENS:
                total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
            else:
                total = total + chunk_loss(h, t)
        return total, keep.sum()


class ClassificationLoss(nn.Module):
    """Summed cross-entropy of a classifier's logits (rows labelled -1 carry no loss), each row weighted
    by its class's weight when ``class_weight`` is set (the out-of-scope class, see data.class_loss_weights)."""

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.classifier = classifier
        self.prefix: Any = None  # a FrozenPrefix (below), set by build_model when the lower layers are frozen
        self.register_buffer("class_weight", None)  # a buffer: it follows the module to its device

    def set_class_weight(self, weights: Sequence[float] | None) -> None:
        self.class_weight = None if weights is None else torch.tensor(weights, dtype=torch.float32)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs_embeds is not None:  # cached frozen layers: only the adapted ones run
            logits = self.prefix.logits(inputs_embeds, attention_mask).float()
        else:
            output = self.classifier(input_ids=input_ids, attention_mask=attention_mask)
            logits = (output.logits if hasattr(output, "logits") else output).float()
        keep = labels >= 0
        if self.class_weight is None:
            return F.cross_entropy(logits[keep], labels[keep], reduction="sum"), keep.sum()
        # a weighted sum over rows, still divided by the row count (not by the weights' sum, as
        # cross_entropy(weight=...) with mean would): a weight below 1 lowers the class's pull
        row_loss = F.cross_entropy(logits[keep], labels[keep], reduction="none")
        return (row_loss * self.class_weight[labels[keep]]).sum(), keep.sum()


class EncoderClassifier(nn.Module):
    """Sentence encoder, mean pooling over real tokens, dropout, linear head."""

    def __init__(self, encoder: Any, n_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.head(self.dropout(pooled))


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

        # the two slices, built once: every step swaps one in (a plain list, not a submodule of ours)
        self._slices = {
            "frozen": torch.nn.ModuleList(list(self.layers)[:first_adapted]),
            "adapted": torch.nn.ModuleList(list(self.layers)[first_adapted:]),
        }

    @classmethod
    def of(cls, peft_model: Any, first_adapted: int) -> FrozenPrefix | None:
        """The prefix of a PEFT sequence classifier, or None where the model is not shaped for it."""
        classifier = getattr(getattr(peft_model, "base_model", None), "model", None)
        decoder = getattr(classifier, getattr(classifier, "base_model_prefix", ""), None)
        layers = getattr(decoder, "layers", None)
        if (
            not isinstance(layers, torch.nn.ModuleList)
            or not hasattr(classifier, "score")
            or not 0 < first_adapted < len(layers)
        ):
            return None
        return cls(classifier, first_adapted)

    @contextlib.contextmanager
    def _only(self, part: str) -> Iterator[None]:
        self.decoder.layers = self._slices[part]
        try:
            yield
        finally:
            self.decoder.layers = self.layers

    def encode(
        self,
        examples: Sequence[Example],
        *,
        pad_id: int,
        batch_size: int,
        device: str,
        precision: str,
        description: str,
    ) -> None:
        """Set ``prefix`` on every example: the last frozen layer's output on its real tokens."""
        captured: dict[str, Any] = {}

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            captured["hidden"] = output[0] if isinstance(output, tuple) else output

        hook = self.layers[self.first_adapted - 1].register_forward_hook(keep)
        was_training = self.classifier.training
        self.classifier.eval()  # no dropout: the cached output is the layers' deterministic one
        try:
            # no_grad, not inference_mode: the cached tensors feed training steps later
            with (
                torch.no_grad(),
                autocast(device, precision),
                self._only("frozen"),
                progress(description, len(examples), unit="rows") as advance,
            ):
                for rows, batch in inference_batches(examples, batch_size):
                    tensors = collate(batch, pad_id)
                    self.decoder(
                        input_ids=tensors["input_ids"].to(device),
                        attention_mask=tensors["attention_mask"].to(device),
                        use_cache=False,
                    )
                    hidden = captured["hidden"].float().cpu()
                    for row, example in zip(range(len(batch)), batch, strict=True):
                        example.prefix = hidden[row, : len(example.input_ids)].clone()
                    advance(len(rows))
        finally:
            hook.remove()
            self.classifier.train(was_training)

    def logits(self, inputs_embeds: Any, attention_mask: Any) -> Any:
        """The classifier's logits from the cached prefix (a batch padded by ``collate``)."""
        with self._only("adapted"):
            hidden = self.decoder(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
        last = attention_mask.sum(dim=1) - 1  # right padding: the last real token
        return self.classifier.score(hidden[torch.arange(len(hidden), device=hidden.device), last])

    def bytes_for(self, examples: Sequence[Example]) -> int:
        hidden = int(self.classifier.config.hidden_size)
        return sum(len(e.input_ids) for e in examples) * hidden * 4
