"""Project configuration: ``tunewise.yaml`` validated with pydantic before any work starts.

Each pipeline stage reads one section; the stage cache hashes that section, so changing only the
evaluation settings re-runs evaluation and not training. Every field carries help text (PEFT's
habit): ``tunewise init`` writes it into the generated file as comments.

A wrong key or type is reported with its path, the file and line, and a suggestion:
``tunewise.yaml:14: unknown key 'learnig_rate' under train: did you mean 'learning_rate'?``
"""

from __future__ import annotations

import codecs
import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from tunewise.config.checks import (
    CheckSettings,
    EmptyGarbageSettings,
    ExactDuplicatesSettings,
    GenerationSettings,
    LabelConflictsSettings,
    LabelErrorsSettings,
    NearDuplicatesSettings,
    OffTopicSettings,
    PiiSettings,
    SemanticDuplicatesSettings,
    StandardiseSettings,
    ThinClassesSettings,
    TooLongSettings,
    TooShortSettings,
)
from tunewise.core.errors import TunewiseError
from tunewise.core.pricing import CPU_INSTANCES, REFERENCE_GPUS


class ConfigError(TunewiseError):
    """A config problem the user must fix; the message says where and how."""

    hint = "fix the setting named above in the config file; `tunewise init DATA_FILE` writes a commented example"


class Section(BaseModel):
    # forbid: a misspelt key must be an error, never silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnsConfig(Section):
    id: str | None = Field(None, description="column with a stable row id; default: row position")
    input: str | None = Field(None, description="text column (classify) or user-input column")
    label: str | None = Field(None, description="label column for classify")
    target: str | None = Field(None, description="reply column for generate")
    instruction: str | None = Field(None, description="instruction column (instruction/input/output records)")
    messages: str | None = Field(None, description="chat messages column (OpenAI format)")


class DataConfig(Section):
    train: str = Field(..., description="training data file (csv, tsv, jsonl, json, parquet)")
    test: str | None = Field(None, description="frozen held-out test file; when given it is the test set as it is")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = Field(
        "auto", description="file format of train; auto infers it from the extension and content"
    )
    test_format: Literal["auto", "csv", "tsv", "jsonl", "json", "parquet"] = Field(
        "auto",
        description="file format of the test file; auto infers it from the test file's own extension and "
        "content (format when the extension says nothing)",
    )
    encoding: str = Field(
        "utf-8",
        description="text encoding of the data files (csv, tsv, jsonl, json), e.g. latin-1 or cp1252; "
        "tunewise init detects a file that is not UTF-8",
    )
    test_encoding: str | None = Field(None, description="text encoding of the test file; default: encoding")
    record_format: Literal["auto", "text_label", "instruction", "prompt_completion", "messages"] = Field(
        "auto", description="record shape; auto infers it from the column names"
    )
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig, description="column names where they differ")
    slice_columns: list[str] = Field(default_factory=list, description="columns to slice metrics by (bias check)")
    max_chars: int = Field(20000, gt=0, description="rows longer than this many characters are rejected")
    knowledge_base: str | None = Field(None, description="folder of .txt/.md files for retrieval (generate)")
    task_description: str | None = Field(None, description="one line saying what the task is about")
    added: str = Field(
        "added_labels.jsonl",
        description="labelled rows added with `tunewise add-labels` (read when the file exists); their test split stays untouched",
    )

    @field_validator("encoding", "test_encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            name = codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}; e.g. utf-8, latin-1, cp1252") from None
        # Files are split into lines on the byte b"\n": the encoding must keep ASCII as it is.
        if name != "utf-8-sig" and "a,\n".encode(name) != b"a,\n":
            raise ValueError(f"encoding {value!r} is not supported (not ASCII-compatible); save the file as UTF-8")
        return value


class ModelsConfig(Section):
    llm: str = Field(
        "embedded:smollm2-135m-instruct", description="base LLM spec: embedded:NAME, a folder, or a hub id"
    )
    encoder: str = Field("embedded:minilm-l6", description="sentence encoder spec")
    trust_remote_code: bool = Field(False, description="allow model code from the hub; off unless you trust it")
    offline: bool = Field(True, description="never contact a model hub")


def _check(model: type[CheckSettings]) -> Any:
    """A check's section: its own settings model (tunewise.config.checks), its help on the key."""
    return Field(default_factory=model, description=model.help_text())


class CurateConfig(Section):
    standardise: StandardiseSettings = _check(StandardiseSettings)
    empty_garbage: EmptyGarbageSettings = _check(EmptyGarbageSettings)
    too_short: TooShortSettings = _check(TooShortSettings)
    too_long: TooLongSettings = _check(TooLongSettings)
    exact_duplicates: ExactDuplicatesSettings = _check(ExactDuplicatesSettings)
    near_duplicates: NearDuplicatesSettings = _check(NearDuplicatesSettings)
    semantic_duplicates: SemanticDuplicatesSettings = _check(SemanticDuplicatesSettings)
    label_conflicts: LabelConflictsSettings = _check(LabelConflictsSettings)
    label_errors: LabelErrorsSettings = _check(LabelErrorsSettings)
    off_topic: OffTopicSettings = _check(OffTopicSettings)
    pii: PiiSettings = _check(PiiSettings)
    thin_classes: ThinClassesSettings = _check(ThinClassesSettings)
    generation: GenerationSettings = _check(GenerationSettings)
    semantic_max_rows: int = Field(
        50000, ge=2, description="rows above which semantic_duplicates skips (quadratic search)"
    )
    synthesize: bool = Field(False, description="generate synthetic paraphrases for thin classes")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    shingle: int = Field(3, ge=1, le=10, description="word n-gram size for near-duplicate shingles")


class SplitConfig(Section):
    validation_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of training data held for validation")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="share held out for test when no test file is given")
    seed: int = Field(0, description="split seed")
    leakage_threshold: float = Field(
        0.5, gt=0, le=1, description="word-3-gram Jaccard at which two rows count as one group (kept on one side)"
    )


class ApiLlmConfig(Section):
    """The ``api_llm:`` settings: an OpenAI-compatible endpoint the api_* candidates call.

    Field names are the candidates' constructor arguments (:func:`api_llm_settings`). The key is
    never a setting: ``api_key_env`` names the environment variable that holds it.
    """

    base_url: str = Field(
        ...,
        description="the OpenAI-compatible endpoint up to /v1, e.g. https://api.openai.com/v1 "
        "or http://127.0.0.1:8000/v1 (vLLM, llama.cpp, Ollama, tunewise serve)",
    )
    model: str = Field(..., description="the model name the endpoint expects, e.g. gpt-4o-mini")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="name of the environment variable holding the API key (the key itself is "
        "never written in a config, log or report); null for a local server without a key",
    )
    usd_per_million_input_tokens: float = Field(
        0.0, ge=0, description="the endpoint's price of a million input tokens, USD"
    )
    usd_per_million_output_tokens: float = Field(
        0.0, ge=0, description="the endpoint's price of a million output tokens, USD"
    )
    max_usd: float | None = Field(
        10.0,
        ge=0,
        description="spending cap per candidate and run, USD: a batch whose estimated cost would take "
        "the spend past it is not sent and the stage stops with the predictions made so far (cached rows are "
        "free, so a re-run with a higher cap pays only for new rows); null: no cap",
    )
    max_usd_project: float | None = Field(
        None,
        ge=0,
        description="spending cap of the whole project, USD, summed over every run, candidate and "
        "`tunewise distill` in the ledger file: a batch that would take the total past it is not sent; null: no cap "
        "(the ledger still sums what was spent)",
    )
    ledger: str | None = Field(
        "tunewise_api_spend.json",
        description="the project's spending ledger (relative paths: beside the config); "
        "null: keep no ledger (then max_usd_project cannot be set)",
    )
    max_concurrency: int = Field(4, ge=1, le=256, description="requests in flight at once")
    timeout_s: float = Field(30.0, gt=0, description="seconds to wait for one answer before retrying")
    max_retries: int = Field(
        5,
        ge=0,
        le=20,
        description="retries of a request after 429, 5xx, a timeout or a "
        "malformed answer (exponential back-off with jitter; Retry-After is honoured)",
    )
    backoff_s: float = Field(
        1.0, gt=0, description="first back-off between attempts, doubled each retry (at most 60 s)"
    )
    cache_dir: str | None = Field(
        None, description="folder of cached answers (one JSON file per request); default: $TUNEWISE_HOME/api_cache"
    )
    no_cache: bool = Field(False, description="neither read nor write the cache: every row is requested again")
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature (0: the most likely answer)")
    top_logprobs: int = Field(
        5,
        ge=0,
        le=20,
        description="classify: alternatives per token asked for to give a "
        "confidence score; 0: do not ask for log-probabilities",
    )
    structured_output: bool = Field(
        True,
        description="classify: ask for a JSON answer whose label is an enum of the labels (response_format), "
        "falling back to a plain answer when the server refuses",
    )
    tokenizer: str | None = Field(
        None, description="tokenizer (a model folder or spec) for the spending estimate; default: characters / 4"
    )

    # the project folder, set when the config is loaded: the ledger's relative path resolves against it
    _project_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _cap_needs_ledger(self) -> ApiLlmConfig:
        if self.max_usd_project is not None and not self.ledger:
            raise ValueError("max_usd_project sums spending in the ledger file: set ledger (or leave its default)")
        return self

    def ledger_path(self) -> Path | None:
        """The ledger file, absolute (beside the config; the working folder when no config file is known)."""
        if not self.ledger:
            return None
        path = Path(self.ledger).expanduser()
        return path if path.is_absolute() else (self._project_dir or Path.cwd()) / path


class BaselineConfig(Section):
    """The ``baseline:`` section: which prompted-LLM and cheap candidates to score, and how."""

    candidates: list[str] | None = Field(
        None,
        description="candidates to run; default for classify: majority, tfidf_lr, embed_lr, zero_shot_llm, "
        "few_shot_llm; for generate: nn_reply, zero_shot_llm_gen, few_shot_llm_gen, rag_llm_gen (with a knowledge base)",
    )
    sample_size: int | Literal["auto"] | None = Field(
        "auto",
        description="rows prompted-LLM candidates score. auto: the whole test and validation sets when "
        "the time estimated from the first rows scored fits time_budget_s, else a stratified sample sized to fit "
        "(at least 100 rows of each); a number: a stratified sample of this many test (and validation) rows; "
        "null: all rows whatever the time",
    )
    time_budget_s: float | None = Field(
        900.0,
        gt=0,
        description="sample_size auto: seconds of scoring (test + validation) allowed per prompted-LLM "
        "candidate, fitting excluded; null: no limit",
    )
    validation_rows: int | None = Field(
        600,
        ge=20,
        description="prompted-LLM candidates fit on (prompt search, shortlist) and score a stratified sample "
        "of at most this many validation rows, the rows they pick a threshold on; few_shot_llm reuses its prompt "
        "search's answers there. null: every validation row (on BANKING77 the other 370 rows cost 2 min)",
    )
    few_shot_k: int = Field(
        5, ge=1, le=50, description="training examples placed in few-shot prompts (nearest by embedding)"
    )
    max_new_tokens: int = Field(128, ge=1, le=4096, description="generate: longest reply, in tokens")
    system_prompt: str | None = Field(
        None, description="system prompt for the LLM candidates; default: a generic one per task"
    )
    rag_top_k: int = Field(3, ge=1, le=20, description="knowledge-base paragraphs placed in the RAG prompt")
    label_score: Literal["mean", "sum"] = Field(
        "sum", description="classify: rank labels by summed (whole answer) or mean (per token) log-likelihood"
    )
    calibrate: bool = Field(
        True,
        description="zero_shot_llm: subtract each label's score for content-free messages (contextual calibration)",
    )
    batch_size: int = Field(8, ge=1, le=512, description="examples per LLM forward pass")
    max_input_tokens: int = Field(
        256, ge=8, description="longer messages (and few-shot examples) are cut to this many tokens"
    )
    shortlist: bool | int | Literal["auto"] = Field(
        "auto",
        description="classify: the LLM scores only the labels a cheap ranker (nearest training example by "
        "sentence embedding) puts first for each message. auto (or true): the smallest size (5, 10, 15, 20, 30, 40, "
        "50, 75, 100) whose recall on validation reaches shortlist_recall, and every label when none does or there "
        "are too few labels; a number: that many labels; false: every label (slowest: on 77 labels most of the "
        "tokens the LLM reads per message are label tokens)",
    )
    shortlist_recall: float = Field(
        0.99,
        gt=0,
        le=1,
        description="shortlist auto: share of validation messages whose true label must be on their shortlist",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="weights of the prompted LLMs. auto: bf16 where the CPU multiplies bf16 natively "
        "(AVX512-BF16 or AMX; about 2x faster than fp32 there), else fp32; bf16 where it would be emulated is refused",
    )
    prompt_search: bool = Field(
        True,
        description="few_shot_llm: choose the instruction (labels listed or not) and the demonstrations "
        "(nearest examples or nearest example per label) by accuracy on validation rows, as DSPy's optimisers do; "
        "the summary reports what was tried and the gain over the plain prompt",
    )
    prompt_search_rows: int = Field(
        200, ge=20, le=5000, description="prompt_search: validation rows each prompt is scored on"
    )
    prompt_search_final_rows: int = Field(
        600,
        ge=20,
        le=20000,
        description="prompt_search: the prompts within noise of the best after the first "
        "prompt_search_rows are scored again on up to this many rows in all, and the choice is made on those",
    )
    api_llm: ApiLlmConfig | None = Field(
        None,
        description="the api_* candidates (api_zero_shot, api_few_shot, api_zero_shot_gen, api_few_shot_gen): "
        "an OpenAI-compatible endpoint, its prices and limits; the key stays in the environment (api_key_env)",
    )

    @field_validator("sample_size")
    @classmethod
    def _sample_size(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            raise ValueError("sample_size must be at least 1, 'auto', or null for all rows")
        return value

    @field_validator("shortlist")
    @classmethod
    def _shortlist(cls, value: bool | int | str) -> bool | int | str:
        if not isinstance(value, bool) and isinstance(value, int) and value < 1:
            raise ValueError("shortlist must keep at least 1 label: a number >= 1, auto, true or false")
        return value

    @field_validator("candidates")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("list at least one candidate, or leave candidates out for the defaults")
            repeated = sorted({v for v in value if value.count(v) > 1})
            if repeated:
                raise ValueError(f"candidates listed twice: {', '.join(repeated)}")
        return value


class EvaluateConfig(Section):
    """The ``evaluate:`` section: metrics, intervals, slices, robustness and the gate."""

    baseline: str | None = Field(
        None,
        description="the incumbent, what the team runs today: a candidate name, or predictions:FILE (the "
        "current system's answers on the test file: id,prediction[,latency_ms,usd], joined on id); default: the "
        "strongest prompted LLM measured. A baseline within noise of chance is not meaningful: the minimum-improvement "
        "rule is then measured against the best candidate that needs no fine-tuning",
    )
    candidates: list[str] | None = Field(
        None, description="evaluate only these candidates; default: all with predictions"
    )
    threshold: float = Field(
        0.15,
        ge=0,
        description="minimum improvement: relative gain over the baseline a fine-tuned "
        "candidate must reach (the whole interval above it) for FINE_TUNE",
    )
    n_resamples: int = Field(2000, ge=100, le=100_000, description="bootstrap resamples for every interval")
    confidence_level: float = Field(0.95, gt=0.5, lt=1, description="level of every interval")
    out_of_scope_label: str = Field(
        "out_of_scope", description="classify: label of messages the model should not answer"
    )
    target_precision: float = Field(
        0.9,
        gt=0,
        le=1,
        description="classify: the out-of-scope threshold is the lowest confidence at which "
        "validation answers reach this precision; answers below it become the out-of-scope label",
    )
    format_pattern: str | None = Field(
        None,
        description="generate: regular expression every reply should contain (re.search; anchor with ^...$ for all of it)",
    )
    embedding_similarity: bool = Field(
        True, description="generate: cosine similarity of reply and reference embeddings"
    )
    min_slice_rows: int = Field(20, ge=1, description="slices with fewer rows are reported as not computable")
    robustness: bool = Field(True, description="re-predict a sample of the test set under perturbations")
    perturbations: list[str] = Field(
        default_factory=lambda: ["typos", "casing", "punctuation", "fillers"],
        description="perturbations for the robustness check (tunewise.core.perturb): typos, casing, punctuation, fillers",
    )
    robustness_rows: int = Field(300, ge=10, description="test rows re-predicted per perturbation")
    robustness_expensive: bool = Field(
        False, description="also re-predict LLM prompting candidates under perturbations (slow on a CPU)"
    )
    overfit_gap: float = Field(
        0.10,
        gt=0,
        description="flag a candidate whose train score exceeds its validation score by more than "
        "this share of the validation score (and validation vs test likewise)",
    )
    overfit_train_rows: int = Field(2000, ge=10, description="training rows re-predicted for the train score")
    forgetting: bool = Field(True, description="run the general-ability probe on the base and fine-tuned LLM")
    human_sheet_size: int = Field(
        50, ge=0, description="rows in the blind side-by-side sheet for people; 0 turns it off"
    )
    gate_beats_cheap: bool = Field(
        True, description="gate: the chosen candidate must not lose to the best cheap candidate beyond noise"
    )
    ensemble: bool = Field(
        True,
        description="classify: also evaluate 'ensemble', the mean class probabilities of the fine-tuned "
        "candidates and the best cheap one (by validation accuracy), when there are at least two",
    )
    worst_examples: int = Field(10, ge=0, description="worst examples listed per candidate")
    top_confusions: int = Field(10, ge=1, description="classify: largest confusions named per candidate")

    @field_validator("format_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"format_pattern is not a valid regular expression: {exc}") from None
        return value

    @field_validator("perturbations")
    @classmethod
    def _known_perturbations(cls, value: list[str]) -> list[str]:
        from tunewise.core.perturb import PERTURBATIONS  # the same list training augmentation uses

        unknown = [v for v in value if v not in PERTURBATIONS]
        if unknown:
            raise ValueError(f"unknown perturbation(s) {unknown}; known: {', '.join(PERTURBATIONS)}")
        if len(set(value)) != len(value):
            raise ValueError("perturbations listed twice")
        return value


# LoRA adapters go on the attention and MLP projections (Llama-style names) by default.
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class TrainConfig(Section):
    """The ``train:`` section of tunewise.yaml. ``None`` means: sized from the data (see plan_run)."""

    candidates: list[str] | None = Field(
        None,
        description="fine-tuned candidates to train; default for classify: lora_llm, encoder_ft; "
        "for generate: lora_llm_gen",
    )
    overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="settings for one candidate over the ones in this section, e.g. "
        "{lora_llm: {max_steps: 100}, encoder_ft: {learning_rate: 1e-4}}",
    )
    # -- how long
    epochs: int | None = Field(
        None,
        ge=1,
        le=100,
        description="cap on passes over the training data; default: a "
        "budget sized from the data (at least 3 epochs, 3,000 examples and 100 per class "
        "seen; at most 20 epochs), inside which early stopping on validation decides",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="cap on optimiser steps; default: none (the data-sized budget and early stopping decide)",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="cap on training time of one candidate, in minutes "
        "(validation included, summed over resumed runs); default: none",
    )
    batch_size: int | None = Field(
        None, ge=1, le=4096, description="examples per forward pass; default 16 (classify) or 8 (generate)"
    )
    gradient_accumulation: int = Field(
        1, ge=1, le=1024, description="forward passes per optimiser step (effective batch = batch_size x this)"
    )
    max_length: int | None = Field(
        None,
        ge=8,
        description="longest example in tokens (longer ones are cut); "
        "default: the longest in the training data, rounded up to 8, capped",
    )
    max_length_cap: int = Field(512, ge=8, description="upper bound for the data-sized max_length")
    # -- optimiser and schedule
    learning_rate: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="peak learning rate; default 1e-3 "
        "(lora classify), 2e-4 (lora generate), 5e-5 (encoder; its new head 20x)",
    )
    lr_schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warm-up")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of the steps spent warming up linearly")
    weight_decay: float = Field(0.0, ge=0, lt=1, description="AdamW weight decay (not on biases and norms)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping (global L2 norm); null: off")
    # -- LoRA
    lora_r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="dropout on the LoRA input; default 0.05 "
        "(generate), 0 (classify: drawing the masks took 16% of a step there; early "
        "stopping on validation regularises)",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        description="module names that get LoRA adapters (attention and MLP projections)",
    )
    lora_layers: int | None = Field(
        None,
        ge=1,
        description="transformer layers, counted from the top, that get "
        "LoRA adapters; default: all (generate), the top third (classify: the lower "
        "layers stay frozen and their output is computed once, see cache_frozen_layers)",
    )
    cache_frozen_layers: bool = Field(
        True,
        description="classify with adapters on the top layers only: run the "
        "frozen lower layers once per example and reuse their output every epoch "
        "(the same model, a fraction of the compute)",
    )
    freeze_word_embeddings: bool = Field(
        True,
        description="encoder_ft: keep the token embedding matrix frozen (half of MiniLM's weights; "
        "measured 1.5x faster a CPU step; position embeddings, layers and head still train)",
    )
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto",
        description="attention kernel in training; auto: eager for classify rows up to 128 tokens on a CPU "
        "(SDPA's fused CPU backward was 20x slower on short rows), else sdpa",
    )
    cache_memory_gib: float = Field(
        2.0,
        gt=0,
        description="largest cache of frozen-layer outputs (4 bytes x "
        "tokens x hidden size); above it every step runs the whole model",
    )
    # -- validation, early stopping, overfitting
    eval_every: int | None = Field(
        None,
        ge=1,
        description="optimiser steps between validations; default: about 4 per epoch (at least 4, at most 40 per run)",
    )
    eval_max_rows: int = Field(
        256, ge=1, description="validation rows used during training (a stratified head of the validation split)"
    )
    monitor: Literal["auto", "loss", "accuracy", "macro_f1", "chrf"] = Field(
        "auto",
        description="validation metric that picks the best checkpoint; auto: macro_f1 (classify), loss (generate)",
    )
    early_stopping: bool = Field(True, description="stop when the monitored metric stops improving")
    patience: int = Field(3, ge=1, description="validations without improvement before early stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as an improvement")
    overfit_window: int = Field(
        2,
        ge=1,
        description="stop (with a warning) when validation worsened this many "
        "times in a row while training loss fell each time",
    )
    generate_sample: int = Field(
        8,
        ge=0,
        description="generate: validation rows whose replies are generated at each validation for chrF (0: loss only)",
    )
    max_new_tokens: int = Field(128, ge=1, le=4096, description="generate: longest generated reply, in tokens")
    system_prompt: str | None = Field(
        None,
        description="generate: system message of every conversation; "
        "default: none (the chat template's own default applies)",
    )
    # -- data
    augment: int = Field(
        0,
        ge=0,
        le=10,
        description="perturbed copies of each training row (typos, casing, "
        "punctuation, filler words; tunewise.core.perturb); 0: off",
    )
    augment_kinds: list[str] | None = Field(None, description="perturbations to draw from; default: all")
    # -- checkpoints
    checkpoint_every: int | None = Field(
        None, ge=1, description="optimiser steps between checkpoints; default: at every validation"
    )
    resume: bool = Field(
        True, description="continue from the last checkpoint of an interrupted run with the same settings and data"
    )
    # -- compute
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16: matmuls under bf16 autocast (weights and optimiser stay fp32); auto: bf16 where "
        "the hardware has native bf16 (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX), else fp32. "
        "Measured 2.5x faster than fp32 on an AVX512-BF16 CPU; emulated bf16 would be slower, so it is refused",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    gradient_checkpointing: bool | None = Field(
        None,
        description="recompute activations in backward (far less memory; all layers: 30-50% more compute); "
        "default (null): just enough layers to keep the largest batch's activations under activation_memory_gib",
    )
    activation_memory_gib: float = Field(
        0.75,
        gt=0,
        description="activation memory (estimated) that the automatic gradient checkpointing keeps a batch under",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch CPU threads; default: os.cpu_count(), or 1 when "
        "a short probe runs faster on 1 (a machine busy with other processes: one thread "
        "measured up to 6x faster than two there)",
    )
    sample_size: int | None = Field(
        500,
        ge=1,
        description="generate candidates predict a stratified sample of "
        "this many test and validation rows (same ids as the baseline stage when "
        "baseline.sample_size is the same); null: all",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_modules(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one module name (e.g. q_proj, v_proj)")
        return value

    @field_validator("augment_kinds")
    @classmethod
    def _known_kinds(cls, value: list[str] | None) -> list[str] | None:
        from tunewise.core.perturb import PERTURBATIONS  # on use: loads pyarrow

        unknown = [v for v in value or [] if v not in PERTURBATIONS]
        if unknown:
            raise ValueError(f"unknown perturbation(s) {unknown}; known: {', '.join(PERTURBATIONS)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_length is not None and self.max_length > self.max_length_cap:
            raise ValueError(
                f"max_length {self.max_length} is above max_length_cap {self.max_length_cap}; raise max_length_cap too"
            )
        if self.monitor == "chrf" and self.generate_sample == 0:
            raise ValueError("monitor: chrf needs generate_sample > 0 (replies to score)")
        for name, settings in self.overrides.items():
            if "overrides" in settings or "candidates" in settings:
                raise ValueError(f"overrides.{name}: 'overrides' and 'candidates' cannot be set per candidate")
            self.for_candidate(name)  # an unknown key or bad value fails here, at load time
        return self

    def for_candidate(self, name: str) -> TrainConfig:
        """This section with ``overrides[name]`` applied: the settings ``name`` trains with."""
        settings = self.overrides.get(name)
        if not settings:
            return self
        try:
            return TrainConfig.model_validate({**self.model_dump(exclude={"overrides"}), **settings})
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise ValueError(f"overrides.{name}: {problems}") from None


class RoiConfig(Section):
    """The ``roi:`` section: the business assumptions that turn a measured gain into money.

    Nothing here is guessed for you where it matters: without ``monthly_volume`` and
    ``value_per_outcome_usd`` the verdict stands on quality and cost alone and says the money side was not priced. The
    cost defaults (GPU and CPU prices, utilisation) come from tables in tunewise.core.pricing
    that cite their source and date.
    """

    monthly_volume: float | None = Field(
        None, gt=0, description="requests (messages, tickets) a month the model would handle"
    )
    value_per_outcome_usd: float | None = Field(
        None,
        gt=0,
        le=1e6,
        description="value of one more correct outcome (e.g. a support ticket resolved without an agent), in USD",
    )
    horizon_months: int = Field(12, ge=1, le=120, description="payback must fall within this many months for FINE_TUNE")
    # -- one-time cost
    gpu: str = Field("A10G", description="reference GPU that prices training (A10G, L4, A100-40GB, H100)")
    gpu_usd_per_hour: float | None = Field(None, gt=0, le=1000, description="override the GPU's hourly price")
    gpu_utilisation: float | None = Field(
        None, gt=0, le=1, description="override the share of peak FLOP/s training reaches (default 0.35)"
    )
    training_runs: int = Field(
        1, ge=1, le=1000, description="trainings to pay for within the horizon (first run plus planned retrains)"
    )
    review_minutes_per_row: float = Field(
        1.0, ge=0, le=600, description="minutes a person spends on a row curation flagged for review"
    )
    reviewer_usd_per_hour: float = Field(40.0, ge=0, le=10000, description="hourly rate of that person")
    new_labels: int = Field(0, ge=0, description="new labelled rows to buy or write")
    usd_per_label: float = Field(0.5, ge=0, le=10000, description="price of one new labelled row")
    engineering_days: float = Field(
        5.0,
        ge=0,
        le=10000,
        description="engineering days to build, ship and maintain a fine-tuned model over the horizon",
    )
    engineering_days_cheap: float = Field(
        2.0,
        ge=0,
        le=10000,
        description="engineering days to build, ship and "
        "maintain a cheap classic model (TF-IDF, embeddings + linear) over the horizon",
    )
    engineering_days_prompted: float = Field(
        1.0,
        ge=0,
        le=10000,
        description="engineering days to build, ship and "
        "maintain a prompted LLM over the horizon (the incumbent costs none: it runs already)",
    )
    engineer_usd_per_day: float = Field(800.0, ge=0, le=100000, description="day rate of that engineer")
    # -- running cost
    serving_instance: str = Field(
        "auto",
        description="CPU instance that serves a model, priced from "
        "tunewise.core.pricing.CPU_INSTANCES (latencies measured here scale by its vCPUs); auto: "
        "for each candidate the smallest instance whose memory holds it",
    )
    serving_usd_per_hour: float | None = Field(None, gt=0, le=1000, description="override the instance's price")
    always_on: bool = Field(
        True, description="a served model keeps one instance running all month even when traffic needs less"
    )
    baseline_usd_per_million_tokens: float | None = Field(
        None,
        gt=0,
        le=10000,
        description="the incumbent is a hosted LLM API at this price (input and output "
        "tokens); default: it runs on a serving instance like the candidates (a predictions file's usd column wins)",
    )
    tokens_per_request: float | None = Field(
        None,
        gt=0,
        description="tokens per request for API pricing; "
        "default: measured on the test inputs (about 4 characters a token)",
    )

    @field_validator("gpu", "serving_instance")
    @classmethod
    def _known_price_table_entry(cls, value: str, info: Any) -> str:
        # Both name a row of a price table; an unknown name is a config error, not a silent default.
        if info.field_name == "gpu":
            known, what, hint = [g["gpu"] for g in REFERENCE_GPUS], "GPU", " (set gpu_usd_per_hour to price another)"
        else:
            known, what, hint = ["auto", *CPU_INSTANCES], "instance", ""
        if value not in known:
            raise ValueError(f"unknown {what} {value!r}; known: {', '.join(known)}{hint}")
        return value


class ServeConfig(Section):
    host: str = Field("127.0.0.1", description="address to listen on; 127.0.0.1 keeps the server local")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    arms: dict[str, float] | None = Field(
        None,
        description="arm weights, ARM[:CANDIDATE]=WEIGHT; default incumbent (the gate's baseline) 0.9 and "
        "candidate (the decision's recommendation, else the gate's candidate) 0.1",
    )
    incumbent: str | None = Field(
        None, description="arm that answers when another arm fails; default the arm named incumbent, else the first"
    )
    store_url: str | None = Field(
        None,
        description="request log: a SQLAlchemy URL (postgresql+psycopg://... for "
        "several replicas); default SQLite runs/<id>/serve/requests.db",
    )
    api_key_env: str = Field(
        "TUNEWISE_API_KEY", description="environment variable holding the API key; no key set means no key required"
    )
    max_body_bytes: int = Field(65536, gt=0, description="larger request bodies are refused with 413")
    max_input_chars: int = Field(8000, gt=0, description="longer inputs are refused with 422")
    max_tokens: int = Field(256, gt=0, description="upper bound of max_tokens a chat request may ask for")
    max_batch: int = Field(32, ge=1, description="micro-batching: most requests one predict call takes")
    max_wait_ms: float = Field(5.0, ge=0, description="micro-batching: how long a batch waits to fill")
    arms_refresh_s: float = Field(
        1.0, gt=0, description="how often weights are re-read from the log (replicas on one database share them)"
    )
    store_inputs: bool = Field(True, description="keep input texts in the log (monitor's drift check needs them)")
    # Measured on 2 cores (bench/bench_serve.py): one request at a time serves 13.7 req/s with 1 thread
    # and 11.1 with 2 (the event loop needs a core); a batch of 32 runs 1.6x faster with 2 threads.
    torch_threads: int | None = Field(
        1,
        ge=1,
        description="torch threads for single requests and small batches; None: torch's default (the machine's cores)",
    )
    batch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads for a micro-batch of at least batch_threads_min_rows requests; "
        "default: the machine's cores (one request is too small to split across cores, a full batch is not)",
    )
    batch_threads_min_rows: int = Field(8, ge=2, description="micro-batches this large use batch_threads")
    keep_alive_s: float = Field(
        75.0,
        gt=0,
        description="idle keep-alive connections are closed after this; above the clients' pool "
        "expiry so a client never reuses a connection the server is closing (uvicorn's 5 s default races)",
    )
    admin_key_env: str = Field(
        "TUNEWISE_ADMIN_KEY",
        description="environment variable holding the admin key "
        "(POST /admin/arms, forcing an arm); without it those answer loopback clients only",
    )
    max_turns: int = Field(
        32,
        ge=1,
        description="most chat messages in one request (history and the new message; "
        "context entries and the text on classify); more are refused with 413",
    )
    max_context_chars: int = Field(
        32000, gt=0, description="most characters of all messages of one request together; more are refused with 413"
    )
    max_context_tokens: int | None = Field(
        None,
        ge=16,
        description="most prompt tokens (messages, the model's "
        "system prompt and its reply budget); default the model's context length",
    )
    context_overflow: Literal["refuse", "truncate"] = Field(
        "refuse",
        description="a history beyond the context limit: refuse (413) or drop the oldest turns until "
        "it fits (the answer says how many were dropped)",
    )
    request_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request not answered in this time gets 504 and "
        "its model computation is stopped, so the next request does not wait",
    )
    body_timeout_s: float = Field(
        10.0, gt=0, description="a request body not fully received in this time gets 408 and the connection is closed"
    )


class MonitorConfig(Section):
    since: str | None = Field(
        None, description="default window: a duration (24h, 7d, 30m) or an ISO date; default everything"
    )
    confidence_level: float = Field(0.95, gt=0.5, lt=1, description="level of intervals and of the verdict")
    power: float = Field(0.8, gt=0.5, lt=1, description="power for the traffic needed to decide")
    min_feedback: int = Field(30, ge=1, description="labelled feedback an arm needs before a verdict")
    min_detectable_effect: float = Field(
        0.05, gt=0, lt=1, description="smallest accuracy difference worth detecting (sizes the traffic needed)"
    )
    psi_warn: float = Field(0.1, ge=0, description="population stability index: moderate shift from here")
    psi_alert: float = Field(0.25, ge=0, description="population stability index: shift needing action from here")
    drift_window: int = Field(500, ge=10, description="the most recent requests the drift checks look at")
    drift_reference_rows: int = Field(1000, ge=10, description="training rows sampled as the drift reference")
    drift_permutations: int = Field(500, ge=50, description="permutations for the embedding drift p-value")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="embedding drift is flagged below this p-value")
    latency_p50_budget_ms: float = Field(200.0, gt=0, description="median latency budget per arm")
    latency_p99_budget_ms: float = Field(1000.0, gt=0, description="99th percentile latency budget per arm")
    error_rate_budget: float = Field(
        0.01, ge=0, le=1, description="share of failed requests (fallback or error) allowed per arm"
    )
    seed: int = Field(0, description="seed of the drift resampling")


class TrackingConfig(Section):
    uri: str = Field("mlruns", description="MLflow tracking URI or local folder")
    experiment: str = Field("tunewise", description="MLflow experiment name")


class ProjectConfig(Section):
    task: Literal["classify", "generate"] = Field(
        "classify", description="classify (text to label) or generate (input to reply)"
    )
    seed: int = Field(0, description="global seed")
    runs_dir: str = Field("runs", description="where runs/<run-id>/<stage>/ go")
    data: DataConfig
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig, description="baseline candidates")
    train: TrainConfig = Field(default_factory=TrainConfig, description="fine-tuning settings")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig, description="evaluation and gate settings")
    roi: RoiConfig = Field(
        default_factory=RoiConfig,
        description="business assumptions for the verdict (FINE_TUNE, USE_ALTERNATIVE, NOT_YET, INCONCLUSIVE)",
    )
    serve: ServeConfig = Field(default_factory=ServeConfig, description="the A/B server (tunewise serve)")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="live monitoring (tunewise monitor)")
    tracking: TrackingConfig | Literal["off"] = Field(
        default_factory=TrackingConfig, description="MLflow settings, or off"
    )

    @field_validator("tracking", mode="before")
    @classmethod
    def _off_means_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as False; both mean "no tracking".
        return "off" if value is False or value == "off" else value

    # Where the config came from; relative data paths resolve against its folder.
    _path: Path | None = None

    @property
    def base_dir(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    def resolve(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def knowledge_base_dir(self) -> Path | None:
        return self.resolve(self.data.knowledge_base) if self.data.knowledge_base else None

    def knowledge_base_files(self) -> list[Path]:
        """The knowledge base's .md and .txt files: stages that read them put them in their cache key."""
        folder = self.knowledge_base_dir()
        if folder is None or not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".md", ".txt"))

    def incumbent_predictions_file(self) -> Path | None:
        """``evaluate.baseline: predictions:FILE``: the team's current system's answers on the test file."""
        baseline = self.evaluate.baseline or ""
        return self.resolve(baseline[len("predictions:") :]) if baseline.startswith("predictions:") else None

    def evaluate_files(self) -> list[Path]:
        """User files the evaluate stage reads (its cache key holds their digests)."""
        incumbent = self.incumbent_predictions_file()
        return self.knowledge_base_files() + ([incumbent] if incumbent is not None and incumbent.exists() else [])

    def section(self, name: str) -> dict[str, Any]:
        """A section as plain data, for the stage cache key and MLflow params."""
        value = getattr(self, name)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


# ---------------------------------------------------------------------------------------------
# Loading with good errors


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each mapping key path in a YAML document to its 1-based line."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = (*path, str(key.value))
                lines[k] = key.start_mark.line + 1
                walk(value, k)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, str(i))] = item.start_mark.line + 1
                walk(item, (*path, str(i)))

    walk(root, ())
    return lines


def _fields_at(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    """Field names valid at a key path, for did-you-mean suggestions."""
    current: Any = model
    for part in path:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(err: ValidationError, source: str, text: str) -> str:
    key_lines = _key_lines(text)
    messages = []
    for e in err.errors():
        if e["type"] == "literal_error" and isinstance(e.get("input"), dict):
            continue  # the mapping branch of a `section | "off"` union already says what is wrong
        loc = tuple(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        # pydantic adds union member names (e.g. 'TrackingConfig') to loc; drop them.
        loc = tuple(p for p in loc if not (p[:1].isupper() or p.startswith("literal[")))
        line = None
        for n in range(len(loc), 0, -1):
            if loc[:n] in key_lines:
                line = key_lines[loc[:n]]
                break
        where = f"{source}:{line}" if line else source
        parent = " under " + ".".join(loc[:-1]) if len(loc) > 1 else " at top level"
        if e["type"] == "extra_forbidden":
            key = loc[-1]
            known = _fields_at(ProjectConfig, loc[:-1])
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f": did you mean '{close[0]}'?" if close else (f"; known keys: {', '.join(known)}" if known else "")
            messages.append(f"{where}: unknown key '{key}'{parent}{hint}")
        elif e["type"] == "missing":
            messages.append(f"{where}: missing required key '{'.'.join(loc)}'")
        else:
            got = e.get("input")
            got_s = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
            messages.append(f"{where}: {'.'.join(loc) or 'config'}: {e['msg']}{got_s}")
    return "\n".join(messages)


def read_config(path: str | Path) -> ProjectConfig:
    """Read and validate a config file: YAML and field types only. Commands load a config with
    :func:`tunewise.pipeline.precheck.load_config`, which also checks the values that name other
    things (candidates, check actions, the incumbent's predictions file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found (create one with `tunewise init DATA_FILE`)")
    text = path.read_text(encoding="utf-8-sig")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        cfg = ProjectConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, str(path), text)) from None
    cfg._path = path.resolve()
    _bind_project_dir(cfg)
    return cfg


def config_from_dict(raw: dict[str, Any], base_dir: str | Path | None = None) -> ProjectConfig:
    """Build a config in code (tests, the demo); errors read like file errors."""
    try:
        cfg = ProjectConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "<config>", yaml.safe_dump(raw))) from None
    if base_dir is not None:
        cfg._path = Path(base_dir).resolve() / "tunewise.yaml"
        _bind_project_dir(cfg)
    return cfg


def _bind_project_dir(cfg: ProjectConfig) -> None:
    """Tell sections holding project-relative files (the api_llm ledger) where the project folder is."""
    if cfg.baseline.api_llm is not None:
        cfg.baseline.api_llm._project_dir = cfg.base_dir
