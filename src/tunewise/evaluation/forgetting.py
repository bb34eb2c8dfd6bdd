"""Did fine-tuning cost general ability? A small probe run on the base and the fine-tuned LLM.

Two measures, both written here by the project (our own wording, no licensed data set):

- 30 short general questions with checkable answers (capitals, arithmetic, opposites, everyday
  facts), answered greedily; an answer counts when an accepted answer appears as whole words;
- perplexity on a few plain general-text paragraphs: a model that forgot ordinary language
  assigns them lower likelihood.

A small model answers few questions right; what matters is the change between base and
fine-tuned, not the level. ``run_probe`` takes a model and tokenizer, so the train stage's
adapter-loaded model can be passed as it is.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.core.text import containment_key
from tunewise.llm.chat import generate_replies
from tunewise.models.loading import load_llm

__all__ = [
    "PARAGRAPHS",
    "QUESTIONS",
    "ProbeResult",
    "answer_is_correct",
    "compare_probes",
    "find_finetuned_models",
    "load_finetuned",
    "perplexity",
    "run_probe",
]

# (question, accepted answers); answers are matched as whole words, case-insensitively.
QUESTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("What is the capital of France?", ("Paris",)),
    ("What is the capital of Japan?", ("Tokyo",)),
    ("What is the capital of Italy?", ("Rome",)),
    ("What is the capital of Germany?", ("Berlin",)),
    ("What is the capital of Spain?", ("Madrid",)),
    ("What is the capital of Egypt?", ("Cairo",)),
    ("What is the capital of Canada?", ("Ottawa",)),
    ("What is the capital of Russia?", ("Moscow",)),
    ("What is 2 plus 3?", ("5", "five")),
    ("What is 7 plus 8?", ("15", "fifteen")),
    ("What is 10 minus 4?", ("6", "six")),
    ("What is 6 times 7?", ("42", "forty-two", "forty two")),
    ("What is 9 times 3?", ("27", "twenty-seven", "twenty seven")),
    ("What is 100 divided by 4?", ("25", "twenty-five", "twenty five")),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the opposite of up?", ("down",)),
    ("What is the opposite of big?", ("small", "little", "tiny")),
    ("What is the opposite of day?", ("night",)),
    ("What is the opposite of open?", ("closed", "shut", "close")),
    ("What is the opposite of happy?", ("sad", "unhappy")),
    ("How many days are there in a week?", ("7", "seven")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What is frozen water called?", ("ice",)),
    ("Which day comes after Monday?", ("Tuesday",)),
    ("Which month comes after March?", ("April",)),
    ("What is the plural of mouse?", ("mice",)),
    ("Which planet do we live on?", ("Earth",)),
    ("What do bees make?", ("honey",)),
)

# Plain general text for perplexity, written for this probe.
PARAGRAPHS: tuple[str, ...] = (
    "The library opens at nine in the morning and closes at six in the evening. Visitors can borrow up to "
    "five books at a time and keep them for three weeks. Children's books are on the ground floor, next to "
    "the reading room.",
    "Rain fell all night, and by the morning the river had risen over its banks. Farmers moved their animals "
    "to higher fields, and the school in the valley stayed closed until the water went down.",
    "To make a simple tomato soup, soften an onion in a little oil, add chopped tomatoes and a cup of stock, "
    "and let it simmer for twenty minutes. Blend it until smooth and season it with salt and pepper.",
    "The train left the station a few minutes late. Most passengers read or looked out of the window as the "
    "city gave way to fields, small villages and, finally, the grey line of the sea.",
    "Regular exercise helps the heart and lungs work better. Even a brisk walk of half an hour a day can "
    "improve sleep, lift the mood and make everyday tasks feel easier.",
    "The museum's new exhibition shows tools and clothes from daily life two hundred years ago. Each room "
    "tells the story of one family, from the kitchen to the workshop.",
    "When the power went out, the neighbours gathered in the street with candles and torches. Someone brought "
    "a guitar, and the evening turned into an unplanned party that lasted until the lights came back.",
    "Plants need light, water and air to grow. Their leaves use sunlight to turn water and carbon dioxide into "
    "sugar, and they release oxygen into the air as they do so.",
)

SYSTEM_PROMPT = "Answer the question in a few words."


def answer_is_correct(reply: str, accepted: Sequence[str]) -> bool:
    """An accepted answer appears in the reply as whole words (case and punctuation ignored)."""
    padded = containment_key(reply)
    return any(containment_key(answer) in padded for answer in accepted)


@dataclass
class ProbeResult:
    accuracy: float
    perplexity: float
    answers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "perplexity": self.perplexity,
            "n_questions": len(self.answers),
            "answers": self.answers,
        }


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 4) -> float:
    """exp(mean token negative log-likelihood) over all ``texts`` (padding excluded)."""
    import torch

    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[start : start + batch_size]), return_tensors="pt", padding=True, padding_side="right"
            ).to(device)
            logits = model(**batch).logits[:, :-1].float()
            targets = batch["input_ids"][:, 1:]
            mask = batch["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            total_nll += float(nll[mask].sum())
            total_tokens += int(mask.sum())
    return math.exp(total_nll / max(total_tokens, 1))


def run_probe(model: Any, tokenizer: Any, *, batch_size: int = 8, max_new_tokens: int = 24) -> ProbeResult:
    """The general-ability probe on one model: question accuracy and paragraph perplexity."""
    conversations = [
        [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}] for q, _ in QUESTIONS
    ]
    replies, _ = generate_replies(
        model,
        tokenizer,
        conversations,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        description="forgetting probe",
    )
    answers = [
        {"question": q, "accepted": list(a), "reply": r, "correct": answer_is_correct(r, a)}
        for (q, a), r in zip(QUESTIONS, replies)
    ]
    accuracy = sum(x["correct"] for x in answers) / len(answers)
    return ProbeResult(accuracy, perplexity(model, tokenizer, PARAGRAPHS), answers)


def compare_probes(
    base: ProbeResult, tuned: ProbeResult, *, max_accuracy_drop: float = 0.10, max_perplexity_rise: float = 0.25
) -> dict[str, Any]:
    """Change from base to fine-tuned; flagged when accuracy falls by more than
    ``max_accuracy_drop`` (absolute) or perplexity rises by more than ``max_perplexity_rise``
    (relative). With 30 questions one answer is 3.3 points, so small changes are noise."""
    accuracy_change = tuned.accuracy - base.accuracy
    perplexity_change = tuned.perplexity / base.perplexity - 1 if base.perplexity else float("nan")
    flags = []
    if accuracy_change < -max_accuracy_drop:
        flags.append(
            f"general-question accuracy fell by {-accuracy_change:.0%} (from {base.accuracy:.0%} to {tuned.accuracy:.0%})"
        )
    if perplexity_change > max_perplexity_rise:
        flags.append(
            f"perplexity on general text rose by {perplexity_change:.0%} "
            f"(from {base.perplexity:.1f} to {tuned.perplexity:.1f})"
        )
    changed = [
        {
            "question": b["question"],
            "base": b["reply"],
            "tuned": t["reply"],
            "base_correct": b["correct"],
            "tuned_correct": t["correct"],
        }
        for b, t in zip(base.answers, tuned.answers)
        if b["correct"] != t["correct"]
    ]
    return {
        "base": {"accuracy": base.accuracy, "perplexity": base.perplexity},
        "tuned": {"accuracy": tuned.accuracy, "perplexity": tuned.perplexity},
        "accuracy_change": accuracy_change,
        "perplexity_change_relative": perplexity_change,
        "forgot": bool(flags),
        "flags": flags,
        "changed_answers": changed,
        "rule": f"accuracy drop > {max_accuracy_drop:.0%} absolute or perplexity rise > {max_perplexity_rise:.0%} relative",
    }


def find_finetuned_models(train_dir: str | Path) -> list[tuple[str, Path, str]]:
    """(name, folder, kind) of fine-tuned generative LLMs the train stage saved: PEFT adapter folders
    (``adapter_config.json``) and full model folders (``config.json`` with safetensors).

    Folders the train stage describes in ``tunewise_train.json`` count only when they hold a LoRA
    adapter for generation: a classifier (LLM with a classification head, or the fine-tuned
    encoder) never generates, so its general generation ability is not what it is used for.
    """
    root = Path(train_dir)
    if not root.is_dir():
        return []

    def candidate(folder: Path) -> tuple[str, bool]:
        info_path = folder / "tunewise_train.json"
        if not info_path.exists():
            return folder.name, True
        info = json.loads(info_path.read_text())
        return folder.parent.name, info.get("method") == "lora" and info.get("task") == "generate"

    found: list[tuple[str, Path, str]] = []
    seen: set[Path] = set()
    for marker in sorted(root.rglob("adapter_config.json")):
        seen.add(marker.parent)
        name, wanted = candidate(marker.parent)
        if wanted:
            found.append((name, marker.parent, "adapter"))
    for marker in sorted(root.rglob("config.json")):
        folder = marker.parent
        if folder in seen or not any(folder.glob("*.safetensors")):
            continue
        name, wanted = candidate(folder)
        if wanted:
            found.append((name, folder, "model"))
    return found


def load_finetuned(
    folder: Path, kind: str, base_spec: str, *, offline: bool = True, trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """Load a saved fine-tuned LLM: the base model with the adapter applied, or the full model."""

    if kind == "model":
        return load_llm(str(folder), offline=offline, trust_remote_code=trust_remote_code)
    from peft import PeftModel

    model, tokenizer = load_llm(base_spec, offline=offline, trust_remote_code=trust_remote_code)
    tuned = PeftModel.from_pretrained(model, str(folder))
    tuned.eval()
    return tuned, tokenizer
