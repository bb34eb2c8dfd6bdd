"""Fine-tuned candidates, behind the predict contract of tunewise.candidates.registry.

- ``lora_llm`` (classify): the base LLM with a classification head, LoRA on its projections.
- ``lora_llm_gen`` (generate): the base LLM fine-tuned with LoRA on the replies (chat template).
- ``encoder_ft`` (classify): the small sentence encoder fine-tuned in full, mean pooling, linear head.

``fit`` runs the recipe in :mod:`tunewise.training` (the training settings are one ``TrainConfig``);
``predict`` runs the trained model. torch and transformers load only when a candidate is fitted.
The classifiers (``lora_llm``, ``encoder_ft``) predict every test and validation row; only the
generator (``lora_llm_gen``, ``expensive``: a generation per row) predicts the paired sample.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from tunewise.candidates.base import (
    Candidate,
    CandidateError,
    candidate_class,
    classification_predictions,
    generation_predictions,
    register_candidate,
)
from tunewise.config.sections import TrainConfig
from tunewise.models.loading import DEFAULT_ENCODER, DEFAULT_LLM
from tunewise.training import (
    TrainError,
    classifier_probabilities,
    encode_classification,
    generate_texts,
    load_trained,
    train as run_training,
)
from tunewise.training.runtime import native_bf16

PROGRESS_MIN_ROWS = 1000  # predictions over at least this many rows show progress (a data set, not a request)

__all__ = [
    "DEFAULT_FINETUNED",
    "EncoderFineTuned",
    "FineTunedCandidate",
    "LoraClassifier",
    "LoraGenerator",
    "load_candidate",
    "torch_threads",
]

# What the train stage trains when train.candidates is not set.
DEFAULT_FINETUNED: dict[str, tuple[str, ...]] = {
    "classify": ("lora_llm", "encoder_ft"),
    "generate": ("lora_llm_gen",),
}


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` (None: unchanged) for the block, then restored."""
    import torch

    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FineTunedCandidate(Candidate):
    """What the fine-tuned candidates share: training in ``fit``, the trained model in ``predict``."""

    kind = "finetuned"
    method: ClassVar[str]  # "lora" or "encoder": the recipe's method

    # Set by subclasses' constructors; listed here for type checkers.
    train_config: Any
    offline: bool
    trust_remote_code: bool
    seed: int
    output_dir: str | None
    checkpoint_dir: str | None
    out_of_scope_label: str | None = None  # the classifiers: the class train.out_of_scope_weight weights

    def _model_spec(self) -> str:
        raise NotImplementedError

    def _set_settings(
        self,
        offline: bool,
        trust_remote_code: bool,
        train_config: Any,
        seed: int,
        output_dir: str | None,
        checkpoint_dir: str | None,
    ) -> None:
        # Each subclass keeps an explicit __init__ signature (get_params reads it, as in scikit-learn);
        # the settings they share are stored here once.
        self.offline = offline
        self.trust_remote_code = trust_remote_code
        self.train_config = train_config
        self.seed = seed
        self.output_dir = output_dir
        self.checkpoint_dir = checkpoint_dir

    def _config(self) -> Any:

        if self.train_config is None:
            return TrainConfig()
        if isinstance(self.train_config, TrainConfig):
            return self.train_config
        try:
            return TrainConfig.model_validate(self.train_config)
        except Exception as exc:  # pydantic's ValidationError, reworded with the candidate's name
            raise CandidateError(f"{self.name}: train_config is not valid: {exc}") from None

    def fit(self, train: pd.DataFrame, validation: pd.DataFrame | None = None) -> FineTunedCandidate:

        self._training_answers(train)  # the contract's checks (column present, no missing answers)
        try:
            result = run_training(
                self.task,
                train,
                validation,
                method=self.method,
                config=self._config(),
                model_spec=self._model_spec(),
                offline=self.offline,
                trust_remote_code=self.trust_remote_code,
                out_dir=self.output_dir,
                checkpoint_dir=self.checkpoint_dir,
                seed=self.seed,
                name=self.name,
                out_of_scope_label=self.out_of_scope_label,
            )
        except TrainError as exc:
            raise CandidateError(str(exc)) from None
        self._set_trained(
            result.model,
            result.tokenizer,
            result.labels,
            result.pad_id,
            result.device,
            result.precision,
            result.max_length,
            result.system_prompt,
            result.summary["runtime"]["threads"],
        )
        self.train_summary_ = result.summary
        self.curves_ = result.curves
        return self

    def _set_trained(
        self,
        model: Any,
        tokenizer: Any,
        labels: list[str],
        pad_id: int,
        device: str,
        precision: str,
        max_length: int,
        system_prompt: str | None,
        threads: int | None = None,
    ) -> None:
        if hasattr(model, "merge_adapter"):  # LoRA folded into the weights: predictions skip the extra matmuls
            model.merge_adapter()
        self.model_ = model
        self.tokenizer_ = tokenizer
        self.pad_id_ = pad_id
        self.device_ = device
        self.precision_ = precision
        self.max_length_ = max_length
        self.system_prompt_ = system_prompt
        self.threads_ = threads
        if self.task == "classify":
            self.labels_ = list(labels)

    def _torch_threads(self) -> contextlib.AbstractContextManager:
        """Predict with the thread count training used (the process default may differ)."""
        return torch_threads(self.threads_)

    @classmethod
    def from_trained(cls, adapter_dir: str | Path, **kwargs: Any) -> FineTunedCandidate:
        """A fitted candidate from the ``adapter/`` folder a train run wrote (for evaluation and serving)."""

        model, tokenizer, info = load_trained(adapter_dir, trust_remote_code=kwargs.get("trust_remote_code", False))
        precision = "bf16" if native_bf16("cpu") else "fp32"
        if info["task"] != cls.task or info["method"] != cls.method:
            raise CandidateError(
                f"{adapter_dir}: trained as {info['method']} for {info['task']}, not a {cls.name} model"
            )
        candidate = cls(**kwargs)
        candidate._set_trained(
            model,
            tokenizer,
            info.get("labels", []),
            int(tokenizer.pad_token_id),
            "cpu",
            precision,
            int(info["max_length"]),
            info.get("system_prompt"),
        )
        return candidate


class _Classifier(FineTunedCandidate):
    task = "classify"

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()

        started = time.perf_counter()
        examples = encode_classification(self.tokenizer_, frame, self.labels_, self.max_length_) if len(frame) else []
        if examples:
            with self._torch_threads():
                # progress for a data set, not for a serving batch
                shown = f"{self.name}: scoring" if len(examples) >= PROGRESS_MIN_ROWS else None
                proba = classifier_probabilities(
                    self.model_,
                    examples,
                    pad_id=self.pad_id_,
                    device=self.device_,
                    precision=self.precision_,
                    description=shown,
                )
        else:
            proba = np.zeros((0, len(self.labels_)))
        latency = (time.perf_counter() - started) * 1000 / max(len(frame), 1)
        return classification_predictions(frame, self.labels_, proba, latency)


@register_candidate
class LoraClassifier(_Classifier):
    """The base LLM with a classification head (LlamaForSequenceClassification); LoRA + the new head trained."""

    name = "lora_llm"
    method = "lora"
    # One LLM forward pass per row, batched and length-sorted: thousands of rows a minute (BANKING77's
    # 3,080 test rows in 28 s), so it scores the whole test and validation sets, not a sample; the
    # evaluate stage loads it from the train stage (load_candidate), it never refits it.
    expensive = False

    def __init__(
        self,
        llm: str = DEFAULT_LLM,
        offline: bool = True,
        trust_remote_code: bool = False,
        train_config: Any = None,
        seed: int = 0,
        output_dir: str | None = None,
        checkpoint_dir: str | None = None,
        out_of_scope_label: str = "out_of_scope",
    ) -> None:
        self.llm = llm
        self.out_of_scope_label = out_of_scope_label
        self._set_settings(offline, trust_remote_code, train_config, seed, output_dir, checkpoint_dir)

    def _model_spec(self) -> str:
        return self.llm


@register_candidate
class EncoderFineTuned(_Classifier):
    """The sentence encoder fine-tuned in full with a linear head on mean-pooled tokens."""

    name = "encoder_ft"
    method = "encoder"

    def __init__(
        self,
        encoder: str = DEFAULT_ENCODER,
        offline: bool = True,
        trust_remote_code: bool = False,
        train_config: Any = None,
        seed: int = 0,
        output_dir: str | None = None,
        checkpoint_dir: str | None = None,
        out_of_scope_label: str = "out_of_scope",
    ) -> None:
        self.encoder = encoder
        self.out_of_scope_label = out_of_scope_label
        self._set_settings(offline, trust_remote_code, train_config, seed, output_dir, checkpoint_dir)

    def _model_spec(self) -> str:
        return self.encoder


@register_candidate
class LoraGenerator(FineTunedCandidate):
    """The base LLM fine-tuned with LoRA on the replies; greedy decoding."""

    name = "lora_llm_gen"
    task = "generate"
    method = "lora"
    expensive = True  # generation: many LLM forward passes per example

    def __init__(
        self,
        llm: str = DEFAULT_LLM,
        offline: bool = True,
        trust_remote_code: bool = False,
        train_config: Any = None,
        seed: int = 0,
        output_dir: str | None = None,
        checkpoint_dir: str | None = None,
        batch_size: int = 8,
    ) -> None:
        self.llm = llm
        self._set_settings(offline, trust_remote_code, train_config, seed, output_dir, checkpoint_dir)
        self.batch_size = batch_size

    def _model_spec(self) -> str:
        return self.llm

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted()

        if not len(frame):
            return generation_predictions(frame, [], 0.0)
        with self._torch_threads():
            replies, latency = generate_texts(
                self.model_,
                self.tokenizer_,
                frame,
                system_prompt=self.system_prompt_,
                max_new_tokens=self._config().max_new_tokens,
                batch_size=self.batch_size,
                description=self.name,
            )
        return generation_predictions(frame, replies, latency)


def load_candidate(train_dir: str | Path, name: str, **kwargs: Any) -> FineTunedCandidate:
    """The fitted candidate ``name`` from a train stage folder (``runs/<id>/train``): evaluation, serving."""
    cls = candidate_class(name)
    if not issubclass(cls, FineTunedCandidate):
        raise CandidateError(f"{name!r} is a {cls.kind} candidate, not a fine-tuned one")
    adapter_dir = Path(train_dir) / name / "adapter"
    if not (adapter_dir / "tunewise_train.json").exists():
        raise CandidateError(f"{adapter_dir}: no trained model (run `tunewise train`)")
    return cls.from_trained(adapter_dir, **kwargs)
