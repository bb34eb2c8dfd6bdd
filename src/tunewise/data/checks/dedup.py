"""Duplicate checks: exact, near (MinHash) and semantic (embedding) copies of earlier rows.

A duplicate is always reported against the row it copies (``of`` = that row's id), and the first
occurrence is never reported, so the issues table counts each extra copy exactly once.

What a "row" is compared on: the input, preceded by the earlier chat turns when the row has any
(``context``), because the same last turn after a different conversation is not the same example.
For task ``generate`` the near and semantic checks also include the reply: two near-identical
requests with different replies are a reply conflict (the generation check's job), not copies.

Config, ``curate.<name>``:

``exact_duplicates`` (actions: ``drop`` default, ``flag``; ``threshold`` unused)
    Same input up to case, whitespace and Unicode form (NFKC), same context, and the same answer
    (the label, or the reply up to case and whitespace). The first occurrence is kept. Rows
    differing in punctuation or a number are edited copies, which ``near_duplicates`` reports
    (at Jaccard 1.0, since its normalisation erases both). The same input with *different*
    labels is ``label_conflicts``' job; that check runs first, so a relabelled copy arrives here
    as a plain duplicate.

``near_duplicates`` (actions: ``drop`` default, ``flag``; ``threshold`` default 0.7)
    Jaccard similarity of word shingles (``curate.shingle`` = 3 words) after
    ``tunewise.core.text.dedup_key``, found with MinHash LSH (``curate.num_perm`` = 128 permutations,
    ``tunewise.data.neardup``). Words holding a digit are masked first, so copies that differ only in
    an order number, amount or date count as the same text ("where is order 48213" / "where is
    order 99120" are one request).

    Why 0.7: one changed word in a message of 20 or more words leaves the copy at 0.7 or above
    (it changes at most 3 of 18+ shingles), while two different questions sharing a template
    opening ("Hi, I have a question about my account: ...") stay below 0.5. On short messages
    a single edit removes up to 3 of 8-12 shingles (Jaccard 0.55-0.7), which no threshold
    separates from different questions, so a pair between ``ONE_EDIT_FLOOR`` (0.5) and the
    threshold also counts when the two texts are one word apart: a word added or dropped, or
    misspelt (within 2 character edits); never a negation. On the demo data (seeds 0-2) this
    took recall from 0.80-0.88 (threshold alone) to 1.00.

    Why 128 permutations: the signatures only choose candidate pairs. The engine splits them
    into LSH bands for the threshold (``neardup.lsh_params``: a pair at the threshold becomes a
    candidate with >= 99% chance) and verifies every candidate with the exact Jaccard, so no
    reported pair is an LSH false positive. Fewer permutations allow only coarser bands, which
    let more unrelated pairs through to verification; more cost hashing time for no gain in
    what is reported. 128 is also datasketch's default, so results compare with it.

    Only pairs with the same label count (classify): a near copy with another label is reported
    by ``label_conflicts``. Rows already reported as exact copies are left out when
    ``exact_duplicates`` is enabled, so one copy is never reported twice. Copies are grouped
    transitively (connected components); the earliest row of a group is its representative and
    every other member is reported ``of`` it, with the Jaccard to its closest partner.

``semantic_duplicates`` (actions: ``flag`` default, ``drop``; ``threshold`` default 0.95; off by
default)
    Cosine similarity of the project encoder's normalised embeddings (``ctx.embed``). 0.95 on
    MiniLM means a reworded copy (word order, synonyms, typos); below it, paraphrases are often
    different requests ("cancel my order" / "cancel my subscription"), and paraphrases are useful
    training variety, which is why the check is off by default and flags rather than drops.
    Same-label pairs only (classify). The pair search is an exact blocked matrix product,
    quadratic in rows: above 50,000 rows (50k x 50k x 384 multiply-adds, about a minute on two
    cores) it skips unless ``curate.semantic_max_rows`` raises the limit.
    It does not repeat exact copies when ``exact_duplicates`` is enabled; with
    ``near_duplicates`` set to ``flag`` a near copy can also be flagged here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tunewise.config.checks import ExactDuplicatesSettings, NearDuplicatesSettings, SemanticDuplicatesSettings
from tunewise.core.text import dedup_keys, surface_key
from tunewise.data.curate import Check, CurateContext, Finding, SkipCheck, register
from tunewise.data.neardup import find_near_duplicates

# Above this many rows the semantic pair search (quadratic) is skipped unless
# `curate.semantic_max_rows` raises the limit.
SEMANTIC_MAX_ROWS = 50_000
SEMANTIC_BLOCK = 2048  # rows per block of the similarity product: 2048 x n float32 at a time

# A word holding any digit: order numbers ("48213", "ORD-7F3K2"), amounts, dates, phone numbers.
_NUMBER_TOKEN = re.compile(r"[\w-]*\d[\w-]*")


def mask_numbers(text: str) -> str:
    """Replace every word that holds a digit with ``0``, so copies differing only there match.

    ``tunewise.core.text.dedup_key`` already turns digit runs into ``0``; this also covers ids that mix
    letters and digits, which would otherwise keep a different token per copy.
    """
    return _NUMBER_TOKEN.sub("0", text)


def _context_text(raw: object) -> str:
    """The earlier chat turns as plain text ('' for single-turn rows)."""
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return ""
    text = str(raw).strip()
    if text in ("", "[]"):
        return ""
    try:
        messages = json.loads(text)
    except json.JSONDecodeError:
        return text
    if isinstance(messages, list):
        return "\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in messages)
    return text


def _column(frame: pd.DataFrame, name: str) -> list[str]:
    if name not in frame.columns:
        return [""] * len(frame)
    return ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in frame[name]]


def example_texts(frame: pd.DataFrame, with_answer: str | None = None) -> list[str]:
    """What two rows are compared on: earlier turns + input (+ the answer column if named)."""
    contexts = [_context_text(c) for c in frame["context"]] if "context" in frame.columns else [""] * len(frame)
    inputs = _column(frame, "input")
    texts = [f"{c}\n{i}" if c else i for c, i in zip(contexts, inputs)]
    if with_answer is not None:
        texts = [f"{t}\n{a}" for t, a in zip(texts, _column(frame, with_answer))]
    return texts


def answer_keys(frame: pd.DataFrame, answer: str) -> list[str]:
    """Labels compare as they are (variants were merged earlier); replies up to case and spaces."""
    values = _column(frame, answer)
    return values if answer == "label" else [surface_key(v) for v in values]


def exact_copy_of(frame: pd.DataFrame, answer: str) -> np.ndarray:
    """Per row, the position of the first row with the same input (up to case, whitespace and
    Unicode form) and the same answer.

    Not ``exact_duplicate_groups``: its normalisation also erases punctuation and numbers, and a
    copy with another order number or an added "!!" is an edited copy (a near duplicate), not
    the same row typed twice.
    """
    keys = pd.DataFrame(
        {
            "text": [surface_key(t) for t in example_texts(frame)],
            "answer": answer_keys(frame, answer),
            "pos": np.arange(len(frame), dtype=np.int64),
        }
    )
    return keys.groupby(["text", "answer"], sort=False)["pos"].transform("min").to_numpy(np.int64)


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph; each row gets its component's smallest index."""
    if len(pairs) == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n, dtype=np.int64))
    return first[comp]


def _best_partner(pairs: np.ndarray, scores: np.ndarray, representative: np.ndarray) -> dict[int, tuple[int, float]]:
    """For each copy, the row it is reported as similar to: its representative when the two form a
    pair, else its most similar partner (groups are transitive, so the two may not be a pair)."""
    best: dict[int, tuple[int, float]] = {}
    for (a, b), s in zip(pairs.tolist(), scores.tolist()):
        for row, other in ((a, b), (b, a)):
            if representative[row] == row:
                continue
            current = best.get(row)
            is_rep = other == representative[row]
            if current is None or is_rep or (current[0] != representative[row] and s > current[1]):
                best[row] = (other, s)
    return best


def _copies_findings(
    frame: pd.DataFrame,
    pairs: np.ndarray,
    scores: np.ndarray,
    issue: str,
    describe: Callable[[int, int, float, str], str],
) -> list[Finding]:
    """One finding per row that is not its group's representative, ``of`` the representative."""
    ids = _column(frame, "id")
    representative = components(len(frame), pairs)
    partner = _best_partner(pairs, scores, representative)
    findings = []
    for row in np.flatnonzero(representative != np.arange(len(frame))).tolist():
        other, score = partner[row]
        findings.append(
            Finding(
                index=row, issue=issue, detail=describe(row, other, score, ids[other]), of=ids[int(representative[row])]
            )
        )
    return findings


def _same_answer_pairs(frame: pd.DataFrame, pairs: np.ndarray, task: str) -> np.ndarray:
    """Mask of pairs whose rows share the label (classify); every pair for generate."""
    if task != "classify" or len(pairs) == 0:
        return np.ones(len(pairs), dtype=bool)
    labels = np.asarray(_column(frame, "label"), dtype=object)
    return labels[pairs[:, 0]] == labels[pairs[:, 1]]


def _not_exact_copies(frame: pd.DataFrame, pairs: np.ndarray, ctx: CurateContext, project) -> np.ndarray:
    """Mask of pairs whose rows are not extra exact copies (those are exact_duplicates' findings)."""
    if not project.curate.exact_duplicates.enabled or len(pairs) == 0:
        return np.ones(len(pairs), dtype=bool)
    is_copy = exact_copy_of(frame, ctx.answer) != np.arange(len(frame))
    return ~(is_copy[pairs[:, 0]] | is_copy[pairs[:, 1]])


# Below the Jaccard threshold, a pair still counts when the two texts are one word apart (one word
# added, dropped or misspelt) and the Jaccard is at least this: on a 12-word message one edit
# removes up to 3 of 10 shingles (J ~ 0.55-0.7), which a Jaccard threshold cannot tell from a
# different question.
ONE_EDIT_FLOOR = 0.5
ONE_EDIT_MIN_WORDS = 6
# Adding, dropping or changing one of these flips the meaning; such a pair is not a copy.
_NEGATIONS = frozenset(
    "not no never nor without dont doesnt didnt cant cannot wont isnt arent wasnt werent havent "
    "hasnt hadnt shouldnt wouldnt couldnt".split()
)


def _osa_distance(a: str, b: str) -> int:
    """Optimal-string-alignment edit distance (Damerau-Levenshtein with adjacent swaps).

    Hand-written: a dozen lines on two short words do not justify a dependency.
    """
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def one_word_edit(a: list[str], b: list[str]) -> str | None:
    """How two token lists differ when it is one word added, dropped or misspelt, else None.

    A misspelling is a word within 2 character edits (swaps count as one) of the other, both of
    at least 4 letters; negations never count ("I can pay" / "I cant pay" are not copies).
    """
    if min(len(a), len(b)) < ONE_EDIT_MIN_WORDS or abs(len(a) - len(b)) > 1:
        return None
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    rest_a, rest_b = a[start : len(a) - end], b[start : len(b) - end]
    if len(rest_a) + len(rest_b) == 1:
        word = (rest_a or rest_b)[0]
        return None if word in _NEGATIONS else f"one word apart: '{word}'"
    if len(rest_a) == len(rest_b) == 1:
        x, y = rest_a[0], rest_b[0]
        if min(len(x), len(y)) >= 4 and not {x, y} & _NEGATIONS and _osa_distance(x, y) <= 2:
            return f"one word apart: '{x}' / '{y}'"
    return None


@register
class ExactDuplicates(Check):
    name = "exact_duplicates"
    issues = ("exact_duplicate",)
    settings_model = ExactDuplicatesSettings

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        if len(frame) < 2:
            return []
        first = exact_copy_of(frame, ctx.answer)
        ids = _column(frame, "id")
        what = "label" if ctx.answer == "label" else "reply"
        return [
            Finding(
                index=row,
                issue="exact_duplicate",
                detail=f"same input and {what} as {ids[first[row]]}",
                of=ids[first[row]],
            )
            for row in np.flatnonzero(first != np.arange(len(frame))).tolist()
        ]


@register
class NearDuplicates(Check):
    name = "near_duplicates"
    issues = ("near_duplicate",)
    settings_model = NearDuplicatesSettings

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        if len(frame) < 2:
            return []
        threshold = self.threshold
        # generate: the reply is part of the example (see the module docstring)
        texts = example_texts(frame, with_answer=None if ctx.task == "classify" else ctx.answer)
        masked = [mask_numbers(t) for t in texts]
        result = find_near_duplicates(
            masked,
            threshold=min(threshold, ONE_EDIT_FLOOR),
            num_perm=self.project.curate.num_perm,
            shingle=self.project.curate.shingle,
            progress=True,
        )
        pairs = np.asarray(result.pairs, dtype=np.int64).reshape(-1, 2)
        scores = np.asarray(result.jaccard, dtype=np.float64)
        keep = _same_answer_pairs(frame, pairs, ctx.task) & _not_exact_copies(frame, pairs, ctx, self.project)
        normalised = dedup_keys(masked)
        for p in np.flatnonzero(keep & (scores < threshold)).tolist():
            a, b = pairs[p].tolist()
            keep[p] = one_word_edit(normalised[a].split(), normalised[b].split()) is not None
        pairs, scores = pairs[keep], scores[keep]

        def describe(row: int, other: int, score: float, other_id: str) -> str:
            if score < threshold:  # kept by the one-word rule; the row's own word first
                note = f" ({one_word_edit(normalised[row].split(), normalised[other].split())})"
            elif normalised[row] == normalised[other]:  # equal here but not exact copies
                note = " (differs only in punctuation or numbers)"
            else:
                note = ""
            return f"Jaccard {score:.2f} with {other_id}{note}"

        return _copies_findings(frame, pairs, scores, "near_duplicate", describe)


def semantic_pairs(
    embeddings: np.ndarray, threshold: float, block: int = SEMANTIC_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j with cosine >= threshold, by a blocked product of normalised embeddings.

    Hand-written rather than sklearn's radius neighbours: it needs only one block of the
    similarity matrix in memory and returns each pair once.
    """
    n = len(embeddings)
    found_pairs, found_scores = [], []
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = embeddings[start:stop] @ embeddings[start:].T  # this block against itself and later rows
        rows, cols = np.nonzero(sims >= threshold)
        cols_abs = cols + start
        rows_abs = rows + start
        upper = cols_abs > rows_abs
        found_pairs.append(np.stack([rows_abs[upper], cols_abs[upper]], axis=1))
        found_scores.append(sims[rows[upper], cols[upper]])
    if not found_pairs:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float64)
    return np.concatenate(found_pairs).astype(np.int64), np.concatenate(found_scores).astype(np.float64)


@register
class SemanticDuplicates(Check):
    name = "semantic_duplicates"
    issues = ("semantic_duplicate",)
    settings_model = SemanticDuplicatesSettings

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        if len(frame) < 2:
            return []
        limit = self.project.curate.semantic_max_rows
        if len(frame) > limit:
            raise SkipCheck(
                f"{len(frame)} rows > {limit}: the semantic pair search is quadratic in rows; "
                f"enable it anyway with curate.semantic_max_rows: {len(frame)}"
            )
        threshold = self.threshold
        texts = example_texts(frame, with_answer=None if ctx.task == "classify" else ctx.answer)
        embeddings = np.asarray(ctx.embed(texts), dtype=np.float32)
        pairs, scores = semantic_pairs(embeddings, threshold)
        keep = _same_answer_pairs(frame, pairs, ctx.task) & _not_exact_copies(frame, pairs, ctx, self.project)
        pairs, scores = pairs[keep], scores[keep]
        return _copies_findings(
            frame,
            pairs,
            scores,
            "semantic_duplicate",
            lambda row, other, score, other_id: f"cosine {score:.3f} with {other_id}",
        )
