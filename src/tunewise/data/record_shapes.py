"""Record shapes: which column plays which role (input, label, target, instruction, messages) in
each record format, and turning one raw row into one normalised record or saying why it cannot.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.core.records import CORE_COLUMNS, answer_column
from tunewise.data.file_formats import IngestError
from tunewise.data.readers import RawRow, json_kind, open_rows

RECORD_FORMATS = ("text_label", "instruction", "prompt_completion", "messages")
COLUMN_ROLES = ("id", "input", "label", "target", "instruction", "messages")

# Common column names per role, in order of preference; matched case-insensitively.
INPUT_NAMES = ("text", "sentence", "query", "utterance", "message", "input", "prompt", "question")
LABEL_NAMES = ("label", "intent", "category", "class")
TARGET_NAMES = ("reply", "response", "answer", "output", "completion", "target")

# Names the frame owns; a user column with one of these names is kept as ``meta_<name>``.
_RESERVED = set(CORE_COLUMNS) | {"label", "target"}

SAMPLE_ROWS = 1000  # rows read to learn the columns of a JSON file before the full pass


# --------------------------------------------------------------------------------------------
# Record shapes: which column plays which role
# --------------------------------------------------------------------------------------------


class RowProblem(Exception):
    """One row cannot become a record; the message is the issue detail."""


def is_nested(value: Any) -> bool:
    return isinstance(value, (list, dict, tuple))


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_text(value: Any, name: str) -> str:
    """A field value as text: strings as they are, numbers converted, anything else refused."""
    if isinstance(value, str):
        return value
    if is_missing(value):
        raise RowProblem(f"field {name!r} is null, expected text")
    if isinstance(value, bool):
        raise RowProblem(f"field {name!r} is a boolean, expected text")
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        raise RowProblem(f"field {name!r} is a list, expected text")
    if isinstance(value, dict):
        raise RowProblem(f"field {name!r} is an object, expected text")
    if isinstance(value, (bytes, bytearray)):
        raise RowProblem(f"field {name!r} is binary, expected text")
    return str(value)  # dates, decimals from Parquet: their usual text form


def meta_value(value: Any) -> str | None:
    if is_missing(value):
        return None
    if is_nested(value):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def row_chars(fields: dict[str, Any]) -> int:
    total = 0
    for value in fields.values():
        if isinstance(value, str):
            total += len(value)
        elif value is not None:
            total += len(json.dumps(value, ensure_ascii=False, default=str)) if is_nested(value) else len(str(value))
    return total


@functools.lru_cache(maxsize=4096)
def meta_name(column: str) -> str:
    return f"meta_{column}" if column.lower() in _RESERVED else column


def _find(columns: list[str], names: tuple[str, ...]) -> str | None:
    by_lower = {c.lower(): c for c in reversed(columns)}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    return None


def _message_text(content: Any, index: int, name: str) -> str:
    if isinstance(content, str):
        return content
    if content is None:  # e.g. an assistant turn that only calls a tool
        return ""
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts) and parts:
            return "\n".join(parts)
    raise RowProblem(f"field {name!r}: message {index} content is {json_kind(content)}, expected text")


def _parse_messages(value: Any, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):  # CSV and friends hold the list as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowProblem(f"field {name!r} is not valid JSON: {err.msg} (col {err.colno})") from None
    if is_missing(value):
        raise RowProblem(f"field {name!r} is null, expected a list of messages")
    if not isinstance(value, (list, tuple)):
        raise RowProblem(f"field {name!r} is {json_kind(value)}, expected a list of messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
            raise RowProblem(f"field {name!r}: message {index} is not an object with 'role' and 'content'")
        messages.append({"role": message["role"], "content": _message_text(message["content"], index, name)})
    if not messages:
        raise RowProblem(f"empty field {name!r}")
    return messages


@dataclass
class _Plan:
    """Which column plays which role; ``convert`` turns one raw row into one record."""

    task: str
    record_format: str
    roles: dict[str, str]  # role -> column name in the file
    keep_columns: list[str]
    answer: str = field(init=False)

    def __post_init__(self) -> None:
        self.answer = answer_column(self.task)

    def _get(self, fields: dict[str, Any], role: str) -> Any:
        column = self.roles[role]
        if column not in fields:
            raise RowProblem(f"missing field {column!r}")
        return fields[column]

    def _required_text(self, fields: dict[str, Any], role: str) -> str:
        column = self.roles[role]
        text = _as_text(self._get(fields, role), column)
        if not text.strip():
            raise RowProblem(f"empty field {column!r}")
        return text

    def _input_text(self, fields: dict[str, Any], role: str) -> str:
        # For classify an empty input is not malformed: curation reports it as `empty`.
        if self.task == "classify":
            value = self._get(fields, role)
            return "" if is_missing(value) else _as_text(value, self.roles[role])
        return self._required_text(fields, role)

    def row_id(self, fields: dict[str, Any] | None, position: int) -> str | None:
        if "id" not in self.roles:
            return str(position)
        if fields is None:
            return None
        value = fields.get(self.roles["id"])
        if is_missing(value) or is_nested(value) or not str(value).strip():
            return None
        return str(value)

    def convert(self, fields: dict[str, Any], position: int) -> dict[str, Any]:
        record: dict[str, Any] = {}
        if "id" in self.roles:
            record["id"] = self._required_text(fields, "id")
        else:
            record["id"] = str(position)
        context = "[]"
        answer: str | None = None
        if self.record_format == "messages":
            user_text, context, answer = self._from_messages(fields)
        elif self.record_format == "instruction":
            user_text = self._input_text(fields, "instruction")
            extra_column = self.roles.get("input")
            extra = fields.get(extra_column) if extra_column else None
            if not is_missing(extra):
                extra = _as_text(extra, extra_column)
                if extra.strip():
                    user_text = f"{user_text}\n\n{extra}"
        else:
            user_text = self._input_text(fields, "input")
        if answer is None:
            answer = self._required_text(fields, self.answer)
        record["input"] = user_text
        record["context"] = context
        record[self.answer] = answer
        return record

    def _from_messages(self, fields: dict[str, Any]) -> tuple[str, str, str | None]:
        name = self.roles["messages"]
        messages = _parse_messages(self._get(fields, "messages"), name)
        answer = None
        if self.task == "generate":
            if messages[-1]["role"] != "assistant":
                raise RowProblem(
                    f"field {name!r} ends with a {messages[-1]['role']!r} message, expected the final 'assistant' reply"
                )
            answer = messages[-1]["content"]
            if not answer.strip():
                raise RowProblem(f"field {name!r}: the final assistant reply is empty")
            messages = messages[:-1]
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise RowProblem(f"field {name!r} has no 'user' message" + (" before the final reply" if answer else ""))
        last_user = users[-1]
        user_text = messages[last_user]["content"]
        if self.task == "generate" and not user_text.strip():
            raise RowProblem(f"field {name!r}: the last user message is empty")
        context = json.dumps(messages[:last_user], ensure_ascii=False)
        return user_text, context, answer


def _resolve_column(columns: list[str], wanted: str, key: str, source: str) -> str:
    if wanted in columns:
        return wanted
    for column in columns:
        if column.lower() == wanted.lower():
            return column
    raise IngestError(
        f"data.columns.{key} is {wanted!r} but {source} has no such column; columns found: {', '.join(columns)}"
    )


def detect_record_format(columns: list[str], configured: dict[str, str]) -> str:
    if "messages" in configured or _find(columns, ("messages",)):
        return "messages"
    if "instruction" in configured or _find(columns, ("instruction",)):
        return "instruction"
    if _find(columns, ("prompt",)) and _find(columns, ("completion",)):
        return "prompt_completion"
    return "text_label"


def candidate_roles(columns: list[str], record_format: str, configured: dict[str, str]) -> dict[str, str | None]:
    """Role -> column for every role the record format can use (None where nothing matched)."""
    names: dict[str, tuple[str, ...]] = {"label": LABEL_NAMES, "id": ("id",)}
    if record_format == "text_label":
        names |= {"input": INPUT_NAMES, "target": TARGET_NAMES}
    elif record_format == "instruction":
        names |= {"instruction": ("instruction",), "input": ("input",), "target": ("output", *TARGET_NAMES)}
    elif record_format == "prompt_completion":
        names |= {"input": ("prompt",), "target": ("completion",)}
    elif record_format == "messages":
        names |= {"messages": ("messages",)}
    roles: dict[str, str | None] = {}
    for role, candidates in names.items():
        roles[role] = configured.get(role) or _find(columns, candidates)
    return roles


def make_plan(
    columns: list[str],
    *,
    task: str,
    record_format: str,
    configured: dict[str, str],
    keep_columns: list[str],
    source: str,
) -> _Plan:
    if record_format == "auto":
        record_format = detect_record_format(columns, configured)
    elif record_format not in RECORD_FORMATS:
        raise IngestError(
            f"unknown record format {record_format!r}; expected auto or one of {', '.join(RECORD_FORMATS)}"
        )
    candidates = candidate_roles(columns, record_format, configured)
    answer = answer_column(task)
    needed = {
        "text_label": ["input"],
        "instruction": ["instruction"],
        "prompt_completion": ["input"],
        "messages": ["messages"],
    }[record_format]
    if not (record_format == "messages" and task == "generate"):
        needed.append(answer)
    roles: dict[str, str] = {}
    for role in needed:
        if candidates.get(role) is None:
            what = {
                "input": "the input text",
                "label": "the label",
                "target": "the target reply",
                "instruction": "the instruction",
                "messages": "the chat messages",
            }[role]
            raise IngestError(
                f"{source} has no column for {what} ({record_format} records, task {task}); "
                f"columns found: {', '.join(columns) or '(none)'}; "
                f"set data.columns.{role} in tunewise.yaml to the column that holds it"
            )
        roles[role] = candidates[role]  # type: ignore[assignment]
    optional = ["id"] + (["input"] if record_format == "instruction" else [])
    for role in optional:
        if candidates.get(role):
            roles[role] = candidates[role]  # type: ignore[assignment]
    keep = [_resolve_column(columns, name, "slice_columns", source) for name in keep_columns]
    return _Plan(task=task, record_format=record_format, roles=roles, keep_columns=keep)


def configured_columns(columns: dict[str, str | None] | None, found: list[str], source: str) -> dict[str, str]:
    configured: dict[str, str] = {}
    for role, name in (columns or {}).items():
        if role not in COLUMN_ROLES:
            raise IngestError(f"unknown data.columns key {role!r}; known: {', '.join(COLUMN_ROLES)}")
        if name:
            configured[role] = _resolve_column(found, name, role, source)
    return configured


@dataclass
class Sample:
    columns: list[str]  # header, or keys of the sampled rows in first-seen order
    rows: list[dict[str, Any]]  # fields of up to the limit of good rows
    read: int  # raw rows read, bad ones included
    first_errors: list[str]  # "line N: reason" for the first bad rows

    def raise_if_unusable(self, source: str, fmt: str) -> None:
        if self.read == 0:
            raise IngestError(f"{source} has no data rows" + (" (only a header)" if fmt in ("csv", "tsv") else ""))
        if not self.rows:
            raise IngestError(
                f"no usable rows in {source}: all {self.read:,} rows were rejected; "
                f"first reasons: {'; '.join(self.first_errors)}"
            )


def _sample(rows: Iterator[RawRow], limit: int) -> tuple[list[str], list[dict[str, Any]], int, list[str]]:
    seen: dict[str, None] = {}
    good: list[dict[str, Any]] = []
    first_errors: list[str] = []
    read = 0
    for raw in rows:
        read += 1
        if raw.fields is None and len(first_errors) < 3:
            first_errors.append(f"line {raw.line}: {raw.error}")
        if raw.fields is not None:
            good.append(raw.fields)
            seen.update(dict.fromkeys(raw.fields))
            if len(good) >= limit:
                break
    return list(seen), good, read, first_errors


def sample_file(path: Path, fmt: str, sample_rows: int, encoding: str = "utf-8") -> Sample:
    header, rows = open_rows(path, fmt, encoding)
    with contextlib.closing(rows):  # type: ignore[type-var]
        found, good, read, first_errors = _sample(rows, sample_rows)
    return Sample(header if header is not None else found, good, read, first_errors)
