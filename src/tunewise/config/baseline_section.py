"""The ``baseline:`` section (the prompted LLMs and cheap models measured before any fine-tuning) and
its ``api_llm:`` endpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from tunewise.config.base import Section


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
    scoring_workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto",
        description="classify: LLM batches scored at once, each on its share of the cores. auto: 2 when torch has "
        "at least 2 threads (on 2 cores, two one-thread batches score few-shot prompts 1.3x faster than one "
        "two-thread batch), else 1",
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
