"""Experiment tracking: each stage's params, metrics and timings go to MLflow.

mlflow-skinny with a local ``mlruns/`` folder by default (no server needed); ``tracking.uri`` in the
config points at a server, ``tracking: off`` disables it. Only numbers are logged as metrics;
nested dicts are flattened with dots.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tunewise.config.sections import ProjectConfig


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


class Tracker:
    """One MLflow run per ``tunewise run`` invocation; a stage logs under its own prefix."""

    def __init__(self, cfg: ProjectConfig, run_id: str) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self._mlflow = None
        self._active = None

    def __enter__(self) -> Tracker:
        if self.cfg.tracking == "off":
            return self
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        import mlflow  # imported lazily: it costs ~1 s and is not needed with tracking off

        uri = self.cfg.tracking.uri
        if "://" not in uri:  # a plain folder: make it absolute next to the config
            # MLflow 3 keeps the file store but asks for an opt-in; a folder needs no server.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = Path(self.cfg.resolve(uri)).resolve().as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(self.cfg.tracking.experiment)
        self._active = mlflow.start_run(run_name=self.run_id)
        mlflow.set_tags({"tunewise.run_id": self.run_id, "tunewise.task": self.cfg.task})
        self._mlflow = mlflow
        return self

    def log_stage(self, name: str, marker: dict[str, Any]) -> None:
        if self._mlflow is None:
            return
        params: dict[str, Any] = {}
        _flatten(name, marker.get("params", {}), params)
        # MLflow caps a param value at 6000 characters; ours are short config values.
        self._mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        metrics: dict[str, Any] = {}
        _flatten(name, marker.get("metrics", {}), metrics)
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        numeric[f"{name}.seconds"] = float(marker.get("seconds", 0.0))
        self._mlflow.log_metrics({k.replace(" ", "_"): v for k, v in numeric.items()})

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run(status="FAILED" if exc_type else "FINISHED")
