"""The pii check: patterns with checksums, and redaction applied by the real curation runner."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunewise.config.sections import config_from_dict
from tunewise.data.checks.pii import find_pii, iban_valid, is_card_number, luhn_valid, redact
from tunewise.data.curate import CHECK_ORDER, curate_frame


def make_config(task: str, **settings):
    curate = {name: {"enabled": False} for name in CHECK_ORDER}
    curate["pii"] = {"enabled": True, **settings}
    return config_from_dict({"task": task, "data": {"train": "x.csv"}, "curate": curate})


def make_frame(inputs: list[str], answers: list[str], task: str, contexts: list[str] | None = None) -> pd.DataFrame:
    n = len(inputs)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "input": inputs,
            "context": contexts or ["[]"] * n,
            "label" if task == "classify" else "target": answers,
            "source_file": "x.csv",
            "source_line": list(range(2, n + 2)),
            "synthetic": False,
        }
    )


FOUND = [
    ("mail me at john.doe+shop@mail.example.co.uk please", "email"),
    ("card 4111 1111 1111 1111 was charged", "card"),
    ("card 5500-0000-0000-0004.", "card"),
    ("amex 378282246310005", "card"),
    ("IBAN DE89 3704 0044 0532 0130 00 thanks", "iban"),
    ("GB82WEST12345698765432", "iban"),
    ("my ip is 192.168.1.30", "ip"),
    ("from 2001:db8::8a2e:370:7334 today", "ip"),
    ("call +44 20 7946 0958", "phone"),
    ("(555) 123-4567", "phone"),
    ("my number is 555-123-4567.", "phone"),
    ("+1 (555) 123-4567", "phone"),
    ("06 12 34 56 78", "phone"),
    ("07700 900123", "phone"),
    ("call me on 5551234567", "phone"),
]
NOT_FOUND = [
    "4111 1111 1111 1112",  # 16 digits failing Luhn
    "reference 1234 5678 9012 3456",  # fails Luhn
    "order #48213377 is late",  # order number
    "order 5551234567 is late",  # bare digits with no phone word
    "delivered 2024-03-05",  # date
    "on 05.03.2024 at 10:30",  # date, time
    "it cost $1,299.00",  # amount
    "refund of 12999.00 EUR",  # amount
    "population 1 299 000",  # thousands groups
    "IBAN DE89 3704 0044 0532 0130 01",  # mod-97 fails
    "ip 192.168.1.300",  # octet > 255
    "app version 1.2.3.4",  # a version, not an address
    "meet at 12:30:45",  # time, not IPv6
    "tracking 1Z999AA10123456784",  # parcel tracking id
    "tracking number 9400111899223334445566",  # 22 digits
    "write to support at example dot com",
]


@pytest.mark.parametrize("text,kind", FOUND)
def test_pii_is_found(text, kind):
    redacted, kinds = redact(text)
    assert kinds == [kind]
    assert f"<{kind.upper()}>" in redacted


@pytest.mark.parametrize("text", NOT_FOUND)
def test_lookalikes_are_not_pii(text):
    assert find_pii(text) == []


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert is_card_number("5500000000000004")
    assert not is_card_number("0000000000000000")  # passes Luhn, but no card network starts with 0
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89370400440532013000123")  # wrong length for DE


def test_several_kinds_in_one_text_keep_the_rest():
    text = "I'm jane@example.org, card 4111-1111-1111-1111, phone +49 30 1234567, order #48213377."
    redacted, kinds = redact(text)
    assert redacted == "I'm <EMAIL>, card <CARD>, phone <PHONE>, order #48213377."
    assert kinds == ["email", "card", "phone"]


def test_redaction_through_curate_frame_generate():
    inputs = ["My email is jane@example.org and card 4111 1111 1111 1111", "Where is order #48213377?", "hi"]
    replies = ["Thanks, we wrote to jane@example.org.", "It left on 2024-03-05.", "Call us on +1 (555) 123-4567."]
    context = json.dumps([{"role": "user", "content": "my ip is 10.0.0.12"}])
    frame = make_frame(inputs, replies, "generate", contexts=["[]", "[]", context])
    result = curate_frame(frame, make_config("generate"))
    out = result.frame
    assert out["input"].tolist() == ["My email is <EMAIL> and card <CARD>", "Where is order #48213377?", "hi"]
    assert out["target"].tolist() == ["Thanks, we wrote to <EMAIL>.", "It left on 2024-03-05.", "Call us on <PHONE>."]
    assert json.loads(out["context"][2])[0]["content"] == "my ip is <IP>"
    issues = result.issues.frame()
    assert issues["id"].tolist() == ["r0", "r2"]
    assert set(issues["action"]) == {"redacted"}
    assert issues["detail"].tolist() == ["email, card in input; email in target", "ip in context; phone in target"]
    assert not issues["detail"].str.contains("jane|4111|555", regex=True).any()  # the table never leaks values


def test_classify_labels_are_not_scanned_and_drop_removes_rows():
    frame = make_frame(["reach me at a.b@example.com", "fine message"], ["call_10.0.0.1", "other"], "classify")
    result = curate_frame(frame, make_config("classify", action="drop"))
    assert result.frame["id"].tolist() == ["r1"]
    assert result.issues.frame()["detail"].tolist() == ["email in input"]


def test_flag_keeps_text():
    frame = make_frame(["reach me at a.b@example.com"], ["x"], "classify")
    result = curate_frame(frame, make_config("classify", action="flag"))
    assert result.frame["input"][0] == "reach me at a.b@example.com"
    assert result.issues.frame()["action"].tolist() == ["flagged"]
