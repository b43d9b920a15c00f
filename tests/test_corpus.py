"""Tests for sidyp_prod.corpus: robust JSONL reading with rejects, and atomic writing."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from sidyp_prod.checks import reject_reason
from sidyp_prod.corpus import (
    AtomicWriter,
    FieldNames,
    InputError,
    Reject,
    Row,
    count_lines,
    default_rejects_path,
    iter_corpus,
    json_line,
    label_set_from_rows,
    parse_label_set,
)


def write_lines(path: Path, lines: list[str | bytes], newline_at_end: bool = True) -> Path:
    data = b"\n".join(line.encode("utf-8") if isinstance(line, str) else line for line in lines)
    path.write_bytes(data + (b"\n" if newline_at_end else b""))
    return path


def jl(**record: Any) -> str:
    return json.dumps(record)


def only(path: Path, **kwargs: Any) -> Row | Reject:
    items = list(iter_corpus(path, **kwargs))
    assert len(items) == 1
    return items[0]


def only_reject(path: Path, **kwargs: Any) -> Reject:
    item = only(path, **kwargs)
    assert isinstance(item, Reject), item
    return item


def only_row(path: Path, **kwargs: Any) -> Row:
    item = only(path, **kwargs)
    assert isinstance(item, Row), item
    return item


# --- reject cases, one by one ---------------------------------------------------------------


def test_blank_line_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", ["   \t"])
    reject = only_reject(path)
    assert reject.reason == "blank line"
    assert reject.field is None
    assert reject.line_no == 1


def test_invalid_utf8_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [b'{"text": "caf\xe9"}'])
    reject = only_reject(path)
    assert reject.reason.startswith("invalid UTF-8")
    assert "0xe9" in reject.reason
    assert reject.field is None
    assert reject.raw == '{"text": "caf\ufffd"}'


def test_invalid_json_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", ['{"text": oops}'])
    reject = only_reject(path)
    assert reject.reason.startswith("invalid JSON: Expecting value")
    assert "(col 10)" in reject.reason
    assert reject.field is None
    assert reject.raw == '{"text": oops}'


def test_truncated_json_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", ['{"text": "abc'])
    assert only_reject(path).reason.startswith("invalid JSON")


def test_deeply_nested_json_rejected_not_crashing(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", ["[" * 100_000 + "]" * 100_000])
    reject = only_reject(path)
    assert reject.reason.startswith("invalid JSON")


@pytest.mark.parametrize(
    ("line", "kind"),
    [("[1, 2]", "array"), ('"text"', "string"), ("3", "integer"), ("null", "null")],
)
def test_non_object_rejected(tmp_path: Path, line: str, kind: str) -> None:
    path = write_lines(tmp_path / "c.jsonl", [line])
    reject = only_reject(path)
    assert reject.reason == f"JSON value is not an object (got {kind})"
    assert reject.field is None


def test_text_missing_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(label="a")])
    reject = only_reject(path)
    assert reject.field == "text"
    assert reject.reason == 'field "text": missing'


@pytest.mark.parametrize(("value", "kind"), [(3, "integer"), (None, "null"), (["a"], "array")])
def test_text_not_string_rejected(tmp_path: Path, value: Any, kind: str) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text=value, label="a")])
    reject = only_reject(path)
    assert reject.field == "text"
    assert reject.reason == f'field "text": expected a string, got {kind}'


@pytest.mark.parametrize("value", ["", "   ", "\n\t "])
def test_text_blank_rejected(tmp_path: Path, value: str) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text=value, label="a")])
    reject = only_reject(path)
    assert reject.field == "text"
    assert reject.reason == 'field "text": blank'


@pytest.mark.parametrize(("escaped", "where"), [("\\ud800", 4), ("x\\udc80", 5)])
def test_text_with_unpaired_surrogate_rejected(tmp_path: Path, escaped: str, where: int) -> None:
    # A JSON \\u escape of half a surrogate pair decodes to no Unicode character: the tokenizer
    # would fail on the whole batch, so the row is a reject naming the field.
    line = '{"text": "ok ' + escaped + ' rest", "label": "a"}'
    path = write_lines(tmp_path / "c.jsonl", [line, jl(text="fine \U0001f600", label="a")])
    reject, row = list(iter_corpus(path))
    assert isinstance(reject, Reject) and isinstance(row, Row)
    assert reject.field == "text"
    assert reject.reason == ('field "text": not valid Unicode: unpaired surrogate '
                             f'{escaped.lstrip("x")} at character {where}')
    assert reject.raw == line
    assert row.text == "fine \U0001f600"  # a pair (an emoji) is fine


@pytest.mark.parametrize(
    ("value", "kind"),
    [(True, "boolean"), (False, "boolean"), (1.0, "number"), (0.5, "number"), (["a"], "array")],
)
def test_label_bad_type_rejected(tmp_path: Path, value: Any, kind: str) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="hi", label=value)])
    reject = only_reject(path)
    assert reject.field == "label"
    assert reject.reason == f'field "label": expected a string, integer or null, got {kind}'


def test_nan_and_infinity_read_as_null_so_the_output_is_strict_json(tmp_path: Path) -> None:
    # Python's json writes NaN and Infinity; they are not JSON, and other readers refuse them.
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "hi", "label": NaN, "score": -Infinity, "x": [Infinity]}\n')
    row = only_row(path)
    assert row.label is None and row.record["score"] is None and row.record["x"] == [None]

    def strict(name: str) -> None:
        raise ValueError(name)

    json.loads(json_line(row.record), parse_constant=strict)


def test_label_outside_label_set_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="hi", label="maybe")])
    reject = only_reject(path, labels=["pos", "neg"])
    assert reject.field == "label"
    assert reject.reason == 'field "label": "maybe" is not in the label set'


def test_int_label_checked_against_label_set_after_normalising(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a", label=1), jl(text="b", label=7)])
    items = list(iter_corpus(path, labels=["0", "1"]))
    assert isinstance(items[0], Row)
    assert items[0].label == "1"
    assert isinstance(items[1], Reject)
    assert items[1].field == "label"


def test_null_label_allowed_with_label_set(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a", label=None)])
    assert only_row(path, labels=["x"]).label is None


@pytest.mark.parametrize(
    ("value", "kind"), [(1.5, "number"), (None, "null"), (True, "boolean"), ({}, "object")]
)
def test_id_bad_type_rejected(tmp_path: Path, value: Any, kind: str) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(id=value, text="hi", label="a")])
    reject = only_reject(path)
    assert reject.field == "id"
    assert reject.reason == f'field "id": expected a string or integer, got {kind}'


# --- good rows -------------------------------------------------------------------------------


def test_good_row_keeps_record_untouched(tmp_path: Path) -> None:
    record = {"id": "r1", "text": "hello", "label": "pos", "extra": {"nested": [1, 2]}}
    path = write_lines(tmp_path / "c.jsonl", [json.dumps(record)])
    row = only_row(path)
    assert row == Row(line_no=1, record=record, id="r1", text="hello", label="pos")


def test_id_falls_back_to_line_number(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "c.jsonl", [jl(text="a", label="x"), jl(id=42, text="b"), jl(text="c")]
    )
    rows = list(iter_corpus(path))
    assert [r.id for r in rows if isinstance(r, Row)] == [1, 42, 3]


def test_int_labels_keep_their_type_and_sort_as_numbers(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a", label=12), jl(text="b", label=2)])
    rows = list(iter_corpus(path))
    assert [r.label for r in rows if isinstance(r, Row)] == [12, 2]
    assert label_set_from_rows(rows) == [2, 12]
    # "2" and 2 are one label: the label set's spelling wins.
    items = list(iter_corpus(path, labels=[2, 12]))
    assert [r.label for r in items if isinstance(r, Row)] == [12, 2]
    path = write_lines(tmp_path / "d.jsonl", [jl(text="a", label="12")])
    assert [r.label for r in iter_corpus(path, labels=[2, 12])] == [12]


def test_null_and_missing_label_are_none(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a", label=None), jl(text="b")])
    rows = list(iter_corpus(path))
    assert all(isinstance(r, Row) for r in rows)
    assert [r.label for r in rows if isinstance(r, Row)] == [None, None]


def test_custom_field_names(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(uid="u", sentence="s", llm=3), jl(llm=1)])
    items = list(iter_corpus(path, fields=FieldNames(text="sentence", label="llm", id="uid")))
    assert isinstance(items[0], Row)
    assert (items[0].id, items[0].text, items[0].label) == ("u", "s", 3)
    assert isinstance(items[1], Reject)
    assert items[1].field == "sentence"
    assert items[1].reason == 'field "sentence": missing'


def test_long_text_truncated_not_rejected(tmp_path: Path) -> None:
    long_text = "é" * 50
    path = write_lines(tmp_path / "c.jsonl", [jl(text=long_text, label="a")])
    row = only_row(path, max_chars=10)
    assert row.text == "é" * 10
    assert row.record["text"] == long_text  # the record itself is untouched


def test_text_at_limit_not_truncated(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="abcde")])
    assert only_row(path, max_chars=5).text == "abcde"


def test_max_chars_must_be_positive(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a")])
    with pytest.raises(ValueError, match="max_chars"):
        iter_corpus(path, max_chars=0)


def test_crlf_and_bom_handled(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n{"text": "b"}\r\n')
    rows = list(iter_corpus(path))
    assert [r.text for r in rows if isinstance(r, Row)] == ["a", "b"]


def test_no_trailing_newline(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a"), jl(text="b")], newline_at_end=False)
    rows = list(iter_corpus(path))
    assert [r.text for r in rows if isinstance(r, Row)] == ["a", "b"]
    assert count_lines(path) == 2


def test_mixed_corpus_accounts_for_every_line(tmp_path: Path) -> None:
    lines: list[str | bytes] = [
        jl(id="a", text="good one", label="pos"),
        "",
        "{broken",
        jl(text="good two", label=1),
        b"\xff\xfe",
        jl(text="", label="pos"),
        "[1]",
        jl(text="x", label=2.5),
        "   ",
        jl(text="good three", label=None),
        jl(id=[1], text="x"),
        jl(text="good four"),
    ]
    path = write_lines(tmp_path / "c.jsonl", lines)
    items = list(iter_corpus(path))
    rows = [i for i in items if isinstance(i, Row)]
    rejects = [i for i in items if isinstance(i, Reject)]

    assert count_lines(path) == len(lines) == len(rows) + len(rejects)
    assert [i.line_no for i in items] == list(range(1, len(lines) + 1))
    assert [r.text for r in rows] == ["good one", "good two", "good three", "good four"]
    assert [r.line_no for r in rows] == [1, 4, 10, 12]
    assert [r.id for r in rows] == ["a", 4, 10, 12]
    assert [(r.line_no, r.field) for r in rejects] == [
        (2, None),
        (3, None),
        (5, None),
        (6, "text"),
        (7, None),
        (8, "label"),
        (9, None),
        (11, "id"),
    ]
    assert label_set_from_rows(rows) == ["1", "pos"]


def test_reject_to_json() -> None:
    reject = Reject(line_no=3, reason="blank line", field=None, raw="  ")
    assert reject.to_json() == {"line": 3, "reason": "blank line", "field": None, "raw": "  "}
    json.dumps(reject.to_json())


def test_reject_reason_names_the_row_of_other_formats() -> None:
    jsonl = Reject(line_no=3, reason="blank line", field=None, raw="  ")
    parquet = Reject(line_no=7, reason="text is blank", field="text", raw="", unit="row")
    csv = Reject(line_no=7, reason="text is blank", field="text", raw="", unit="row",
                 first_line=9)
    assert reject_reason(jsonl.to_json()) == "line 3: blank line"
    assert reject_reason(parquet.to_json()) == "row 7: text is blank"
    assert reject_reason(csv.to_json()) == "row 7 (line 9): text is blank"


# --- strict mode -----------------------------------------------------------------------------


def test_strict_raises_input_error_naming_file_line_and_field(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "corpus.jsonl", [jl(text="a"), jl(text="b"), jl(label="x"), jl(text="c")]
    )
    it = iter_corpus(path, strict=True)
    assert isinstance(next(it), Row)
    assert isinstance(next(it), Row)
    with pytest.raises(InputError) as info:
        next(it)
    err = info.value
    assert isinstance(err, ValueError)
    assert "corpus.jsonl" in str(err)
    assert str(err).endswith('corpus.jsonl:3: field "text": missing')
    assert err.line_no == 3
    assert err.field == "text"
    assert err.reason == 'field "text": missing'
    assert err.path.endswith("corpus.jsonl")


def test_strict_whole_line_error_has_no_field(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "corpus.jsonl", [jl(text="a"), "nope"])
    with pytest.raises(InputError, match=r"corpus\.jsonl:2: invalid JSON") as info:
        list(iter_corpus(path, strict=True))
    assert info.value.field is None


def test_strict_passes_clean_corpus(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a", label=1), jl(text="b")])
    assert len(list(iter_corpus(path, strict=True))) == 2


def test_input_error_pickles() -> None:
    err = InputError("c.jsonl", 4, "label", 'field "label": bad')
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.line_no, back.field, back.reason) == ("c.jsonl", 4, "label", err.reason)
    assert str(back) == str(err)


# --- gzip and stdin --------------------------------------------------------------------------


def test_gzip_input(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b'{"text": "a", "label": 1}\n\n{"text": "b"}\n')
    items = list(iter_corpus(path))
    assert [type(i) for i in items] == [Row, Reject, Row]
    assert isinstance(items[0], Row)
    assert items[0].label == 1  # an integer label keeps its type
    assert count_lines(path) is None


def test_corrupt_gzip_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    data = gzip.compress(b"".join(b'{"text": "row %d"}\n' % i for i in range(2000)))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt gzip"):
        list(iter_corpus(path))


def test_cut_or_corrupt_zstd_raises_input_error(tmp_path: Path) -> None:
    # zstandard's stream reader ends quietly at a cut frame: the rows after it would be lost.
    zstandard = pytest.importorskip("zstandard")
    lines = [b'{"text": "row %d"}\n' % i for i in range(4000)]
    compress = zstandard.ZstdCompressor().compress
    data = compress(b"".join(lines[:3000])) + compress(b"".join(lines[3000:]))
    path = tmp_path / "c.jsonl.zst"
    path.write_bytes(data)
    assert len(list(iter_corpus(path))) == 4000  # two frames, read one after the other
    path.write_bytes(data[: len(data) * 9 // 10])
    cut = r"c\.jsonl\.zst:\d+: corrupt zstd stream: .*inside a frame"
    with pytest.raises(InputError, match=cut):
        list(iter_corpus(path))
    path.write_bytes(b"not zstd at all\n" * 10)
    with pytest.raises(InputError, match="corrupt zstd stream"):
        list(iter_corpus(path))


def test_stdin_input(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BytesIO(b'{"text": "a"}\nbad\n'), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", fake)
    items = list(iter_corpus("-"))
    assert [type(i) for i in items] == [Row, Reject]
    assert count_lines("-") is None
    assert not fake.closed  # stdin is not ours to close


def test_strict_stdin_names_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BytesIO(b"bad\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", fake)
    with pytest.raises(InputError, match="<stdin>:1: invalid JSON"):
        list(iter_corpus("-", strict=True))


def test_file_closed_when_iteration_stops_early(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [jl(text="a"), jl(text="b")])
    it = iter_corpus(path)
    next(it)
    it.close()  # must not raise; the with/finally inside closes the file


# --- parse_label_set -------------------------------------------------------------------------


def test_parse_label_set_none() -> None:
    assert parse_label_set(None) is None


def test_parse_label_set_comma_list() -> None:
    assert parse_label_set(" pos , neg,,neutral ,") == ["pos", "neg", "neutral"]


def test_parse_label_set_txt_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("b\n\n  a  \nc\n   \n", encoding="utf-8")
    assert parse_label_set(str(path)) == ["b", "a", "c"]


def test_parse_label_set_json_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(["z", "y", 3]), encoding="utf-8")
    assert parse_label_set(str(path)) == ["z", "y", "3"]


def test_parse_label_set_json_file_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"a": 1}), encoding="utf-8")
    with pytest.raises(ValueError, match="JSON list"):
        parse_label_set(str(path))


@pytest.mark.parametrize("spec", ["a,b,a", "x, y ,y"])
def test_parse_label_set_duplicates_comma(spec: str) -> None:
    with pytest.raises(ValueError, match="duplicate"):
        parse_label_set(spec)


def test_parse_label_set_duplicates_in_files(tmp_path: Path) -> None:
    txt = tmp_path / "labels.txt"
    txt.write_text("a\nb\na\n", encoding="utf-8")
    js = tmp_path / "labels.json"
    js.write_text('["a", "b", "b"]', encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate"):
        parse_label_set(str(txt))
    with pytest.raises(ValueError, match="duplicate"):
        parse_label_set(str(js))


def test_parse_label_set_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_label_set(" , ")


# --- count_lines and label_set_from_rows ----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0), (b"\n", 1), (b"a", 1), (b"a\n", 1), (b"a\nb", 2), (b"a\n\nb\n", 3)],
)
def test_count_lines(tmp_path: Path, data: bytes, expected: int) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(data)
    assert count_lines(path) == expected
    assert len(list(iter_corpus(path))) == expected


def test_count_lines_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"x" * 3_000_000 + b"\n" + b"y\n" * 1000 + b"tail")
    assert count_lines(path) == 1002


def test_label_set_from_rows_sorted_unique() -> None:
    rows = [
        Row(1, {}, 1, "t", "b"),
        Row(2, {}, 2, "t", None),
        Row(3, {}, 3, "t", "a"),
        Row(4, {}, 4, "t", "b"),
    ]
    assert label_set_from_rows(rows) == ["a", "b"]
    assert label_set_from_rows([]) == []


# --- AtomicWriter ----------------------------------------------------------------------------


def test_atomic_writer_commit_writes_complete_file(tmp_path: Path) -> None:
    final = tmp_path / "out.jsonl"
    with AtomicWriter(final) as writer:
        writer.write_json({"b": 1, "a": "é"})
        writer.write("raw\n")
        assert not final.exists()  # nothing visible until commit
    assert final.read_text(encoding="utf-8") == '{"b":1,"a":"é"}\nraw\n'
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_atomic_writer_explicit_commit(tmp_path: Path) -> None:
    final = tmp_path / "out.jsonl"
    writer = AtomicWriter(final)
    writer.write_json({"x": [1, 2]})
    writer.commit()
    writer.commit()  # idempotent
    assert final.read_text(encoding="utf-8") == '{"x":[1,2]}\n'
    with pytest.raises(ValueError):
        writer.write("late")


def test_atomic_writer_exception_leaves_no_file(tmp_path: Path) -> None:
    final = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError), AtomicWriter(final) as writer:
        for i in range(100):
            writer.write_json({"i": i})
        raise RuntimeError("boom mid-write")
    assert not final.exists()
    assert os.listdir(tmp_path) == []


def test_atomic_writer_exception_keeps_previous_file(tmp_path: Path) -> None:
    final = tmp_path / "out.jsonl"
    final.write_text("old\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt), AtomicWriter(final) as writer:
        writer.write("new\n")
        raise KeyboardInterrupt
    assert final.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_atomic_writer_temp_name(tmp_path: Path) -> None:
    final = tmp_path / "out.jsonl"
    writer = AtomicWriter(final)
    expected = tmp_path / f"out.jsonl.partial-{os.getpid()}"
    assert writer.tmp_path == expected
    assert expected.exists()
    writer.abort()
    assert not expected.exists()
    assert not final.exists()


def test_atomic_writer_lone_surrogate_written_as_escape(tmp_path: Path) -> None:
    final = tmp_path / "out.jsonl"
    value = json.loads('"a\\ud800b"')
    with AtomicWriter(final) as writer:
        writer.write_json({"t": value})
        writer.write_json({"t": "ok"})
    lines = final.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["t"] for line in lines] == [value, "ok"]


def test_atomic_writer_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with AtomicWriter("-") as writer:
        writer.write_json({"a": 1})
    assert capsys.readouterr().out == '{"a":1}\n'
    assert os.listdir(tmp_path) == []


def test_rows_and_rejects_roundtrip_through_writer(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", [jl(id=7, text="a", label=1, keep="me"), "junk"])
    out = tmp_path / "out.jsonl"
    with AtomicWriter(out) as rows_out, AtomicWriter(default_rejects_path(out)) as rejects_out:
        for item in iter_corpus(src):
            if isinstance(item, Row):
                rows_out.write_json(item.record)
            else:
                rejects_out.write_json(item.to_json())
    assert json.loads(out.read_text(encoding="utf-8")) == {
        "id": 7,
        "text": "a",
        "label": 1,
        "keep": "me",
    }
    reject = json.loads((tmp_path / "out.rejects.jsonl").read_text(encoding="utf-8"))
    assert reject["line"] == 2
    assert reject["raw"] == "junk"


# --- default_rejects_path -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        ("out.jsonl", "out.rejects.jsonl"),
        ("runs/x/preds.jsonl", "runs/x/preds.rejects.jsonl"),
        ("out.json", "out.rejects.jsonl"),
        ("out", "out.rejects.jsonl"),
        ("out.jsonl.gz", "out.rejects.jsonl"),
        ("-", "rejects.jsonl"),
    ],
)
def test_default_rejects_path(out: str, expected: str) -> None:
    assert default_rejects_path(out) == Path(expected)
    assert default_rejects_path(Path(out) if out != "-" else out) == Path(expected)
