"""The torch modules of the fine-tuning recipe: the forward pass and the loss in one module (what
DistributedDataParallel wraps), and the encoder classifier.

A module of its own because it imports torch at the top: ``tunewise.train`` (read by the config and
the CLI) must not, since importing torch takes seconds; ``train.build_model`` imports this on use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100  # label id that carries no loss (prompt tokens, padding); train.IGNORE_INDEX is this
LOSS_CHUNK_TOKENS = 512  # reply positions whose logits are computed at once (see ReplyTokenLoss)


class ReplyTokenLoss(nn.Module):
    """Summed cross-entropy over the reply tokens; the LM head runs on those positions only."""

    def __init__(self, causal_lm: Any) -> None:
        super().__init__()
        self.causal_lm = causal_lm  # a PeftModel (or a plain causal LM)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
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
            h, t = reply_hidden[start:start + LOSS_CHUNK_TOKENS], reply_targets[start:start + LOSS_CHUNK_TOKENS]
            if torch.is_grad_enabled() and len(reply_targets) > LOSS_CHUNK_TOKENS:
                total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
            else:
                total = total + chunk_loss(h, t)
        return total, keep.sum()

class ClassificationLoss(nn.Module):
    """Summed cross-entropy of a classifier's logits (rows labelled -1 carry no loss)."""

    def __init__(self, classifier: Any) -> None:
        super().__init__()
        self.classifier = classifier
        self.prefix: Any = None  # a train.FrozenPrefix, set by build_model when the lower layers are frozen

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if inputs_embeds is not None:  # cached frozen layers: only the adapted ones run
            logits = self.prefix.logits(inputs_embeds, attention_mask).float()
        else:
            output = self.classifier(input_ids=input_ids, attention_mask=attention_mask)
            logits = (output.logits if hasattr(output, "logits") else output).float()
        keep = labels >= 0
        return F.cross_entropy(logits[keep], labels[keep], reduction="sum"), keep.sum()

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
