"""Ingest: every format and record shape, every kind of bad row with its line, file-level errors,
streaming memory, and the real banking77 file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from tunewise.data import readers as readers_module
from tunewise.data.ingest import IngestError, RawRow, ingest, iter_raw_rows, sniff

BANKING77 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "banking77" / "train.csv"

ROWS = [
    {"text": "where is my card", "label": "card_arrival"},
    {"text": "I was charged twice, why?", "label": "double_charge"},
    {"text": "how do I top up", "label": "top_up"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def issues_by_line(result) -> dict[int, str]:
    frame = result.issues.frame()
    assert set(frame["issue"]) <= {"malformed"}
    assert set(frame["action"]) <= {"dropped"}
    return dict(zip(frame["line"].astype(int), frame["detail"]))


# ---------------------------------------------------------------------------------- formats


def _write_all_formats(tmp_path: Path) -> dict[str, tuple[Path, list[int]]]:
    """The same three rows in every format, with the line each row starts on."""
    frame = pd.DataFrame(ROWS)
    csv_path = tmp_path / "d.csv"
    frame.to_csv(csv_path, index=False)
    tsv_path = tmp_path / "d.tsv"
    frame.to_csv(tsv_path, index=False, sep="\t")
    jsonl_path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    ndjson_path = write_jsonl(tmp_path / "d.ndjson", ROWS)
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(ROWS, indent=2), encoding="utf-8")  # 4 lines per element
    jsonl_named_json = write_jsonl(tmp_path / "lines.json", ROWS)
    parquet_path = tmp_path / "d.parquet"
    frame.to_parquet(parquet_path)
    return {
        "csv": (csv_path, [2, 3, 4]),
        "tsv": (tsv_path, [2, 3, 4]),
        "jsonl": (jsonl_path, [1, 2, 3]),
        "ndjson": (ndjson_path, [1, 2, 3]),
        "json": (json_path, [2, 6, 10]),
        "lines.json": (jsonl_named_json, [1, 2, 3]),
        "parquet": (parquet_path, [1, 2, 3]),
    }


@pytest.mark.parametrize("name", ["csv", "tsv", "jsonl", "ndjson", "json", "lines.json", "parquet"])
def test_every_file_format_gives_the_same_records(tmp_path, name):
    path, lines = _write_all_formats(tmp_path)[name]
    result = ingest(path, task="classify")
    expected_format = {"ndjson": "jsonl", "lines.json": "jsonl"}.get(name, name)
    assert result.file_format == expected_format
    assert result.record_format == "text_label"
    assert result.columns_used == {"input": "text", "label": "label"}
    assert result.rows_read == 3 and len(result.issues) == 0
    frame = result.frame
    assert list(frame.columns) == ["id", "input", "context", "label", "source_file", "source_line", "synthetic"]
    assert list(frame["id"]) == ["0", "1", "2"]
    assert list(frame["input"]) == [r["text"] for r in ROWS]
    assert list(frame["label"]) == [r["label"] for r in ROWS]
    assert list(frame["source_line"]) == lines
    assert set(frame["context"]) == {"[]"}
    assert set(frame["source_file"]) == {str(path)}
    assert not frame["synthetic"].any()


def test_explicit_file_format_overrides_the_extension(tmp_path):
    path = tmp_path / "data.txt"
    pd.DataFrame(ROWS).to_csv(path, index=False, sep="\t")
    assert ingest(path, task="classify", file_format="tsv").file_format == "tsv"
    assert ingest(path, task="classify").file_format == "tsv"  # tabs in the header line


def test_iter_raw_rows_streams_fields_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b",\n', encoding="utf-8")
    rows = list(iter_raw_rows(path, "auto"))
    assert rows[0] == RawRow(1, {"text": "a", "label": "x"}, None, len('{"text": "a", "label": "x"}'))
    assert rows[1].line == 3 and rows[1].fields is None
    assert rows[1].error.startswith("malformed JSON: Expecting property name")
    assert len(rows) == 2  # the blank line is no record


# ---------------------------------------------------------------------------- record shapes


def test_instruction_records_join_instruction_and_input(tmp_path):
    path = write_jsonl(
        tmp_path / "i.jsonl",
        [
            {"instruction": "Summarise", "input": "A long text.", "output": "Short."},
            {"instruction": "Say hello", "input": "", "output": "Hello!"},
            {"instruction": "Say bye", "output": "Bye!"},  # input is optional
        ],
    )
    result = ingest(path, task="generate")
    assert result.record_format == "instruction"
    assert result.columns_used == {"instruction": "instruction", "input": "input", "target": "output"}
    assert list(result.frame["input"]) == ["Summarise\n\nA long text.", "Say hello", "Say bye"]
    assert list(result.frame["target"]) == ["Short.", "Hello!", "Bye!"]
    assert "label" not in result.frame.columns


def test_prompt_completion_records(tmp_path):
    path = tmp_path / "pc.csv"
    pd.DataFrame({"prompt": ["2+2?", "capital of France?"], "completion": ["4", "Paris"]}).to_csv(path, index=False)
    result = ingest(path, task="generate")
    assert result.record_format == "prompt_completion"
    assert list(result.frame["input"]) == ["2+2?", "capital of France?"]
    assert list(result.frame["target"]) == ["4", "Paris"]


def test_text_with_reply_column_for_generate(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"message": "card lost", "intent": "lost", "response": "Call us."}])
    result = ingest(path, task="generate")
    assert result.columns_used == {"input": "message", "target": "response"}
    assert result.frame.loc[0, "target"] == "Call us."
    # the unused intent column is kept as meta, under a name that does not clash
    assert result.frame.loc[0, "intent"] == "lost"


CHAT = [
    {"role": "system", "content": "You are a bank assistant."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello, how can I help?"},
    {"role": "user", "content": "My card is lost"},
    {"role": "assistant", "content": "I have blocked it."},
]


def test_messages_records_from_jsonl_and_csv(tmp_path):
    jsonl = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT}])
    csv_path = tmp_path / "chat.csv"
    pd.DataFrame({"messages": [json.dumps(CHAT)]}).to_csv(csv_path, index=False)
    for path in (jsonl, csv_path):
        result = ingest(path, task="generate")
        assert result.record_format == "messages"
        row = result.frame.iloc[0]
        assert row["input"] == "My card is lost"
        assert row["target"] == "I have blocked it."
        assert json.loads(row["context"]) == CHAT[:3]


def test_messages_with_content_parts_and_tool_turns(tmp_path):
    chat = [
        {"role": "user", "content": [{"type": "text", "text": "Block my card"}, {"type": "text", "text": "please"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "block_card"}]},
        {"role": "user", "content": "Is it done?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes, blocked."}]},
    ]
    result = ingest(write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}]), task="generate")
    row = result.frame.iloc[0]
    assert (row["input"], row["target"]) == ("Is it done?", "Yes, blocked.")
    assert json.loads(row["context"]) == [
        {"role": "user", "content": "Block my card\nplease"},
        {"role": "assistant", "content": ""},
    ]


def test_messages_from_parquet_and_classify_with_label(tmp_path):
    path = tmp_path / "chat.parquet"
    pd.DataFrame({"messages": [CHAT[:4], CHAT[1:2]], "intent": ["lost_card", "greeting"]}).to_parquet(path)
    result = ingest(path, task="classify")
    assert result.columns_used == {"messages": "messages", "label": "intent"}
    assert list(result.frame["input"]) == ["My card is lost", "Hi"]
    assert list(result.frame["label"]) == ["lost_card", "greeting"]
    assert json.loads(result.frame.loc[0, "context"]) == CHAT[:3]
    assert result.frame.loc[1, "context"] == "[]"


def test_configured_columns_override_names_and_id_column_is_used(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"ticket": "T1", "body": "refund please", "queue": "refunds", "region": "EU", "debug": {"x": [1]}},
            {"ticket": "T2", "body": "card stuck", "queue": "cards", "region": "US", "debug": {"x": [2]}},
        ],
    )
    result = ingest(
        path,
        task="classify",
        columns={"id": "ticket", "input": "Body", "label": "queue", "target": None},
        keep_columns=["region"],
    )
    assert result.columns_used == {"id": "ticket", "input": "body", "label": "queue"}
    assert list(result.frame["id"]) == ["T1", "T2"]
    assert list(result.frame.columns) == [
        "id",
        "input",
        "context",
        "label",
        "source_file",
        "source_line",
        "synthetic",
        "region",
    ]
    assert list(result.frame["region"]) == ["EU", "US"]  # nested 'debug' is never kept


def test_extra_columns_are_kept_as_meta_and_clashing_names_renamed(tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame(
        {"text": ["a", "b"], "label": ["x", "y"], "input": ["raw a", "raw b"], "channel": ["web", "app"]}
    ).to_csv(path, index=False)
    frame = ingest(path, task="classify").frame
    assert list(frame["meta_input"]) == ["raw a", "raw b"]
    assert list(frame["channel"]) == ["web", "app"]


# ---------------------------------------------------------------------------------- bad rows


def test_every_kind_of_bad_row_is_reported_with_its_line_and_the_good_rows_are_kept(tmp_path):
    long_text = "x" * 25_000
    lines = [
        '{"id": "a", "text": "fine", "label": "ok"}',  # 1 kept
        '{"id": "b", "text": "broken" "label": "ok"}',  # 2 malformed JSON
        '{"id": "c", "text": "no label"}',  # 3 missing field
        '{"id": "d", "text": "empty label", "label": "  "}',  # 4 empty field
        '{"id": "e", "text": "listy", "label": ["a", "b"]}',  # 5 wrong type
        '{"id": "f", "text": "flag", "label": true}',  # 6 wrong type
        '{"id": "g", "text": 42, "label": 7}',  # 7 kept: numbers become text
        f'{{"id": "h", "text": "{long_text}", "label": "ok"}}',  # 8 over-long
        '{"id": "a", "text": "again", "label": "ok"}',  # 9 duplicate id
        '{"id": "i", "text": "   ", "label": "ok"}',  # 10 kept: empty input is curation's
        "[1, 2]",  # 11 not an object
        '{"id": "j", "text": "null label", "label": null}',  # 12 null
        "",  # 13 blank: no record
        '{"id": "k", "text": "last", "label": "ok"}',  # 14 kept
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = ingest(path, task="classify", max_chars=20_000)

    assert list(result.frame["id"]) == ["a", "g", "i", "k"]
    assert list(result.frame["source_line"]) == [1, 7, 10, 14]
    assert result.frame.loc[1, "input"] == "42" and result.frame.loc[1, "label"] == "7"
    assert result.rows_read == 13
    second_key_col = lines[1].index('"label"') + 1  # json reports the 1-based column of the key
    found = issues_by_line(result)
    assert found == {
        2: f"malformed JSON: Expecting ',' delimiter (col {second_key_col})",
        3: "missing field 'label'",
        4: "empty field 'label'",
        5: "field 'label' is a list, expected text",
        6: "field 'label' is a boolean, expected text",
        8: f"row is {len(lines[7]):,} characters, over data.max_chars=20000",  # the object's text
        9: "duplicate id 'a' in column 'id' (first on line 1)",
        11: "line holds a list, expected a JSON object",
        12: "field 'label' is null, expected text",
    }
    ids = dict(zip(result.issues.frame()["line"].astype(int), result.issues.frame()["id"]))
    assert ids[3] == "c" and ids[9] == "a" and pd.isna(ids[2])  # unparsable: its id is unknown
    assert set(result.issues.frame()["source"]) == {str(path)}
    assert set(result.issues.frame()["stage"]) == {"ingest"}


def test_empty_input_is_malformed_for_generate_but_kept_for_classify(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "", "completion": "x"}, {"prompt": "q", "completion": "a"}])
    result = ingest(path, task="generate")
    assert list(result.frame["input"]) == ["q"]
    assert issues_by_line(result) == {1: "empty field 'prompt'"}


def test_bad_messages_are_reported(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [
            {"messages": CHAT},
            {"messages": CHAT[:4]},  # ends with the user
            {"messages": [{"role": "assistant", "content": "hi"}]},  # no user turn
            {"messages": "not a list"},
            {"messages": [{"content": "no role"}]},
        ],
    )
    result = ingest(path, task="generate")
    assert list(result.frame["source_line"]) == [1]
    assert issues_by_line(result) == {
        2: "field 'messages' ends with a 'user' message, expected the final 'assistant' reply",
        3: "field 'messages' has no 'user' message before the final reply",
        4: "field 'messages' is not valid JSON: Expecting value (col 1)",
        5: "field 'messages': message 0 is not an object with 'role' and 'content'",
    }


def test_csv_with_bom_crlf_multiline_fields_and_wrong_field_counts(tmp_path):
    content = (
        "\ufeffid,text,label\r\n"
        "1,plain,a\r\n"  # line 2
        '2,"multi\r\nline\r\ntext",b\r\n'  # lines 3-5
        "3,too,many,fields,here\r\n"  # line 6
        '4,"quoted, with comma",c\r\n'  # line 7
        "\r\n"  # line 8 blank
        "5,too few\r\n"  # line 9
        '6,"another\nmulti",d\r\n'  # lines 10-11
        "7,last,e\r\n"  # line 12
        "1,dup,a\r\n"  # line 13
    )
    path = tmp_path / "d.csv"
    path.write_bytes(content.encode("utf-8"))
    result = ingest(path, task="classify")
    frame = result.frame
    assert result.columns_used == {"id": "id", "input": "text", "label": "label"}
    assert list(frame["id"]) == ["1", "2", "4", "6", "7"]
    assert list(frame["source_line"]) == [2, 3, 7, 10, 12]
    assert frame.loc[1, "input"] == "multi\r\nline\r\ntext"
    assert frame.loc[2, "input"] == "quoted, with comma"
    assert issues_by_line(result) == {
        6: "expected 3 fields, got 5",
        9: "expected 3 fields, got 2",
        13: "duplicate id '1' in column 'id' (first on line 2)",
    }


def test_unbalanced_quote_is_reported_once_with_its_span(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\nok,a\n"open quote,b\nnext,c\nlast,d\n', encoding="utf-8")
    result = ingest(path, task="classify")
    assert list(result.frame["input"]) == ["ok"]
    assert issues_by_line(result) == {
        3: "expected 2 fields, got 1 (the record runs over lines 3-5: an unbalanced quote?)"
    }


def test_undecodable_bytes_in_csv_and_jsonl_drop_only_that_row(tmp_path):
    csv_path = tmp_path / "d.csv"
    csv_path.write_bytes(b'text,label\nfine,a\ncaf\xe9 latin-1,b\n"multi\nline \xff",c\nafter,d\n')
    result = ingest(csv_path, task="classify")
    assert list(result.frame["input"]) == ["fine", "after"]
    assert list(result.frame["source_line"]) == [2, 6]
    assert list(result.frame["id"]) == ["0", "3"]  # positions count the bad rows too
    offset_e9 = len(b"text,label\nfine,a\ncaf")
    offset_ff = len(b'text,label\nfine,a\ncaf\xe9 latin-1,b\n"multi\nline ')
    assert issues_by_line(result) == {
        3: f"undecodable bytes (not UTF-8) at byte offset {offset_e9}",
        4: f"undecodable bytes (not UTF-8) at byte offset {offset_ff}",
    }

    jsonl_path = tmp_path / "d.jsonl"
    jsonl_path.write_bytes(
        b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n{"text": "ok2", "label": "c"}\n'
    )
    result = ingest(jsonl_path, task="classify")
    assert list(result.frame["input"]) == ["ok", "ok2"]
    assert issues_by_line(result) == {2: f"undecodable bytes (not UTF-8) at byte offset {29 + 13}"}


def test_json_array_bad_elements_and_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(
        b"[\n"
        b'  {"text": "one", "label": "a"},\n'  # line 2
        b'  {"text": "two" "label": "b"},\n'  # line 3 malformed
        b'  {"text": "th\xffree", "label": "c"},\n'  # line 4 undecodable
        b'  "just a string",\n'  # line 5 not an object
        b'  {\n    "text": "four",\n    "label": "d"\n  }\n'  # lines 6-9
        b"]\n"
    )
    result = ingest(path, task="classify")
    assert list(result.frame["input"]) == ["one", "four"]
    assert list(result.frame["source_line"]) == [2, 6]
    assert list(result.frame["id"]) == ["0", "4"]
    offset = len(b'[\n  {"text": "one", "label": "a"},\n  {"text": "two" "label": "b"},\n  {"text": "th')
    label_col = b'  {"text": "two" "label": "b"},'.index(b'"label"') + 1  # 1-based column json reports
    assert issues_by_line(result) == {
        3: f"malformed JSON: Expecting ',' delimiter (col {label_col})",
        4: f"undecodable bytes (not UTF-8) at byte offset {offset}",
        5: "array element is a string, expected a JSON object",
    }


def test_json_array_parser_across_tiny_chunks_matches_json_load(tmp_path, monkeypatch):
    rows = [{"text": f'row {i} \u00e9 "q" [x]', "label": str(i % 3), "n": i * 1.5} for i in range(60)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    expected_lines = [i + 1 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()) if line == " {"]
    monkeypatch.setattr(readers_module, "_READ_CHUNK", 7)  # every element straddles chunk ends
    raw = list(iter_raw_rows(path, "json"))
    assert [r.fields for r in raw] == rows
    assert [r.line for r in raw] == expected_lines


def test_json_array_not_closed_keeps_the_rows_before(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"text": "a", "label": "x"},\n{"text": "b", "label": "y"},\n{"text": "c", "lab', encoding="utf-8")
    result = ingest(path, task="classify")
    assert list(result.frame["input"]) == ["a", "b"]
    ((line, detail),) = issues_by_line(result).items()
    assert line == 3 and "the rest of the file could not be read" in detail


# ------------------------------------------------------------------------- file-level errors


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("x.csv", b"", "is empty (0 bytes)"),
        ("x.csv", b"text,label\n", "has no data rows (only a header)"),
        ("x.csv", b"text,label\n\n\n", "has no data rows (only a header)"),
        ("x.jsonl", b"\n\n", "has no data rows"),
        ("x.json", b"[ ]", "has no data rows"),
        (
            "x.jsonl",
            b'{"text": 1\n[1]\n',
            "all 2 rows were rejected; first reasons: line 1: malformed JSON: "
            "Expecting ',' delimiter (col 11); line 2: line holds a list",
        ),
    ],
)
def test_empty_header_only_and_unparsable_files_raise(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(IngestError, match=re.escape(needle)) as info:
        ingest(path, task="classify")
    assert str(path) in str(info.value)


def test_all_bad_rows_raise_with_the_first_reasons(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "label": ""}] * 12)
    with pytest.raises(IngestError) as info:
        ingest(path, task="classify")
    message = str(info.value)
    assert message.startswith(f"no usable rows in {path}: all 12 rows were rejected; first reasons: ")
    assert "line 1: empty field 'label'; line 2: empty field 'label'; line 3: empty" in message


def test_missing_path_directory_and_missing_role_columns_raise(tmp_path):
    with pytest.raises(IngestError, match="not found"):
        ingest(tmp_path / "nope.csv", task="classify")
    with pytest.raises(IngestError, match="is a directory"):
        ingest(tmp_path, task="classify")
    path = tmp_path / "d.csv"
    path.write_text("body,queue\nhello,a\n", encoding="utf-8")
    with pytest.raises(IngestError) as info:
        ingest(path, task="classify")
    message = str(info.value)
    assert str(path) in message and "body, queue" in message and "data.columns.input" in message
    with pytest.raises(IngestError, match="data.columns.label"):
        ingest(path, task="classify", columns={"input": "body"})
    with pytest.raises(IngestError, match="data.columns.label is 'intent' but .* has no such column"):
        ingest(path, task="classify", columns={"input": "body", "label": "intent"})
    with pytest.raises(IngestError, match="slice_columns"):
        ingest(path, task="classify", columns={"input": "body", "label": "queue"}, keep_columns=["region"])


def test_not_a_parquet_file_raises(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("text,label\na,b\n", encoding="utf-8")
    with pytest.raises(IngestError, match="not a readable Parquet file"):
        ingest(path, task="classify")


# -------------------------------------------------------------------------------- streaming


_RSS_PROBE = """
import re, sys
from tunewise.data.ingest import ingest

def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

before = status("VmRSS")
result = ingest(sys.argv[1], task="classify", chunk_rows=10_000)
frame = result.frame
print(status("VmHWM") - before, len(frame), len(result.issues), frame["id"].iloc[-1],
      frame["source_line"].iloc[-1], frame["input"].iloc[123_456].replace(" ", "_"), "trace" in frame.columns)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc")
def test_large_jsonl_streams_in_bounded_memory(tmp_path):
    n_rows = 200_000
    path = tmp_path / "big.jsonl"
    # 'trace' is nested, so it is never kept: the raw rows are much bigger than the output.
    traces = [json.dumps({"tokens": list(range(k, k + 30))}) for k in range(50)]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(
            f'{{"text": "message number {i}", "label": "l{i % 7}", "trace": {traces[i % 50]}}}\n' for i in range(n_rows)
        )

    # What holding every raw row as a dict would take, measured on 10% of the rows.
    tracemalloc.start()
    with open(path, encoding="utf-8") as f:
        tenth = [json.loads(next(f)) for _ in range(n_rows // 10)]
    raw_dicts_bytes = tracemalloc.get_traced_memory()[0] * 10
    tracemalloc.stop()
    del tenth

    # Peak resident memory of a fresh process that ingests the file (tracemalloc would slow the
    # ingest itself ~8x and miss pandas' Arrow string buffers).
    probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    peak, rows, issues, last_id, last_line, sample, has_trace = probe.stdout.split()
    assert (int(rows), int(issues), last_id, int(last_line)) == (n_rows, 0, str(n_rows - 1), n_rows)
    assert sample == "message_number_123456" and has_trace == "False"
    # A reader that held every raw row would need all of raw_dicts_bytes at once, and more.
    assert int(peak) < raw_dicts_bytes / 2, (int(peak), raw_dicts_bytes)


# ---------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not BANKING77.exists(), reason="shared/datasets/banking77 not present")
def test_banking77_train_ingests_cleanly():
    result = ingest(BANKING77, task="classify")
    assert len(result.frame) == 10_003 and result.rows_read == 10_003
    assert result.frame["label"].nunique() == 77
    assert len(result.issues) == 0
    # rows after quoted multi-line fields still point at the right physical line
    with open(BANKING77, encoding="utf-8", newline="") as f:
        physical = f.read().split("\n")
    last = result.frame.iloc[-1]
    assert physical[last["source_line"] - 1].startswith(last["input"].split("\n")[0])
    assert physical[result.frame.iloc[1290]["source_line"] - 1] == '"'  # a field that starts with a newline


@pytest.mark.skipif(not BANKING77.exists(), reason="shared/datasets/banking77 not present")
def test_sniff_banking77_suggests_classify():
    found = sniff(BANKING77)
    assert found["file_format"] == "csv" and found["record_format"] == "text_label"
    assert found["suggested_task"] == "classify"
    assert found["columns"] == ["text", "category"]
    assert found["columns_used"] == {"input": "text", "label": "category"}
    assert len(found["label_counts"]) == 20 and found["n_sample_rows"] > 0
    assert found["slice_candidates"] == []
    assert sniff(BANKING77, task="generate")["columns_used"] == {"input": "text"}  # no reply column


def test_sniff_generate_data_and_slice_candidates(tmp_path):
    rows = [
        {
            "instruction": f"Answer question {i}",
            "output": f"answer {i}",
            "region": ["EU", "US"][i % 2],
            "agent": f"agent{i}",
        }
        for i in range(40)
    ]
    found = sniff(write_jsonl(tmp_path / "d.jsonl", rows))
    assert found["record_format"] == "instruction"
    assert found["suggested_task"] == "generate"
    assert found["columns_used"] == {"instruction": "instruction", "target": "output"}
    assert found["slice_candidates"] == ["region"]  # 'agent' has a value per row: not a slice
    assert found["label_counts"] == {}
