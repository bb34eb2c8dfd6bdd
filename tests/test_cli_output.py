"""What the ``tunewise`` command prints: with --json, stdout is one JSON document and nothing else;
every tunewise error derives from TunewiseError and the CLI prints its message, its hint and exits 1.

The --json test runs the real command as a subprocess on a small demo project (cheap candidates
only, no fine-tuning), the whole pipeline from ingest to report, as a user runs it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunewise.core.errors import TunewiseError

SLOW_CHECKS = ("off_topic", "label_errors", "too_long")


def _tunewise(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunewise.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "TUNEWISE_PROGRESS": "off", "COLUMNS": "200"},
    )


@pytest.fixture(scope="module")
def small_project(tmp_path_factory) -> Path:
    from tunewise.demo.data import generate_demo
    from tunewise.demo.run import demo_config

    folder = tmp_path_factory.mktemp("json_out")
    files = generate_demo(folder, task="classify", n_rows=200, n_test=40)
    raw = demo_config(files, "classify", 0).model_dump(mode="json")
    raw["curate"].update({name: {"enabled": False} for name in SLOW_CHECKS})
    raw["baseline"]["candidates"] = ["majority", "tfidf_lr"]
    raw["train"]["candidates"] = []
    raw["evaluate"].update(
        baseline="majority",
        robustness_rows=20,
        overfit_train_rows=50,
        n_resamples=200,
        human_sheet_size=0,
        gate_beats_cheap=False,
        ensemble=False,
        forgetting=False,
    )
    raw["tracking"] = "off"
    config_file = folder / "tunewise.yaml"
    config_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return config_file


def test_run_json_puts_only_json_on_stdout(small_project):
    done = _tunewise("run", "--config", str(small_project), "--run-id", "j", "--json", cwd=small_project.parent)
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)  # the whole of stdout: no "verdict:" or "report:" line after the JSON
    assert set(parsed) == {"run_dir", "stages"}
    assert {"ingest", "decide", "report"} <= set(parsed["stages"])
    # the human lines still reach a person, on stderr
    assert "verdict:" in done.stderr and "report:" in done.stderr

    # the baseline recorded the cores that timed its predictions, and the decision scaled from them
    from tunewise.core.machine import measuring_cores

    run_dir = Path(parsed["run_dir"])
    baseline = json.loads((run_dir / "baseline" / "summary.json").read_text())
    assert {c["latency_cores"] for c in baseline["candidates"]} == {measuring_cores()}
    assert f"/ {measuring_cores()} measuring cores)" in (run_dir / "decide" / "decision.json").read_text()

    # a single stage command, cached this time: the same rule
    again = _tunewise("decide", "--config", str(small_project), "--run-id", "j", "--json", cwd=small_project.parent)
    assert again.returncode == 0, again.stderr
    assert set(json.loads(again.stdout)["stages"]) >= {"decide"}

    # without --json the same lines go to stdout, as before
    human = _tunewise("run", "--config", str(small_project), "--run-id", "j", cwd=small_project.parent)
    assert human.returncode == 0, human.stderr
    assert "verdict:" in human.stdout and "report:" in human.stdout


# the error classes of every module: (module, class, the other base it keeps for callers' except clauses)
ERRORS = [
    ("workflows.labelling", "LabellingError", ValueError),
    ("reporting.report", "ReportError", Exception),
    ("config.sections", "ConfigError", Exception),
    ("decision.decide", "DecisionError", ValueError),
    ("core.artifacts", "ArtifactWriteError", OSError),
    ("workflows.export", "ExportError", ValueError),
    ("data.ingest", "IngestError", Exception),
    ("evaluation.human_sheet", "SheetError", ValueError),
    ("core.runs", "StageError", Exception),
    ("core.runs", "RunLockedError", Exception),
    ("candidates.base", "CandidateError", ValueError),
    ("evaluation.base", "EvaluationError", ValueError),
    ("serving.retrain", "RetrainError", ValueError),
    ("models.loading", "ModelNotFoundError", Exception),
    ("monitoring.store", "StoreError", RuntimeError),
    ("workflows.distill", "DistillError", ValueError),
    ("decision.curve", "CurveError", ValueError),
    ("serving.base", "ServeError", RuntimeError),
    ("training", "TrainError", ValueError),
    ("data.curate", "CheckContractError", RuntimeError),
]


@pytest.mark.parametrize("module, name, other_base", ERRORS, ids=[e[1] for e in ERRORS])
def test_every_error_derives_from_tunewise_error_and_keeps_its_bases(module, name, other_base):
    cls = getattr(importlib.import_module(f"tunewise.{module}"), name)
    assert issubclass(cls, TunewiseError) and issubclass(cls, other_base)
    assert cls.hint is None or (isinstance(cls.hint, str) and cls.hint)


def test_every_error_class_in_the_source_is_listed():
    import re

    source = Path(importlib.import_module("tunewise").__file__).parent
    found = {
        m.group(1)
        for path in source.rglob("*.py")
        for m in re.finditer(r"^class (\w+Error)\(", path.read_text(encoding="utf-8"), re.MULTILINE)
    }
    assert found - {"TunewiseError"} == {name for _, name, _ in ERRORS}


def test_hint_per_instance_and_pickled():
    import pickle

    from tunewise.config.sections import ConfigError
    from tunewise.pipeline.runner import StageError

    assert ConfigError("x").hint == ConfigError.hint
    error = StageError("no split", hint="run tunewise split")
    assert error.hint == "run tunewise split" and StageError.hint != error.hint
    back = pickle.loads(pickle.dumps(error))  # Ray and process pools send errors between processes
    assert str(back) == "no split" and back.hint == "run tunewise split"


def test_cli_prints_the_message_and_the_hint_and_exits_1(tmp_path):
    from tunewise.config.sections import ConfigError

    done = _tunewise("run", "--config", str(tmp_path / "missing.yaml"), "--json", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert "error:" in done.stderr and "missing.yaml" in done.stderr
    assert f"hint: {ConfigError.hint}" in " ".join(done.stderr.split())
