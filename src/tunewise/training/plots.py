"""The training curves as a picture (``curves.png`` beside ``curves.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewise.core.artifacts import atomic_path


def plot_curves(curves: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    steps = [p["step"] for p in curves["train"]]
    left.plot(steps, [p["loss"] for p in curves["train"]], label="train loss", lw=1, alpha=0.8)
    evals = curves["validation"]
    if evals and all("loss" in e for e in evals):
        left.plot([e["step"] for e in evals], [e["loss"] for e in evals], "o-", label="validation loss")
    left.set_xlabel("step")
    left.set_title("loss")
    left.legend()
    for metric in ("accuracy", "macro_f1", "chrf"):
        points = [(e["step"], e[metric]) for e in evals if metric in e]
        if points:
            right.plot(*zip(*points), "o-", label=metric)
    if curves.get("best_step") is not None:
        right.axvline(curves["best_step"], color="grey", ls="--", lw=1, label="best")
    right.set_xlabel("step")
    right.set_title("validation" if evals else "validation (none)")
    if right.get_legend_handles_labels()[0]:
        right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
