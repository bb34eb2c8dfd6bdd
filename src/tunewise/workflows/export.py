"""Export a trained candidate: the LoRA adapter, or a merged model that needs neither PEFT nor tunewise.

- ``merge=False``: the PEFT adapter folder (adapter_config.json, adapter_model.safetensors) with the
  tokenizer. ``adapter_config.json`` names the base model folder, so transformers (with peft
  installed) loads it directly: ``AutoModelForCausalLM.from_pretrained(folder)``. A classifier's
  new head is saved in the adapter (``modules_to_save``); its size and label names, which the base
  model's config lacks, are in ``classifier.json``:
  ``AutoModelForSequenceClassification.from_pretrained(folder, **json.load(open(folder / "classifier.json")))``.
- ``merge=True``: the adapters folded into the base weights (``merge_and_unload``), saved as a
  plain model folder (config.json, model.safetensors, tokenizer): any transformers install loads
  it with ``AutoModelForSequenceClassification`` / ``AutoModelForCausalLM``.

The fine-tuned encoder (``encoder_ft``) has no adapter: both forms are the encoder folder plus
``head.safetensors`` (mean pooling + linear head; ``tunewise.training.load_trained`` loads it).
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from pathlib import Path

from tunewise.core.artifacts import read_json, write_json, write_text
from tunewise.core.errors import TunewiseError
from tunewise.core.layout import RunLayout
from tunewise.core.runs import existing_run_lock
from tunewise.training import load_trained

__all__ = ["CLASSIFIER_KWARGS", "ExportError", "export", "trained_candidates"]

CLASSIFIER_KWARGS = "classifier.json"  # keyword arguments that size a classifier's head (adapter export)


class ExportError(TunewiseError, ValueError):
    """Nothing to export, or an ambiguous choice; the message says what to pass."""


def trained_candidates(run_dir: str | Path) -> list[str]:
    """Candidates of ``run_dir`` whose train stage wrote an adapter folder."""
    train_dir = Path(run_dir) / "train"
    if not train_dir.is_dir():
        return []
    return sorted(p.parent.parent.name for p in train_dir.glob("*/adapter/tunewise_train.json"))


def export(
    run_dir: str | Path,
    merge: bool = False,
    *,
    candidate: str | None = None,
    out_dir: str | Path | None = None,
    force: bool = False,
) -> Path:
    """Write the trained ``candidate`` of ``run_dir`` to ``out_dir`` (default ``run_dir/export/<candidate>-<form>``).

    ``candidate`` may be left out when the run trained exactly one. The folder is built under a
    temporary name and renamed into place, so a failed export leaves no half-written folder. An
    existing ``out_dir`` is replaced only when it is empty or an earlier export (it holds
    ``tunewise_export.json``), or with ``force``: never a user's folder, the current one or a file.
    Writing inside the run folder (the default), it holds the folder's lock: refused with the
    holder's pid while another process works there.
    """
    run_dir = Path(run_dir)
    inside = out_dir is None or Path(out_dir).resolve().is_relative_to(run_dir.resolve())
    with existing_run_lock(run_dir) if inside else nullcontext():
        return _export(run_dir, merge, candidate=candidate, out_dir=out_dir, force=force)


def _export(run_dir: Path, merge: bool, *, candidate: str | None, out_dir: str | Path | None, force: bool) -> Path:
    if out_dir is not None:
        _check_destination(Path(out_dir), force)
    available = trained_candidates(run_dir)
    if candidate is None:
        if len(available) != 1:
            listing = ", ".join(available) or "none (run `tunewise train` first)"
            raise ExportError(f"{run_dir}: say which candidate to export; trained candidates: {listing}")
        candidate = available[0]
    adapter_dir = RunLayout(run_dir).adapter(candidate)
    if candidate not in available:
        raise ExportError(f"{adapter_dir} not found; trained candidates in {run_dir}: {', '.join(available) or 'none'}")
    info = read_json(adapter_dir / "tunewise_train.json")
    form = "merged" if merge and info["method"] == "lora" else "adapter" if info["method"] == "lora" else "encoder"
    final = Path(out_dir) if out_dir is not None else run_dir / "export" / f"{candidate}-{form}"
    tmp = final.parent / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        if info["method"] != "lora":
            shutil.copytree(adapter_dir, tmp)
        elif merge:
            _export_merged(adapter_dir, tmp)
        else:
            _export_adapter(adapter_dir, info, tmp)
        write_json(
            tmp / "tunewise_export.json", {**info, "candidate": candidate, "form": form, "source": str(adapter_dir)}
        )
        write_text(tmp / "README.md", _readme(candidate, info, form))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _check_destination(final: Path, force: bool) -> None:
    resolved = final.resolve()
    if (
        resolved == Path.cwd().resolve()
        or resolved in Path.cwd().resolve().parents
        or resolved == Path(resolved.anchor)
    ):
        raise ExportError(
            f"--output {final}: the current folder or one above it; name a new folder, e.g. -o exported-model"
        )
    if final.exists() and not final.is_dir():
        raise ExportError(f"--output {final}: a file is there; name a folder")
    if final.is_dir() and any(final.iterdir()) and not (final / "tunewise_export.json").exists() and not force:
        raise ExportError(
            f"--output {final}: the folder holds files tunewise did not write; name a new folder, "
            "or pass --force to replace it"
        )


def _export_adapter(adapter_dir: Path, info: dict, out: Path) -> None:
    shutil.copytree(adapter_dir, out)
    config_path = out / "adapter_config.json"
    adapter_config = read_json(config_path)
    adapter_config["base_model_name_or_path"] = info["base_path"]  # a folder on this machine: found offline
    write_json(config_path, adapter_config)
    if info["task"] == "classify":
        # No config.json here: transformers would take the folder for a full model and look for its
        # weights. The classifier's settings go in classifier.json, passed as keyword arguments.
        labels = info["labels"]
        write_json(
            out / CLASSIFIER_KWARGS,
            {
                "num_labels": len(labels),
                "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)},
                "pad_token_id": _pad_id(adapter_dir),
            },
        )


def _export_merged(adapter_dir: Path, out: Path) -> None:

    model, tokenizer, info = load_trained(adapter_dir)
    merged = model.merge_and_unload()  # W + B·A·(alpha/r) in every adapted layer; the head copied over
    if info["task"] == "classify":
        merged.config.pad_token_id = tokenizer.pad_token_id
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _pad_id(adapter_dir: Path) -> int:
    from transformers import AutoTokenizer

    return int(AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True).pad_token_id)


def _readme(candidate: str, info: dict, form: str) -> str:
    auto = "AutoModelForSequenceClassification" if info["task"] == "classify" else "AutoModelForCausalLM"
    if form == "encoder":
        how = (
            "from tunewise.training import load_trained\n"
            "model, tokenizer, info = load_trained(folder)  # encoder + mean pooling + head.safetensors"
        )
    elif form == "adapter" and info["task"] == "classify":
        how = (
            f"import json\nfrom transformers import {auto}, AutoTokenizer\n"
            f'kwargs = json.load(open(f"{{folder}}/{CLASSIFIER_KWARGS}"))  # head size and label names\n'
            f"model = {auto}.from_pretrained(folder, **kwargs)\n"
            "tokenizer = AutoTokenizer.from_pretrained(folder)"
        )
    else:
        how = (
            f"from transformers import {auto}, AutoTokenizer\n"
            f"model = {auto}.from_pretrained(folder)\n"
            "tokenizer = AutoTokenizer.from_pretrained(folder)"
        )
    needs = " (needs peft installed; the base model folder named in adapter_config.json)" if form == "adapter" else ""
    return (
        f"# {candidate} ({form})\n\nFine-tuned by tunewise from `{info['base_model']}` for {info['task']}"
        f'{needs}.\n\n```python\nfolder = "<this folder>"\n{how}\n```\n'
    )
