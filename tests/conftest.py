"""Shared fixtures: paths to the real BANKING77 data beside the clone, and a quiet environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BANKING77 = SHARED / "datasets" / "banking77"

os.environ.setdefault("TUNEWISE_PROGRESS", "off")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# what the tunewise command sets before each command (tunewise.cli.common.prepare_process); importing
# the package sets nothing
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def banking77() -> Path:
    if not (BANKING77 / "train.csv").exists():
        pytest.fail(f"BANKING77 not found at {BANKING77}; CI keeps ../shared beside the clone")
    return BANKING77


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module single-threaded: on a shared 2-core machine a second OpenMP thread spins and
    made every LLM forward pass several times slower (measured 4x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory) -> str:
    """A 2-layer Llama (hidden 64) with the real SmolLM2 tokenizer (vocabulary, chat template), as a model folder:
    the real loading, LoRA, checkpoint and export code runs on it in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tunewise.models.loading import DEFAULT_LLM, resolve_llm

    tokenizer = AutoTokenizer.from_pretrained(resolve_llm(DEFAULT_LLM).path)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def openai_stub():
    """A small OpenAI-compatible chat-completions server on 127.0.0.1 (tests/openai_stub.py): the
    endpoint the api_* candidates (tunewise.candidates.api) call in tests."""
    from openai_stub import OpenAIStub

    with OpenAIStub() as server:
        yield server


# Curation checks that load the sentence encoder (slow on 2 shared cores); the others still find
# duplicates, PII, label variants and garbage in the demo data.
SLOW_CHECKS = ("off_topic", "label_errors", "too_long")


@pytest.fixture(scope="session")
def demo_pipeline_run(tmp_path_factory):
    """A real project on 300 demo rows and its run r1 after ingest, curate, split, baseline (majority,
    tfidf_lr), train (encoder_ft, a few steps) and evaluate: what decide, report and curve read.
    Tests that write into it write decide/ or curve/; tests that need it pristine copy it."""
    import torch

    from tunewise.config.sections import config_from_dict
    from tunewise.demo.data import generate_demo
    from tunewise.demo.run import demo_config
    from tunewise.pipeline.runner import run_stages

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        project = tmp_path_factory.mktemp("project")
        files = generate_demo(project, task="classify", n_rows=300, n_test=60)
        raw = demo_config(files, "classify", 0).model_dump(mode="json")
        raw["curate"].update({name: {"enabled": False} for name in SLOW_CHECKS})
        raw["baseline"]["candidates"] = ["majority", "tfidf_lr"]
        raw["train"].update(
            candidates=["encoder_ft"],
            max_steps=150,
            eval_every=8,
            batch_size=8,
            eval_max_rows=64,
            num_threads=1,
            precision="fp32",
        )
        # on the demo data the word TF-IDF model beats a 12-step fine-tune; the gate's "must not lose
        # to the cheap model" rule is tested in test_evaluate, so here it is off and the gate can pass;
        # the ensemble (also tested there) is off so encoder_ft is the gate's candidate
        raw["evaluate"].update(
            baseline="majority",
            robustness_rows=40,
            overfit_train_rows=100,
            n_resamples=300,
            human_sheet_size=0,
            gate_beats_cheap=False,
            ensemble=False,
        )
        raw["tracking"] = "off"
        cfg = config_from_dict(raw, project)
        run_stages(cfg, "r1", only=["evaluate"])
    finally:
        torch.set_num_threads(threads)
    return cfg, project / "runs" / "r1"
