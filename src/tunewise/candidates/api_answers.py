"""An API model's replies as labels: the answer inside a reply, the label it names, label probabilities from logprobs."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from tunewise.candidates.llm_base import label_display_name
from tunewise.core.text import answer_label_key


def _reply_value(reply: str) -> str:
    """The answer inside a reply: the ``label`` of a JSON object, a JSON string, else the text."""
    text = (reply or "").strip()
    if text[:1] in ("{", '"'):
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        if isinstance(parsed, dict):
            if "label" in parsed:
                return str(parsed["label"])
            if len(parsed) == 1:
                return str(next(iter(parsed.values())))
            return text
        if isinstance(parsed, str):
            return parsed
    return text


def map_to_label(reply: str, labels: Sequence[str], names: Sequence[str] | None = None) -> tuple[str | None, str]:
    """(label or None, the answer as written): exact match on labels or their display names, then a
    normalised match (:func:`answer_label_key`); a normalised form shared by two labels matches neither."""
    value = _reply_value(reply)
    names = list(names) if names is not None else [label_display_name(x) for x in labels]
    stripped = value.strip()
    for candidate in (value, stripped):
        if candidate in labels:
            return candidate, value
        if candidate in names:
            return labels[names.index(candidate)], value
    wanted = answer_label_key(stripped)
    if not wanted:
        return None, value
    matches = {
        label
        for label, name in zip(labels, names)
        if answer_label_key(label) == wanted or answer_label_key(name) == wanted
    }
    return (matches.pop() if len(matches) == 1 else None), value


def label_probabilities(
    answer: int, names: Sequence[str], tokens: Sequence[dict] | None, value: str | None
) -> np.ndarray:
    """Probabilities over ``names`` for the answered label ``answer`` from the reply's token logprobs.

    The answered label gets the probability of its tokens (those overlapping ``value`` in the reply;
    all tokens when it cannot be located). The rest goes to the other labels: each top alternative
    of the label's first token to the labels whose name begins with it, what remains evenly. Without
    logprobs the answered label gets 1.
    """
    n = len(names)
    proba = np.zeros(n, dtype=np.float64)
    if not tokens:
        proba[answer] = 1.0
        return proba
    pieces = [str(t.get("token", "")) for t in tokens]
    logprobs = [float(t.get("logprob", 0.0)) for t in tokens]
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    text = "".join(pieces)
    at = text.find(value) if value else -1
    if at >= 0:
        span = [i for i, (s, p) in enumerate(zip(starts, pieces)) if s < at + len(value) and s + len(p) > at]
    else:
        span = [i for i, p in enumerate(pieces) if p.strip()] or list(range(len(pieces)))
    p_answer = float(min(1.0, math.exp(sum(logprobs[i] for i in span)))) if span else 1.0
    alternative = np.zeros(n, dtype=np.float64)
    if span:
        first = span[0]
        prefix = pieces[first][: max(0, at - int(starts[first]))] if at >= 0 else ""
        for alt in tokens[first].get("top_logprobs") or []:
            token = str(alt.get("token", ""))
            if token == pieces[first]:
                continue
            if prefix and token.startswith(prefix):
                token = token[len(prefix) :]
            head = answer_label_key(token)
            if not head:
                continue
            matches = [j for j, name in enumerate(names) if j != answer and answer_label_key(name).startswith(head)]
            for j in matches:
                alternative[j] += math.exp(float(alt.get("logprob", -math.inf))) / len(matches)
    rest = max(0.0, 1.0 - p_answer)
    if alternative.sum() > rest > 0:
        alternative *= rest / alternative.sum()
    elif rest == 0:
        alternative[:] = 0.0
    leftover = rest - alternative.sum()
    proba += alternative
    if n > 1:
        others = np.arange(n) != answer
        proba[others] += leftover / (n - 1)
        proba[answer] = p_answer
    else:
        proba[answer] = 1.0
    return proba / proba.sum()
