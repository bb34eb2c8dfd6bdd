"""Seeded text perturbations: typos, casing, punctuation, filler words.

Shared by training (``train.augment``: perturbed copies of training rows) and evaluation (the
robustness test scores candidates on perturbed test inputs), so both see the same noise.

Every function is deterministic: the same text, kind and seed give the same output, on any
machine (a ``random.Random`` seeded with a string hash that does not depend on PYTHONHASHSEED).
Hand-written rather than a library (nlpaug, textattack) because those pull large dependencies
and model downloads for what are a few lines here, and their output changes between versions.
"""

from __future__ import annotations

import hashlib
import random
import re
import string
from collections.abc import Callable

import pandas as pd

__all__ = ["PERTURBATIONS", "augment_frame", "perturb", "perturb_many"]

# Neighbours on a QWERTY keyboard: a typo usually hits an adjacent key.
_KEYBOARD_NEIGHBOURS = {
    "q": "wa",
    "w": "qes",
    "e": "wrd",
    "r": "etf",
    "t": "ryg",
    "y": "tuh",
    "u": "yij",
    "i": "uok",
    "o": "ipl",
    "p": "ol",
    "a": "qsz",
    "s": "adwx",
    "d": "sfec",
    "f": "dgrv",
    "g": "fhtb",
    "h": "gjyn",
    "j": "hkum",
    "k": "jli",
    "l": "kop",
    "z": "asx",
    "x": "zsdc",
    "c": "xdfv",
    "v": "cfgb",
    "b": "vghn",
    "n": "bhjm",
    "m": "njk",
}
_FILLERS = ("um", "uh", "like", "basically", "actually", "so", "well", "you know", "hi", "hey", "pls", "thanks")
_WORD = re.compile(r"[A-Za-z]{3,}")


def _rng(text: str, kind: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{kind}\x00{text}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def typos(text: str, rng: random.Random, rate: float = 0.08) -> str:
    """Swap, drop, double or mistype letters in about ``rate`` of the words (at least one)."""
    words = list(_WORD.finditer(text))
    if not words:
        return text
    chosen = {m.start() for m in words if rng.random() < rate} or {rng.choice(words).start()}
    out, last = [], 0
    for m in words:
        out.append(text[last : m.start()])
        word = m.group()
        if m.start() in chosen:
            i = rng.randrange(len(word) - 1)
            action = rng.choice(("swap", "drop", "double", "neighbour"))
            if action == "swap":
                word = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
            elif action == "drop":
                word = word[:i] + word[i + 1 :]
            elif action == "double":
                word = word[: i + 1] + word[i] + word[i + 1 :]
            else:
                c = word[i].lower()
                repl = rng.choice(_KEYBOARD_NEIGHBOURS.get(c, c))
                word = word[:i] + (repl.upper() if word[i].isupper() else repl) + word[i + 1 :]
        out.append(word)
        last = m.end()
    out.append(text[last:])
    return "".join(out)


def casing(text: str, rng: random.Random) -> str:
    """All lower case, all upper case, or the first letter flipped."""
    style = rng.choice(("lower", "upper", "flip"))
    if style == "lower":
        return text.lower()
    if style == "upper":
        return text.upper()
    return text[:1].swapcase() + text[1:]


def punctuation(text: str, rng: random.Random) -> str:
    """Drop all punctuation, or add a run of '!' / '?' / '...' at the end."""
    if rng.random() < 0.5:
        stripped = text.translate(str.maketrans("", "", string.punctuation))
        return re.sub(r"\s+", " ", stripped).strip() or text
    return text.rstrip() + rng.choice(("!!", "??", "...", "!?", " !!!"))


def fillers(text: str, rng: random.Random) -> str:
    """Insert one or two filler words ("um", "basically", "pls") between words."""
    words = text.split(" ")
    for _ in range(rng.choice((1, 2))):
        words.insert(rng.randrange(len(words) + 1), rng.choice(_FILLERS))
    return " ".join(w for w in words if w)


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "typos": typos,
    "casing": casing,
    "punctuation": punctuation,
    "fillers": fillers,
}


def perturb(text: str, kind: str, seed: int = 0) -> str:
    """``text`` with one perturbation ``kind`` applied; same inputs, same output."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[kind](text, _rng(text, kind, seed))


def perturb_many(texts: list[str], kinds: list[str] | tuple[str, ...] | None = None, seed: int = 0) -> list[str]:
    """One perturbation per text, its kind drawn (seeded per text) from ``kinds`` (all by default)."""
    kinds = list(kinds or PERTURBATIONS)
    out = []
    for text in texts:
        kind = _rng(text, "choose", seed).choice(kinds)
        out.append(perturb(text, kind, seed))
    return out


def augment_frame(frame: pd.DataFrame, copies: int, *, kinds: list[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """``copies`` perturbed copies of every row (input perturbed, answer kept), marked synthetic.

    A copy's id is ``<id>~aug<k>`` so it can be traced to its original; copies that came out
    identical to the original (e.g. casing on text that is already lower case) are dropped.
    """
    if copies < 1:
        return frame.iloc[0:0].copy()
    parts = []
    for k in range(copies):
        copy = frame.copy()
        copy["input"] = perturb_many(frame["input"].fillna("").astype(str).tolist(), kinds, seed=seed * 1000 + k)
        copy["id"] = frame["id"].astype(str) + f"~aug{k + 1}"
        copy["synthetic"] = True
        parts.append(copy[copy["input"].to_numpy() != frame["input"].fillna("").astype(str).to_numpy()])
    return pd.concat(parts, ignore_index=True)
