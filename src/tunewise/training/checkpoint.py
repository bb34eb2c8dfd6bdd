"""Trained weights on disk: resumable checkpoints (written atomically with a checksummed manifest,
verified on load, a damaged one skipped for the one before it) and, at the end, the adapter folder.

Checkpoints hold the trainable weights (safetensors), optimiser and scheduler state, the torch RNG
state, the step and the position in the epoch; the data order is a function of (seed, epoch), so a
resumed run sees the same batches in the same order as one that was never stopped. A fingerprint of the
settings and the data refuses a checkpoint of another run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise.core.artifacts import file_digest, make_private_dirs, read_json, write_json, write_text
from tunewise.core.progress import console
from tunewise.training.settings import TrainError

if TYPE_CHECKING:
    import torch


# =============================================================================================
# Checkpoints: resume after a stop, a kill or a crash


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The weights that training changes (LoRA matrices and saved modules, or everything for the encoder)."""
    return {name: p.detach().cpu().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    import torch

    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in state]
    unknown = [name for name in state if name not in params]
    if missing or unknown:
        raise TrainError(
            f"checkpoint does not match the model: {len(missing)} trainable weight(s) missing "
            f"(e.g. {missing[:1]}), {len(unknown)} unknown (e.g. {unknown[:1]})"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


CHECKPOINT_MANIFEST = "manifest.json"
# The newest checkpoint and the one before it: a fallback when the newest is found damaged.
KEEP_CHECKPOINTS = 2


class CorruptCheckpoint(Exception):
    """A checkpoint folder that cannot be trusted (truncated or changed file, unreadable state)."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step_of(folder: Path) -> int:
    try:
        return int(folder.name.removeprefix("step-"))
    except ValueError:
        return -1


def save_checkpoint(
    directory: Path,
    model: Any,
    best_state: dict[str, Any] | None,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
) -> Path:
    """Write ``step-NNNNNN/`` under ``directory`` atomically, then point ``latest`` at it.

    The folder is filled under a temporary name, a manifest records every file's size and sha256,
    the files are flushed to disk (fsync), and the folder is renamed (atomic within one file
    system); ``latest`` is rewritten atomically after it. A kill or power cut at any moment leaves
    the previous checkpoint intact and pointed to, and a file damaged later is caught on load by
    its checksum. The previous checkpoint is kept as a fallback; older ones are removed. A write
    that fails (disk full, read-only folder) raises :class:`TrainError` naming the folder.
    """
    import torch
    from safetensors.torch import save_file

    name = f"step-{state['step']:06d}"
    final = directory / name
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    try:
        make_private_dirs(directory)  # trained weights can reproduce training rows: owner-only
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        if best_state is not None:
            save_file(best_state, tmp / "best.safetensors")
        # Our own file, read back with weights_only=True: tensors, numbers and strings only.
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            },
            tmp / "trainer_state.pt",
        )
        write_json(tmp / "state.json", state)
        files = sorted(p for p in tmp.iterdir() if p.is_file())
        write_json(
            tmp / CHECKPOINT_MANIFEST,
            {
                "format": 1,
                "step": state["step"],
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_digest(p)} for p in files},
            },
        )
        for p in tmp.iterdir():
            _fsync(p)
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(directory)
        write_text(directory / "latest", name + "\n")
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, (OSError, RuntimeError)) and type(exc).__name__ != "SafetensorError":
            raise
        previous = latest_checkpoint(directory)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise TrainError(
            f"could not write the checkpoint {final}: {exc}. Training stopped; {kept}. Free disk space "
            f"or make {directory} writable, then run again to resume."
        ) from exc
    # keep this one and the newest older one (a fallback if this one is later found damaged)
    older = sorted(
        (p for p in directory.glob("step-*") if p.name != name and _step_of(p) < state["step"]),
        key=_step_of,
        reverse=True,
    )
    keep = {name, *(p.name for p in older[: KEEP_CHECKPOINTS - 1])}
    for old in directory.glob("step-*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    """The folder ``latest`` points to, if it is there (else the newest step folder)."""
    candidates = _checkpoint_candidates(directory)
    return candidates[0] if candidates else None


def _checkpoint_candidates(directory: Path) -> list[Path]:
    """Checkpoint folders to try, best first: the one ``latest`` points to, then the others from
    the newest step down (a damaged or missing pointer does not hide them)."""
    if not directory.is_dir():
        return []
    folders = sorted(
        (p for p in directory.glob("step-*") if (p / "state.json").exists() and _step_of(p) >= 0),
        key=_step_of,
        reverse=True,
    )
    try:
        pointed = directory / (directory / "latest").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError, ValueError):
        pointed = None
    if pointed is not None and pointed in folders:
        folders.remove(pointed)
        folders.insert(0, pointed)
    return folders


def _verify_checkpoint(folder: Path) -> None:
    """Raise :class:`CorruptCheckpoint` when a file differs from the manifest written with it.

    Checkpoints from before manifests have none; reading them (:func:`_read_checkpoint`) is then
    the check."""
    manifest_path = folder / CHECKPOINT_MANIFEST
    if not manifest_path.exists():
        return
    try:
        manifest = read_json(manifest_path)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"its manifest is unreadable ({exc})") from None
    for file_name, expected in files.items():
        path = folder / file_name
        if not path.is_file():
            raise CorruptCheckpoint(f"{file_name} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CorruptCheckpoint(f"{file_name} has {size:,} bytes, {expected['bytes']:,} were written (truncated?)")
        if file_digest(path) != expected["sha256"]:
            raise CorruptCheckpoint(f"{file_name} does not match the checksum recorded when it was written")


def _read_checkpoint(folder: Path) -> dict[str, Any]:
    """Everything in a checkpoint folder, verified and in memory; nothing is applied yet, so a
    damaged checkpoint cannot leave the model half-restored. :class:`CorruptCheckpoint` if any
    part is damaged."""
    import torch
    from safetensors.torch import load_file

    _verify_checkpoint(folder)
    try:
        state = read_json(folder / "state.json")
        trainable = load_file(folder / "trainable.safetensors")
        trainer_state = torch.load(folder / "trainer_state.pt", weights_only=True)
        best = load_file(folder / "best.safetensors") if (folder / "best.safetensors").exists() else None
    except Exception as exc:  # SafetensorError, EOFError, UnpicklingError, JSONDecodeError, ...
        raise CorruptCheckpoint(f"{type(exc).__name__}: {exc}") from None
    if (
        not isinstance(state, dict)
        or not {"step", "epoch", "window_in_epoch", "watch"} <= state.keys()
        or not isinstance(trainer_state, dict)
        or not {"optimizer", "scheduler", "torch_rng"} <= trainer_state.keys()
    ):
        raise CorruptCheckpoint("state.json or trainer_state.pt lacks part of the training state")
    return {"state": state, "trainable": trainable, "trainer_state": trainer_state, "best": best}


def _apply_checkpoint(
    loaded: dict[str, Any], model: Any, optimizer: Any, scheduler: Any
) -> tuple[dict[str, Any], dict | None]:
    import torch

    trainer_state = loaded["trainer_state"]
    load_trainable_state(model, loaded["trainable"])
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    # Restored last, after the model was built (LoRA initialisation draws random numbers).
    torch.set_rng_state(trainer_state["torch_rng"])
    if trainer_state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(trainer_state["cuda_rng"])
    return loaded["state"], loaded["best"]


def _load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> tuple[dict[str, Any], dict | None]:
    return _apply_checkpoint(_read_checkpoint(folder), model, optimizer, scheduler)


def resume_checkpoint(
    ckpt_dir: Path, fingerprint: str, model: Any, optimizer: Any, scheduler: Any, *, name: str, is_main: bool
) -> tuple[Path, dict[str, Any], dict | None] | None:
    """Restore the newest usable checkpoint: (folder, state, best weights), or None to start over.

    A damaged checkpoint (a truncated file, a checksum mismatch, an unreadable state) is skipped
    with a warning and moved aside as ``corrupt-step-NNNNNN`` by rank 0 (kept for inspection, never
    tried again); the one before it is tried next. A checkpoint of other settings or data is
    ignored, as before. Never raises for a bad checkpoint: at worst training starts over.
    """

    def warn(text: str) -> None:
        if is_main:
            console.print(f"[yellow]train {name}: {text}[/yellow]")

    skipped: list[str] = []
    for folder in _checkpoint_candidates(ckpt_dir):
        try:
            loaded = _read_checkpoint(folder)
        except CorruptCheckpoint as exc:
            skipped.append(folder.name)
            warn(f"skipping damaged checkpoint {folder}: {exc}")
            if is_main:
                aside = folder.with_name(f"corrupt-{folder.name}")
                try:
                    shutil.rmtree(aside, ignore_errors=True)  # an older damaged copy of the same step
                    os.replace(folder, aside)
                except OSError:
                    pass
            continue
        if loaded["state"].get("fingerprint") != fingerprint:
            warn(f"ignoring checkpoint {folder}: settings or data changed")
            return None
        if skipped:
            warn(f"resuming from the older checkpoint {folder.name} instead of {', '.join(skipped)}")
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        try:
            state, best = _apply_checkpoint(loaded, model, optimizer, scheduler)
        except Exception as exc:  # a checkpoint that reads but does not fit: put the fresh weights back
            load_trainable_state(model, params)
            warn(f"skipping checkpoint {folder}: it does not fit this model ({exc})")
            return None
        return folder, state, best
    if skipped:
        warn("no usable checkpoint is left: training starts over from step 0")
    return None


def run_fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# =============================================================================================
# The adapter: the best weights in their portable form


def save_adapter(result_model: Any, method: str, tokenizer: Any, folder: Path, extra: dict[str, Any]) -> Path:
    """Best weights in their portable form, atomically: a PEFT adapter folder, or the encoder + head."""
    from safetensors.torch import save_file

    tmp = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if method == "lora":
        result_model.save_pretrained(tmp)  # adapter_config.json + adapter_model.safetensors
    else:
        result_model.encoder.save_pretrained(tmp)
        save_file(
            {k: v.detach().contiguous() for k, v in result_model.head.state_dict().items()}, tmp / "head.safetensors"
        )
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "tunewise_train.json", extra)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder
