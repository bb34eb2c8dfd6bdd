"""``tunewise train`` from the command line: --dry-run, --nproc 2 (two real processes, gloo), export.

A project folder with a CSV of keyword-driven support messages and a tiny Llama (2 layers, the real
SmolLM2 tokenizer) built in the test; the commands run as subprocesses, as a user runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_train import toy_frame

# Curation checks that would thin the toy data (its rows share most words) are off: these tests
# are about training, and both runs compared below must see the same rows anyway.
CHECKS_OFF = ["near_duplicates", "label_errors", "off_topic", "label_conflicts", "thin_classes", "too_short"]


def write_project(folder: Path, llm: str, **train: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    frame = toy_frame(64)
    frame[["id", "input", "label"]].rename(columns={"input": "text"}).to_csv(folder / "train.csv", index=False)
    toy_frame(12, 3, "t")[["id", "input", "label"]].rename(columns={"input": "text"}).to_csv(
        folder / "test.csv", index=False
    )
    settings = {
        "candidates": ["lora_llm"],
        "batch_size": 4,
        "learning_rate": 5e-3,
        "num_threads": 1,
        "precision": "fp32",
        "lora_dropout": 0.0,
        "max_steps": 4,
        "eval_every": 2,
        "early_stopping": False,
        **train,
    }
    config = {
        "task": "classify",
        "seed": 0,
        "data": {"train": "train.csv", "test": "test.csv", "record_format": "text_label"},
        "models": {"llm": llm},
        "curate": {name: {"enabled": False} for name in CHECKS_OFF},
        "split": {"validation_fraction": 0.25},
        "train": settings,
        "tracking": "off",
    }
    path = folder / "tunewise.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tunewise(*args: str, cwd: Path, timeout: int = 600, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "tunewise.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**__import__("os").environ, "TUNEWISE_PROGRESS": "off", **(extra_env or {})},
    )
    assert result.returncode == 0, f"tunewise {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def curves(folder: Path, run_id: str) -> dict:
    return json.loads((folder / "runs" / run_id / "train" / "lora_llm" / "curves.json").read_text())


def test_two_processes_follow_the_single_process_curve_with_the_same_global_batch(tiny_llm, tmp_path):
    # 2 processes x batch 4 against 1 process x batch 4 x 2 accumulated: the same 8 rows per step.
    # Tolerance: 1e-4 on the loss (only the order of float sums differs); LoRA dropout is off because
    # each process draws its own dropout masks.
    # a time cap far away: rank 0's clock is broadcast at every step, and changes nothing else
    project = write_project(tmp_path / "ddp", tiny_llm, max_steps=8, eval_every=4, max_minutes=600)
    tunewise("train", "--config", str(project), "--run-id", "two", "--nproc", "2", cwd=tmp_path)
    write_project(tmp_path / "ddp", tiny_llm, max_steps=8, eval_every=4, gradient_accumulation=2)
    tunewise("train", "--config", str(project), "--run-id", "one", cwd=tmp_path)
    two, one = curves(tmp_path / "ddp", "two"), curves(tmp_path / "ddp", "one")
    assert [p["step"] for p in two["train"]] == [p["step"] for p in one["train"]] == list(range(1, 9))
    losses_two = np.array([p["loss"] for p in two["train"]])
    losses_one = np.array([p["loss"] for p in one["train"]])
    assert np.allclose(losses_two, losses_one, atol=1e-4), (losses_two, losses_one)
    assert losses_two[-3:].mean() < losses_two[:3].mean()  # it learned
    assert [p["step"] for p in two["validation"]] == [4, 8]
    assert np.allclose([p["loss"] for p in two["validation"]], [p["loss"] for p in one["validation"]], atol=1e-4)
    summary = json.loads((tmp_path / "ddp" / "runs" / "two" / "train" / "lora_llm" / "train_summary.json").read_text())
    assert summary["plan"]["world_size"] == 2 and summary["stop_reason"] == "max_steps"
    predictions = tmp_path / "ddp" / "runs" / "two" / "train" / "predictions" / "lora_llm.parquet"
    assert predictions.exists()


def test_dry_run_prints_the_plan_and_trains_nothing(tiny_llm, tmp_path):
    project = write_project(tmp_path / "dry", tiny_llm)
    tunewise("split", "--config", str(project), cwd=tmp_path)
    result = tunewise("train", "--config", str(project), "--dry-run", "--json", cwd=tmp_path)
    report = json.loads(result.stdout.strip().splitlines()[-1])["lora_llm"]
    assert report["plan"]["total_steps"] == 4 and report["tokens_total"] > 0
    assert report["this_machine"]["tokens_per_second"] > 0
    assert {g["gpu"] for g in report["reference_gpus"]} and all(g["usd"] > 0 for g in report["reference_gpus"])
    assert report["convergence"]["steps"] == 4 and report["convergence"]["step_cap"] == "max_steps"
    assert not (tmp_path / "dry" / "runs" / "default" / "train").exists()
    # no cap: the default budget, sized from the data, and the time it takes at most, here and on GPUs
    write_project(tmp_path / "dry", tiny_llm, max_steps=None, eval_every=None, early_stopping=True)
    text = tunewise("train", "--config", str(project), "--dry-run", cwd=tmp_path, extra_env={"COLUMNS": "200"}).stdout
    assert "default budget: 20 epochs of" in text and "planned steps" in text
    assert "time to convergence (at most)" in text and "H100" in text
    assert not (tmp_path / "dry" / "runs" / "default" / "train").exists()


def test_train_then_export_merged_from_the_command_line(tiny_llm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    project = write_project(tmp_path / "exp", tiny_llm, max_steps=2)
    tunewise("train", "--config", str(project), cwd=tmp_path)
    tunewise("export", "default", "--config", str(project), "--merge", cwd=tmp_path)
    folder = tmp_path / "exp" / "runs" / "default" / "export" / "lora_llm-merged"
    assert (folder / "model.safetensors").exists()
    model = AutoModelForSequenceClassification.from_pretrained(folder)  # plain transformers, no peft
    assert model.config.num_labels == 3


def test_export_never_destroys_a_users_files(tiny_llm, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunewise.cli.main import app

    project = write_project(tmp_path / "exp", tiny_llm, max_steps=2)
    tunewise("train", "--config", str(project), cwd=tmp_path)
    monkeypatch.chdir(tmp_path)  # "-o ." below: the folder the command runs in
    monkeypatch.setenv("TUNEWISE_PROGRESS", "off")

    def command(*args: str) -> tuple[int, str]:
        # in-process: the same command code as a subprocess, without nine more interpreter starts
        result = CliRunner().invoke(app, list(args))
        return result.exit_code, " ".join(result.stderr.split())  # Rich wraps long messages

    def export(*extra: str) -> tuple[int, str]:
        return command("export", "default", "--config", str(project), *extra)

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine")
    code, err = export("-o", str(victim))
    assert code == 1 and "did not write" in err and "--force" in err
    assert (victim / "notes.txt").read_text() == "mine"
    code, err = export("-o", ".")
    assert code == 1 and "current folder" in err and (tmp_path / "victim" / "notes.txt").exists()
    (tmp_path / "a_file.txt").write_text("keep")
    code, err = export("-o", str(tmp_path / "a_file.txt"))
    assert code == 1 and "a file is there" in err
    assert (tmp_path / "a_file.txt").read_text() == "keep"
    fresh = tmp_path / "exported"
    assert export("-o", str(fresh))[0] == 0 and (fresh / "tunewise_export.json").exists()
    assert export("-o", str(fresh))[0] == 0  # an earlier export is replaced
    assert export("-o", str(victim), "--force")[0] == 0 and not (victim / "notes.txt").exists()
    for bad in ("../..", "/tmp", "a/b"):
        code, err = command("run", "--config", str(project), "--run-id", bad)
        assert code == 1 and "plain folder name" in err, (bad, err)


def test_export_without_a_trained_candidate_says_what_to_run(tmp_path):
    project = tmp_path / "tunewise.yaml"
    project.write_text(yaml.safe_dump({"task": "classify", "data": {"train": "x.csv"}, "tracking": "off"}))
    result = subprocess.run(
        [sys.executable, "-m", "tunewise.cli.main", "export", "default", "--config", str(project)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "tunewise train" in result.stderr


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"lora_r": 0}, "lora_r"),
        ({"learnig_rate": 1e-3}, "learnig_rate"),
        ({"overrides": {"lora_llm": {"max_stepz": 1}}}, "max_stepz"),
    ],
)
def test_bad_train_settings_name_the_field(tmp_path, bad, field):
    project = tmp_path / "tunewise.yaml"
    project.write_text(yaml.safe_dump({"task": "classify", "data": {"train": "x.csv"}, "train": bad}))
    result = subprocess.run(
        [sys.executable, "-m", "tunewise.cli.main", "train", "--config", str(project), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "train" in result.stderr and field in result.stderr
