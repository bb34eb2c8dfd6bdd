"""The settings of each curation check, in one place: what it finds, the actions it can take, and
what its threshold means, its range and its default.

One pydantic model per check (``curate.<check>`` in ``tunewise.yaml``). ``CurateConfig`` uses them
as its sections, so validation, the comments ``tunewise init`` writes and the docs' check table
come from the same declarations; each check class names its model (``Check.settings_model``) and
takes its ``actions`` from it. A threshold outside its range is a config error that names the
check, the field and the range:

    tunewise.yaml:40: curate.near_duplicates.threshold: near_duplicates.threshold must be in (0, 1]:
    Jaccard similarity of word 3-grams ... (got 1.5)

Every model keeps the three keys a check section always had (``enabled``, ``action``,
``threshold``) with the same defaults, so existing configs load and the curate stage's cache key
(a hash of the section) does not change. The check modules' docstrings say why each default is
what it is.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

Action = Literal["drop", "flag", "redact", "relabel"]
# pydantic's error types for a value outside a Field's bounds
_BOUND_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of"})


def range_text(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    whole: bool = False,
) -> str:
    """How a range reads in help text and errors: 'in (0, 1]', 'a whole number >= 1'."""
    if whole:
        low = f" >= {ge:g}" if ge is not None else (f" > {gt:g}" if gt is not None else "")
        high = f" and <= {le:g}" if le is not None else (f" and < {lt:g}" if lt is not None else "")
        return f"a whole number{low}{high}"
    low = gt if gt is not None else ge
    high = le if le is not None else lt
    if low is not None and high is not None:
        return f"in {'(' if gt is not None else '['}{low:g}, {high:g}{']' if le is not None else ')'}"
    if low is not None:
        return f"{'>' if gt is not None else '>='} {low:g}"
    if high is not None:
        return f"{'<=' if le is not None else '<'} {high:g}"
    return "any number"


def threshold_field(
    default: float | None,
    meaning: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    whole: bool = False,
    when_empty: float | None = None,
) -> Any:
    """A check's ``threshold`` field: its meaning, range and default; the help text says all three.

    ``when_empty``: the value an empty threshold stands for, when the stored default is None.
    """
    allowed = range_text(gt=gt, ge=ge, lt=lt, le=le, whole=whole)
    empty = f"; null means {when_empty:g}" if when_empty is not None else ""
    return Field(
        default,
        gt=gt,
        ge=ge,
        lt=lt,
        le=le,
        multiple_of=1 if whole else None,
        description=f"{meaning}; {allowed}{empty}",
        json_schema_extra={"meaning": meaning, "when_empty": when_empty},
    )


def _action(actions: tuple[str, ...]) -> Any:
    """A check's ``action`` field: the first of ``actions`` is the default."""
    named = [f"{actions[0]} (default)", *actions[1:]]
    choices = f"{', '.join(named[:-1])} or {named[-1]}" if len(named) > 1 else f"{actions[0]} only"
    return Field(actions[0], description=f"what to do with findings: {choices}")


NO_THRESHOLD = "not used by this check"


class CheckSettings(BaseModel):
    """A curation check's section. Subclasses declare ``check``, ``actions`` and, for a check with
    a threshold, its ``threshold`` field (see :func:`threshold_field`)."""

    # forbid: a misspelt key must be an error (as in every config section)
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    check: ClassVar[str] = ""
    # the config actions this check can take; the first is its default
    actions: ClassVar[tuple[str, ...]] = ("flag",)

    enabled: bool = Field(True, description="run this check")
    action: Action | None = Field(None, description="what to do with findings")
    threshold: float | None = Field(None, description=NO_THRESHOLD)

    @field_validator("threshold", mode="wrap")
    @classmethod
    def _in_range(cls, value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError as err:
            if not any(e["type"] in _BOUND_ERRORS for e in err.errors()):
                raise
            raise PydanticCustomError(
                "threshold_range",
                "{check}.threshold must be {allowed}: {meaning}",
                {"check": cls.check, "allowed": cls.threshold_range(), "meaning": cls.threshold_meaning()},
            ) from None

    @classmethod
    def uses_threshold(cls) -> bool:
        return cls.default_threshold() is not None

    @classmethod
    def default_threshold(cls) -> float | None:
        """What the check uses when ``threshold`` is empty: the field's default, or ``when_empty``."""
        field = cls.model_fields["threshold"]
        return field.default if field.default is not None else _extra(cls).get("when_empty")

    @classmethod
    def threshold_meaning(cls) -> str:
        return _extra(cls).get("meaning") or NO_THRESHOLD

    @classmethod
    def threshold_range(cls) -> str:
        bounds: dict[str, Any] = {}
        for item in cls.model_fields["threshold"].metadata:  # annotated_types' Gt(gt=0), Le(le=1), ...
            for key in ("gt", "ge", "lt", "le"):
                if getattr(item, key, None) is not None:
                    bounds[key] = getattr(item, key)
            if getattr(item, "multiple_of", None) == 1:
                bounds["whole"] = True
        return range_text(**bounds)

    @classmethod
    def help_text(cls) -> str:
        """One line: what the check finds (the class docstring)."""
        return " ".join((cls.__doc__ or "").split())


def _extra(cls: type[CheckSettings]) -> dict[str, Any]:
    extra = cls.model_fields["threshold"].json_schema_extra
    return extra if isinstance(extra, dict) else {}


class StandardiseSettings(CheckSettings):
    """Unicode, whitespace and control characters tidied (silently, counted); label spelling variants
    ('Order Status', 'order-status') mapped to the spelling most rows use."""

    check = "standardise"
    actions = ("relabel", "flag")
    action: Action | None = _action(actions)


class EmptyGarbageSettings(CheckSettings):
    """Empty inputs or labels, blank replies, and text without meaning: no letters, keyboard mash,
    one repeated token, mostly symbols."""

    check = "empty_garbage"
    actions = ("drop", "flag")
    action: Action | None = _action(actions)


class TooShortSettings(CheckSettings):
    """Inputs with fewer letters than the threshold."""

    check = "too_short"
    actions = ("drop", "flag")
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        2.0, "least letters an input must hold (letters, not words: 'Refund?' stays, 'k' or '?' go)", ge=1, whole=True
    )


class TooLongSettings(CheckSettings):
    """Rows longer than the threshold in the base LLM's tokens."""

    check = "too_long"
    actions = ("drop", "flag")
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        512.0,
        "most tokens of the base LLM's tokenizer a row may hold (input, chat context and, for generate, "
        "the reply); raise it for a model with a longer context",
        ge=1,
        whole=True,
    )


class ExactDuplicatesSettings(CheckSettings):
    """Copies of an earlier row: the same input up to case, spacing and Unicode form, the same chat
    context and the same answer; the first occurrence is kept."""

    check = "exact_duplicates"
    actions = ("drop", "flag")
    action: Action | None = _action(actions)


class NearDuplicatesSettings(CheckSettings):
    """Near copies of an earlier row with the same answer: MinHash LSH over word 3-grams, verified by
    the exact Jaccard (numbers masked, so copies differing in an order number count)."""

    check = "near_duplicates"
    actions = ("drop", "flag")
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        0.7,
        "Jaccard similarity of word 3-grams (numbers masked) at or above which two rows are near copies",
        gt=0,
        le=1,
    )


class SemanticDuplicatesSettings(CheckSettings):
    """Reworded copies with the same label, by the encoder's embeddings; off by default, since
    paraphrases are useful training variety."""

    check = "semantic_duplicates"
    actions = ("flag", "drop")
    enabled: bool = Field(False, description="run this check (off by default: paraphrases are useful variety)")
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        0.95, "cosine similarity of the encoder's embeddings at or above which two rows are reworded copies", gt=0, le=1
    )


class LabelConflictsSettings(CheckSettings):
    """The same or a near-identical input under different labels (classify): a clear majority
    relabels the rest, groups without one are flagged."""

    check = "label_conflicts"
    actions = ("relabel", "flag", "drop")
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        0.9,
        "Jaccard similarity of word 3-grams (numbers masked) at or above which two inputs are the same request",
        gt=0,
        le=1,
    )


class LabelErrorsSettings(CheckSettings):
    """Suspected wrong labels (classify): confident learning on out-of-fold probabilities of a cheap
    model over the encoder's embeddings and TF-IDF features."""

    check = "label_errors"
    actions = ("flag", "relabel", "drop")
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        0.5,
        "least out-of-fold probability the model must give its own suggested label for a row to be reported",
        ge=0,
        le=1,
    )


class OffTopicSettings(CheckSettings):
    """Spam (patterns) and rows untypical of the data set (embeddings); a class never loses its last
    rows to this check."""

    check = "off_topic"
    actions = ("drop", "flag")
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        0.5,
        "typicality (a row's similarity to the rest of the data as a share of a typical row's) below "
        "which a row is off-topic",
        gt=0,
        le=1,
    )


class PiiSettings(CheckSettings):
    """E-mail addresses, phone numbers, payment cards, IBANs and IP addresses in any text field;
    redact replaces each with a placeholder such as <EMAIL>."""

    check = "pii"
    actions = ("redact", "drop", "flag")
    action: Action | None = _action(actions)


class ThinClassesSettings(CheckSettings):
    """Classes with fewer rows than the threshold, and a balance report (classify); with
    curate.synthesize, paraphrases for them."""

    check = "thin_classes"
    actions = ("flag",)
    action: Action | None = _action(actions)
    threshold: float | None = threshold_field(
        20.0,
        "least rows a class needs (under the default split about 2 land in validation and 4 in test)",
        ge=1,
        whole=True,
    )


class GenerationSettings(CheckSettings):
    """Reply defects (generate): stand-in or truncated replies, unfilled template slots, one reply
    copied across unrelated inputs, different replies to one input."""

    check = "generation"
    actions = ("flag", "drop")
    action: Action | None = _action(actions)
    # stored default None (as it always was), so existing configs and cache keys stay as they are
    threshold: float | None = threshold_field(
        None,
        "mean cosine similarity of the inputs sharing one reply below which the reply counts as copied "
        "(less a margin for small groups)",
        gt=0,
        le=1,
        when_empty=0.5,
    )
