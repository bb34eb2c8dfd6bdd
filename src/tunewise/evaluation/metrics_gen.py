"""Generation metrics: chrF, BLEU, ROUGE-L, embedding similarity, length, format, unsupported facts.

chrF and BLEU are sacrebleu's. Both are corpus metrics built from additive per-sentence
statistics (n-gram hits and totals), so the sentence statistics are extracted once with sacrebleu
and the corpus score of any bootstrap resample is computed from weighted sums of them, vectorised
over all resamples (``chrf_from_statistics``, ``bleu_from_statistics``; tests check both against
sacrebleu's own corpus and sentence scores). sacrebleu's ``paired_bs`` re-scores each resample in
Python; this shape makes 2,000 resamples cost one matrix product.

ROUGE-L is written here: the ``rouge-score`` package is not a dependency of tunewise (and not
installed), and the metric is a longest common subsequence over lower-cased word tokens, which a
bit-parallel LCS computes in a handful of big-integer operations per token.

Unsupported facts: order numbers, money amounts and percentages, dates, e-mail addresses, URLs
and phone numbers in a reply that appear neither in the input, the reference reply nor the
knowledge base. These are the details a support reply must never invent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tunewise.models.loading import embed

__all__ = [
    "BLEU_STATS",
    "CHRF_STATS",
    "Fact",
    "FactChecker",
    "bleu_from_statistics",
    "bleu_statistics",
    "chrf_from_statistics",
    "chrf_statistics",
    "extract_facts",
    "format_compliance",
    "knowledge_texts",
    "lcs_length",
    "rouge_l",
    "rouge_tokens",
    "word_counts",
]

CHRF_ORDER = 6  # sacrebleu's defaults: character 6-grams, no word n-grams, beta 2
CHRF_BETA = 2
CHRF_STATS = 3 * CHRF_ORDER  # [hyp, ref, match] per order
BLEU_ORDER = 4
BLEU_STATS = 2 + 2 * BLEU_ORDER  # [hyp_len, ref_len, correct_1..4, total_1..4]


# ---------------------------------------------------------------------------------------------
# chrF and BLEU from sacrebleu's sentence statistics


def chrf_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(n, 18) chrF statistics per sentence, as sacrebleu counts them (its default chrF).

    Per character n-gram order 1-6: [hypothesis n-grams, reference n-grams, matches], the n-grams
    taken by sacrebleu's public ``extract_all_char_ngrams`` (whitespace removed, as chrF does);
    hypothesis n-grams count only when the reference has n-grams of that order (sacrebleu's rule).
    """
    from sacrebleu.metrics.helpers import extract_all_char_ngrams

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    stats = np.zeros((len(hypotheses), CHRF_STATS))
    for row, (hypothesis, reference) in enumerate(zip(hypotheses, references)):
        hyp_orders = extract_all_char_ngrams(hypothesis, CHRF_ORDER, False)
        ref_orders = extract_all_char_ngrams(reference, CHRF_ORDER, False)
        for order, (hyp, ref) in enumerate(zip(hyp_orders, ref_orders)):
            matches = sum(min(count, ref[ngram]) for ngram, count in hyp.items() if ngram in ref)
            stats[row, 3 * order : 3 * order + 3] = (sum(hyp.values()) if ref else 0, sum(ref.values()), matches)
    return stats


def chrf_from_statistics(stats: np.ndarray) -> np.ndarray:
    """chrF (0-100) from summed statistics, vectorised over leading axes: (..., 18) -> (...).

    Mirrors sacrebleu's ``CHRF._compute_f_score`` without epsilon smoothing: precision and
    recall are averaged over the n-gram orders where both hypothesis and reference have n-grams.
    """
    stats = np.asarray(stats, np.float64)
    hyp, ref, match = stats[..., 0::3], stats[..., 1::3], stats[..., 2::3]
    effective = (hyp > 0) & (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(effective, match / np.where(hyp > 0, hyp, 1), 0.0)
        recall = np.where(effective, match / np.where(ref > 0, ref, 1), 0.0)
        n_effective = effective.sum(axis=-1)
        avg_p = np.where(n_effective > 0, precision.sum(axis=-1) / np.maximum(n_effective, 1), 0.0)
        avg_r = np.where(n_effective > 0, recall.sum(axis=-1) / np.maximum(n_effective, 1), 0.0)
        factor = CHRF_BETA**2
        denominator = factor * avg_p + avg_r
        score = np.where(
            avg_p + avg_r > 0, (1 + factor) * avg_p * avg_r / np.where(denominator > 0, denominator, 1), 0.0
        )
    return 100 * score


def bleu_statistics(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(n, 10) BLEU statistics per sentence (sacrebleu's default 13a tokeniser).

    Each row is the public statistics of sacrebleu's corpus BLEU of that one sentence:
    [hypothesis length, reference length, matches per order 1-4, n-grams per order 1-4].
    """
    from sacrebleu.metrics import BLEU

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = BLEU()
    stats = np.zeros((len(hypotheses), BLEU_STATS))
    for row, (hypothesis, reference) in enumerate(zip(hypotheses, references)):
        score = bleu.corpus_score([hypothesis], [[reference]])
        stats[row] = [score.sys_len, score.ref_len, *score.counts, *score.totals]
    return stats


def bleu_from_statistics(stats: np.ndarray) -> np.ndarray:
    """Corpus BLEU (0-100) from summed statistics, vectorised: (..., 10) -> (...).

    Mirrors sacrebleu's ``BLEU.compute_bleu`` with its corpus defaults (``exp`` smoothing: the
    k-th order without a match gets precision 100 / (2^k * total)); no effective order.
    """
    stats = np.asarray(stats, np.float64)
    hyp_len, ref_len = stats[..., 0], stats[..., 1]
    correct, total = stats[..., 2 : 2 + BLEU_ORDER], stats[..., 2 + BLEU_ORDER :]
    zero = correct == 0
    smooth = 2.0 ** np.cumsum(zero, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(
            zero, 100.0 / (smooth * np.where(total > 0, total, 1)), 100.0 * correct / np.where(total > 0, total, 1)
        )
        log_mean = np.log(np.where(precision > 0, precision, 1)).mean(axis=-1)
        brevity = np.where(hyp_len < ref_len, np.exp(1 - ref_len / np.where(hyp_len > 0, hyp_len, 1)), 1.0)
    brevity = np.where((hyp_len < ref_len) & (hyp_len == 0), 0.0, brevity)
    score = brevity * np.exp(log_mean)
    # sacrebleu: no match at all, or an order with no n-grams in the hypothesis, scores zero
    # (it stops at that order and takes log(0) of the rest)
    return np.where(~zero.all(axis=-1) & (total > 0).all(axis=-1), score, 0.0)


# ---------------------------------------------------------------------------------------------
# ROUGE-L


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation dropped (rouge-score's tokeniser, Unicode-aware)."""
    return _NON_WORD.sub(" ", str(text).lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Bit-parallel (Allison-Dix / Hyyrö): one bit per position of ``a`` in a Python integer, one
    add / and / or per token of ``b``; O(len(b)) big-integer operations instead of an O(len(a) *
    len(b)) Python loop.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, token in enumerate(a):
        masks[token] = masks.get(token, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for token in b:
        u = v & masks.get(token, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F1 per pair (0-1): LCS over word tokens, F = 2PR / (P + R)."""
    out = np.zeros(len(hypotheses), dtype=np.float64)
    for i, (hyp, ref) in enumerate(zip(hypotheses, references)):
        h, r = rouge_tokens(hyp), rouge_tokens(ref)
        lcs = lcs_length(h, r)
        if lcs:
            p, rec = lcs / len(h), lcs / len(r)
            out[i] = 2 * p * rec / (p + rec)
    return out


def word_counts(texts: Iterable[str]) -> np.ndarray:
    return np.array([len(str(t).split()) for t in texts], dtype=np.float64)


def format_compliance(replies: Sequence[str], pattern: str) -> np.ndarray:
    """True where ``pattern`` is found in the reply (``re.search``, DOTALL: anchor it with ^ and $
    to demand a whole-reply match)."""
    compiled = re.compile(pattern, re.DOTALL)
    return np.array([compiled.search(str(r)) is not None for r in replies], dtype=bool)


# ---------------------------------------------------------------------------------------------
# Unsupported facts


@dataclass(frozen=True)
class Fact:
    kind: str  # order_number | amount | date | email | url | phone
    text: str  # as written
    key: str  # normalised form compared across texts


_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ]
    )
}
_MONTHS.update({name[:3]: number for name, number in list(_MONTHS.items())})
_MONTHS["sept"] = 9
_MONTH = r"(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
_DAY = r"(?P<day>[0-3]?\d)(?:st|nd|rd|th)?"

# Order matters: earlier patterns claim their span first, so the digits inside an e-mail address,
# a URL or a phone number are not read again as an order number.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("url", re.compile(r"\b(?:https?://|www\.)[^\s<>\"')\]]+", re.I)),
    ("date", re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})\b")),
    ("date", re.compile(r"\b(?P<m>\d{1,2})/(?P<d>\d{1,2})(?:/(?P<y>\d{2}|\d{4}))?\b")),
    ("date", re.compile(rf"\b{_MONTH}\s+{_DAY}\b(?:,?\s+(?P<year>\d{{4}}))?", re.I)),
    ("date", re.compile(rf"\b{_DAY}\s+(?:of\s+)?{_MONTH}\b(?:,?\s+(?P<year>\d{{4}}))?", re.I)),
    (
        "phone",
        re.compile(
            r"(?<![\w/])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{2,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?(?![\w/])"
        ),
    ),
    ("amount", re.compile(r"(?P<cur>[$€£])\s?(?P<num>\d[\d,]*(?:\.\d+)?)")),
    (
        "amount",
        re.compile(
            r"\b(?P<num>\d[\d,]*(?:\.\d+)?)\s?(?P<cur>usd|eur|gbp|dollars?|euros?|pounds?|%|percent)(?!\w)", re.I
        ),
    ),
    (
        "order_number",
        re.compile(
            r"\b(?:order|ref(?:erence)?|ticket|case|invoice|tracking)\s*(?:number|no\.?|num|id)?\s*[:#]?\s*"
            r"(?P<id>[A-Z]{0,4}-?\d[A-Z0-9-]{2,})\b",
            re.I,
        ),
    ),
    ("order_number", re.compile(r"#\s?(?P<id>[A-Z0-9-]*\d[A-Z0-9-]*)\b", re.I)),
    ("order_number", re.compile(r"\b(?P<id>\d{6,})\b")),
]

_CURRENCY = {
    "$": "usd",
    "dollar": "usd",
    "dollars": "usd",
    "usd": "usd",
    "€": "eur",
    "euro": "eur",
    "euros": "eur",
    "eur": "eur",
    "£": "gbp",
    "pound": "gbp",
    "pounds": "gbp",
    "gbp": "gbp",
    "%": "%",
    "percent": "%",
}


def _fact_key(kind: str, match: re.Match[str]) -> str | None:
    text = match.group(0)
    groups = match.groupdict()
    if kind == "email":
        return "email:" + text.lower()
    if kind == "url":
        url = re.sub(r"^https?://", "", text.lower().rstrip(".,;:!?")).removeprefix("www.").rstrip("/")
        return "url:" + url
    if kind == "phone":
        digits = re.sub(r"\D", "", text)
        if len(digits) < 7:
            return None
        return "phone:" + digits[-9:]  # the last 9 digits: "+1 555 ..." and "555 ..." are one number
    if kind == "amount":
        value = float(groups["num"].replace(",", ""))
        return f"amount:{_CURRENCY.get(groups['cur'].lower(), groups['cur'].lower())}:{value:g}"
    if kind == "order_number":
        return "order:" + re.sub(r"[^A-Z0-9]", "", groups["id"].upper())
    if kind == "date":
        if groups.get("month"):
            month, day, year = _MONTHS.get(groups["month"].lower().rstrip(".")), int(groups["day"]), groups.get("year")
        else:
            month, day, year = int(groups["m"]), int(groups["d"]), groups.get("y")
        if not month or not 1 <= month <= 12 or not 1 <= day <= 31:
            return None
        if year and len(year) == 2:
            year = "20" + year
        return f"date:{month}-{day}" + (f":{year}" if year else "")
    raise ValueError(f"unknown fact kind {kind!r}")


def extract_facts(text: str) -> list[Fact]:
    """Checkable details in ``text``, in order of appearance."""
    text = str(text or "")
    taken = np.zeros(len(text) + 1, dtype=bool)
    found: list[tuple[int, Fact]] = []
    for kind, pattern in _PATTERNS:
        for match in pattern.finditer(text):
            start, end = match.span()
            if taken[start:end].any():
                continue
            key = _fact_key(kind, match)
            if key is None:
                continue
            taken[start:end] = True
            found.append((start, Fact(kind, match.group(0).strip(), key)))
    return [fact for _, fact in sorted(found, key=lambda item: item[0])]


def _date_supported(key: str, known: set[str]) -> bool:
    # "March 3" is supported by "2024-03-03" and the reverse: a year counts only when both give one
    month_day, _, year = key.partition(":")[2].partition(":")
    if year:
        return f"date:{month_day}:{year}" in known or f"date:{month_day}" in known
    return f"date:{month_day}" in known or any(k.startswith(f"date:{month_day}:") for k in known)


class FactChecker:
    """Which facts of a reply are backed by its input, its reference or the knowledge base."""

    def __init__(self, knowledge: Iterable[str] = ()) -> None:
        self.knowledge_keys = {f.key for text in knowledge for f in extract_facts(text)}

    def unsupported(self, reply: str, *sources: str) -> list[Fact]:
        known = set(self.knowledge_keys)
        for source in sources:
            known.update(f.key for f in extract_facts(source))
        out = []
        for fact in extract_facts(reply):
            supported = _date_supported(fact.key, known) if fact.kind == "date" else fact.key in known
            if not supported:
                out.append(fact)
        return out


def knowledge_texts(folder: str | Path | None) -> list[str]:
    """The text of every .md/.txt file under ``folder`` (empty when there is no knowledge base)."""
    if folder is None:
        return []
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"data.knowledge_base: {root} is not a folder of .md/.txt files")
    return [
        p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in (".md", ".txt")
    ]


# ---------------------------------------------------------------------------------------------
# Everything for one candidate


@dataclass
class GenerationScores:
    """Per-example scores of one candidate's replies, and the additive corpus statistics."""

    per_example: pd.DataFrame  # chrf, rouge_l, [embedding_similarity], reply_words, reference_words, ...
    chrf_stats: np.ndarray  # (n, 18)
    bleu_stats: np.ndarray  # (n, 10)


def score_generation(
    replies: Sequence[str],
    references: Sequence[str],
    inputs: Sequence[str] | None = None,
    *,
    checker: FactChecker | None = None,
    format_pattern: str | None = None,
    encoder: str | None = None,
) -> GenerationScores:
    """Score replies against references. ``checker`` adds unsupported facts (needs ``inputs``),
    ``format_pattern`` format compliance, ``encoder`` the embedding similarity."""
    replies = [str(r) for r in replies]
    references = [str(r) for r in references]
    chrf_stats = chrf_statistics(replies, references)
    bleu_stats = bleu_statistics(replies, references)
    reply_words, reference_words = word_counts(replies), word_counts(references)
    frame = pd.DataFrame(
        {
            "chrf": chrf_from_statistics(chrf_stats),
            "rouge_l": rouge_l(replies, references),
            "reply_words": reply_words,
            "reference_words": reference_words,
            "length_ratio": np.where(reference_words > 0, reply_words / np.maximum(reference_words, 1), np.nan),
        }
    )
    if encoder is not None:
        if replies:
            frame["embedding_similarity"] = np.einsum("ij,ij->i", embed(replies, encoder), embed(references, encoder))
        else:
            frame["embedding_similarity"] = np.zeros(0)
    if format_pattern is not None:
        frame["format_ok"] = format_compliance(replies, format_pattern)
    if checker is not None:
        if inputs is None:
            raise ValueError("the unsupported-facts check needs the inputs")
        found = [checker.unsupported(reply, str(inp), ref) for reply, inp, ref in zip(replies, inputs, references)]
        frame["n_unsupported"] = np.array([len(f) for f in found], dtype=np.int64)
        frame["unsupported_facts"] = ["; ".join(f"{x.kind}: {x.text}" for x in facts) for facts in found]
    return GenerationScores(frame, chrf_stats, bleu_stats)
