"""Where each artifact of a run lives: every ``runs/<run-id>/<stage>/...`` path, in one place.

The names are the data contract of the design (docs/architecture.md, "Artifacts"): outside checks
read them, so they change here, with the design, or not at all. A stage writes into its own folder
through ``StageContext.path``; everything that reads another stage's artifacts (later stages, the
report, serving, the workflows) asks a :class:`RunLayout` for the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SPLITS", "RunLayout"]

SPLITS = ("train", "validation", "test")  # the split stage's files, split/<name>.parquet


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (``runs/<run-id>``)."""

    run_dir: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))

    def stage(self, name: str) -> Path:
        """A stage's folder: ``<run>/<stage>``."""
        return self.run_dir / name

    def summary(self, stage: str) -> Path:
        """A stage's ``summary.json``."""
        return self.run_dir / stage / "summary.json"

    def stage_record(self, stage: str) -> Path:
        """A stage's ``_stage.json`` (inputs' fingerprint, timings, key metrics)."""
        return self.run_dir / stage / "_stage.json"

    def split(self, name: str) -> Path:
        """``split/<train|validation|test>.parquet``."""
        return self.run_dir / "split" / f"{name}.parquet"

    def splits(self, names: tuple[str, ...] = SPLITS) -> dict[str, Path]:
        return {name: self.split(name) for name in names}

    # -- curate
    @property
    def curate_issues(self) -> Path:
        """``curate/issues.parquet``: every row curation dropped, flagged or changed, with its reason."""
        return self.run_dir / "curate" / "issues.parquet"

    @property
    def curate_cleaned(self) -> Path:
        return self.run_dir / "curate" / "cleaned.parquet"

    # -- baseline and train
    @property
    def sample_ids(self) -> Path:
        """``baseline/sample_ids.json``: the rows every prompted LLM scored."""
        return self.run_dir / "baseline" / "sample_ids.json"

    def predictions(self, stage: str, candidate: str, split: str = "test") -> Path:
        """``<stage>/predictions/<candidate>.parquet`` (test) or ``<candidate>.<split>.parquet``."""
        suffix = "" if split == "test" else f".{split}"
        return self.run_dir / stage / "predictions" / f"{candidate}{suffix}.parquet"

    def fitted(self, candidate: str) -> Path:
        """``baseline/models/<candidate>``: a cheap candidate's fitted state (JSON and safetensors)."""
        return self.run_dir / "baseline" / "models" / candidate

    def adapter(self, candidate: str) -> Path:
        """``train/<candidate>/adapter``: the trained weights (PEFT adapter, or encoder and head)."""
        return self.run_dir / "train" / candidate / "adapter"

    def checkpoints(self, candidate: str) -> Path:
        """Resumable training state of one candidate (not an artifact: removed when training ends)."""
        return self.run_dir / "_checkpoints" / "train" / candidate

    def finished(self, candidate: str) -> Path:
        """The marker folder of a candidate whose training finished, with the key it finished under."""
        return self.run_dir / "_checkpoints" / "train" / "_finished" / candidate

    # -- evaluate
    def evaluation(self, name: str) -> Path:
        """A file of the evaluate stage: ``evaluate/<name>`` (``robustness.json``, ``slices.json``, ...)."""
        return self.run_dir / "evaluate" / name

    def per_example(self, candidate: str) -> Path:
        """``evaluate/per_example/<candidate>.parquet``: each test row's answer, truth and score."""
        return self.run_dir / "evaluate" / "per_example" / f"{candidate}.parquet"
