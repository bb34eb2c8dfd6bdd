"""Which rows to label next and adding them (tunewise.workflows.labelling): suggest on the demo data returns k
distinct rows, more uncertain than the pool and none a near-copy of a labelled row; add-labels skips and
counts blank, known and repeated rows, and never touches the test split."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from tunewise.cli.main import app
from tunewise.config.sections import config_from_dict
from tunewise.core.text import dedup_keys
from tunewise.data.ingest import iter_raw_rows
from tunewise.data.split import FROZEN_TEST_FILE
from tunewise.pipeline.precheck import load_config
from tunewise.workflows.labelling import LabellingError, add_labels, margin_uncertainty, rank_for_labelling, suggest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOW_CHECKS = ("off_topic", "label_errors", "too_long")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A 300-row demo project whose test comes from the split (no data.test), run up to split as r1,
    and an unlabelled pool: another seed's demo rows plus copies of training rows."""
    from tunewise.demo.data import generate_demo
    from tunewise.demo.run import demo_config
    from tunewise.pipeline.runner import run_stages

    folder = tmp_path_factory.mktemp("labelling")
    files = generate_demo(folder, task="classify", n_rows=300, n_test=60)
    raw = demo_config(files, "classify", 0).model_dump(mode="json")
    raw["data"]["test"] = None
    raw["curate"].update({name: {"enabled": False} for name in SLOW_CHECKS})
    raw["baseline"]["candidates"] = ["tfidf_lr"]
    raw["tracking"] = "off"
    (folder / "tunewise.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(folder / "tunewise.yaml")
    run_stages(cfg, "r1", only=["split"])

    other = generate_demo(tmp_path_factory.mktemp("pool"), task="classify", seed=1, n_rows=300, n_test=60)
    fresh = pd.read_csv(other.data)[["id", "text", "intent"]].rename(columns={"id": "pool_id"})
    fresh["id"] = [f"p{i}" for i in range(len(fresh))]
    training = pd.read_csv(files.data)
    copies = pd.DataFrame(
        {"id": [f"copy{i}" for i in range(5)], "text": [t.upper() + "!" for t in training["text"].head(5)]}
    )  # same text up to case
    pool = pd.concat([fresh[["id", "text"]], copies], ignore_index=True)
    pool.to_csv(folder / "pool.csv", index=False)
    return cfg, folder, fresh, training


def test_margin_uncertainty_and_one_row_per_cluster():
    assert margin_uncertainty(np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])) == pytest.approx(
        [1.0, 0.0, 0.7]
    )
    # two tight groups of rows: the most uncertain rows all sit in group A, but a batch of 2 takes one per group
    words = ["one", "two", "three", "four", "five", "six"]  # not digits: normalisation masks numbers
    texts = [f"{group} {word}" for group in "ab" for word in words]
    vectors = {
        t: np.array([1.0, 0.01 * i] if t[0] == "a" else [0.01 * i, 1.0]) for t in texts for i in [words.index(t[2:])]
    }

    def embed_fn(batch):
        return np.array([vectors[t] / np.linalg.norm(vectors[t]) for t in batch], dtype=np.float32)

    uncertainty = np.array([0.9, 0.95, 0.8, 0.85, 0.7, 0.75, 0.6, 0.5, 0.65, 0.4, 0.3, 0.2])
    selection = rank_for_labelling(
        texts, uncertainty, ["zz"], 2, embed_fn=embed_fn, labelled_vectors=np.array([[-1.0, 0.0]], dtype=np.float32)
    )
    assert [texts[i] for i in selection.indices] == ["a two", "b three"]
    # a pool row already labelled is skipped and counted, by text and by embedding
    again = rank_for_labelling(
        texts, uncertainty, ["A two!"], 2, embed_fn=embed_fn, labelled_vectors=embed_fn(["b three"])
    )
    assert again.skipped_labelled_exact == 1 and again.skipped_labelled_near == 6  # every b row is within 0.95
    assert [texts[i] for i in again.indices] == ["a one", "a four"]


def test_suggest_returns_k_distinct_uncertain_rows_unlike_labelled_ones(project):
    from tunewise.models.loading import embed

    cfg, folder, _, _ = project
    result = suggest(cfg, folder / "pool.csv", 8, run_id="r1", candidate="tfidf_lr", out=folder / "to_label.csv")
    table = pd.read_csv(folder / "to_label.csv", keep_default_na=False)
    assert list(table.columns) == ["id", "text", "suggested_label", "confidence", "uncertainty", "cluster", "label"]
    assert len(table) == 8 and table["id"].is_unique and len(set(dedup_keys(table["text"].tolist()))) == 8
    assert (table["label"] == "").all()
    assert table["uncertainty"].mean() > result["pool_mean_uncertainty"]
    assert result["skipped_labelled_exact"] >= 5  # the five upper-cased copies of training rows, at least
    assert not table["id"].str.startswith("copy").any()
    labelled = pd.concat([pd.read_parquet(folder / "runs" / "r1" / "ingest" / "records.parquet")])["input"].tolist()
    assert not set(dedup_keys(table["text"].tolist())) & set(dedup_keys(labelled))
    cosine = embed(table["text"].tolist()) @ embed(labelled).T
    assert cosine.max() < 0.95


def test_suggest_command_with_embed_lr_and_generate_is_refused(project, tmp_path):
    cfg, folder, _, _ = project
    out_csv = tmp_path / "batch.csv"
    run = CliRunner().invoke(
        app,
        [
            "suggest",
            "--pool",
            str(folder / "pool.csv"),
            "--k",
            "5",
            "--candidate",
            "embed_lr",
            "--run-id",
            "r1",
            "-c",
            str(folder / "tunewise.yaml"),
            "-o",
            str(out_csv),
        ],
    )
    assert run.exit_code == 0, run.output
    assert "already labelled" in run.output and len(pd.read_csv(out_csv)) == 5
    generate = config_from_dict({"task": "generate", "data": {"train": "x.csv"}}, tmp_path)
    with pytest.raises(LabellingError, match="classify"):
        suggest(generate, folder / "pool.csv", 5)


def test_add_labels_counts_skips_and_never_touches_the_test_split(project, tmp_path):
    from tunewise.pipeline.runner import run_stages

    _, source, fresh, training = project
    folder = tmp_path / "project"
    shutil.copytree(source, folder)
    cfg = load_config(folder / "tunewise.yaml")
    run_stages(cfg, "r1", only=["split"])  # paths moved: the copy re-runs its stages once
    split_dir = folder / "runs" / "r1" / "split"
    test_before = pd.read_parquet(split_dir / "test.parquet")

    known = set(dedup_keys(training["text"].astype(str).tolist()))
    new = fresh[[key not in known for key in dedup_keys(fresh["text"].tolist())]].drop_duplicates("text").head(6)
    rows = [{"id": r.id, "text": r.text, "label": r.intent} for r in new.itertuples()]
    rows += [{"id": "b1", "text": fresh["text"].iloc[-1], "label": ""}, {"id": "b2", "text": "anything", "label": " "}]
    rows += [
        {"id": "k1", "text": training["text"].iloc[0].lower(), "label": training["intent"].iloc[0]},
        {"id": "k2", "text": rows[0]["text"] + "?", "label": rows[0]["label"]},  # repeated in the file itself
        {"id": "n1", "text": "Can I buy a gift card for my sister's birthday?", "label": "gift_cards"},
    ]
    filled = tmp_path / "filled.csv"
    pd.DataFrame(rows).to_csv(filled, index=False)

    result = add_labels(cfg, filled, run_id="r1")
    assert (result["added"], result["skipped_blank_label"], result["skipped_already_labelled"]) == (7, 2, 2)
    assert result["new_labels"] == {"gift_cards": 1}
    line = next(r.line for r in iter_raw_rows(filled, "csv") if r.fields["id"] == "n1")  # demo texts span lines
    assert any(w.startswith(f"{filled}:{line}:") and "gift_cards" in w for w in result["warnings"])
    assert result["ids"] == [f"added-{i}" for i in range(1, 8)]
    frozen = json.loads((folder / FROZEN_TEST_FILE).read_text())
    assert frozen["ids"] == test_before["id"].tolist() and result["test"]["new"]
    # the same file again: everything is known now, nothing is added, the frozen ids stay
    again = add_labels(cfg, filled, run_id="r1")
    assert again["added"] == 0 and again["skipped_already_labelled"] == 9 and not again["test"]["new"]
    command = CliRunner().invoke(
        app, ["add-labels", str(filled), "--run-id", "r1", "-c", str(folder / "tunewise.yaml")]
    )
    assert command.exit_code == 0, command.output
    assert "next: tunewise run" in command.output and "frozen ids" in command.output

    # a bad row in the added file lands in the ingest issues with its file and line
    added_file = folder / "added_labels.jsonl"
    with added_file.open("a") as handle:
        handle.write(json.dumps({"id": "added-99", "text": "no label here"}) + "\n")
    markers = run_stages(cfg, "r1", only=["split"])
    assert markers["ingest"]["metrics"]["added_rows_kept"] == 7
    issues = pd.read_parquet(folder / "runs" / "r1" / "ingest" / "issues.parquet")
    bad = issues[issues["source"] == str(added_file)]
    assert bad["line"].tolist() == [8] and "label" in bad["detail"].iloc[0]

    test_after = pd.read_parquet(split_dir / "test.parquet")
    pd.testing.assert_frame_equal(test_after, test_before)
    train, validation = (pd.read_parquet(split_dir / f"{name}.parquet") for name in ("train", "validation"))
    added_ids = set(result["ids"])
    assert not added_ids & set(test_after["id"])
    assert len(added_ids & (set(train["id"]) | set(validation["id"]))) >= 6  # curation may still drop one
    assert json.loads((split_dir / "summary.json").read_text())["test_source"] == "frozen"


def test_suggest_uses_the_best_real_classifier_when_the_gate_names_the_ensemble():
    from tunewise.workflows.labelling import _best_single_candidate

    evaluation = {
        "primary_metric": "accuracy",
        "lower_is_better": ["ece"],
        "candidates": [
            {"name": "zero_shot_llm", "metrics": {"accuracy": 0.07}},
            {"name": "tfidf_lr", "metrics": {"accuracy": 0.98}},
            {"name": "encoder_ft", "metrics": {"accuracy": 0.96}},
            {"name": "ensemble", "metrics": {"accuracy": 1.0}},
        ],
    }
    assert _best_single_candidate(evaluation, "ensemble") == "tfidf_lr"
    lower = {
        "primary_metric": "ece",
        "lower_is_better": ["ece"],
        "candidates": [{"name": "tfidf_lr", "metrics": {"ece": 0.2}}, {"name": "embed_lr", "metrics": {"ece": 0.05}}],
    }
    assert _best_single_candidate(lower, "ensemble") == "embed_lr"
    with pytest.raises(LabellingError, match="pass --candidate"):
        _best_single_candidate({"candidates": [{"name": "ensemble", "metrics": {"accuracy": 1.0}}]}, "ensemble")
