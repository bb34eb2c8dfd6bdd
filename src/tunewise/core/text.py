"""Text normalisation: the one definition of each form in which tunewise cleans or compares text.

The forms differ on purpose, each for one job; two texts "equal" under one may differ under another.

Clean-up (written back to the data):

- :func:`tidy_text`: NFC, control characters dropped (newline and tab kept), odd spaces made plain,
  runs of spaces collapsed, ends stripped. The ``standardise`` check applies it to every row.

Keys (compared, never written back), from strictest to loosest:

- :func:`surface_key`: NFKC, casefold, whitespace collapsed. Two texts with the same key are the
  same text typed twice (exact copies: ``exact_duplicate``, added synthetic rows, the demo's
  exact-copy defects).
- :func:`reply_key`: casefold, whitespace collapsed, trailing ``.!?`` and spaces dropped (no NFKC):
  two replies with the same key say the same thing (``copied_reply``, ``reply_conflict``).
- :func:`dedup_key` / :func:`dedup_keys`: NFKC, lowercase, digit runs -> ``0``, apostrophes dropped,
  other punctuation and symbols -> space, whitespace collapsed (datatrove's dedup normalisation,
  minus accent stripping). The key of near-duplicate detection (MinHash shingles), label
  conflicts, the split's leakage groups, labelling and distillation's "already seen" test:
  "order #12345678" and "order #98765432" are the same request.
- :func:`label_key`: a label's spelling-free identity for merging spelling variants of one label
  (``tidy_text``, words split at camelCase, casefold, separators -> ``_``):
  "Order Status", "order-status", "OrderStatus" -> "order_status".
- :func:`answer_label_key`: a model's free-text answer matched to a label (NFKC, casefold,
  ``_``, ``-``, punctuation and symbols -> space, whitespace collapsed): "Card-Arrival!" ->
  "card arrival". Unlike ``label_key`` it does not split camelCase and keeps words space-separated.
- :func:`containment_key`: lowercase, punctuation other than ``-`` and ``_`` -> space, whitespace
  collapsed, one space padded at each end, so ``containment_key(a) in containment_key(b)`` says
  "a appears in b as whole words" (the forgetting probe's answer check).

Core layer: imports nothing from tunewise.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "answer_label_key",
    "arrow_texts",
    "containment_key",
    "dedup_key",
    "dedup_keys",
    "dedup_keys_arrow",
    "label_key",
    "reply_key",
    "surface_key",
    "tidy_text",
]


# ---------------------------------------------------------------------------------------------
# clean-up

# Cc = control characters; \n and \t carry layout, everything else (NUL, \x1b, \x7f...) is noise.
# Zero-width space and BOM are format characters that only ever get in the way of matching.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff]")
# Unicode space separators (category Zs: no-break space, thin space...) become a plain space.
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUN = re.compile(r" {2,}")


def tidy_text(text: str) -> str:
    """NFC, drop control characters (keep newline and tab), collapse spaces, strip the ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = _ODD_SPACES.sub(" ", unicodedata.normalize("NFC", text))
    return _SPACE_RUN.sub(" ", _CONTROL.sub("", text)).strip()


# ---------------------------------------------------------------------------------------------
# exact copies and replies


def _collapse_whitespace(text: str) -> str:
    return " ".join(text.split())


def surface_key(text: str) -> str:
    """A text up to Unicode form (NFKC), case and whitespace: two texts equal here are exact copies."""
    return _collapse_whitespace(unicodedata.normalize("NFKC", str(text)).casefold())


def reply_key(text: str) -> str:
    """Case, spacing and trailing punctuation do not make two replies different."""
    return _collapse_whitespace(text.casefold()).rstrip(" .!?")


# ---------------------------------------------------------------------------------------------
# near-duplicate key (vectorised in Arrow)

# as RE2 patterns (pyarrow), applied in this order
_NUMBER = r"\p{Nd}+(?:[.,:/\-]\p{Nd}+)*"  # 12,345.67 / 10:30 / 2024-01-05 -> one "0"
_APOSTROPHE = r"['’`]"  # can't -> cant, not "can t"
_NON_WORD = r"[^\p{L}\p{N}\p{M}\s]+"  # punctuation and symbols -> space
_SPACES = r"\s+"


def arrow_texts(texts: Sequence[str] | pa.Array) -> pa.Array:
    """Texts as an Arrow large_string array; None and NaN become "" (no content)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(texts, pa.Array):
        arr = texts.cast(pa.large_string())
    else:
        try:
            arr = pa.array(texts, type=pa.large_string(), from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            for row, value in enumerate(texts):
                if value is not None and not isinstance(value, str) and value == value:  # NaN != NaN
                    raise TypeError(
                        f"near-duplicate input row {row}: expected str, got {type(value).__name__} ({value!r:.60})"
                    ) from exc
            raise
    return pc.fill_null(arr, "")


def dedup_keys_arrow(arr: pa.Array) -> pa.Array:
    """:func:`dedup_key` of every string in an Arrow array (see :func:`arrow_texts`)."""
    out = pc.utf8_normalize(arr, form="NFKC")
    out = pc.utf8_lower(out)
    out = pc.replace_substring_regex(out, pattern=_NUMBER, replacement="0")
    out = pc.replace_substring_regex(out, pattern=_APOSTROPHE, replacement="")
    out = pc.replace_substring_regex(out, pattern=_NON_WORD, replacement=" ")
    out = pc.replace_substring_regex(out, pattern=_SPACES, replacement=" ")
    return pc.utf8_trim_whitespace(out)


def dedup_keys(texts: Sequence[str]) -> list[str]:
    """:func:`dedup_key` for many texts at once (vectorised in Arrow)."""
    return dedup_keys_arrow(arrow_texts(texts)).to_pylist()


def dedup_key(text: str) -> str:
    """The form near-duplicates are compared in: ``"Where's order #1234?!"`` -> ``"wheres order 0"``.

    Arrow compiles its patterns on every call (about 1 ms), so for many texts call
    :func:`dedup_keys` once instead of this in a loop.
    """
    return dedup_keys([text])[0]


# ---------------------------------------------------------------------------------------------
# labels

_LABEL_SEPARATORS = re.compile(r"[\s_\-]+")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def label_key(label: str) -> str:
    """The spelling-free identity of a label: words split (also at camelCase), casefolded,
    separators unified to '_': "Order Status", "order-status ", "OrderStatus" -> "order_status"."""
    words = _CAMEL_BOUNDARY.sub("_", tidy_text(label))
    return _LABEL_SEPARATORS.sub("_", words.casefold()).strip("_")


def answer_label_key(text: str) -> str:
    """A model's answer as compared with label names: NFKC, casefolded, underscores, hyphens,
    punctuation and symbols as spaces, runs of spaces as one."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    text = "".join(" " if ch in "_-" or unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return _collapse_whitespace(text)


# ---------------------------------------------------------------------------------------------
# whole-word containment

_NOT_WORD_OR_SPACE = re.compile(r"[^\w\s-]")
_WHITESPACE = re.compile(r"\s+")


def containment_key(text: str) -> str:
    """Lowercase words padded with a space at each end: ``containment_key(a) in containment_key(b)``
    is True when ``a`` appears in ``b`` as whole words (case and punctuation ignored)."""
    padded = " " + _NOT_WORD_OR_SPACE.sub(" ", str(text).lower()).replace("\n", " ") + " "
    return _WHITESPACE.sub(" ", padded)
