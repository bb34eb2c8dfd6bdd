"""The ``generation`` check: defects of the reply column that a fine-tuned model would learn.

Runs only for task ``generate``. Config under ``curate.generation``: ``action`` is ``flag``
(default: these are judgement calls a person should see before rows go) or ``drop``.
``threshold`` is the mean cosine similarity of the inputs that share one reply below which the
shared reply counts as copied (default 0.5: MiniLM puts paraphrases of one request above ~0.6,
and two random messages of one support data set around 0.25), minus a small-group margin (see
``SMALL_GROUP_MARGIN``).

Issue kinds, one finding per kind per row:

- ``empty_reply``: the reply is a stand-in ("-", "N/A", "none", "TBD") or, when the
  ``empty_garbage`` check is off, missing or whitespace (that check owns blank replies, so a row
  is never reported twice).
- ``truncated_reply``: ends with "..." or a dangling comma/colon, ends without terminal
  punctuation on a connector ("and", "the", "to"...), or its last word is a cut-off word (a
  strict prefix of a word used elsewhere in the replies that is itself never used: "busin").
- ``template_slot``: an unfilled slot: ``{order_id}``, ``{{name}}``, ``[CUSTOMER NAME]``,
  ``<first_name>``, ``%(name)s``; the PII placeholders (``<EMAIL>``...) and HTML tags are not slots.
- ``copied_reply``: one (normalised) reply given to >= 3 inputs that are not alike (mean
  pairwise input similarity below ``threshold``): a canned answer the model would learn to give
  to everything. Every copy is reported, ``of`` names the first. Without embeddings the inputs
  count as unalike when they carry different labels (a ``label`` or ``intent`` column).
- ``reply_conflict``: the same (normalised) input answered with replies whose similarity is below
  0.6 (embedding cosine; difflib ratio without embeddings); ``of`` names the first answer.
"""

from __future__ import annotations

import bisect
import difflib
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from tunewise.config.checks import GenerationSettings
from tunewise.core.progress import console
from tunewise.core.text import reply_key
from tunewise.data.checks.pii import PLACEHOLDERS
from tunewise.data.checks.text import as_text
from tunewise.data.curate import Check, CurateContext, Finding, register

MIN_COPIES = 3  # two rows sharing a reply is common and harmless ("Thanks!")
# The mean over the few pairs of a small group is noisy, and a macro reply shared by three
# same-topic messages is normal: the limit is threshold - 0.45/sqrt(copies), so 3 copies must be
# clearly unrelated (< 0.24 at the default) while 25 copies need only fall below 0.41.
SMALL_GROUP_MARGIN = 0.45
# Replies to different requests score 0.3-0.6 with MiniLM (95 % of different-intent reply pairs in
# the demo fall below 0.61); rewordings of one answer score above ~0.7.
REPLY_CONFLICT_SIMILARITY = 0.6
MIN_WORDS_FOR_CUT_CHECK = 6  # short sign-offs ("Thanks, Sam") end without punctuation legitimately

_STAND_INS = {"-", "--", "—", "–", "n/a", "na", "none", "null", "nil", "tbd", "todo", "no reply", "no response"}
_TERMINAL = tuple(".!?)]\"'”’»") + ("*",)
_DANGLING_END = tuple(",;:(&-–")
_CONNECTORS = frozenset(
    "and or but nor so because if then than as that which who whose when while where the a an to of for "
    "with without from by in on at into onto about your our my their his her its is are was were be will "
    "can could would should please".split()
)
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")

_SLOT_PATTERNS = (
    re.compile(r"\{\{\s*[A-Za-z_][\w.\- ]*?\s*\}\}"),  # {{name}}
    re.compile(r"(?<!\{)\$?\{\s*[A-Za-z_][\w\-]*\s*\}(?!\})"),  # {order_id}, ${name}
    re.compile(r"%\([A-Za-z_]\w*\)[sd]"),  # %(name)s
)
_BRACKET = re.compile(r"\[([^\[\]\n]{2,40})\](?!\()")  # [CUSTOMER NAME]; not [text](url)
_ANGLE = re.compile(r"<([A-Za-z_][A-Za-z0-9_ ]{0,38}[A-Za-z0-9_]|[A-Za-z_])>")
_SLOT_WORDS = re.compile(
    r"\b(?:name|date|number|id|link|url|email|address|insert|order|amount|time|phone|product)\b", re.IGNORECASE
)
_HTML_TAGS = frozenset(
    "a b i u p s br hr em strong small sub sup div span ul ol li table tr td th img code pre blockquote "
    "h1 h2 h3 h4 h5 h6 html body head title".split()
)
_PII_PLACEHOLDERS = frozenset(p.strip("<>") for p in PLACEHOLDERS.values())


def is_empty_reply(text: str) -> bool:
    stripped = text.strip()
    return not stripped or stripped.casefold() in _STAND_INS or not any(ch.isalnum() for ch in stripped)


def template_slots(text: str) -> list[str]:
    """Unfilled template slots in ``text`` (as written), left to right."""
    found: list[tuple[int, str]] = []
    for pattern in _SLOT_PATTERNS:
        found += [(m.start(), m.group()) for m in pattern.finditer(text)]
    for m in _BRACKET.finditer(text):
        inner = m.group(1).strip()
        words = inner.replace("_", " ").split()
        shouty = any(ch.isalpha() for ch in inner) and inner == inner.upper()
        titled = bool(words) and all(w[:1].isupper() for w in words)
        if shouty or titled or _SLOT_WORDS.search(inner.replace("_", " ")):
            found.append((m.start(), m.group()))
    for m in _ANGLE.finditer(text):
        inner = m.group(1)
        if inner in _PII_PLACEHOLDERS or inner.lower() in _HTML_TAGS:
            continue
        found.append((m.start(), m.group()))
    return [slot for _, slot in sorted(found)]


def truncation_reason(
    text: str, vocabulary: Sequence[str] = (), known: frozenset[str] | set[str] = frozenset()
) -> str | None:
    """Why a reply looks cut off, or None.

    ``vocabulary`` (sorted) and ``known`` are the words used elsewhere in the replies; with them a
    last word that is only ever seen as the start of a longer word ("busin") counts as cut.
    """
    stripped = text.rstrip()
    if not stripped:
        return None
    if stripped.endswith(("...", "…")):
        return "ends with an ellipsis"
    if stripped.endswith(_DANGLING_END):
        return f"ends with {stripped[-1]!r}"
    if stripped.endswith(_TERMINAL):
        return None
    words = _WORDS.findall(stripped)
    if not words or not stripped[-1].isalpha():
        return None  # ends with a number, emoji or URL: nothing to judge
    last = words[-1].casefold()
    if last in _CONNECTORS and len(words) > 1:
        return f"ends with dangling {last!r}"
    if len(words) >= MIN_WORDS_FOR_CUT_CHECK and len(last) >= 2 and last not in known and vocabulary:
        i = bisect.bisect_right(vocabulary, last)
        if i < len(vocabulary) and vocabulary[i].startswith(last):
            return f"last word {words[-1]!r} looks cut off"
    return None


def _reply_vocabulary(replies: list[str]) -> tuple[list[str], set[str]]:
    """Words of the replies, leaving out each reply's last word (it may be the cut one)."""
    counts: Counter[str] = Counter()
    for reply in replies:
        words = [w.casefold() for w in _WORDS.findall(reply)]
        counts.update(words[:-1])
        if reply.rstrip().endswith(_TERMINAL) and words:
            counts[words[-1]] += 1  # a last word before a full stop is a whole word
    return sorted(counts), set(counts)


def _embed(ctx: CurateContext, texts: list[str], purpose: str) -> np.ndarray | None:
    try:
        return ctx.embed(texts)
    except Exception as exc:  # noqa: BLE001 - fall back to the stated rule, and say so
        console.print(
            f"[yellow]curate: generation: embeddings unavailable for {purpose} "
            f"({type(exc).__name__}: {exc}); using the fallback rule[/yellow]"
        )
        return None


def _mean_pairwise_cosine(vectors: np.ndarray) -> float:
    """Mean cosine over distinct pairs of unit vectors, in O(n): (|sum|^2 - n) / (n (n - 1))."""
    n = len(vectors)
    total = vectors.sum(axis=0)
    return float((total @ total - n) / (n * (n - 1)))


@register
class Generation(Check):
    name = "generation"
    issues = ("empty_reply", "truncated_reply", "template_slot", "copied_reply", "reply_conflict")
    settings_model = GenerationSettings
    tasks = ("generate",)

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        inputs = [as_text(v) for v in frame["input"].tolist()]
        replies = [as_text(v) for v in frame["target"].tolist()]
        ids = [str(v) for v in frame["id"].tolist()]
        findings: list[Finding] = []
        vocabulary, known = _reply_vocabulary(replies)
        blank_reported = self.project.curate.empty_garbage.enabled
        for index, reply in enumerate(replies):
            if is_empty_reply(reply):
                if reply.strip():
                    findings.append(Finding(index, "empty_reply", f"reply is {reply.strip()!r}"))
                elif not blank_reported:
                    findings.append(Finding(index, "empty_reply", "reply is empty"))
                continue
            reason = truncation_reason(reply, vocabulary, known)
            if reason:
                findings.append(Finding(index, "truncated_reply", reason))
            slots = template_slots(reply)
            if slots:
                findings.append(Finding(index, "template_slot", "unfilled " + ", ".join(dict.fromkeys(slots))))
        labels = next((frame[c].tolist() for c in ("label", "intent") if c in frame), None)
        findings += self._copied(inputs, replies, ids, labels, ctx)
        findings += self._conflicts(inputs, replies, ids, ctx)
        return findings

    def _copied(
        self, inputs: list[str], replies: list[str], ids: list[str], labels: list[Any] | None, ctx: CurateContext
    ) -> list[Finding]:
        limit = self.threshold
        groups: dict[str, list[int]] = defaultdict(list)
        for index, reply in enumerate(replies):
            if not is_empty_reply(reply):
                groups[reply_key(reply)].append(index)
        groups = {k: v for k, v in groups.items() if len(v) >= MIN_COPIES}
        if not groups:
            return []
        members = [i for rows in groups.values() for i in rows]
        vectors = _embed(ctx, [inputs[i] for i in members], "copied replies")
        if vectors is None and labels is None:
            console.print(
                "[yellow]curate: generation: copied_reply not judged: no embeddings and no label column[/yellow]"
            )
            return []
        row_vector = dict(zip(members, vectors)) if vectors is not None else {}
        findings = []
        for rows in groups.values():
            if vectors is not None:
                similarity = _mean_pairwise_cosine(np.stack([row_vector[i] for i in rows]))
                if similarity >= limit - SMALL_GROUP_MARGIN / np.sqrt(len(rows)):
                    continue
                why = f"mean input similarity {similarity:.2f}"
            else:
                kinds = {as_text(labels[i]) for i in rows}
                if len(kinds) < 2:
                    continue
                why = f"{len(kinds)} different labels"
            detail = f"same reply for {len(rows)} unrelated inputs ({why})"
            findings += [Finding(i, "copied_reply", detail, of=None if i == rows[0] else ids[rows[0]]) for i in rows]
        return findings

    def _conflicts(self, inputs: list[str], replies: list[str], ids: list[str], ctx: CurateContext) -> list[Finding]:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, text in enumerate(inputs):
            if text.strip() and not is_empty_reply(replies[index]):
                groups[reply_key(text)].append(index)
        pairs = []  # (first row, other row) with different replies to the same input
        for rows in groups.values():
            first = rows[0]
            pairs += [(first, i) for i in rows[1:] if reply_key(replies[i]) != reply_key(replies[first])]
        if not pairs:
            return []
        texts = sorted({replies[i] for pair in pairs for i in pair})
        vectors = _embed(ctx, texts, "reply conflicts")
        position = {t: k for k, t in enumerate(texts)}
        findings = []
        for first, other in pairs:
            a, b = replies[first], replies[other]
            if vectors is not None:
                similarity = float(vectors[position[a]] @ vectors[position[b]])
            else:
                similarity = difflib.SequenceMatcher(None, reply_key(a), reply_key(b)).ratio()
            if similarity < REPLY_CONFLICT_SIMILARITY:
                findings.append(
                    Finding(
                        other,
                        "reply_conflict",
                        f"different reply to the same input (reply similarity {similarity:.2f})",
                        of=ids[first],
                    )
                )
        return findings
