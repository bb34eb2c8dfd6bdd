"""The demo's defects: how many of each kind, and injecting them into clean rows.

Copies (exact, near, with a conflicting label), wrong labels and label variants, PII (an email,
phone number, Luhn-valid card number, IBAN or IP address, made here), reply defects (empty,
unfilled placeholder, one canned reply pasted everywhere), PII-looking decoys on clean rows, and
new off-topic, spam, empty and garbage rows. The table of kinds and shares is in
``tunewise.demo.data``'s docstring; every draw goes through the generator's seeded ``Draw``.
"""

from __future__ import annotations

import re

from tunewise.core.text import surface_key
from tunewise.demo.generator import (
    CHANNEL_WEIGHTS,
    CHANNELS,
    INTENTS,
    SLOT,
    TIER_WEIGHTS,
    TIERS,
    Draw,
    Pool,
    Row,
    agent_reply,
    expand,
    fill,
    jaccard,
    word_shingles,
)
from tunewise.demo.templates import (
    CITIES,
    CLARIFY_REPLIES,
    COPIED_REPLY,
    EMAIL_DOMAINS,
    FILLERS,
    FIRST_NAMES,
    LAST_NAMES,
    NEIGHBOURS,
    OFF_TOPIC,
    OFF_TOPIC_REPLIES,
    PLACEHOLDERS,
    SPAM,
    SPAM_DOMAINS,
    SPAM_REPLIES,
)

# kind -> (target share, low, high) of all raw rows; see tunewise.demo.data's docstring.
DEFECT_SHARES: dict[str, tuple[float, float, float]] = {
    "exact_duplicate": (0.040, 0.030, 0.050),
    "near_duplicate": (0.040, 0.030, 0.050),
    "label_conflict": (0.020, 0.015, 0.025),
    "wrong_label": (0.040, 0.030, 0.050),
    "label_variant": (0.030, 0.020, 0.040),
    "off_topic": (0.020, 0.015, 0.025),
    "spam": (0.010, 0.007, 0.013),
    "empty": (0.005, 0.003, 0.008),
    "garbage": (0.010, 0.007, 0.013),
    "pii": (0.040, 0.030, 0.050),
    "empty_reply": (0.005, 0.003, 0.008),
    "template_slot": (0.010, 0.007, 0.013),
    "copied_reply": (0.015, 0.010, 0.020),
}
# Defects that add a row of their own; the others change a generated row in place.
COPY_KINDS = ("exact_duplicate", "near_duplicate", "label_conflict")
NEW_ROW_KINDS = ("off_topic", "spam", "empty", "garbage")
PII_KINDS = ("email", "phone", "card", "iban", "ip")

# The IBANs' countries and account-number layouts (n digits, a letters, c letters or digits); the
# intents each PII kind is injected into; how often each kind is drawn.
IBAN_SPECS = (("DE", "8n10n"), ("GB", "4a14n"), ("NL", "4a10n"), ("FR", "10n11c2n"), ("ES", "20n"), ("IE", "4a14n"))
PII_INTENTS: dict[str, tuple[str, ...]] = {
    "email": INTENTS,
    "phone": INTENTS,
    "card": ("payment_failed", "refund_status", "cancel_order", "discount_code", "invoice_request"),
    "iban": ("refund_status", "return_item", "cancel_order", "invoice_request", "damaged_item"),
    "ip": ("account_login", "payment_failed"),
}
PII_KIND_WEIGHTS = {"email": 0.35, "phone": 0.25, "card": 0.15, "iban": 0.12, "ip": 0.13}


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) < 2:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# ---------------------------------------------------------------------------------------------
# Copies and label variants
# ---------------------------------------------------------------------------------------------
def _label_variant(intent: str, draw: Draw) -> str:
    words = intent.split("_")
    variants = (
        " ".join(w.capitalize() for w in words),  # Order Status
        "-".join(words) + " ",  # order-status + trailing space
        intent.upper(),  # ORDER_STATUS
        " ".join(words),  # order status
        "".join(w.capitalize() for w in words),  # OrderStatus
        " " + intent,  # leading space
        "_".join(w.capitalize() for w in words),  # Order_Status
    )
    return draw.pick(variants)


def _case_or_space_variant(text: str, draw: Draw) -> tuple[str, str]:
    """A copy that is equal after whitespace/case normalisation; returns (text, how)."""
    how = draw.pick(("identical", "identical", "trailing_space", "double_space", "lowercase", "uppercase_first"))
    if how == "trailing_space":
        return text + draw.pick((" ", "  ", "\n")), how
    if how == "double_space" and " " in text:
        return text.replace(" ", "  ", 1), how
    if how == "lowercase" and text.lower() != text:
        return text.lower(), how
    if how == "uppercase_first" and text[:1].islower():
        return text[:1].upper() + text[1:], how
    return text, "identical"


def _near_edit(row: Row, draw: Draw) -> tuple[str, str, str] | None:
    """A small edit of a row's text; returns (text, reply, how) or None when none fits."""
    text, reply = row.text, row.reply
    how = draw.pick(("order_number", "add_word", "remove_word", "punctuation", "typo"))
    if how == "order_number":
        old = row.slots["order"]
        if not row.has_order:
            return None
        new = draw.order_id()
        # chat messages may be lower-cased: match the number in any case
        text = re.sub(re.escape(old), new.lower() if old.lower() in text else new, text, flags=re.I)
        return text, reply.replace(old, new), how
    words = text.split(" ")
    if how == "add_word":
        # where people really add words: a greeting in front, a thank-you or "please" at the end
        if draw.chance(0.5):
            return f"{draw.pick(('Hi,', 'Hello again,', 'Sorry,', 'Hey,', 'Hi again,'))} {text}", reply, how
        return f"{text.rstrip()} {draw.pick(('Thanks!', 'please', 'Thank you.', 'asap', 'Thanks again.'))}", reply, how
    if how == "remove_word":
        removable = FILLERS + ("hi", "hello", "hey", "the", "my", "thanks", "very", "yeah")
        # "hi there" loses both words or neither
        candidates = [
            i
            for i, w in enumerate(words)
            if w.lower().strip(",.!?-") in removable
            and not (i + 1 < len(words) and words[i + 1].lower().startswith("there"))
        ]
        if not candidates:
            return None
        at = draw.pick(candidates)
        return " ".join(words[:at] + words[at + 1 :]), reply, how
    if how == "punctuation":
        stripped = text.rstrip()
        if stripped.endswith(("?", "!", ".")):
            end = stripped[-1]
            new_end = draw.pick(("", end * 2, "!" if end != "!" else "."))
            return stripped[:-1] + new_end, reply, how
        return stripped + draw.pick(("?", "!", ".")), reply, how
    # typo: swap two inner letters of one longer word.
    long_words = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    if not long_words:
        return None
    at = draw.pick(long_words)
    w = words[at]
    j = draw.between(1, len(w) - 3)
    words[at] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words), reply, how


# ---------------------------------------------------------------------------------------------
# PII and decoys
# ---------------------------------------------------------------------------------------------
def _email(draw: Draw) -> str:
    first, last = draw.pick(FIRST_NAMES), draw.pick(LAST_NAMES)
    local = draw.pick(
        (f"{first}.{last}", f"{first}{last}{draw.between(1, 99)}", f"{first[0]}{last}", f"{first}_{last}")
    )
    return f"{local}@{draw.pick(EMAIL_DOMAINS)}"


def _phone(draw: Draw) -> str:
    style = draw.between(0, 3)
    if style == 0:
        return f"({draw.between(201, 989)}) 555-{draw.digits(4)}"
    if style == 1:
        return f"+1 {draw.between(201, 989)}-555-{draw.digits(4)}"
    if style == 2:
        return f"+44 7700 900{draw.digits(3)}"
    return f"07700 900{draw.digits(3)}"


def _card(draw: Draw) -> str:
    brand = draw.pick(("visa", "visa", "mastercard", "amex"))
    prefix = {"visa": "4", "mastercard": str(draw.between(51, 55)), "amex": draw.pick(("34", "37"))}[brand]
    length = 15 if brand == "amex" else 16
    body = prefix + draw.digits(length - len(prefix) - 1)
    check = next(str(d) for d in range(10) if luhn_valid(body + str(d)))
    number = body + check
    style = draw.between(0, 2)
    if style == 0:
        return number
    groups = (4, 6, 5) if brand == "amex" else (4, 4, 4, 4)
    parts, at = [], 0
    for g in groups:
        parts.append(number[at : at + g])
        at += g
    return (" " if style == 1 else "-").join(parts)


def _iban(draw: Draw) -> str:
    country, spec = draw.pick(IBAN_SPECS)
    bban = ""
    for count, kind in re.findall(r"(\d+)([nac])", spec):
        for _ in range(int(count)):
            if kind == "n":
                bban += draw.digits(1)
            elif kind == "a":
                bban += draw.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            else:
                bban += draw.pick("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    iban = f"{country}{check:02d}{bban}"
    if draw.chance(0.6):
        iban = " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))
    return iban


def _ip(draw: Draw) -> str:
    first = draw.pick((24, 31, 46, 62, 71, 81, 86, 93, 98, 109, 151, 176, 185, 203, 212))
    return f"{first}.{draw.between(0, 255)}.{draw.between(0, 255)}.{draw.between(1, 254)}"


def _reply_mentioning(row: Row, draw: Draw, extra: str) -> None:
    row.reply = agent_reply(row.intent, row.text, row.slots, row.tier, row.has_order, draw, extra=extra)


def _inject_pii(row: Row, kind: str, draw: Draw) -> tuple[str, str]:
    """Add one PII value to the text or the reply; returns (field, value)."""
    if kind == "email":
        value = _email(draw)
        if draw.chance(0.3):
            _reply_mentioning(row, draw, f"We've sent a confirmation to {value}.")
            return "reply", value
        sentence = draw.pick(
            (
                f"You can reach me at {value}.",
                f"My email is {value}.",
                f"Please reply to {value}, not the account email.",
            )
        )
    elif kind == "phone":
        value = _phone(draw)
        if draw.chance(0.3):
            _reply_mentioning(row, draw, f"We'll call you back on {value} within one business day.")
            return "reply", value
        sentence = draw.pick(
            (f"Call me back on {value} if that's easier.", f"My number is {value}.", f"You can text me at {value}.")
        )
    elif kind == "card":
        value = _card(draw)
        sentence = draw.pick(
            (f"The card I used is {value}.", f"I paid with card {value}.", f"My card number is {value} if you need it.")
        )
    elif kind == "iban":
        value = _iban(draw)
        sentence = draw.pick(
            (
                f"Please send the money to my bank account {value}.",
                f"My IBAN is {value}.",
                f"Can you transfer it to IBAN {value} instead?",
            )
        )
    else:
        value = _ip(draw)
        sentence = draw.pick(
            (
                f"I'm connecting from {value} if that helps.",
                f"My IP address is {value}.",
                f"Your site blocked my IP {value}.",
            )
        )
    row.text = f"{row.text} {sentence}" if draw.chance(0.8) else f"{sentence} {row.text}"
    return "text", value


def _decoy(row: Row, draw: Draw) -> None:
    """PII-looking but not PII: a 16-digit reference failing Luhn, or a long tracking number."""
    if draw.chance(0.6):
        body = draw.pick(("6", "7", "9")) + draw.digits(14)
        check = next(str(d) for d in range(10) if not luhn_valid(body + str(d)))
        number = body + check
        if draw.chance(0.5):
            number = " ".join(number[i : i + 4] for i in range(0, 16, 4))
        sentence = draw.pick(
            (
                f"The reference on my receipt is {number}.",
                f"Gift card number {number} if that matters.",
                f"My loyalty number is {number}.",
            )
        )
    else:
        number = "9400" + draw.digits(18)
        sentence = f"The tracking number is {number}."
    row.text = f"{row.text} {sentence}"
    row.decoy = True


# ---------------------------------------------------------------------------------------------
# New rows, counts and injection
# ---------------------------------------------------------------------------------------------
def _new_row_text(kind: str, pool: Pool, draw: Draw) -> str:
    for _ in range(200):
        if kind == "empty":
            return draw.pick(("", " ", "  ", "\n", " \t "))
        if kind == "off_topic":
            text = fill(expand(draw.pick(OFF_TOPIC), draw), {"city": draw.pick(CITIES)})
        elif kind == "spam":
            values = {
                "spam_domain": draw.pick(SPAM_DOMAINS),
                "big": f"{draw.between(5, 95) * 100:,}",
                "spam_path": "".join(draw.pick("abcdefghkmnpqrstuvwxyz0123456789") for _ in range(6)),
            }
            text = expand(draw.pick(SPAM), draw)
            text = SLOT.sub(lambda m: values[m.group(1)], text)  # noqa: B023  (called right here)
        else:  # garbage
            style = draw.between(0, 4)
            if style == 0:
                text = "".join(draw.pick("asdfghjklqwertyuiopzxcvbnm") for _ in range(draw.between(6, 16)))
            elif style == 1:
                text = draw.pick("!?.") * draw.between(3, 12)
            elif style == 2:
                text = " ".join([draw.pick(("??", "...", "!!", "?!"))] * draw.between(2, 6))
            elif style == 3:
                text = " ".join([draw.pick(("lol", "ok", "test", "hmm", "aaa", "yo"))] * draw.between(3, 7))
            else:
                text = "".join(draw.pick("0123456789#@%&*") for _ in range(draw.between(5, 12)))
        if pool.claim(text):
            return text
    raise RuntimeError(f"could not draw a new distinct {kind} message")


def defect_counts(n_rows: int, draw: Draw) -> dict[str, int]:
    counts = {}
    for kind, (share, _, _) in DEFECT_SHARES.items():
        counts[kind] = max(1, int(round(n_rows * share * float(draw.rng.uniform(0.85, 1.15)))))
    return counts


def inject_defects(base: list[Row], counts: dict[str, int], pool: Pool, draw: Draw) -> list[Row]:
    """Mark in-place defects on base rows and build the added rows; base order is kept."""
    free = list(range(len(base)))  # base rows still clean and not an original
    draw.rng.shuffle(free)

    def take(predicate=lambda r: True) -> Row:
        for pos, i in enumerate(free):
            if predicate(base[i]):
                free.pop(pos)
                return base[i]
        raise RuntimeError("ran out of clean rows to inject defects into; raise n_rows")

    added: list[Row] = []
    # Copies first, from originals that stay clean.
    for _ in range(counts["exact_duplicate"]):
        orig = take()
        orig.is_original = True
        text, how = _case_or_space_variant(orig.text, draw)
        added.append(_copy(orig, "exact_duplicate", text=text, detail=how))
    for _ in range(counts["label_conflict"]):
        orig = take()
        orig.is_original = True
        text, how = _case_or_space_variant(orig.text, draw)
        other = draw.pick(NEIGHBOURS[orig.intent])
        reply = agent_reply(other, orig.text, orig.slots, orig.tier, orig.has_order, draw)
        added.append(
            _copy(orig, "label_conflict", text=text, intent=other, reply=reply, detail=f"original intent {orig.intent}")
        )
    made = 0
    while made < counts["near_duplicate"]:
        orig = take(lambda r: len(r.text.split()) >= 10)
        for _ in range(10):
            edit = _near_edit(orig, draw)
            if edit is None:
                continue
            text, reply, how = edit
            if surface_key(text) == surface_key(orig.text):
                continue
            if jaccard(word_shingles(text), word_shingles(orig.text)) < 0.6 or not pool.claim(text):
                continue
            orig.is_original = True
            added.append(_copy(orig, "near_duplicate", text=text, reply=reply, detail=how))
            made += 1
            break
        # an original with no fitting edit simply stays clean

    # In-place defects on other clean rows.
    # A wrong label goes on a message with one plain request: on a vague message or one that
    # touches two topics, a neighbouring intent can be a fair reading rather than an error.
    for _ in range(counts["wrong_label"]):
        row = take(lambda r: r.clear)
        row.kind, row.detail = "wrong_label", row.intent
        row.intent = draw.pick(NEIGHBOURS[row.intent])
    for _ in range(counts["label_variant"]):
        row = take()
        row.kind, row.detail = "label_variant", row.intent
        row.intent = _label_variant(row.intent, draw)
    kinds = list(PII_KIND_WEIGHTS)
    for _ in range(counts["pii"]):
        kind = draw.pick(kinds, [PII_KIND_WEIGHTS[k] for k in kinds])
        row = take(lambda r, k=kind: r.intent in PII_INTENTS[k])
        where, _value = _inject_pii(row, kind, draw)
        row.kind, row.detail, row.extra = "pii", kind, {"field": where}
    for _ in range(counts["empty_reply"]):
        row = take()
        row.kind, row.reply = "empty_reply", draw.pick(("", " ", "\n"))
    for _ in range(counts["template_slot"]):
        row = take()
        slot = draw.pick(PLACEHOLDERS)
        order = row.slots["order"]
        if order in row.reply and slot in ("{order_id}", "[ORDER_NUMBER]"):
            row.reply = row.reply.replace(order, slot)
        elif "name" in slot:
            row.reply = agent_reply(
                row.intent, row.text, row.slots, row.tier, row.has_order, draw, opener=f"Hi {slot},"
            )
        else:
            line = f"You can follow it here: {slot}" if slot.startswith("<") else f"Your order number is {slot}."
            row.reply = agent_reply(row.intent, row.text, row.slots, row.tier, row.has_order, draw, extra=line)
        row.kind, row.detail = "template_slot", slot
    for _ in range(counts["copied_reply"]):
        row = take()
        row.kind, row.reply = "copied_reply", COPIED_REPLY
    # A few clean rows carry PII-lookalike numbers (not defects; they test false positives).
    for _ in range(max(3, len(base) // 100)):
        _decoy(take(lambda r: not r.is_original), draw)

    for kind in NEW_ROW_KINDS:
        for _ in range(counts[kind]):
            text = _new_row_text(kind, pool, draw)
            reply = draw.pick({"off_topic": OFF_TOPIC_REPLIES, "spam": SPAM_REPLIES}.get(kind, CLARIFY_REPLIES))
            added.append(
                Row(
                    text,
                    draw.pick(INTENTS),
                    reply,
                    draw.pick(CHANNELS, CHANNEL_WEIGHTS),
                    draw.pick(TIERS, TIER_WEIGHTS),
                    {},
                    ("", -1),
                    kind=kind,
                )
            )
    return _interleave(base, added, draw)


def _copy(orig: Row, kind: str, **changes) -> Row:
    values = dict(
        text=orig.text,
        intent=orig.intent,
        reply=orig.reply,
        channel=orig.channel,
        tier=orig.tier,
        slots=orig.slots,
        template=orig.template,
        has_order=orig.has_order,
    )
    detail = changes.pop("detail", None)
    values.update(changes)
    return Row(**values, kind=kind, of=orig, detail=detail)


def _interleave(base: list[Row], added: list[Row], draw: Draw) -> list[Row]:
    """Spread added rows through the file; a copy always lands after its original."""
    position = {id(r): i for i, r in enumerate(base)}
    keyed = [(float(i), 0, i, r) for i, r in enumerate(base)]
    n = len(base)
    for j, row in enumerate(added):
        low = position[id(row.of)] + 0.5 if row.of is not None else 0.0
        keyed.append((float(draw.rng.uniform(low, n)), 1, j, row))
    keyed.sort(key=lambda t: (t[0], t[1], t[2]))
    return [t[3] for t in keyed]
