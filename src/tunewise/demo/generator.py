"""The demo's clean rows: seeded draws, the template grammar, channel styling, replies, the row pool.

Messages come from the text tables of ``tunewise.demo.templates`` (templates with ``(a|b)``
choices, ``[optional]`` parts, ``<macro>`` synonym groups and ``{slot}`` values), reworded, given
side remarks, styled per channel and typed informally now and then, all drawn from one seeded
``numpy.random.Generator`` (``Draw``): the same seed gives the same rows. ``Pool`` hands out rows
whose normalised texts are unique and that are no near duplicate of an earlier row. The numbers
that tune the mix (shares, weights) are set here; ``tunewise.demo.defects`` spoils some rows and
``tunewise.demo.data.generate_demo`` writes the files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from tunewise.core.text import surface_key
from tunewise.demo.templates import (
    ASIDE_LEADS,
    ASIDES,
    CARD_BRANDS,
    CARRIERS,
    CHAT_CLOSERS,
    CHAT_OPENERS,
    CITIES,
    CODES,
    CONTEXT_SENTENCES,
    EMAIL_CLOSERS,
    EMAIL_OPENERS,
    INFORMAL,
    MACROS,
    MONTHS,
    NEIGHBOURS,
    NUMBER_WORDS,
    PHONE_CLOSERS,
    PHONE_OPENERS,
    POLICY,
    PRODUCTS,
    REPLIES,
    REPLY_CLOSERS,
    REPLY_OPENERS,
    SHARED_VAGUE,
    SHORT,
    SYNONYMS,
    TEMPLATES,
    TIER_NOTES,
    WEEKDAYS,
)

# Relative frequency of each intent (order questions dominate real support queues); the text
# tables are keyed by these intents.
INTENT_WEIGHTS: dict[str, float] = {
    "order_status": 1.4,
    "delivery_delay": 1.1,
    "cancel_order": 1.0,
    "return_item": 1.2,
    "refund_status": 1.2,
    "change_address": 0.8,
    "payment_failed": 0.9,
    "discount_code": 0.8,
    "shipping_cost": 0.8,
    "damaged_item": 0.9,
    "account_login": 0.9,
    "product_availability": 0.8,
    "warranty_claim": 0.7,
    "invoice_request": 0.7,
}
INTENTS: tuple[str, ...] = tuple(INTENT_WEIGHTS)

# How often a clean message is short and vague, carries a side remark about another topic, or
# is typed informally (per channel: chat and app messages are typed fast, phone calls are
# transcribed by the agent). Set so that a word-count model (TF-IDF + logistic regression) lands
# in the 80-90% accuracy band that real support traffic gives it (BANKING77: 91%).
SHORT_SHARE = 0.2
VAGUE_SHARE = 0.06  # messages from SHARED_VAGUE, which several intents share
ASIDE_SHARE = 0.4
ASIDE_NEIGHBOUR = 0.7  # share of side remarks taken from a confusable neighbour intent
INFORMAL_SHARE = {"chat": 0.5, "app": 0.4, "email": 0.1, "phone": 0.0}
TYPO_SHARE = 0.3  # of the informal messages, those with one typing slip besides
SYNONYM_SHARE = 0.6  # each occurrence of a SYNONYMS word or phrase is swapped this often

CHANNELS = ("email", "chat", "phone", "app")
CHANNEL_WEIGHTS = (0.30, 0.35, 0.15, 0.20)
TIERS = ("standard", "plus", "business")
TIER_WEIGHTS = (0.65, 0.25, 0.10)

_MACRO = re.compile("|".join(re.escape(k) for k in MACROS))
_INFORMAL_WORD = re.compile(r"[A-Za-z']+")
_SYNONYM = re.compile(r"\b(" + "|".join(sorted(map(re.escape, SYNONYMS), key=len, reverse=True)) + r")\b", re.I)
_GROUP = re.compile(r"[(\[]([^()\[\]]*)[)\]]")
SLOT = re.compile(r"\{(\w+)\}")
_WORD = re.compile(r"\w+")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def word_shingles(text: str, size: int = 3) -> set[tuple[str, ...]]:
    """Word n-gram shingles (lower case, word characters only); short texts give one shingle."""
    words = _WORD.findall(str(text).lower())
    if len(words) < size:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Draw:
    """Seeded choices: every random decision goes through one numpy Generator.

    Scalar draws use ``rng.random()`` (about ten times cheaper than ``rng.integers`` per call),
    which keeps 1,500 rows well under a second.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def index(self, n: int) -> int:
        return int(self.rng.random() * n)

    def pick(self, options, weights=None):
        if weights is None:
            return options[self.index(len(options))]
        left = self.rng.random() * sum(weights)
        for option, weight in zip(options, weights):
            left -= weight
            if left < 0:
                return option
        return options[-1]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def digits(self, n: int) -> str:
        return (self.rng.integers(0, 10, n, dtype=np.uint8) + 48).tobytes().decode("ascii")

    def between(self, low: int, high: int) -> int:
        return low + self.index(high - low + 1)

    # -- slot values ----------------------------------------------------------------------
    def order_id(self) -> str:
        style = self.index(3)
        if style == 0:
            return "#" + self.pick("ABCDEFGHJKLMNPRSTW") + self.digits(7)
        return ("#" if style == 1 else "") + str(self.between(1, 9)) + self.digits(7)

    def amount(self) -> str:
        return f"${self.between(5, 320)}.{self.pick(('99', '95', '00', '49', '50', '90'))}"

    def date(self) -> str:
        """A date that reads after "on", "since" or "by": "March 3", "3/14", "the 4th"."""
        style = self.index(3)
        if style == 0:
            return f"{self.pick(MONTHS)} {self.between(1, 28)}"
        if style == 1:
            return f"{self.between(1, 12)}/{self.between(1, 28)}"
        day = self.between(1, 28)
        suffix = "th" if 10 <= day <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
        return f"the {day}{suffix}"

    def when(self) -> str:
        """A time that stands alone: "on March 3", "last Tuesday", "two days ago"."""
        style = self.index(4)
        if style == 0:
            return f"on {self.date()}"
        if style == 1:
            return f"last {self.pick(WEEKDAYS)}"
        if style == 2:
            return f"{self.pick(('two', 'three', 'four', 'ten'))} days ago"
        return self.pick(("yesterday", "last week", "a couple of weeks ago", "earlier this month"))

    def slots(self) -> dict[str, str]:
        return {
            "order": self.order_id(),
            "order2": self.order_id(),
            "product": self.pick(PRODUCTS),
            "amount": self.amount(),
            "date": self.date(),
            "when": self.when(),
            "month": self.pick(MONTHS),
            "n": self.pick(NUMBER_WORDS),
            "city": self.pick(CITIES),
            "carrier": self.pick(CARRIERS),
            "card": self.pick(CARD_BRANDS),
            "code": self.pick(CODES),
            **_POLICY_SLOTS,
        }


_POLICY_SLOTS = {k: str(v) for k, v in POLICY.items()}


def expand(template: str, draw: Draw) -> str:
    """Resolve <macro> synonym groups, (a|b) choices and [optional] parts, innermost first; slots
    stay as {name}."""
    template = _MACRO.sub(lambda m: MACROS[m.group(0)], template)
    while match := _GROUP.search(template):
        inner = match.group(1)
        if match.group(0).startswith("("):
            pick = draw.pick(inner.split("|"))
        else:
            pick = inner if draw.chance(0.5) else ""
        template = template[: match.start()] + pick + template[match.end() :]
    return template


def fill(text: str, slots: dict[str, str]) -> str:
    text = SLOT.sub(lambda m: slots[m.group(1)], text)
    text = re.sub(r" {2,}", " ", text)
    text = re.sub(r" +([,.?!])", r"\1", text).strip()
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Clean rows
# ---------------------------------------------------------------------------------------------
def _style(body: str, channel: str, draw: Draw) -> str:
    """Dress a message body as the channel would: openers, closers, layout, case, fillers."""
    if draw.chance(0.25):
        extra = draw.pick(CONTEXT_SENTENCES)
        body = f"{extra} {body}" if draw.chance(0.5) else _then(body, extra)
    if channel == "email":
        opener = draw.pick(EMAIL_OPENERS) if draw.chance(0.8) else ""
        closer = draw.pick(EMAIL_CLOSERS) if draw.chance(0.7) else ""
        sep = "\n\n" if draw.chance(0.5) else " "
        return sep.join(p for p in (opener, body, closer) if p)
    if channel == "chat":
        if draw.chance(0.5):
            body = body.lower()
        if draw.chance(0.5):
            body = body.rstrip(".")
        if draw.chance(0.5):
            opener = draw.pick(CHAT_OPENERS)
            body = f"{opener}{draw.pick((', ', '! ', ' - '))}{body[:1].lower()}{body[1:]}"
        return body + (f" {draw.pick(CHAT_CLOSERS)}" if draw.chance(0.3) else "")
    if channel == "phone":
        body = body[:1].lower() + body[1:]
        opener = draw.pick(PHONE_OPENERS) if draw.chance(0.8) else ""
        closer = draw.pick(PHONE_CLOSERS) if draw.chance(0.4) else ""
        return " ".join(p for p in (opener, body, closer) if p)
    # app: short, mostly just the body.
    return body + (" Thanks" if draw.chance(0.2) else "")


def _aside(intent: str, body: str, draw: Draw) -> str:
    """The body with a side remark about another (mostly a neighbouring) topic before or after it."""
    other = (
        draw.pick(NEIGHBOURS[intent])
        if draw.chance(ASIDE_NEIGHBOUR)
        else draw.pick(tuple(i for i in INTENTS if i != intent))
    )
    lead, remark = draw.pick(ASIDE_LEADS), draw.pick(ASIDES[other])
    if lead:
        if not remark.startswith(("I ", "I'")):
            remark = remark[:1].lower() + remark[1:]
        return _then(body, f"{lead}{remark}")
    return f"{remark} {body}" if draw.chance(0.5) else _then(body, remark)


def _then(first: str, second: str) -> str:
    """Two sentences in a row; the first gets a full stop if it has no closing punctuation."""
    return f"{first}{'' if first.endswith(('.', '?', '!')) else '.'} {second}"


def _reword(text: str, draw: Draw) -> str:
    """Everyday synonyms for some words and phrases (``SYNONYMS``), keeping a capital first letter."""

    def swap(match: re.Match) -> str:
        old = match.group(0)
        if not draw.chance(SYNONYM_SHARE):
            return old
        new = draw.pick(SYNONYMS[old.lower()])
        if new.startswith("i ") or new.startswith("i'"):
            new = "I" + new[1:]
        return new[:1].upper() + new[1:] if old[:1].isupper() else new

    return _SYNONYM.sub(swap, text)


def _slip(word: str, draw: Draw) -> str:
    """One typing slip in a word: two letters swapped, one dropped or one doubled."""
    j = draw.between(1, len(word) - 2)
    how = draw.index(3)
    if how == 0:
        return word[:j] + word[j + 1] + word[j] + word[j + 2 :]
    if how == 1:
        return word[:j] + word[j + 1 :]
    return word[:j] + word[j] + word[j:]


def _informal(text: str, channel: str, draw: Draw) -> str:
    """Informal spellings, common misspellings and now and then a typing slip.

    Only plain words change: order numbers, codes, amounts and ALL-CAPS words stay as typed.
    """
    if not draw.chance(INFORMAL_SHARE[channel]) or len(text.split()) < 6:
        return text  # short messages stay as typed: one slip in three words leaves little to read

    def swap(match: re.Match) -> str:
        word = match.group(0)
        options = INFORMAL.get(word.lower())
        if options is None or word.isupper() and len(word) > 1 or not draw.chance(0.6):
            return word
        new = draw.pick(options)
        return new[:1].upper() + new[1:] if word[:1].isupper() and word.lower() != "i'm" else new

    text = _INFORMAL_WORD.sub(swap, text)
    if draw.chance(TYPO_SHARE):
        words = text.split(" ")
        plain = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha() and w.islower()]
        if plain:
            at = draw.pick(plain)
            words[at] = _slip(words[at], draw)
            text = " ".join(words)
    return text


def agent_reply(
    intent: str,
    message: str,
    slots: dict[str, str],
    tier: str,
    has_order: bool,
    draw: Draw,
    extra: str = "",
    opener: str | None = None,
) -> str:
    """An agent reply that answers this message with knowledge-base facts and its slot values."""
    lowered = message.lower()
    options = next(opts for pattern, opts in REPLIES[intent] if pattern is None or re.search(pattern, lowered))
    order_ref = f"order {slots['order']}" if has_order else "your order"
    values = {**slots, "order_ref": order_ref, "order_ref_cap": order_ref[:1].upper() + order_ref[1:]}
    body = fill(expand(draw.pick(options), draw), values)
    opener = draw.pick(REPLY_OPENERS) if opener is None else opener
    parts = [opener, body, TIER_NOTES.get((intent, tier), ""), extra, draw.pick(REPLY_CLOSERS)]
    return " ".join(p for p in parts if p)


@dataclass
class Row:
    text: str
    intent: str
    reply: str
    channel: str
    tier: str
    slots: dict[str, str]
    template: tuple[str, int]  # (intent, template index): near duplicates come from one template
    has_order: bool = False  # the message names an order number (the reply then reuses it)
    kind: str | None = None  # injected defect, None for clean rows
    of: Row | None = None
    detail: str | None = None
    extra: dict = field(default_factory=dict)
    is_original: bool = False
    decoy: bool = False
    clear: bool = True  # one plain request: neither short and vague nor with a side remark
    id: str = ""


_NUMBERS = re.compile(r"\w*\d\w*")


class Pool:
    """Generates clean rows with unique normalised texts and no same-template near duplicates."""

    MAX_SIMILARITY = 0.5

    def __init__(self, draw: Draw) -> None:
        self.draw = draw
        self.seen: set[str] = set()
        # every clean row's shingles (numbers masked) and an inverted index to find overlaps fast
        self.shingle_sets: list[set] = []
        self.index: dict[tuple[str, ...], list[int]] = {}

    def too_close(self, shingles: set) -> bool:
        """True when a kept clean row (any intent) reaches MAX_SIMILARITY with these shingles.

        Numbers are masked first: two messages that differ only in an order number are one
        request, i.e. a near-duplicate the truth file would not list.
        """
        overlap: dict[int, int] = {}
        for sh in shingles:
            for i in self.index.get(sh, ()):
                overlap[i] = overlap.get(i, 0) + 1
        for i, common in overlap.items():
            union = len(shingles) + len(self.shingle_sets[i]) - common
            if union and common / union >= self.MAX_SIMILARITY:
                return True
        return False

    def keep(self, shingles: set) -> None:
        self.shingle_sets.append(shingles)
        for sh in shingles:
            self.index.setdefault(sh, []).append(len(self.shingle_sets) - 1)

    def claim(self, text: str) -> bool:
        """Reserve a normalised text; False if it is already taken."""
        key = surface_key(text)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True

    def row(self, intent: str) -> Row:
        draw = self.draw
        for _ in range(200):
            vague = [t for t, intents in SHARED_VAGUE if intent in intents]
            short = draw.chance(SHORT_SHARE + VAGUE_SHARE)
            if short and vague and draw.chance(VAGUE_SHARE / (SHORT_SHARE + VAGUE_SHARE)):
                index = draw.index(len(vague))
                skeleton = expand(vague[index], draw)
                index += len(TEMPLATES[intent]) + len(SHORT[intent])
            elif short:
                index = draw.index(len(SHORT[intent]))
                skeleton = expand(SHORT[intent][index], draw)
                index += len(TEMPLATES[intent])
            else:
                index = draw.index(len(TEMPLATES[intent]))
                skeleton = expand(TEMPLATES[intent][index], draw)
            slots = draw.slots()
            channel = draw.pick(CHANNELS, CHANNEL_WEIGHTS)
            tier = draw.pick(TIERS, (0.4, 0.2, 0.4) if intent == "invoice_request" else TIER_WEIGHTS)
            request = fill(skeleton, slots)
            aside = not short and draw.chance(ASIDE_SHARE)
            body = _reword(request, draw)
            body = _aside(intent, body, draw) if aside else body
            text = _informal(_style(body, channel, draw), channel, draw)
            shingles = word_shingles(_NUMBERS.sub("0", text))
            if self.too_close(shingles):
                continue
            if not self.claim(text):
                continue
            self.keep(shingles)
            has_order = "{order}" in skeleton
            # the reply answers the request, not the side remark
            reply = agent_reply(intent, request, slots, tier, has_order, draw)
            return Row(
                text, intent, reply, channel, tier, slots, (intent, index), has_order, clear=not (short or aside)
            )
        raise RuntimeError(f"could not draw a new distinct message for intent {intent!r}; add templates")


def quota(n: int, weights: dict[str, float]) -> list[str]:
    """Largest-remainder allocation of n rows to intents, so every intent gets its share."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    rest = sorted(weights, key=lambda k: (-(exact[k] - counts[k]), k))
    for k in rest[: n - sum(counts.values())]:
        counts[k] += 1
    return [k for k in weights for _ in range(counts[k])]
