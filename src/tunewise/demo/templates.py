"""The demo generator's text, loaded from the package data file ``templates.json``.

The JSON holds every table of words and sentences the generator draws from; this module reads it
once (``importlib.resources``, so it works from a wheel as from a checkout) and rebuilds the Python
types the generator uses: tuples of strings, ``(intent, tier)`` keys, ``(pattern, replies)`` pairs.
The numbers that tune the generator (shares, weights) stay in Python next to the code that uses
them (``generator``, ``defects``).

Template grammar (``TEMPLATES``, ``SHORT``, ``SHARED_VAGUE``, ``REPLIES``, ``OFF_TOPIC``, ``SPAM``):
``(a|b)`` picks one, ``[x]`` keeps ``x`` half the time, ``{slot}`` is a value (order number,
product, a ``POLICY`` fact...), ``<name>`` is a synonym group from ``MACROS``.

The tables:

- ``STORE``, ``POLICY``: the store's name and its policy facts, one source for the knowledge base
  and the replies so they cannot drift apart. ``KNOWLEDGE_BASE`` (file name -> Markdown),
  ``TIER_NOTES`` and the store-naming openers, closers and canned replies are written in the JSON
  as ``str.format`` templates (``{store}``, ``{return_days}``...) and filled from these two here;
  a knowledge-base file is written as its list of lines.
- ``PRODUCTS``, ``CITIES``, ``CARRIERS``, ``CARD_BRANDS``, ``CODES``, ``MONTHS``, ``WEEKDAYS``,
  ``NUMBER_WORDS``: slot values.
- ``NEIGHBOURS``: confusable intents, where wrong labels and label conflicts plausibly land.
- ``TEMPLATES``: message templates per intent. In the JSON each intent's own templates come first;
  here they are followed by its ``PARAPHRASES`` (more ways of asking: informal, terse) and its
  ``CROSS_WORDED`` requests (worded with a neighbouring intent's vocabulary: the customer names
  what they see, not the department they need), so ``PARAPHRASES`` is the paraphrases plus the
  cross-worded ones. Real queues are not cleanly separable and a classifier should not reach 100%.
- ``MACROS``: synonym groups written ``<name>`` in the templates.
- ``SHORT``: short and vague messages per intent ("refund?", "order status pls").
- ``SHARED_VAGUE``: ``(template, intents)``: vague messages several intents share ("where's my
  parcel?"); the agent who labelled one knew from the conversation, the text alone cannot tell.
- ``ASIDES`` and ``ASIDE_LEADS``: side remarks about another topic ("Also, my last refund took
  ages."); a message's label is its main request.
- ``INFORMAL``: informal spellings and common misspellings of a word.
- ``SYNONYMS``: everyday synonyms swapped into any message, followed here by the JSON's
  ``KEYWORD_VARIANTS``, the long tail of the words that name a request ("refund",
  "reimbursement", "money back"), each variant rare enough that a word-count model meets it once
  or never in training.
- ``REPLIES``: per intent, ``(pattern on the lower-cased message or None, reply templates)``; the
  first rule whose pattern matches wins. ``{order_ref}`` is "order #X" or "your order".
- ``OFF_TOPIC``, ``SPAM`` (with ``SPAM_DOMAINS``), their replies, ``CLARIFY_REPLIES`` (for empty and
  garbage messages), ``COPIED_REPLY`` and ``PLACEHOLDERS`` (unfilled template slots): the defects'
  text.
- Channel styling: ``EMAIL_OPENERS`` ... ``PHONE_CLOSERS``, ``CONTEXT_SENTENCES``, ``REPLY_OPENERS``,
  ``REPLY_CLOSERS``, ``FILLERS``.
- PII pieces (made up, realistic-looking): ``FIRST_NAMES``, ``LAST_NAMES``, ``EMAIL_DOMAINS``.
"""

from __future__ import annotations

import json
from importlib.resources import files

TEMPLATE_FILE = "templates.json"


def _load() -> dict:
    return json.loads(files("tunewise.demo").joinpath(TEMPLATE_FILE).read_text(encoding="utf-8"))


def _strings(values: list[str]) -> tuple[str, ...]:
    return tuple(values)


def _tuples_of(table: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    return {key: tuple(values) for key, values in table.items()}


_RAW = _load()

STORE: str = _RAW["STORE"]
POLICY: dict[str, int | str] = dict(_RAW["POLICY"])


def _facts(text: str) -> str:
    """A str.format template filled with the store's name and policy facts."""
    return text.format(store=STORE, **POLICY)


def _facts_in(values: list[str]) -> tuple[str, ...]:
    return tuple(_facts(text) for text in values)


# a knowledge-base file is written in the JSON as its lines
KNOWLEDGE_BASE: dict[str, str] = {
    name: _facts("\n".join(lines) + "\n") for name, lines in _RAW["KNOWLEDGE_BASE"].items()
}

# Slot values
PRODUCTS = _strings(_RAW["PRODUCTS"])
CITIES = _strings(_RAW["CITIES"])
CARRIERS = _strings(_RAW["CARRIERS"])
CARD_BRANDS = _strings(_RAW["CARD_BRANDS"])
CODES = _strings(_RAW["CODES"])
MONTHS = _strings(_RAW["MONTHS"])
WEEKDAYS = _strings(_RAW["WEEKDAYS"])
NUMBER_WORDS = _strings(_RAW["NUMBER_WORDS"])

NEIGHBOURS: dict[str, tuple[str, ...]] = _tuples_of(_RAW["NEIGHBOURS"])

# Messages
MACROS: dict[str, str] = dict(_RAW["MACROS"])
CROSS_WORDED: dict[str, tuple[str, ...]] = _tuples_of(_RAW["CROSS_WORDED"])
PARAPHRASES: dict[str, tuple[str, ...]] = {
    intent: tuple(values) + CROSS_WORDED[intent] for intent, values in _RAW["PARAPHRASES"].items()
}
TEMPLATES: dict[str, tuple[str, ...]] = {
    intent: tuple(values) + PARAPHRASES[intent] for intent, values in _RAW["TEMPLATES"].items()
}
SHORT: dict[str, tuple[str, ...]] = _tuples_of(_RAW["SHORT"])
SHARED_VAGUE: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (item["template"], tuple(item["intents"])) for item in _RAW["SHARED_VAGUE"]
)
ASIDES: dict[str, tuple[str, ...]] = _tuples_of(_RAW["ASIDES"])
ASIDE_LEADS = _strings(_RAW["ASIDE_LEADS"])
INFORMAL: dict[str, tuple[str, ...]] = _tuples_of(_RAW["INFORMAL"])
KEYWORD_VARIANTS: dict[str, tuple[str, ...]] = _tuples_of(_RAW["KEYWORD_VARIANTS"])
SYNONYMS: dict[str, tuple[str, ...]] = {**_tuples_of(_RAW["SYNONYMS"]), **KEYWORD_VARIANTS}

# Replies
REPLIES: dict[str, tuple[tuple[str | None, tuple[str, ...]], ...]] = {
    intent: tuple((rule["pattern"], tuple(rule["replies"])) for rule in rules)
    for intent, rules in _RAW["REPLIES"].items()
}
TIER_NOTES: dict[tuple[str, str], str] = {
    (intent, tier): _facts(note) for intent, notes in _RAW["TIER_NOTES"].items() for tier, note in notes.items()
}

# Off-topic, spam and the defects' canned text
OFF_TOPIC = _strings(_RAW["OFF_TOPIC"])
OFF_TOPIC_REPLIES = _facts_in(_RAW["OFF_TOPIC_REPLIES"])
SPAM = _strings(_RAW["SPAM"])
SPAM_DOMAINS = _strings(_RAW["SPAM_DOMAINS"])
SPAM_REPLIES = _strings(_RAW["SPAM_REPLIES"])
CLARIFY_REPLIES = _strings(_RAW["CLARIFY_REPLIES"])
COPIED_REPLY: str = _facts(_RAW["COPIED_REPLY"])
PLACEHOLDERS = _strings(_RAW["PLACEHOLDERS"])

# Channel styling
EMAIL_OPENERS = _facts_in(_RAW["EMAIL_OPENERS"])
EMAIL_CLOSERS = _strings(_RAW["EMAIL_CLOSERS"])
CHAT_OPENERS = _strings(_RAW["CHAT_OPENERS"])
CHAT_CLOSERS = _strings(_RAW["CHAT_CLOSERS"])
PHONE_OPENERS = _strings(_RAW["PHONE_OPENERS"])
PHONE_CLOSERS = _strings(_RAW["PHONE_CLOSERS"])
CONTEXT_SENTENCES = _strings(_RAW["CONTEXT_SENTENCES"])
REPLY_OPENERS = _facts_in(_RAW["REPLY_OPENERS"])
REPLY_CLOSERS = _facts_in(_RAW["REPLY_CLOSERS"])
FILLERS = _strings(_RAW["FILLERS"])

# PII pieces
FIRST_NAMES = _strings(_RAW["FIRST_NAMES"])
LAST_NAMES = _strings(_RAW["LAST_NAMES"])
EMAIL_DOMAINS = _strings(_RAW["EMAIL_DOMAINS"])

del _RAW
