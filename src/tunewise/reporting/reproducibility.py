"""The report's reproducibility section (config, package versions, input data digests, stage keys)
and the stage timings summary.json records, both read from the run folder's artifacts."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from tunewise import __version__
from tunewise.core.artifacts import file_digest
from tunewise.reporting.format import finite_or_none, read_artifact

# Stages whose _stage.json timing goes into summary.json, in pipeline order.
PIPELINE_STAGES = ("ingest", "curate", "split", "baseline", "train", "evaluate", "decide")
# Packages whose versions decide whether a run can be reproduced.
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "sentence-transformers",
    "scikit-learn",
    "numpy",
    "pandas",
    "scipy",
    "sacrebleu",
)


def _data_files(run_dir: Path, config: dict, base_dir: Path | None) -> list[dict]:
    """The input data files with their sha256 now; ingest/summary.json may name them, else the config."""
    ingest = read_artifact(run_dir / "ingest" / "summary.json") or {}
    named = ingest.get("files") or ingest.get("input_files")
    data = config.get("data") or {}
    if isinstance(named, dict):
        entries = list(named.items())
    elif isinstance(named, list):
        entries = [(str(i), p) for i, p in enumerate(named)]
    else:
        entries = [(role, data.get(role)) for role in ("train", "test") if data.get(role)]
    if base_dir is None:  # run_dir is <project>/<runs_dir>/<run-id>
        runs_dir = Path(str(config.get("runs_dir") or "runs"))
        up = len(runs_dir.parts)
        base_dir = run_dir.parent if runs_dir.is_absolute() or up >= len(run_dir.parents) else run_dir.parents[up]
    out = []
    for role, name in entries:
        path = name.get("path") if isinstance(name, dict) else name
        if not path:
            continue
        resolved = Path(path) if Path(path).is_absolute() else base_dir / path
        recorded = name.get("sha256") if isinstance(name, dict) else None
        if resolved.is_file():
            digest = file_digest(resolved)
            out.append(
                {
                    "role": role,
                    "path": str(resolved),
                    "sha256": digest,
                    "bytes": resolved.stat().st_size,
                    "note": "" if recorded in (None, digest) else f"differs from ingest's {recorded}",
                }
            )
        else:
            out.append(
                {
                    "role": role,
                    "path": str(resolved),
                    "sha256": recorded,
                    "bytes": None,
                    "note": "not found when the report was built",
                }
            )
    kb = data.get("knowledge_base")
    if kb:
        folder = Path(kb) if Path(kb).is_absolute() else base_dir / kb
        files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
        if files:  # one digest over names and contents: changes when any file does
            h = hashlib.sha256()
            for p in files:
                h.update(str(p.relative_to(folder)).encode() + b"\0" + file_digest(p).encode())
            out.append(
                {
                    "role": "knowledge_base",
                    "path": str(folder),
                    "sha256": h.hexdigest(),
                    "bytes": sum(p.stat().st_size for p in files),
                    "note": f"{len(files)} files, digest of digests",
                }
            )
    return out


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def reproducibility_section(run_dir: Path, config: dict, base_dir: Path | None) -> dict:
    stages = []
    for name in PIPELINE_STAGES + ("report",):
        marker = read_artifact(run_dir / name / "_stage.json")
        if marker:
            stages.append(
                {
                    "name": name,
                    "key": marker.get("key"),
                    "finished": marker.get("finished"),
                    "seconds": marker.get("seconds"),
                }
            )
    versions = {"tunewise": __version__, "python": platform.python_version()}
    versions.update({p: _version(p) for p in VERSIONED_PACKAGES})
    models = config.get("models") or {}
    return {
        "config_json": json.dumps(config, indent=2, ensure_ascii=False),
        "versions": versions,
        "seed": config.get("seed"),
        "split_seed": (config.get("split") or {}).get("seed"),
        "models": {k: models.get(k) for k in ("llm", "encoder")},
        "files": _data_files(run_dir, config, base_dir),
        "stages": stages,
        "platform": f"{platform.system()} {platform.machine()}",
    }


def timings(run_dir: Path) -> dict[str, float]:
    out = {}
    for name in PIPELINE_STAGES:
        marker = read_artifact(run_dir / name / "_stage.json")
        if marker and finite_or_none(marker.get("seconds")) is not None:
            out[name] = float(marker["seconds"])
    return out
