"""The fine-tuning recipe (tunewise.training), its candidates, export and stage.

Most tests train a tiny Llama (hidden 64, 2 layers) built here from a LlamaConfig, with the real
SmolLM2 tokenizer and chat template, saved as a local model folder: the real loading, LoRA,
checkpoint and export code runs in seconds. One test trains the real embedded SmolLM2 for a few
steps and generates with the adapter.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tunewise.config.sections import TrainConfig
from tunewise.training import TrainError, dry_run, train
from tunewise.training.checkpoint import trainable_state
from tunewise.training.data import IGNORE_INDEX, encode_replies, length_grouped_batches, prepare
from tunewise.training.early_stopping import EarlyStopping
from tunewise.training.plan import plan_run

LABEL_WORDS = {
    "refund_status": ["refund", "money back", "reimbursed", "credit back"],
    "order_status": ["where is my order", "tracking", "shipped yet", "delivery date"],
    "account_login": ["password", "log in", "sign in", "locked out"],
}
REPLIES = {
    "refund_status": "Your refund was issued and reaches your account in 5 days.",
    "order_status": "Your order has shipped; the tracking link is in your email.",
    "account_login": "Use the reset link on the sign-in page to set a new password.",
}


def toy_frame(n: int, seed: int = 0, prefix: str = "r") -> pd.DataFrame:
    """Support messages whose label and reply follow from a keyword: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    labels = list(LABEL_WORDS)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        phrase = LABEL_WORDS[label][rng.integers(len(LABEL_WORDS[label]))]
        text = f"hi, {phrase} for order {rng.integers(1000, 9999)} please"
        rows.append(
            {
                "id": f"{prefix}{i}",
                "input": text,
                "context": "[]",
                "label": label,
                "target": REPLIES[label],
                "source_file": "toy.csv",
                "source_line": i + 2,
                "synthetic": False,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread on the shared 2-core machine (two spinning threads measured 2x slower under load)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quick(**overrides) -> TrainConfig:
    # fp32: for a 64-wide model bf16 autocast only adds casts (the real-model test runs the default)
    settings = {
        "batch_size": 8,
        "learning_rate": 5e-3,
        "num_threads": 1,
        "generate_sample": 0,
        "max_new_tokens": 8,
        "precision": "fp32",
    }
    return TrainConfig(**{**settings, **overrides})


# ---------------------------------------------------------------------------------------------
# Batching and examples


def test_length_grouped_batches_cover_every_row_once_with_little_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 200, size=1000)
    batches = length_grouped_batches(lengths, 8, seed=3, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    assert max(lengths[batches[0]]) == lengths.max()  # the longest batch first: memory fails at once
    padded = sum(len(b) * max(lengths[b]) for b in batches)
    random_batches = [list(range(i, min(i + 8, 1000))) for i in range(0, 1000, 8)]
    padded_random = sum(len(b) * max(lengths[b]) for b in random_batches)
    assert padded < 0.7 * padded_random  # grouping by length removes most padding
    assert batches == length_grouped_batches(lengths, 8, seed=3, epoch=0)  # same order after a restart
    assert batches != length_grouped_batches(lengths, 8, seed=3, epoch=1)  # a new order each epoch


def test_length_grouped_batches_shard_equally_across_ranks():
    lengths = np.arange(1, 101)
    shards = [length_grouped_batches(lengths, 4, seed=0, epoch=0, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == len(set(seen))  # disjoint: no example trained twice per epoch


def test_reply_examples_carry_loss_on_reply_tokens_only(tiny_llm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llm)
    frame = toy_frame(3)
    examples = encode_replies(tokenizer, frame, None, "Be brief.")
    for example, reply in zip(examples, frame["target"]):
        assert example is not None and len(example.labels) == len(example.input_ids)
        start = next(i for i, t in enumerate(example.labels) if t != IGNORE_INDEX)
        assert all(t == IGNORE_INDEX for t in example.labels[:start])
        assert example.labels[start:] == example.input_ids[start:]
        assert tokenizer.decode(example.input_ids[start:]) == reply + "<|im_end|>"
        prompt = tokenizer.decode(example.input_ids[:start])
        assert prompt.endswith("<|im_start|>assistant\n") and "Be brief." in prompt
    # cut at max_length: a prompt that fills it leaves no reply token, and the row is reported as None
    assert encode_replies(tokenizer, frame, 10, None) == [None, None, None]


# ---------------------------------------------------------------------------------------------
# Early stopping and the overfitting watch


def test_early_stopping_reads_up_to_1024_validation_rows_for_classify_and_256_for_generate(tiny_llm):
    # 256 rows of macro F1 over tens of classes is noise that stopped lora_llm early (docs/benchmarks.md)
    train_rows, validation_rows = toy_frame(64), toy_frame(1100, seed=1, prefix="v")

    def validation_used(task: str, **settings) -> pd.DataFrame:
        config = TrainConfig(num_threads=1, **settings)
        *_, val_examples, _, val_frame = prepare(task, "lora", train_rows, validation_rows, config, model_spec=tiny_llm)
        assert len(val_examples) == len(val_frame)
        return val_frame

    classify = validation_used("classify")
    assert len(classify) == 1024
    # stratified by label: every class keeps its share
    shares = classify["label"].value_counts(normalize=True)
    assert (shares - validation_rows["label"].value_counts(normalize=True)).abs().max() < 0.01
    assert len(validation_used("generate")) == 256
    assert len(validation_used("classify", eval_max_rows=100)) == 100


def test_overfitting_watch_stops_when_validation_worsens_while_training_loss_falls():
    watch = EarlyStopping(mode="max", patience=5, overfit_window=2)
    accuracy = [0.50, 0.70, 0.80, 0.78, 0.75]
    train_loss = [2.0, 1.5, 1.0, 0.7, 0.4]
    decisions = [watch.update(10 * (i + 1), a, t) for i, (a, t) in enumerate(zip(accuracy, train_loss))]
    assert [d.stop for d in decisions] == [False, False, False, False, True]
    assert decisions[-1].reason == "overfitting" and "memorising" in decisions[-1].message
    assert watch.best_step == 30 and watch.best == 0.80


def test_falling_validation_with_rising_training_loss_is_not_overfitting():
    watch = EarlyStopping(mode="min", patience=3, overfit_window=2)
    val_loss = [1.0, 1.1, 1.2, 1.3]
    train_loss = [1.0, 1.1, 1.2, 1.3]  # both worse: a too-high learning rate, not memorising
    decisions = [watch.update(i, v, t) for i, (v, t) in enumerate(zip(val_loss, train_loss))]
    assert [d.stop for d in decisions] == [False, False, False, True]
    assert decisions[-1].reason == "early_stopping"


def test_early_stopping_after_patience_and_its_switch():
    plateau = [0.6, 0.7, 0.7, 0.69, 0.7]
    falling = [1.0, 0.9, 0.8, 0.7, 0.6]
    watch = EarlyStopping(mode="max", patience=3, overfit_window=3)
    assert [watch.update(i, m, t).stop for i, (m, t) in enumerate(zip(plateau, falling))] == [False] * 4 + [True]
    off = EarlyStopping(mode="max", patience=3, overfit_window=3, enabled=False)
    assert not any(off.update(i, m, t).stop for i, (m, t) in enumerate(zip(plateau, falling)))
    # the overfitting watch still stops a run whose early stopping is off
    off_but_overfitting = EarlyStopping(mode="max", patience=3, overfit_window=2, enabled=False)
    stops = [off_but_overfitting.update(i, m, t).stop for i, (m, t) in enumerate(zip([0.8, 0.7, 0.6], [1.0, 0.8, 0.6]))]
    assert stops == [False, False, True]


# ---------------------------------------------------------------------------------------------
# The default budget: sized from the data, ended by the validation curve


def _plan(n_train: int, n_classes: int, **settings):
    labels = [f"c{i}" for i in range(n_classes)]
    return plan_run("classify", "lora", [20] * n_train, n_train, 100, labels, TrainConfig(**settings), max_length=32)


def test_default_budget_is_sized_from_the_data_not_a_fixed_step_cap():
    # BANKING77 (9,002 rows, 77 intents): 3 epochs of 563 steps, where the old cap stopped at 100 steps
    full = _plan(9002, 77)
    assert full.step_cap == "budget" and full.epochs == 3 and full.total_steps == 3 * math.ceil(9002 / 16)
    assert full.eval_every == math.ceil(full.steps_per_epoch / 4)  # about 4 validations an epoch
    # 10 rows an intent: 100 examples a class seen takes 10 epochs
    few_shot = _plan(770, 77)
    assert few_shot.step_cap == "budget" and few_shot.epochs == 10
    # the demo's size (1,179 rows, 14 intents): 3,000 examples seen
    assert _plan(1179, 14).epochs == 3
    tiny = _plan(48, 3)  # at most 20 epochs, and at most 40 validations a run
    assert tiny.epochs == 20 and tiny.total_steps == 60 and tiny.total_steps / tiny.eval_every <= 40
    # the user's caps: the smaller one wins, and the plan says which limit sets the steps
    assert _plan(9002, 77, max_steps=100).step_cap == "max_steps"
    assert _plan(9002, 77, max_steps=100).total_steps == 100
    assert _plan(9002, 77, epochs=1).step_cap == "epochs" and _plan(9002, 77, epochs=1).total_steps == 563
    both = _plan(9002, 77, epochs=1, max_steps=10_000)
    assert both.step_cap == "epochs" and both.total_steps == 563
    assert _plan(9002, 77, max_steps=10_000).step_cap == "budget"  # a cap above the budget does not lift it
    assert _plan(9002, 77, max_steps=8).eval_every == 2  # a short capped run still validates about 4 times


@pytest.fixture(scope="module")
def banking_slice(banking77):
    """Six BANKING77 intents: 24 training and 10 validation rows each (real, overlapping wording)."""
    frame = pd.read_csv(banking77 / "train.csv").rename(columns={"category": "label", "text": "input"})
    intents = [
        "card_arrival",
        "lost_or_stolen_card",
        "exchange_rate",
        "pending_transfer",
        "top_up_failed",
        "wrong_amount_of_cash_received",
    ]
    frame = frame[frame["label"].isin(intents)].groupby("label").head(34).reset_index(drop=True)
    frame["id"] = [f"b{i}" for i in range(len(frame))]
    frame["context"] = "[]"
    is_validation = frame.groupby("label").cumcount() >= 24
    return frame[~is_validation].reset_index(drop=True), frame[is_validation].reset_index(drop=True)


def test_default_budget_trains_until_validation_stops_improving(banking_slice, tiny_llm, tmp_path):
    """No step or epoch cap, the LoRA classifier's default learning rate and batch: trained on real
    BANKING77 rows until the validation curve stops improving, and the run says so (not under-trained).
    (The embedded MiniLM encoder, encoder_ft's defaults, on the same rows: early stopping at step 50
    of 180, macro-F1 0.98; 2 minutes on the loaded machine, so not run here.)"""
    train_rows, validation_rows = banking_slice
    # the overfitting watch is pushed out of the way: only early stopping (or the budget) can end this run
    result = train(
        "classify",
        train_rows,
        validation_rows,
        model_spec=tiny_llm,
        out_dir=tmp_path / "run",
        seed=0,
        config=TrainConfig(num_threads=1, precision="fp32", overfit_window=10),
    )
    plan, summary = result.plan, result.summary
    assert plan.step_cap == "budget" and plan.epochs == min(20, math.ceil(3000 / len(train_rows)))
    assert summary["stop_reason"] == "early_stopping", summary["stop_message"]
    assert summary["steps_done"] < plan.total_steps  # the curve ended it, inside the budget
    assert summary["under_trained"] is False and summary["under_trained_reason"] is None
    curve = summary["validation_curve"]
    assert [step for step, _ in curve] == list(range(plan.eval_every, summary["steps_done"] + 1, plan.eval_every))
    best = max(value for _, value in curve)
    assert summary["best"]["macro_f1"] == best > 0.5  # chance is 1/6
    assert curve[0][1] < best - 0.2  # it learned before it levelled off
    # patience validations after the best one, none better
    assert [step for step, value in curve if value == best][0] == summary["best_step"]
    assert sum(1 for step, _ in curve if step > summary["best_step"]) == 3
    written = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert written["under_trained"] is False and written["validation_curve"] == curve


def test_a_user_cap_that_stops_an_improving_run_marks_it_under_trained(tiny_llm, tmp_path):
    config = quick(max_steps=6, eval_every=2)
    result = train(
        "classify",
        toy_frame(48),
        toy_frame(24, seed=1, prefix="v"),
        config=config,
        model_spec=tiny_llm,
        out_dir=tmp_path / "run",
        seed=0,
        name="capped",
    )
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["stop_reason"] == "max_steps" and summary["steps_done"] == 6
    assert summary["under_trained"] is True
    assert (
        "under-trained" in summary["under_trained_reason"] and "train.max_steps = 6" in summary["under_trained_reason"]
    )
    assert [step for step, _ in summary["validation_curve"]] == [2, 4, 6]
    assert summary["validation_curve"] == [[e["step"], e["macro_f1"]] for e in result.curves["validation"]]
    assert summary["plan"]["step_cap"] == "max_steps" and summary["monitor"] == "macro_f1"


def test_the_time_cap_stops_a_run_validates_it_and_marks_it_under_trained(tiny_llm, tmp_path):
    # a time cap smaller than one step: the run stops after its first step, with a validation there
    result = train(
        "classify",
        toy_frame(48),
        toy_frame(12, seed=1, prefix="v"),
        config=quick(max_minutes=1e-6),
        model_spec=tiny_llm,
        out_dir=tmp_path / "run",
        seed=0,
    )
    summary = result.summary
    assert summary["stop_reason"] == "max_minutes" and summary["steps_done"] == 1
    assert summary["validation_curve"] == [[1, result.curves["validation"][0]["macro_f1"]]]
    assert summary["under_trained"] is True and "train.max_minutes" in summary["under_trained_reason"]
    assert summary["plan"]["total_steps"] > 1  # the budget it did not get to


def test_a_cap_after_a_plateau_is_not_under_trained_and_no_validation_is_unknown(tiny_llm):
    from tunewise.training.early_stopping import convergence

    plan = _plan(48, 3, max_steps=12)
    watch = EarlyStopping(mode="max", patience=3, enabled=False)
    curve = [(2, 0.5), (4, 0.9), (6, 0.9), (8, 0.8), (10, 0.9), (12, 0.9)]  # best at 4, then 4 without a gain
    for step, value in curve:
        watch.update(step, value, 1.0)
    validation = [{"step": s, "macro_f1": v} for s, v in curve]
    assert convergence(plan, watch, "max_steps", validation, patience=3)["under_trained"] is False
    assert convergence(plan, watch, "max_steps", validation[:4], patience=3)["under_trained"] is True  # 2 after best
    assert convergence(plan, watch, "early_stopping", validation, patience=3)["under_trained"] is False
    unknown = convergence(plan, EarlyStopping(mode="max"), "max_minutes", [], patience=3)
    assert unknown["under_trained"] is None and "no validation" in unknown["under_trained_reason"]
    # the default budget is sized to converge: running it out is not a user's cap
    assert convergence(plan, watch, "budget", validation[:4], patience=3)["under_trained"] is False


# ---------------------------------------------------------------------------------------------
# Bad input is refused before any weights load


def test_one_class_is_refused_before_the_model_loads(tmp_path):
    frame = toy_frame(24)
    frame["label"] = "order_status"
    missing_model = str(tmp_path / "no-such-model")  # loading it would fail with another error
    with pytest.raises(TrainError, match="every training row has the label 'order_status'.*at least two classes"):
        train("classify", frame, None, config=quick(), model_spec=missing_model)


def test_fewer_rows_than_a_batch_is_refused_before_the_model_loads(tmp_path):
    with pytest.raises(TrainError, match=r"5 training rows is fewer than one batch \(train.batch_size = 8\)"):
        train(
            "generate",
            toy_frame(5),
            None,
            config=quick(),
            model_spec=str(tmp_path / "no-such-model"),
            source="runs/x/split/train.parquet",
        )


def test_bad_settings_are_refused_by_the_config():
    with pytest.raises(ValueError, match="max_length 600 is above max_length_cap 512"):
        TrainConfig(max_length=600)
    with pytest.raises(ValueError, match="unknown perturbation"):
        TrainConfig(augment=1, augment_kinds=["shouting"])
    with pytest.raises(ValueError, match="extra"):
        TrainConfig(learnig_rate=1e-4)


# ---------------------------------------------------------------------------------------------
# Training the tiny model


def test_classifier_head_learns_and_writes_its_outputs(tiny_llm, tmp_path):
    # every layer adapted: a random 2-layer model learns little through its top layer alone
    result = train(
        "classify",
        toy_frame(48),
        toy_frame(24, seed=1, prefix="v"),
        config=quick(max_steps=20, eval_every=10, lora_layers=2),
        model_spec=tiny_llm,
        out_dir=tmp_path / "run",
        seed=0,
    )
    losses = [p["loss"] for p in result.curves["train"]]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    assert result.curves["validation"][-1]["accuracy"] > 0.6  # chance is 1/3
    for name in (
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "curves.json",
        "curves.png",
        "train_summary.json",
    ):
        assert (tmp_path / "run" / name).exists(), name
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["best_step"] == result.curves["best_step"] and summary["plan"]["labels"] == sorted(LABEL_WORDS)


def test_reply_training_lowers_the_reply_loss(tiny_llm):
    result = train(
        "generate",
        toy_frame(48),
        toy_frame(16, seed=1, prefix="v"),
        config=quick(max_steps=16, eval_every=4, learning_rate=1e-2, early_stopping=False),
        model_spec=tiny_llm,
        seed=0,
    )
    # a random 64-wide model behind frozen, tied 49k-token embeddings learns slowly: a clear, not a big, fall
    validation_loss = [e["loss"] for e in result.curves["validation"]]
    assert validation_loss[-1] < validation_loss[0] - 0.15
    losses = [p["loss"] for p in result.curves["train"]]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_resumed_run_matches_an_uninterrupted_one(tiny_llm, tmp_path):
    frame, validation = toy_frame(40), toy_frame(12, seed=1, prefix="v")
    settings = quick(max_steps=6, eval_every=2, checkpoint_every=3, early_stopping=False)
    straight = train("generate", frame, validation, config=settings, model_spec=tiny_llm, out_dir=tmp_path / "a")
    first = train(
        "generate", frame, validation, config=settings, model_spec=tiny_llm, out_dir=tmp_path / "b", stop_after_steps=3
    )  # "killed" after step 3, its checkpoint written
    assert first.summary["stop_reason"] == "interrupted" and first.summary["steps_done"] == 3
    resumed = train("generate", frame, validation, config=settings, model_spec=tiny_llm, out_dir=tmp_path / "b")
    assert resumed.summary["resumed_from_step"] == 3
    assert [p["loss"] for p in resumed.curves["train"]] == pytest.approx(
        [p["loss"] for p in straight.curves["train"]], abs=1e-6
    )
    assert resumed.curves["validation"] == straight.curves["validation"]
    a, b = trainable_state(straight.model), trainable_state(resumed.model)
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_gradient_checkpointing_changes_memory_not_results(tiny_llm):
    frame = toy_frame(24)
    runs = [
        train("generate", frame, None, config=quick(max_steps=3, gradient_checkpointing=flag), model_spec=tiny_llm)
        for flag in (False, True)
    ]
    assert runs[0].summary["runtime"]["checkpoint_every_n_layers"] is None
    assert runs[1].summary["runtime"]["checkpoint_every_n_layers"] == 1
    assert any(getattr(m, "gradient_checkpointing", False) is True for m in runs[1].model.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) is True for m in runs[0].model.modules())
    assert [p["loss"] for p in runs[1].curves["train"]] == pytest.approx(
        [p["loss"] for p in runs[0].curves["train"]], abs=1e-6
    )


def test_changed_settings_do_not_resume_an_old_checkpoint(tiny_llm, tmp_path):
    frame = toy_frame(24)
    train("classify", frame, None, config=quick(max_steps=4), model_spec=tiny_llm, out_dir=tmp_path, stop_after_steps=2)
    again = train(
        "classify", frame, None, config=quick(max_steps=4, learning_rate=1e-3), model_spec=tiny_llm, out_dir=tmp_path
    )
    assert again.summary["resumed_from_step"] is None and again.summary["steps_done"] == 4


def test_non_finite_loss_stops_with_advice_and_keeps_the_last_good_checkpoint(tiny_llm, tmp_path, monkeypatch):
    import tunewise.training.recipe as recipe

    # RMSNorm keeps a small fp32 model finite even at absurd learning rates, so the fault is
    # injected: from the third training forward pass on, the model's loss is NaN (what a
    # diverging fp16 run or a corrupt batch produces). The recipe's handling is what is tested.
    build_real_model = recipe.build_for_plan

    def build_model_that_diverges(*args, **kwargs):
        built = build_real_model(*args, **kwargs)
        calls = {"training": 0}

        def poison(module, inputs, output):
            if module.training:
                calls["training"] += 1
                if calls["training"] >= 3:
                    return output[0] * float("nan"), output[1]
            return output

        built.loss_module.register_forward_hook(poison)
        return built

    monkeypatch.setattr(recipe, "build_for_plan", build_model_that_diverges)
    with pytest.raises(
        TrainError,
        match=r"loss became nan at step 3.*last good checkpoint \(step 2\).*"
        r"Lower train.learning_rate \(e.g. to 1.[23]e-03\)",
    ):
        train(
            "classify",
            toy_frame(64),
            None,
            config=quick(max_steps=10, checkpoint_every=1),
            model_spec=tiny_llm,
            out_dir=tmp_path,
        )
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    assert latest == "step-000002"
    state = json.loads((tmp_path / "checkpoints" / latest / "state.json").read_text())
    assert [p["step"] for p in state["train"]] == [1, 2] and all(math.isfinite(p["loss"]) for p in state["train"])


def test_merged_export_gives_the_adapter_models_logits(tiny_llm, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from tunewise.workflows.export import CLASSIFIER_KWARGS, export

    run_dir = tmp_path / "run"
    train(
        "classify",
        toy_frame(32),
        None,
        config=quick(max_steps=6),
        model_spec=tiny_llm,
        out_dir=run_dir / "train" / "lora_llm",
    )
    train(
        "generate",
        toy_frame(32),
        None,
        config=quick(max_steps=4),
        model_spec=tiny_llm,
        out_dir=run_dir / "train" / "lora_llm_gen",
    )
    texts = ["hi, where is my order 1234 please", "I was locked out of my account"]
    for candidate, auto in (("lora_llm", AutoModelForSequenceClassification), ("lora_llm_gen", AutoModelForCausalLM)):
        adapter_dir = export(run_dir, merge=False, candidate=candidate)
        merged_dir = export(run_dir, merge=True, candidate=candidate)
        assert not (adapter_dir / "model.safetensors").exists() and (merged_dir / "model.safetensors").exists()
        kwargs = json.loads((adapter_dir / CLASSIFIER_KWARGS).read_text()) if candidate == "lora_llm" else {}
        adapter = auto.from_pretrained(adapter_dir, **kwargs).eval()  # plain transformers (+ peft for the adapter)
        merged = auto.from_pretrained(merged_dir).eval()
        assert type(adapter).__name__ == type(merged).__name__ and "Peft" not in type(merged).__name__
        batch = AutoTokenizer.from_pretrained(merged_dir)(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            difference = (adapter(**batch).logits - merged(**batch).logits).abs().max().item()
        assert difference <= 1e-4
        if candidate == "lora_llm":
            assert merged.config.id2label[0] == "account_login"


def test_dry_run_reports_tokens_steps_memory_and_costs(tiny_llm):
    report = dry_run("classify", toy_frame(48), None, config=quick(epochs=2), model_spec=tiny_llm, calibration_steps=2)
    plan = report["plan"]
    assert plan["epochs"] == 2 and plan["total_steps"] == 2 * math.ceil(48 / 8)
    assert report["tokens_total"] == 2 * plan["tokens_per_epoch"]
    assert report["this_machine"]["tokens_per_second"] > 0 and report["this_machine"]["seconds"] > 0
    assert report["memory"]["estimate_mib"] > 0 and report["memory"]["measured_peak_rss_mib"] > 0
    gpus = {g["gpu"]: g for g in report["reference_gpus"]}
    assert set(gpus) == {"A10G", "L4", "A100-40GB", "H100"}
    assert gpus["H100"]["seconds"] < gpus["A10G"]["seconds"]
    expected = 4 * (report["parameters"] - report["trainable_parameters"]) * report["tokens_total"]
    assert report["flops"]["total"] == expected
    # time to convergence: every planned step plus its validations, here and on the reference GPUs
    with_validation = dry_run(
        "classify",
        toy_frame(48),
        toy_frame(12, seed=1, prefix="v"),
        config=quick(max_minutes=1e-4),
        model_spec=tiny_llm,
        calibration_steps=2,
    )
    convergence = with_validation["convergence"]
    assert convergence["steps"] == with_validation["plan"]["total_steps"] and convergence["step_cap"] == "budget"
    assert convergence["validations"] >= 4 and convergence["validation_rows"] == 12
    assert convergence["this_machine_seconds"] > with_validation["this_machine"]["seconds"] > 0
    assert set(convergence["reference_gpus"]) == set(gpus)
    assert convergence["steps_within_max_minutes"] < convergence["steps"] and "under-trained" in convergence["warning"]


# ---------------------------------------------------------------------------------------------
# The stage, on the tiny model


def test_train_stage_writes_adapters_curves_and_predictions(tiny_llm, tmp_path):
    from tunewise.config.sections import config_from_dict
    from tunewise.pipeline.runner import StageContext
    from tunewise.pipeline.stages import train as train_stage

    cfg = config_from_dict(
        {"task": "classify", "data": {"train": "x.csv"}, "models": {"llm": tiny_llm}}, base_dir=tmp_path
    )
    run_dir = tmp_path / "runs" / "r1"
    for name, frame in (
        ("train", toy_frame(40)),
        ("validation", toy_frame(12, 1, "v")),
        ("test", toy_frame(15, 2, "t")),
    ):
        (run_dir / "split").mkdir(parents=True, exist_ok=True)
        frame.to_parquet(run_dir / "split" / f"{name}.parquet")
    # sample_size below the test rows: the LoRA classifier still predicts every row (only generation samples)
    cfg = cfg.model_copy(update={"train": quick(candidates=["lora_llm"], max_steps=8, sample_size=5)})
    metrics = train_stage.run(StageContext(cfg, run_dir, "train"))
    out = run_dir / "train"
    assert set(metrics["candidates"]) == {"lora_llm"}
    assert metrics["candidates"]["lora_llm"]["stop_reason"] in ("max_steps", "early_stopping")
    assert isinstance(metrics["candidates"]["lora_llm"]["under_trained"], bool)
    entry = json.loads((out / "summary.json").read_text())["candidates"][0]
    assert entry["n_scored"] == {"test": 15, "validation": 12} and entry["expensive"] is False
    validation_predictions = pd.read_parquet(out / "predictions" / "lora_llm.validation.parquet")
    assert sorted(validation_predictions["id"]) == sorted(toy_frame(12, 1, "v")["id"])
    for name in (
        "lora_llm/adapter/adapter_model.safetensors",
        "lora_llm/curves.json",
        "lora_llm/curves.png",
        "lora_llm/train_summary.json",
        "predictions/lora_llm.parquet",
        "predictions/lora_llm.validation.parquet",
        "summary.json",
    ):
        assert (out / name).exists(), name
    test_predictions = pd.read_parquet(out / "predictions" / "lora_llm.parquet")
    assert test_predictions["id"].tolist() == toy_frame(15, 2, "t")["id"].tolist()
    assert list(test_predictions.columns) == ["id", "prediction", "score", "proba", "latency_ms"]
    assert not (run_dir / "_checkpoints" / "train" / "lora_llm").exists()  # removed once finished
    # the saved adapter gives back the same predictions (evaluation and serving load it this way)
    from tunewise.candidates.finetuned import LoraClassifier

    reloaded = LoraClassifier.from_trained(out / "lora_llm" / "adapter").predict(toy_frame(15, 2, "t"))
    assert reloaded["prediction"].tolist() == test_predictions["prediction"].tolist()
    # the reload runs bf16 where the CPU has it natively, the stage ran fp32: bf16's rounding, no more
    assert np.allclose(np.stack(reloaded["proba"]), np.stack(test_predictions["proba"]), atol=5e-3)


def test_an_interrupted_stage_restores_finished_candidates_instead_of_retraining(tiny_llm, tmp_path, monkeypatch):
    from tunewise.config.sections import config_from_dict
    from tunewise.pipeline.runner import StageContext
    from tunewise.pipeline.stages import train as train_stage

    cfg = config_from_dict(
        {"task": "classify", "data": {"train": "x.csv"}, "models": {"llm": tiny_llm}}, base_dir=tmp_path
    )
    cfg = cfg.model_copy(update={"train": quick(candidates=["lora_llm", "encoder_ft"], max_steps=2)})
    run_dir = tmp_path / "runs" / "r1"
    for name, frame in (
        ("train", toy_frame(40)),
        ("validation", toy_frame(12, 1, "v")),
        ("test", toy_frame(15, 2, "t")),
    ):
        (run_dir / "split").mkdir(parents=True, exist_ok=True)
        frame.to_parquet(run_dir / "split" / f"{name}.parquet")
    real = train_stage._train_one
    trained: list[str] = []

    def killed_at_the_second(ctx, name, frames, samples):
        if name == "encoder_ft":
            raise KeyboardInterrupt  # the process is stopped while the second candidate trains
        trained.append(name)
        return real(ctx, name, frames, samples)

    monkeypatch.setattr(train_stage, "_train_one", killed_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        train_stage.run(StageContext(cfg, run_dir, "train"))
    first = (run_dir / "train" / "lora_llm" / "adapter" / "adapter_model.safetensors").read_bytes()
    # the runner starts a stage that did not finish from a clean folder
    import shutil

    shutil.rmtree(run_dir / "train")
    (run_dir / "train").mkdir()

    def counting(ctx, name, frames, samples):
        trained.append(name)
        return real(ctx, name, frames, samples)

    monkeypatch.setattr(train_stage, "_train_one", counting)
    metrics = train_stage.run(StageContext(cfg, run_dir, "train"))
    assert trained == ["lora_llm", "encoder_ft"]  # lora_llm trained once, in the first attempt
    assert set(metrics["candidates"]) == {"lora_llm", "encoder_ft"}
    assert (run_dir / "train" / "lora_llm" / "adapter" / "adapter_model.safetensors").read_bytes() == first
    assert (run_dir / "train" / "predictions" / "lora_llm.parquet").exists()
    assert not (run_dir / "_checkpoints" / "train").exists()


def test_the_thread_probe_takes_the_median_round_so_a_burst_does_not_pick_one_thread():
    from tunewise.training.runtime import PROBE_ROUNDS, _fastest_thread_count, threads_from_probe

    quiet = [1.3, 1.25, 1.4, 1.28, 1.35]  # one/two-thread time of the probe rounds on an idle 2-core machine
    assert threads_from_probe(quiet, 2) == 2
    # the second core taken away for one round (0.5) or two: the old single pair would have picked 1 thread
    assert threads_from_probe([1.3, 0.5, 1.4, 1.28, 1.35], 2) == 2
    assert threads_from_probe([0.52, 0.5, 1.4, 1.28, 1.35], 2) == 2
    # cores busy with other processes in every round: one thread is clearly faster
    assert threads_from_probe([0.2, 0.35, 0.5, 0.18, 0.3], 2) == 1
    assert threads_from_probe([0.75, 0.8, 0.9, 0.72, 0.85], 2) == 2  # barely faster on one: not worth losing the second
    assert PROBE_ROUNDS >= 3 and _fastest_thread_count(1) == 1


def test_train_stage_refuses_a_candidate_of_another_task():
    from tunewise.pipeline.runner import StageError
    from tunewise.pipeline.stages.train import resolve_candidates

    with pytest.raises(StageError, match="'lora_llm_gen' is a finetuned generate candidate"):
        resolve_candidates("classify", ["lora_llm_gen"])
    with pytest.raises(StageError, match="'tfidf_lr' is a cheap classify candidate"):
        resolve_candidates("classify", ["tfidf_lr"])
    assert resolve_candidates("generate", None) == ["lora_llm_gen"]


# ---------------------------------------------------------------------------------------------
# Perturbations (shared with evaluation's robustness test)


def test_perturbations_are_deterministic_and_change_the_text():
    from tunewise.core.perturb import PERTURBATIONS, augment_frame, perturb

    text = "Hello, where is my order 12345? It was due on Monday."
    for kind in PERTURBATIONS:
        once, twice = perturb(text, kind, seed=7), perturb(text, kind, seed=7)
        assert once == twice
        assert once != text, kind
    frame = toy_frame(9)
    copies = augment_frame(frame, 2, seed=1)
    assert copies["id"].str.contains("~aug").all() and copies["synthetic"].all()
    assert (
        copies["label"].to_numpy() == frame.set_index("id").loc[copies["id"].str.split("~").str[0], "label"].to_numpy()
    ).all()
    assert copies.equals(augment_frame(frame, 2, seed=1))


# ---------------------------------------------------------------------------------------------
# The real embedded LLM


@pytest.mark.slow
def test_real_llm_trains_a_few_steps_and_generates_with_its_adapter(tmp_path):
    import tunewise.candidates.finetuned  # noqa: F401  registers the fine-tuned candidates
    from tunewise.candidates.registry import check_predictions, make_candidate
    from tunewise.demo.data import generate_demo

    files = generate_demo(tmp_path / "demo", task="generate", n_rows=200, n_test=20)
    raw = pd.read_csv(files.data).dropna(subset=["text", "reply"])
    raw = raw[raw["reply"].str.strip() != ""].head(40)
    frame = pd.DataFrame({"id": raw["id"].astype(str), "input": raw["text"], "context": "[]", "target": raw["reply"]})
    candidate = make_candidate(
        "lora_llm_gen",
        train_config=quick(max_steps=4, batch_size=2, max_length=64, learning_rate=2e-4, max_new_tokens=12),
        output_dir=str(tmp_path / "out"),
        batch_size=2,
    )
    candidate.fit(frame)
    losses = [p["loss"] for p in candidate.curves_["train"]]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert candidate.train_summary_["trainable_parameters"] < 0.05 * candidate.train_summary_["parameters"]
    predictions = candidate.predict(frame.head(2))
    check_predictions(predictions, frame.head(2), candidate)
    assert all(len(p) > 0 for p in predictions["prediction"])
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


def test_cached_frozen_layers_train_the_same_model_as_the_whole_forward(tiny_llm):
    """Adapters on the top layer only: caching the frozen layer's output changes the cost, not the numbers."""
    frame, validation = toy_frame(40), toy_frame(12, seed=1, prefix="v")
    runs = [
        train(
            "classify",
            frame,
            validation,
            config=quick(max_steps=6, eval_every=3, lora_layers=1, cache_frozen_layers=flag, early_stopping=False),
            model_spec=tiny_llm,
            seed=0,
        )
        for flag in (True, False)
    ]
    cached, whole = runs
    assert cached.summary["frozen_layers_cached"] and not whole.summary["frozen_layers_cached"]
    assert cached.summary["adapted_layers"] == whole.summary["adapted_layers"] == "2-2 of 2"
    assert [p["loss"] for p in cached.curves["train"]] == pytest.approx(
        [p["loss"] for p in whole.curves["train"]], abs=1e-5
    )
    assert [e["accuracy"] for e in cached.curves["validation"]] == [e["accuracy"] for e in whole.curves["validation"]]
    a, b = trainable_state(cached.model), trainable_state(whole.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    # only the adapted layer carries LoRA weights
    assert all(".layers.1." in k for k in a if "lora_" in k)


def test_activation_estimate_counts_only_the_layers_backward_needs():
    """Below the lowest adapter nothing requires grad, so autograd keeps nothing there: BANKING77's
    largest batch (16 x 92 tokens) on SmolLM2's sizes fits the default budget without checkpointing."""
    from types import SimpleNamespace

    from tunewise.training.runtime import activation_gib, layers_keeping_activations, resolve_runtime

    smollm2 = SimpleNamespace(num_hidden_layers=30, hidden_size=576, intermediate_size=1536)
    plan = SimpleNamespace(method="lora", task="classify", batch_size=16, longest=92, world_size=1)
    config = TrainConfig(num_threads=1)
    assert layers_keeping_activations(config, plan, smollm2) == 10
    assert layers_keeping_activations(config.model_copy(update={"lora_layers": 4}), plan, smollm2) == 4
    assert layers_keeping_activations(config, SimpleNamespace(**{**vars(plan), "task": "generate"}), smollm2) == 30
    assert layers_keeping_activations(config, SimpleNamespace(**{**vars(plan), "method": "encoder"}), smollm2) == 30
    tokens = 16 * 92
    for precision in ("fp32", "bf16"):
        assert activation_gib(smollm2, tokens, precision, layers=10) == pytest.approx(
            activation_gib(smollm2, tokens, precision) / 3
        )
    runtime = resolve_runtime(config.model_copy(update={"precision": "fp32"}), plan, smollm2)
    assert runtime.activation_gib == pytest.approx(activation_gib(smollm2, tokens, "fp32", layers=10), abs=1e-3)
    assert runtime.activation_gib_per_token == pytest.approx(activation_gib(smollm2, 1, "fp32", layers=10))
    # fp32 on 10 layers: 1.01 GiB, over the 0.75 budget: every 3rd layer recomputes (all 30: 3.0 GiB)
    assert runtime.checkpoint_every_n_layers == 3
    bf16 = activation_gib(smollm2, tokens, "bf16", layers=10)
    assert bf16 < config.activation_memory_gib < activation_gib(smollm2, tokens, "bf16")


def test_classify_adapts_the_top_third_by_default_and_generate_every_layer(tiny_llm):
    classify = train("classify", toy_frame(24), None, config=quick(max_steps=2), model_spec=tiny_llm)
    generate = train("generate", toy_frame(24), None, config=quick(max_steps=2), model_spec=tiny_llm)
    assert classify.summary["adapted_layers"] == "2-2 of 2" and classify.summary["frozen_layers_cached"]
    assert generate.summary["adapted_layers"] == "1-2 of 2" and not generate.summary["frozen_layers_cached"]
    # short classify rows on a CPU train with eager attention; replies keep SDPA
    assert classify.summary["attention"] == "eager" and generate.summary["attention"] == "sdpa"
    with pytest.raises(TrainError, match="lora_layers = 3"):
        train("classify", toy_frame(24), None, config=quick(max_steps=2, lora_layers=3), model_spec=tiny_llm)


def test_importing_the_training_package_imports_no_torch_and_its_modules_share_one_ignored_label():
    # importing torch takes seconds: only tunewise.training.modules imports it at its top, on use
    code = "import sys, tunewise.training; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    from tunewise.training import modules

    assert modules.IGNORE_INDEX == IGNORE_INDEX  # one definition, in training.data (no torch)


def test_the_out_of_scope_class_weighs_like_an_average_class_in_the_loss(tiny_llm, tmp_path):
    import torch

    from tunewise.training.data import class_loss_weights
    from tunewise.training.modules import ClassificationLoss

    # 16 rows for each of 3 intents, 32 pooled out-of-scope rows: balanced weight 16 / 32
    in_scope = toy_frame(48)
    rng = np.random.default_rng(3)
    topics = ["weather", "football scores", "a pasta recipe", "the capital of Peru"]
    out_of_scope = in_scope.head(32).copy()
    out_of_scope["id"] = [f"o{i}" for i in range(32)]
    out_of_scope["input"] = [f"tell me about {topics[i % 4]} {rng.integers(100)}" for i in range(32)]
    out_of_scope["label"] = "out_of_scope"
    rows = pd.concat([in_scope, out_of_scope], ignore_index=True)
    labels = sorted(rows["label"].unique())
    weights = class_loss_weights(labels, rows["label"], "out_of_scope", "balanced")
    assert weights["weight"] == 0.5 and weights["rows"] == 32 and weights["mean_in_scope_rows"] == 16
    assert weights["weights"] == [0.5 if label == "out_of_scope" else 1.0 for label in labels]
    assert class_loss_weights(labels, rows["label"], "out_of_scope", 0.25)["weight"] == 0.25
    assert class_loss_weights(labels, rows["label"], None, "balanced") is None  # no label named
    in_scope_labels = sorted(in_scope["label"].unique())
    assert class_loss_weights(in_scope_labels, in_scope["label"], "out_of_scope", "balanced") is None  # no such class
    assert class_loss_weights(labels, in_scope["label"], "out_of_scope", "balanced") is None  # no such rows
    # fewer out-of-scope rows than an average class: never weighted up
    few = pd.concat([in_scope, out_of_scope.head(4)], ignore_index=True)
    assert class_loss_weights(labels, few["label"], "out_of_scope", "balanced")["weight"] == 1.0

    # the loss: each row's cross-entropy times its class's weight, summed, over the row count
    torch.manual_seed(0)
    head = torch.nn.Linear(4, len(labels))
    loss = ClassificationLoss(lambda input_ids, attention_mask: head(input_ids.float()))
    features, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, -1])
    plain, count = loss(features, None, targets)
    loss.set_class_weight(weights["weights"])
    weighted, _ = loss(features, None, targets)
    per_row = torch.nn.functional.cross_entropy(head(features[:5]), targets[:5], reduction="none")
    oos = labels.index("out_of_scope")
    expected = sum(float(r) * (0.5 if int(t) == oos else 1.0) for r, t in zip(per_row.detach(), targets[:5]))
    assert int(count) == 5 and float(plain) == pytest.approx(float(per_row.sum()), rel=1e-5)
    assert float(weighted) == pytest.approx(expected, rel=1e-5) and float(weighted) < float(plain)

    # a real run weights the class it was told about and says so in its summary. One epoch at a
    # learning rate too small to move the weights: every batch's loss is the starting model's, so
    # the weighted run's losses are the same except on batches with out-of-scope rows, lower there
    still = quick(max_steps=10, learning_rate=1e-12)
    result = train(
        "classify",
        rows,
        None,
        config=still,
        model_spec=tiny_llm,
        out_dir=tmp_path / "run",
        seed=0,
        out_of_scope_label="out_of_scope",
    )
    recorded = json.loads((tmp_path / "run" / "train_summary.json").read_text())["out_of_scope_weight"]
    assert recorded == {k: v for k, v in weights.items() if k != "weights"} == result.summary["out_of_scope_weight"]
    unweighted = train("classify", rows, None, config=still, model_spec=tiny_llm, seed=0)
    assert unweighted.summary["out_of_scope_weight"] is None
    losses = [(w["loss"], u["loss"]) for w, u in zip(result.curves["train"], unweighted.curves["train"], strict=True)]
    assert len(losses) == 10 and all(w <= u + 1e-6 for w, u in losses) and any(w < u - 1e-3 for w, u in losses)
