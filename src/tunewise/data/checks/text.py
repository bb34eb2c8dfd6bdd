"""Row-level text checks: standardise, empty_garbage, too_short, too_long.

These run first (see ``tunewise.data.curate.CHECK_ORDER``): they are cheap, look at one row at a time
(except the label-spelling pass), and remove junk before the embedding-based checks see it.

Config semantics under ``curate:`` (``action`` first listed = default; ``threshold``):

- ``standardise`` (actions ``relabel``, ``flag``; no threshold). Always applies a silent
  clean-up (Unicode NFC, control characters removed except ``\\n`` and ``\\t``, odd spaces made
  plain, runs of spaces collapsed, ends stripped) to ``input``, the answer column and chat
  ``context`` contents, and counts the rows it changed (``rows_normalised``). For classify it
  then finds label spelling variants ("Order Status", "order-status ", "ORDER_STATUS",
  "OrderStatus" -> "order_status"): labels with the same key (casefold, camelCase split,
  ``-``/``_``/space unified) are one label, spelt the way most rows spell it. ``relabel``
  rewrites the variant rows, ``flag`` only reports them. The mapping lands in the check's
  summary (``label_mapping``) and in each finding's detail.
- ``empty_garbage`` (actions ``drop``, ``flag``; no threshold). ``empty``: input (or, for
  classify, label) missing or whitespace only. A blank target (generate) is ``empty_reply``, the
  vocabulary's name for it; the ``generation`` check then leaves blank replies to this check and
  reports only stand-ins such as "N/A". ``garbage``: no letters at all; one token repeated
  (>= 3 times); keyboard mash (>= half of the letters in mash-like words: keyboard-row runs,
  long vowel-less runs, one repeated letter, or letter pairs far likelier under random typing
  than in English words, see ``MASH_LOG_ODDS``); or mostly non-word characters (< 35 % letters or
  digits, with >= 6 symbols). The limits are set so that short real queries ("Refund?", "hi :)",
  "#A1234567 status") survive: no BANKING77 query (13,083) is reported.
- ``too_short`` (actions ``drop``, ``flag``; threshold = minimum number of *letters* in the input,
  default 2). Letters, not words: one-word queries ("Refund?", "hi") are real intent data and
  must survive, while "k", "?" or "1" carry nothing to learn from. With the default 2 only
  inputs with 0 or 1 letter are reported.
- ``too_long`` (actions ``drop``, ``flag``; threshold = maximum tokens in the base LLM's own
  tokenizer, default 512). 512 keeps a training example plus the chat template well inside the
  context of the default small model and keeps LoRA training on a CPU tractable; raise it for a
  bigger model. Counts input + chat context (+ target for generate). If the tokenizer cannot be
  loaded, whitespace tokens x 1.3 is used and the detail says "estimated".
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.checks import EmptyGarbageSettings, StandardiseSettings, TooLongSettings, TooShortSettings
from tunewise.core.progress import console
from tunewise.core.text import label_key, tidy_text
from tunewise.data.curate import Check, CurateContext, Finding, register
from tunewise.models.loading import resolve_llm

# ---------------------------------------------------------------------------------------------
# Shared helpers (also used by checks.pii and checks.generation)


def as_text(value: Any) -> str:
    """A cell as a string; missing values (None, NaN) become ''."""
    if isinstance(value, str):
        return value
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):  # None, NaN, pd.NA
        return ""
    return str(value)


def map_context(context: Any, fn: Callable[[str], str]) -> Any:
    """Apply ``fn`` to every message content string in a chat-context JSON list.

    Returns the original value unchanged when nothing changed or the value is not a JSON list
    (ingest already reports malformed context), so unchanged rows keep their exact bytes.
    """
    if not isinstance(context, str) or not context.strip().startswith("["):
        return context
    try:
        messages = json.loads(context)
    except json.JSONDecodeError:
        return context
    changed = False
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            new = fn(content)
            if new != content:
                message["content"], changed = new, True
        elif isinstance(content, list):  # OpenAI multi-part content: [{"type": "text", "text": ...}]
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    new = fn(part["text"])
                    if new != part["text"]:
                        part["text"], changed = new, True
    return json.dumps(messages, ensure_ascii=False) if changed else context


def context_texts(context: Any) -> list[str]:
    """The message content strings of a chat-context JSON list (empty for single-turn rows)."""
    found: list[str] = []
    map_context(context, lambda s: (found.append(s), s)[1])
    return found


# ---------------------------------------------------------------------------------------------
# standardise

# the clean-up (tunewise.core.text.tidy_text) and the label key (tunewise.core.text.label_key) live in
# tunewise.core.text with tunewise's other text normalisers
_SNAKE = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")


def label_mapping(labels: Iterable[Any]) -> dict[str, str]:
    """Map every non-canonical label spelling to its group's canonical spelling.

    Labels whose keys match (see ``label_key``) are one label. The canonical spelling is the one
    most rows use (tidied by ``tidy_text``); ties go to a spelling that needs no tidying,
    then to snake_case, then to all-lower-case, then to the alphabetically first, so the result
    never depends on row order. A label spelt only one way is not in the mapping.
    """
    counts = Counter(label for label in labels if isinstance(label, str) and label.strip())
    groups: dict[str, list[str]] = defaultdict(list)
    for spelling in sorted(counts):
        key = label_key(spelling)
        if key:
            groups[key].append(spelling)
    mapping: dict[str, str] = {}
    for spellings in groups.values():
        if len(spellings) < 2:
            continue
        best = max(
            spellings,
            key=lambda s: (
                counts[s],
                s == tidy_text(s),
                bool(_SNAKE.fullmatch(s)),
                s == s.lower(),
                [-ord(c) for c in s],
            ),
        )
        canonical = tidy_text(best)
        mapping.update({s: canonical for s in spellings if s != canonical})
    return mapping


@register
class Standardise(Check):
    name = "standardise"
    issues = ("label_variant",)
    settings_model = StandardiseSettings

    def transform(self, frame: pd.DataFrame, ctx: CurateContext) -> tuple[pd.DataFrame, dict[str, Any]]:
        frame = frame.copy()
        changed = np.zeros(len(frame), dtype=bool)
        # Label spellings that merge with another spelling are left to ``find``, so that every
        # merged row is reported; a label spelt one way is only tidied here.
        variants = label_mapping(frame["label"]) if ctx.answer == "label" and "label" in frame else {}
        for column in ("input", ctx.answer):
            if column not in frame:
                continue
            keep = variants if column == "label" else {}
            before = frame[column].tolist()
            after = [tidy_text(v) if isinstance(v, str) and v not in keep else v for v in before]
            changed |= np.array([isinstance(b, str) and b != a for b, a in zip(before, after)], dtype=bool)
            frame[column] = after
        if "context" in frame:
            before = frame["context"].tolist()
            after = [map_context(v, tidy_text) for v in before]
            changed |= np.array([isinstance(b, str) and b != a for b, a in zip(before, after)], dtype=bool)
            frame["context"] = after
        counts: dict[str, Any] = {"rows_normalised": int(changed.sum())}
        if variants:
            # The summary's per-check counts are where people look for what was merged into what.
            counts["label_mapping"] = variants
        return frame, counts

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        if ctx.answer != "label" or "label" not in frame:
            return []  # generate data has no labels to merge
        mapping = label_mapping(frame["label"])
        findings = []
        for index, label in enumerate(frame["label"].tolist()):
            canonical = mapping.get(label) if isinstance(label, str) else None
            if canonical is not None:
                findings.append(
                    Finding(index, "label_variant", f"{label!r} -> {canonical!r}", change={"label": canonical})
                )
        return findings


# ---------------------------------------------------------------------------------------------
# empty_garbage

_LETTERS = re.compile(r"[^\W\d_]+")  # runs of Unicode letters
_VOWELS = frozenset("aeiouy")
# 4-key runs along a keyboard row, both directions: what a hand sliding over the keys types.
# "erty" (property, liberty) and "trew" (strewn) are dropped because real words contain them.
_KEY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_KEY_RUNS = frozenset(
    run for row in _KEY_ROWS for line in (row, row[::-1]) for run in (line[i : i + 4] for i in range(len(line) - 3))
) - {"erty", "trew"}
# Letter-pair costs for telling random letters from English-like words: -2*log10 P(next | letter),
# rounded and capped at 9, estimated from the 21,719 all-letter whole words of the BERT uncased
# WordPiece vocabulary (the vocab.txt that all-MiniLM-L6-v2 ships). Rows: previous letter ("^" =
# word start); columns: next letter a..z then "$" (word end). Stored here rather than loaded from
# the encoder package so this check needs no model and gives the same answer everywhere.
_BIGRAM_COST_ROWS = (
    "222333333443233252234436559",  # ^
    "633354343642325362223445352",  # a
    "235526652572552772342667473",  # b
    "263627622823661653423778473",  # c
    "355415452574453673353448471",  # d
    "353234454653324452235444452",  # e
    "265622671662572772432766473",  # f
    "267526322873533682343868471",  # g
    "146515882874442563433758362",  # h
    "342334366653312353225375843",  # i
    "165516662566661465561666664",  # j
    "256515542663533574254647371",  # k
    "255314562742462586333468272",  # l
    "134615662875342286363667482",  # m
    "253224252545533665224456452",  # n
    "443354354642213372332335463",  # o
    "255626532762562382333768473",  # p
    "444555554554555555550555553",  # q
    "243315452744332463233457372",  # r
    "353625632844453356323649471",  # s
    "254615621974552682333658362",  # t
    "333334363652225372227575553",  # u
    "266616661775772675665777473",  # v
    "154514732743522673345657472",  # w
    "252624632665563156623455461",  # x
    "354435563653333474344656750",  # y
    "146516532664552564443566332",  # z
)
_BIGRAM_COST = {
    prev + nxt: int(cost) / 2
    for prev, row in zip("^abcdefghijklmnopqrstuvwxyz", _BIGRAM_COST_ROWS)
    for nxt, cost in zip("abcdefghijklmnopqrstuvwxyz$", row)
}
_UNIFORM_COST = math.log10(26)  # -log10 P(letter) when letters are typed at random
# Log10 likelihood ratio "random letters" vs "English-like" above which a word is mash. 1.5
# (odds ~30:1) catches ~95 % of random 6-16 letter strings and no BANKING77 word of 5+ letters.
MASH_LOG_ODDS = 1.5
# A message that is one long word and nothing else has no context to vouch for it: there even
# odds suffice (catches ~97 % of random 6+ letter strings; "withdraw", "unsubscribe", "klarna"
# and other one-word requests stay below 0).
SINGLE_WORD_LOG_ODDS = 0.0
SINGLE_WORD_MIN_LETTERS = 6


def random_letters_log_odds(word: str) -> float:
    """log10 P(word | random letters) - log10 P(word | English letter pairs), lower-case a-z."""
    padded = f"^{word}$"
    pairs = [padded[i : i + 2] for i in range(len(padded) - 1)]
    return sum(_BIGRAM_COST[p] for p in pairs) - len(pairs) * _UNIFORM_COST


_TOKEN_STRIP = ".,;:!?\"'()[]{}<>*"
MIN_WORD_CHAR_SHARE = 0.35  # "hi :)" is 50 % word characters; "!!!$$$ ok ???" is 15 %
MIN_SYMBOLS_FOR_SHARE = 6  # don't judge the share on a handful of characters ("ok :)")


def _is_mash_word(word: str) -> bool:
    """A lower-case ASCII letter run that no one types on purpose."""
    if len(word) < 4:
        return False
    if len(set(word)) == 1:  # "jjjjjjjj"
        return True
    if len(word) >= 6 and not _VOWELS & set(word):  # "bcdfgh"; "https" (5) is fine
        return True
    if any(word[i : i + 4] in _KEY_RUNS for i in range(len(word) - 3)):  # "asdfghjkl", "uiop"
        return True
    return len(word) >= 5 and random_letters_log_odds(word) > MASH_LOG_ODDS  # "ytyzkfs"


def garbage_reason(text: str) -> str | None:
    """Why an input is garbage (a short phrase for the issue detail), or None if it is not."""
    stripped = text.strip()
    if not stripped:
        return None  # that is "empty", reported separately
    letter_runs = _LETTERS.findall(stripped)
    if not letter_runs:
        return "no letters"
    tokens = [t.strip(_TOKEN_STRIP).casefold() for t in stripped.split()]
    tokens = [t for t in tokens if t]
    if len(tokens) >= 3 and len(set(tokens)) == 1:
        return f"one token repeated {len(tokens)} times"
    total_letters = sum(len(run) for run in letter_runs)
    ascii_words = [run.lower() for run in letter_runs if run.isascii()]
    mash = [w for w in ascii_words if _is_mash_word(w)]
    if mash and sum(len(w) for w in mash) / total_letters >= 0.5:
        return f"keyboard mash ({', '.join(mash[:3])})"
    if (
        len(tokens) == 1
        and len(letter_runs) == 1
        and len(ascii_words) == 1
        and len(ascii_words[0]) >= SINGLE_WORD_MIN_LETTERS
        and random_letters_log_odds(ascii_words[0]) > SINGLE_WORD_LOG_ODDS
    ):
        return f"random letters ({ascii_words[0]})"
    symbols = [ch for ch in stripped if not ch.isspace()]
    word_chars = sum(ch.isalnum() for ch in symbols)
    if len(symbols) - word_chars >= MIN_SYMBOLS_FOR_SHARE and word_chars / len(symbols) < MIN_WORD_CHAR_SHARE:
        return f"mostly symbols ({word_chars}/{len(symbols)} letters or digits)"
    return None


@register
class EmptyGarbage(Check):
    name = "empty_garbage"
    row_local = True  # findings depend on the row alone: the engine may shard rows
    issues = ("empty", "garbage", "empty_reply")
    settings_model = EmptyGarbageSettings

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        answers = frame[ctx.answer].tolist() if ctx.answer in frame else [None] * len(frame)
        findings = []
        for index, (value, answer) in enumerate(zip(frame["input"].tolist(), answers)):
            text = as_text(value)
            if not text.strip():
                findings.append(Finding(index, "empty", "empty input"))
                continue
            if not as_text(answer).strip():
                kind = "empty_reply" if ctx.answer == "target" else "empty"
                findings.append(Finding(index, kind, f"empty {ctx.answer}"))
                continue
            reason = garbage_reason(text)
            if reason:
                findings.append(Finding(index, "garbage", reason))
        return findings


# ---------------------------------------------------------------------------------------------
# too_short


@register
class TooShort(Check):
    name = "too_short"
    row_local = True  # findings depend on the row alone: the engine may shard rows
    issues = ("too_short",)
    settings_model = TooShortSettings

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        minimum = int(self.threshold)
        findings = []
        for index, value in enumerate(frame["input"].tolist()):
            letters = sum(len(run) for run in _LETTERS.findall(as_text(value)))
            if letters < minimum:
                findings.append(Finding(index, "too_short", f"{letters} letter{'s' * (letters != 1)} < {minimum}"))
        return findings


# ---------------------------------------------------------------------------------------------
# too_long

WORDS_TO_TOKENS = 1.3  # rough sub-word tokens per whitespace word for English text
_TOKENIZE_BATCH = 512


@functools.lru_cache(maxsize=4)
def load_tokenizer(spec: str, offline: bool = True, trust_remote_code: bool = False) -> tuple[Any | None, str]:
    """The base LLM's tokenizer only (no weights), or (None, why not).

    ``resolve_llm(spec).path`` is the model's local folder; loading just the tokenizer from it is
    fast, unlike ``load_llm``, which builds the whole model.
    """
    try:
        from transformers import AutoTokenizer

        path = resolve_llm(spec, offline=offline).path
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=offline, trust_remote_code=trust_remote_code
        ), ""
    except Exception as exc:  # noqa: BLE001 - any failure means "estimate"; the reason is reported
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def count_tokens(texts: list[str], tokenizer: Any | None) -> list[int]:
    """Token counts per text: the real tokenizer in batches, else a whitespace estimate."""
    if tokenizer is None:
        return [round(len(t.split()) * WORDS_TO_TOKENS) for t in texts]
    counts: list[int] = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        batch = texts[start : start + _TOKENIZE_BATCH]
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        counts.extend(len(x) for x in ids)
    return counts


@register
class TooLong(Check):
    name = "too_long"
    row_local = True  # findings depend on the row alone: the engine may shard rows
    issues = ("too_long",)
    settings_model = TooLongSettings

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        limit = int(self.threshold)
        models = self.project.models
        tokenizer, why = load_tokenizer(models.llm, models.offline, models.trust_remote_code)
        if tokenizer is None:
            console.print(
                f"[yellow]curate: too_long estimates tokens (x{WORDS_TO_TOKENS} words): "
                f"tokenizer for {self.project.models.llm} not loaded: {why}[/yellow]"
            )
        parts = {"input": count_tokens([as_text(v) for v in frame["input"].tolist()], tokenizer)}
        if "context" in frame:
            contexts = [context_texts(v) for v in frame["context"].tolist()]
            flat = [t for texts in contexts for t in texts]
            flat_counts = iter(count_tokens(flat, tokenizer))
            parts["context"] = [sum(next(flat_counts) for _ in texts) for texts in contexts]
        if ctx.answer == "target" and "target" in frame:
            parts["target"] = count_tokens([as_text(v) for v in frame["target"].tolist()], tokenizer)
        totals = [sum(values) for values in zip(*parts.values())]
        how = "" if tokenizer is not None else f", estimated as words x {WORDS_TO_TOKENS}: tokenizer unavailable"
        return [
            Finding(index, "too_long", f"{total} tokens > {limit} (model context budget{how})")
            for index, total in enumerate(totals)
            if total > limit
        ]
