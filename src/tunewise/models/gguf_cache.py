"""The embedded LLM ships as a GGUF file: transformers de-quantises a GGUF at every load (slow) and
leaves a quantisation tag that training refuses, so the first use converts it once to a plain
safetensors folder under ``$TUNEWISE_HOME/models/``, under a file lock, and later loads read it.
"""

from __future__ import annotations

import fcntl  # POSIX file lock: several processes (tests, developers) share one model cache
import inspect
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunewise.core.artifacts import file_digest, read_json, write_json
from tunewise.core.progress import console
from tunewise.models.embedded import CACHE_FORMAT, MARKER_NAME, EmbeddedModel, llm_cache_dir, package_version

# --------------------------------------------------------------------------------------------
# The GGUF -> safetensors cache


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_is_current(cache: Path, gguf: Path) -> bool:
    """True when the cache was built by this CACHE_FORMAT from the same GGUF bytes.

    Size and mtime decide quickly; when only the mtime moved (a reinstall of the same package)
    the sha256 decides, and the marker is refreshed so the next check is quick again.
    """
    marker_path = cache / MARKER_NAME
    if not (marker_path.exists() and (cache / "config.json").exists()):
        return False
    if not any(cache.glob("*.safetensors")):
        return False
    try:
        marker = read_json(marker_path)
    except ValueError:
        return False
    now = _source_fingerprint(gguf)
    if marker.get("format") != CACHE_FORMAT or marker.get("size") != now["size"]:
        return False
    if marker.get("mtime_ns") == now["mtime_ns"] and marker.get("source") == now["source"]:
        return True
    if marker.get("sha256") != file_digest(gguf):
        return False
    write_json(marker_path, {**marker, **now})
    return True


@contextmanager
def _exclusive_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_llm_cache(entry: EmbeddedModel, gguf: Path) -> Path:
    cache = llm_cache_dir(entry.name)
    if cache_is_current(cache, gguf):
        return cache
    # Another process may be converting the same model; wait for it, then look again.
    with _exclusive_lock(cache.parent / f".{entry.name}.lock"):
        if cache_is_current(cache, gguf):
            return cache
        _build_llm_cache(entry, gguf, cache)
    return cache


def _build_llm_cache(entry: EmbeddedModel, gguf: Path, cache: Path) -> None:
    """Convert the GGUF into ``cache`` atomically: build in a temp folder, then rename it in place."""
    models_dir = cache.parent
    models_dir.mkdir(parents=True, exist_ok=True)
    # We hold the lock, so any temp folder left here is from a killed build.
    for stale in models_dir.glob(f".{cache.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=models_dir))
    try:
        with console.status(
            f"[bold]Converting {entry.spec} from GGUF to a safetensors cache (once, about 20-30 s on CPU) -> {cache}"
        ):
            _convert_gguf(gguf, tmp)
            write_json(
                tmp / MARKER_NAME,
                {
                    "format": CACHE_FORMAT,
                    **_source_fingerprint(gguf),
                    "sha256": file_digest(gguf),
                    "package": entry.package,
                    "package_version": package_version(entry.package),
                    "transformers_version": package_version("transformers"),
                    "dtype": "float32",
                    "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
        tmp.chmod(0o755)  # mkdtemp makes it owner-only
        old = None
        if cache.exists():
            old = models_dir / f".{cache.name}.{os.getpid()}.old.tmp"
            os.replace(cache, old)
        os.replace(tmp, cache)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if os.environ.get("TUNEWISE_PROGRESS") != "off":
        size_mb = sum(f.stat().st_size for f in cache.iterdir()) / 1e6
        console.print(
            f"converted {entry.spec} in {time.perf_counter() - started:.1f} s -> {cache} ({size_mb:,.0f} MB)",
            soft_wrap=True,
        )


def _strip_quantization(model: Any) -> None:
    """Drop every trace of the GGUF quantiser, so Trainer and save_pretrained see a plain model."""
    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            try:
                delattr(model, attribute)
            except AttributeError:  # a class-level default, not set on the instance
                pass
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise the GGUF into float32 weights and save model + tokenizer to ``out_dir``.

    float32 (about 540 MB for 135M parameters) rather than bf16: CPU training and the LoRA
    baseline are more accurate in float32, and callers can still load it in bf16.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    try:  # transformers >= 5 can keep GGUF blocks packed; we want plain dense weights.
        from transformers import GgufConfig

        load_kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always de-quantise GGUF
        pass

    bars_were_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # the Rich status line reports instead
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **load_kwargs)
    finally:
        if bars_were_on:
            transformers.utils.logging.enable_progress_bar()

    _strip_quantization(model)
    not_dense = sorted({str(p.dtype) for p in model.parameters() if p.dtype != torch.float32})
    if not_dense:
        raise RuntimeError(f"GGUF conversion of {gguf} left non-float32 parameters ({not_dense}); not caching it")
    if not tokenizer.chat_template:
        raise RuntimeError(f"the tokenizer in {gguf} carries no chat template; not caching it")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # GGUF tokenizers come back with an "unlimited" model_max_length; truncation needs the real one.
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and (tokenizer.model_max_length or 0) > max_positions:
        tokenizer.model_max_length = max_positions
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    save_kwargs: dict[str, Any] = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    model.save_pretrained(out_dir, **save_kwargs)
    tokenizer.save_pretrained(out_dir)

    saved_config = read_json(out_dir / "config.json")
    if "quantization_config" in saved_config:
        raise RuntimeError(f"{out_dir / 'config.json'} still carries quantization_config; not caching it")
