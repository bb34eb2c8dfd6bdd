"""``tunewise init``: inspect a data file and write a commented ``tunewise.yaml``.

The comments come from the config fields' help text, so the file documents itself and never
drifts from what the validator accepts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tunewise.config.sections import ProjectConfig
from tunewise.core.artifacts import write_text
from tunewise.data.ingest import sniff
from tunewise.pipeline.precheck import load_config


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def _render_model(model: type[BaseModel], values: dict[str, Any], indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for name, field in model.model_fields.items():
        value = values.get(name)
        help_text = field.description or ""
        sub = _submodel(field.annotation)
        if sub is not None and isinstance(value, dict):
            lines.append(f"{pad}{name}:" + (f"  # {help_text}" if help_text else ""))
            _render_model(sub, value, indent + 1, lines)
            continue
        comment = f"  # {help_text}" if help_text else ""
        lines.append(f"{pad}{name}: {_yaml_scalar(value)}{comment}")


def _submodel(annotation: Any) -> type[BaseModel] | None:
    for cand in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def render_config(cfg: ProjectConfig, header: str = "") -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    _render_model(ProjectConfig, cfg.model_dump(mode="json"), 0, lines)
    return "\n".join(lines) + "\n"


def init_project(
    data_file: str | Path,
    *,
    test_file: str | Path | None = None,
    task: str | None = None,
    out: str | Path = "tunewise.yaml",
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Write a config for ``data_file``; returns its path and what was inferred."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    info = sniff(data_file)
    # the test file is looked at on its own: its format and encoding need not be train's
    test_info = sniff(test_file, task=task or info["suggested_task"]) if test_file else None
    task = task or info["suggested_task"]
    roles = info.get("columns_used", {})

    def rel(p: str | Path) -> str:
        # relative when the data sits beside the config (the project moves as one folder)
        r = os.path.relpath(Path(p).resolve(), out.resolve().parent)
        return str(Path(p).resolve()) if r.startswith("..") else r

    raw = {
        "task": task,
        "data": {
            "train": rel(data_file),
            "test": rel(test_file) if test_file else None,
            "format": info["file_format"],
            "test_format": test_info["file_format"] if test_info else "auto",
            "encoding": info["encoding"],
            "test_encoding": (
                test_info["encoding"] if test_info and test_info["encoding"] != info["encoding"] else None
            ),
            "record_format": info["record_format"],
            "columns": {
                k: v for k, v in roles.items() if k in ("id", "input", "label", "target", "instruction", "messages")
            },
            "slice_columns": info.get("slice_candidates", []),
        },
    }
    cfg = ProjectConfig.model_validate(raw)
    notes = []
    test_key = "test_encoding" if raw["data"]["test_encoding"] else "encoding"
    for name, found, key in ((data_file, info, "encoding"), (test_file, test_info, test_key)):
        if found is not None and found["encoding"] != "utf-8":
            notes.append(f"{name} is not UTF-8: it is read as {found['encoding']} (data.{key})")
    header = (
        f"tunewise project config, written by `tunewise init` for {data_file}.\n"
        f"Inferred: {info['file_format']} file, {info['record_format']} records, task {task}"
        + (f"; test file {test_info['file_format']}" if test_info else "")
        + ".\n"
        + "".join(f"{note}.\n" for note in notes)
        + (
            "The test file is the held-out test set as it is; validation is split from train.\n"
            if test_file
            else "No test file: split.test_fraction of the curated data is held out for test.\n"
        )
        + "Every key is documented on its line; delete a line to take the default."
    )
    write_text(out, render_config(cfg, header))
    load_config(out)  # the file we wrote must load: fail here rather than at the user's first run
    return out, {**info, "task": task, "test": test_info, "notes": notes}
