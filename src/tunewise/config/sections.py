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
from pydantic import BaseModel, Field, ValidationError, field_validator

from tunewise.config.base import ConfigError, Section
from tunewise.config.baseline_section import BaselineConfig
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
from tunewise.config.serving_sections import MonitorConfig, ServeConfig
from tunewise.config.train_section import TrainConfig
from tunewise.core.pricing import CPU_INSTANCES, REFERENCE_GPUS


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
        description="classify, when validation has no out-of-scope rows: the threshold is the lowest "
        "confidence at which validation answers reach this precision; answers below it become the "
        "out-of-scope label",
    )
    oos_max_in_scope_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="classify, when validation has out-of-scope rows: the threshold is the highest cut whose "
        "in-scope cost (the share of in-scope validation rows it answers out of scope, right answers or not, "
        "against the same model forced to answer in scope: an upper bound on the accuracy lost) stays within "
        "this at oos_cost_confidence: the most out-of-scope recall for a bounded in-scope cost",
    )
    oos_cost_confidence: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="classify: the in-scope cost checked against oos_max_in_scope_drop is its upper bound at "
        "this level (exact, one-sided), so few validation rows give a cautious threshold",
    )
    oos_neighbours: bool = Field(
        True,
        description="classify, when training has out-of-scope rows: also cut on how much nearer a message is "
        "to its nearest in-scope training rows than to the nearest out-of-scope one (models.encoder's space), "
        "chosen with the candidate's own cut under the same in-scope budget; serve applies both",
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


def _key_paths(text: str) -> list[tuple[tuple[str, ...], int, bool]]:
    """Every mapping key and sequence item of a YAML document in order: (path, 1-based line,
    whether it is a mapping key); empty when the text is not valid YAML."""
    found: list[tuple[tuple[str, ...], int, bool]] = []
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return found

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                found.append(((*path, str(key.value)), key.start_mark.line + 1, True))
                walk(value, (*path, str(key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                found.append(((*path, str(i)), item.start_mark.line + 1, False))
                walk(item, (*path, str(i)))

    walk(root, ())
    return found


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map each mapping key path in a YAML document to its 1-based line."""
    return {path: line for path, line, _ in _key_paths(text)}


def duplicate_keys(text: str) -> list[tuple[str, int, int]]:
    """Keys given twice in one mapping: (dotted key path, first line, repeated line), 1-based.

    PyYAML keeps the last value without a word (yamllint's key-duplicates rule catches it; the
    loader does not), so a setting edited in one place and left in another silently loses.
    """
    first_line: dict[tuple[str, ...], int] = {}
    repeated = []
    for path, line, is_key in _key_paths(text):
        if is_key and path in first_line:
            repeated.append((".".join(path), first_line[path], line))
        elif is_key:
            first_line[path] = line
    return repeated


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
    lines_of_keys = key_lines(text)
    messages = []
    for e in err.errors():
        if e["type"] == "literal_error" and isinstance(e.get("input"), dict):
            continue  # the mapping branch of a `section | "off"` union already says what is wrong
        loc = tuple(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        # pydantic adds union member names (e.g. 'TrackingConfig') to loc; drop them.
        loc = tuple(p for p in loc if not (p[:1].isupper() or p.startswith("literal[")))
        line = None
        for n in range(len(loc), 0, -1):
            if loc[:n] in lines_of_keys:
                line = lines_of_keys[loc[:n]]
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
    repeated = duplicate_keys(text)
    if repeated:
        raise ConfigError(
            "\n".join(
                f"{path}:{again}: {key} is given twice (first at line {first}); keep one"
                for key, first, again in repeated
            )
        )
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
