"""The ``pii`` check: e-mail addresses, phone numbers, payment cards, IBANs and IP addresses.

Config under ``curate.pii``: ``action`` is ``redact`` (default: replace each match with a typed
placeholder ``<EMAIL>``, ``<PHONE>``, ``<CARD>``, ``<IBAN>``, ``<IP>`` so the row keeps its
meaning for training), ``drop`` (remove the row) or ``flag`` (report only). No threshold.

Scanned: ``input``, chat ``context`` contents, for generate ``target`` (agent replies leak
customer data too), and every text meta column kept with the records (for example a reply
column beside a classify label). Labels are not scanned: they are a closed set of class names.

Hand-written patterns plus checksums, not a library: Presidio and phonenumbers are not
dependencies (and Presidio pulls in spaCy models we cannot download offline). Checksums keep
precision high where a bare pattern would not: cards must pass Luhn and start with a card
network's digit, IBANs must pass ISO 13616 mod-97 with their country's length, IPv4 octets are
<= 255 and IPv6 candidates are parsed by ``ipaddress``. Phone numbers have no checksum, so they
need phone-like shape: a leading ``+``/``00``, or separators in phone-like groups; a bare digit
string counts only right after a phone word ("call me on ..."). Order numbers ("#48213377"),
dates ("2024-03-05") and amounts ("$1,299.00", "12999.00 EUR") are not phones.
The detail names kinds and fields, never the value: the issues table must not leak what it hides.

Where a miss costs more than a false alarm, the check errs toward redaction: a card-like digit run
(13-19 digits, grouped by spaces or dashes or not) right after a word such as "card", "account",
"acct", "a/c" or "iban" is redacted as ``<CARD>`` even when it fails Luhn or starts with no card
network's digit (a mistyped card or an account number is still personal data). Such a match is a
low-confidence finding: its detail says "card (low confidence)".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tunewise.config.checks import PiiSettings
from tunewise.core.records import meta_columns
from tunewise.data.checks.text import as_text, map_context
from tunewise.data.curate import Check, CurateContext, Finding, register

KINDS = ("email", "phone", "card", "iban", "ip")
PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "card": "<CARD>", "iban": "<IBAN>", "ip": "<IP>"}

# Compiled once: these run over every text field of every row.
EMAIL_RE = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}\b"
)
# 13-19 digits, optionally grouped by single spaces or dashes.
CARD_RE = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w]|-\d)")
# Country code, check digits, then the BBAN in print (groups of 4) or electronic form.
IBAN_RE = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")
IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
VERSION_BEFORE_RE = re.compile(r"(?:\bversion|\bver\.?|\bv)\s*$", re.IGNORECASE)  # "version 1.2.3.4"
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Optional "+" or "(" then 7+ digits with at most two separator characters between digits.
PHONE_RE = re.compile(r"(?<![\w#$€£¥+/@.,-])(?:\+|\(\+?)?\d(?:[ .()\-]{0,2}\d){6,16}(?![\w/]|[.,]\d)")
DATE_RE = re.compile(r"(?<!\d)(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?!\d)")
PHONE_WORDS_RE = re.compile(
    r"\b(?:phone|tel|telephone|call|mobile|cell|cellphone|whatsapp|sms|text me|reach me|ring me)\b\W{0,3}"
    r"(?:\w+\W+){0,3}$",
    re.IGNORECASE,
)
CURRENCY_RE = re.compile(r"(?:[$€£¥]|\b(?:usd|eur|gbp|dollars?|euros?|pounds?)\b)", re.IGNORECASE)
# A payment word then at most three words ("card number is", "account no.:", "acct ending"): the
# digit run that follows is redacted even without a valid checksum.
CARD_WORDS_RE = re.compile(
    r"\b(?:cards?|creditcard|debitcard|account|acct|acc|a/c|iban)\b\W{0,3}(?:[^\W\d]\w*\W{1,3}){0,3}$", re.IGNORECASE
)

# ISO 13616 IBAN lengths by country (SWIFT IBAN registry); unknown countries need 15-34 chars.
IBAN_LENGTHS = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NL": 18,
    "NO": 15,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "SA": 24,
    "SC": 31,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number satisfies."""
    total = 0
    for position, ch in enumerate(reversed(digits)):
        d = int(ch)
        if position % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    """13-19 digits, a card network's first digit (2-6: Mastercard, Amex, Visa, Discover...), Luhn."""
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1 and luhn_valid(digits)


def iban_valid(iban: str) -> bool:
    """ISO 13616: known country length, then mod 97 of the rearranged number equals 1."""
    compact = re.sub(r"\s+", "", iban).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    expected = IBAN_LENGTHS.get(compact[:2])
    if expected is not None and len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


@dataclass(frozen=True)
class PiiMatch:
    kind: str
    start: int
    end: int
    confidence: str = "high"  # "low": redacted on context alone (a card word before a number failing Luhn)


def _iban_spans(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, valid) of IBAN-shaped strings; an invalid one still blocks the card and phone
    patterns, whose digits it would otherwise lend ("DE89 3704 ..." is not a card number)."""
    spans = []
    for m in IBAN_RE.finditer(text):
        # The pattern may run into a following word ("... 00 THANKS"); cut the candidate at the
        # country's length and accept only if it ends on a word boundary.
        expected = IBAN_LENGTHS.get(m.group()[:2].upper())
        end, seen = m.start(), 0
        for i in range(m.start(), m.end()):
            if text[i].isalnum():
                seen += 1
                end = i + 1
                if expected is not None and seen == expected:
                    break
        if end < len(text) and text[end].isalnum():
            continue
        candidate = re.sub(r"\s+", "", text[m.start() : end]).upper()
        if iban_valid(candidate):
            spans.append((m.start(), end, True))
        elif expected is not None and len(candidate) == expected:
            spans.append((m.start(), end, False))
    return spans


def _looks_like_amount(candidate: str, before: str, after: str) -> bool:
    if CURRENCY_RE.search(before[-6:]) or CURRENCY_RE.match(after.lstrip()[:8]):
        return True
    groups = re.split(r"[ .]", candidate)
    if re.fullmatch(r"\d+\.\d{2}", candidate):  # 12999.00
        return True
    # 1 299 000 / 1.299.000: thousands groups, and amounts don't start with 0
    return (
        len(groups) > 1
        and not candidate.startswith("0")
        and len(groups[0]) <= 3
        and all(len(g) == 3 for g in groups[1:])
        and re.fullmatch(r"[\d .]+", candidate) is not None
    )


def _is_phone(text: str, m: re.Match[str], dates: list[tuple[int, int]]) -> bool:
    candidate = m.group()
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if any(s < m.end() and m.start() < e for s, e in dates):
        return False
    if candidate.startswith(("+", "(+")):
        return len(digits) >= 8
    if candidate.startswith("00") and len(digits) >= 10:  # 00 = international prefix in Europe
        return True
    if _looks_like_amount(candidate, text[: m.start()], text[m.end() :]):
        return False
    groups = [g for g in re.split(r"[ .()\-]+", candidate) if g]
    if len(groups) == 1:
        # A bare digit string is an order, account or tracking number unless a phone word says
        # otherwise ("call me on 5551234567").
        return len(digits) >= 9 and PHONE_WORDS_RE.search(text[max(0, m.start() - 40) : m.start()]) is not None
    # Phone groups are 2-5 digits; only a leading country/trunk code ("1-800-...") may be 1 digit.
    # After a trunk prefix or an area code in brackets the subscriber part may be longer
    # ("07700 900123", "030 12345678", "(030) 1234567").
    longest = 8 if candidate.startswith(("0", "(")) else 5
    return all(2 <= len(g) <= longest for g in groups[1:]) and len(groups[0]) <= 5


def find_pii(text: str) -> list[PiiMatch]:
    """Every PII match in ``text``, left to right, without overlaps.

    Kinds are searched in an order where the stricter patterns claim their text first (an IBAN or
    a card number also looks like a phone number).
    """
    taken: list[tuple[int, int]] = []
    found: list[PiiMatch] = []

    def free(start: int, end: int) -> bool:
        return all(end <= s or e <= start for s, e in taken)

    def claim(kind: str, start: int, end: int, confidence: str = "high") -> None:
        taken.append((start, end))
        found.append(PiiMatch(kind, start, end, confidence))

    for m in EMAIL_RE.finditer(text):
        claim("email", m.start(), m.end())
    for start, end, valid in _iban_spans(text):
        if valid:
            claim("iban", start, end)
        else:
            taken.append((start, end))
    for m in CARD_RE.finditer(text):
        if not free(m.start(), m.end()):
            continue
        if is_card_number(re.sub(r"\D", "", m.group())):
            claim("card", m.start(), m.end())
        elif CARD_WORDS_RE.search(text[max(0, m.start() - 40) : m.start()]):
            claim("card", m.start(), m.end(), "low")
    for m in IPV4_RE.finditer(text):
        if (
            free(m.start(), m.end())
            and all(int(octet) <= 255 for octet in m.group().split("."))
            and not VERSION_BEFORE_RE.search(text[max(0, m.start() - 12) : m.start()])
        ):
            claim("ip", m.start(), m.end())
    for m in IPV6_RE.finditer(text):
        groups = [g for g in m.group().split(":") if g]
        if free(m.start(), m.end()) and len(groups) >= 2:
            try:
                ipaddress.IPv6Address(m.group())
            except ValueError:
                continue
            claim("ip", m.start(), m.end())
    dates = [(m.start(), m.end()) for m in DATE_RE.finditer(text)]
    for m in PHONE_RE.finditer(text):
        if free(m.start(), m.end()) and _is_phone(text, m, dates):
            claim("phone", m.start(), m.end())
    return sorted(found, key=lambda p: p.start)


def redact_matches(text: str) -> tuple[str, list[PiiMatch]]:
    """``text`` with each PII match replaced by its placeholder, and the matches (in order)."""
    matches = find_pii(text)
    for match in reversed(matches):
        text = text[: match.start] + PLACEHOLDERS[match.kind] + text[match.end :]
    return text, matches


def redact(text: str) -> tuple[str, list[str]]:
    """``text`` with each PII match replaced by its placeholder, and the kinds found (in order)."""
    text, matches = redact_matches(text)
    return text, [m.kind for m in matches]


def _kinds_phrase(kinds: set[str], low: set[str] = frozenset()) -> str:
    """ "email, card" or, when a kind was found only on context, "card (low confidence)"."""
    return ", ".join(k + (" (low confidence)" if k in low else "") for k in KINDS if k in kinds)


@register
class Pii(Check):
    name = "pii"
    row_local = True  # findings depend on the row alone: the engine may shard rows
    issues = ("pii",)
    settings_model = PiiSettings

    def find(self, frame: pd.DataFrame, ctx: CurateContext) -> list[Finding]:
        fields = ["input", "context"] + (["target"] if ctx.answer == "target" else [])
        # meta columns travel with the data into every artifact (a reply column kept beside a
        # classify label, a notes column): they leak PII just the same
        fields += [c for c in meta_columns(frame) if frame[c].dtype == object]
        fields = [f for f in fields if f in frame]
        columns = {f: frame[f].tolist() for f in fields}
        findings = []
        for index in range(len(frame)):
            change: dict[str, Any] = {}
            where: list[str] = []
            for field in fields:
                value = columns[field][index]
                matches: list[PiiMatch] = []
                if field == "context":

                    def redact_part(s: str) -> str:
                        new, found = redact_matches(s)
                        matches.extend(found)  # noqa: B023  (map_context calls it within this iteration)
                        return new

                    new_value = map_context(value, redact_part)
                else:
                    new_value, found = redact_matches(as_text(value))
                    matches.extend(found)
                if matches:
                    kinds = {m.kind for m in matches}
                    # low confidence only when every match of the kind in this field is
                    low = kinds - {m.kind for m in matches if m.confidence == "high"}
                    change[field] = new_value
                    where.append(f"{_kinds_phrase(kinds, low)} in {field}")
            if change:
                findings.append(Finding(index, "pii", "; ".join(where), change=change))
        return findings
