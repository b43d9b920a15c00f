"""The files people have: CSV, TSV, Parquet, .jsonl.gz/.zst and a datasets directory give the
same rows (and, through refine, the same labels) as JSONL; bad rows of every format are
accounted for; CSV output; resume by row position."""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path

import pytest

from sidyp_prod import api
from sidyp_prod.corpus import FieldNames, InputError, Reject, Row, iter_corpus
from sidyp_prod.readers import count_rows, detect_format, file_identity, same_file

from synthetic import CLASSES, kill_when_journal_passes, make_rows

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

COLUMNS = ["id", "text", "label", "gold_label"]
# Rows every format can hold that no format may refine; their positions in the corpus.
BAD = [
    {"id": "bad-0", "text": None, "label": "music", "gold_label": "music"},
    {"id": "bad-1", "text": "   ", "label": "music", "gold_label": "music"},
    {"id": "bad-2", "text": "song band", "label": "astronomy", "gold_label": "music"},
]
BAD_AT = [5, 77, 150]


def corpus_rows(n: int = 160, seed: int = 5) -> list[dict]:
    rows = make_rows(n, seed=seed)
    # A text with the characters CSV must quote: a comma, quotes and a line break.
    rows[3]["text"] = 'goal match, "team"\nscore coach league'
    rows[40]["text"] = "oven recipe\r\nflour sauce, bake"
    for at, bad in zip(BAD_AT, BAD, strict=True):
        rows.insert(at, dict(bad))
    return rows


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if row[c] is None else row[c] for c in COLUMNS])
    return path


def write_all_formats(directory: Path, rows: list[dict]) -> dict[str, Path]:
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    paths = {
        "jsonl": directory / "c.jsonl",
        "gz": directory / "c.jsonl.gz",
        "csv": write_csv(directory / "c.csv", rows),
        "tsv": write_csv(directory / "c.tsv", rows, "\t"),
        "parquet": directory / "c.parquet",
    }
    paths["jsonl"].write_bytes(lines)
    paths["gz"].write_bytes(gzip.compress(lines, mtime=0))
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, paths["parquet"], row_group_size=40)  # several row groups
    try:
        import zstandard
    except ImportError:
        pass
    else:
        paths["zst"] = directory / "c.jsonl.zst"
        paths["zst"].write_bytes(zstandard.ZstdCompressor().compress(lines))
    try:
        import datasets
    except ImportError:
        pass
    else:
        paths["datasets"] = directory / "c-dataset"
        datasets.Dataset.from_list(rows).save_to_disk(str(paths["datasets"]), num_shards=2)
    return paths


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all_formats(tmp_path_factory.mktemp("formats"), corpus_rows())


def where(reject: dict) -> int:
    return reject["row"] if "row" in reject else reject["line"]


def test_every_format_is_detected_and_read_as_the_same_rows(formats):
    assert {detect_format(p) for p in formats.values()} >= {"jsonl", "csv", "tsv", "parquet"}
    assert "datasets" in formats and "zst" in formats, "the test extra installs both"
    expected = list(iter_corpus(formats["jsonl"], labels=CLASSES))
    rows = [item.record for item in expected if isinstance(item, Row)]
    assert len(rows) == len(expected) - len(BAD)
    for kind, path in formats.items():
        items = list(iter_corpus(path, labels=CLASSES))
        assert len(items) == len(expected), kind
        assert [item.record for item in items if isinstance(item, Row)] == rows, kind
        assert [r.line_no for r in items if isinstance(r, Reject)] == [a + 1 for a in BAD_AT]
    assert count_rows(formats["parquet"]) == len(expected)
    assert count_rows(formats["datasets"]) == len(expected)


def test_input_format_overrides_the_name(formats, tmp_path):
    odd = tmp_path / "corpus.txt"
    odd.write_bytes(formats["csv"].read_bytes())
    assert detect_format(odd) == "jsonl"
    assert len(list(iter_corpus(odd, input_format="csv"))) == len(corpus_rows())
    with pytest.raises(ValueError, match="unknown input format 'xml'"):
        iter_corpus(odd, input_format="xml")


def test_bad_csv_records_are_rejects_with_row_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        b'\xef\xbb\xbfid,text,label\n'
        b'1,hello,a\n'
        b'2,"two\nlines, quoted",b\n'
        b'3,,a\n'
        b'\n'
        b'4,caf\xe9,a\n'
        b'5,too few\n'
        b'6,"bad"quote,a\n'
        b'7,no label,\n'
        b',no id,b\n'
        b'8,"never closed,a\n'
        b'9,swallowed,a\n'
    )
    items = list(iter_corpus(path, labels=["a", "b"]))
    assert [type(i).__name__ for i in items] == (
        ["Row", "Row"] + ["Reject"] * 5 + ["Row", "Row", "Reject"])
    rejects = [i.to_json() for i in items if isinstance(i, Reject)]
    assert [(r["row"], r["line"]) for r in rejects] == [(3, 5), (4, 6), (5, 7), (6, 8),
                                                         (7, 9), (10, 12)]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0] == 'field "text": blank' and reasons[1] == "blank line"
    assert reasons[2] == "invalid UTF-8: byte 0xe9 at offset 5"
    assert reasons[3] == "2 fields, the header has 3"
    assert reasons[4].startswith("invalid CSV") and reasons[5].startswith("invalid CSV")
    assert rejects[2]["raw"] == "4,caf\ufffd,a"
    assert items[1].text == "two\nlines, quoted"
    assert items[7].label is None and items[7].record["label"] is None
    assert items[8].id == 9 and "id" not in items[8].record  # the row number stands in
    with pytest.raises(InputError, match=r"bad\.csv: row 3 \(line 5\): field \"text\": blank"):
        list(iter_corpus(path, strict=True))


def test_a_table_without_the_text_column_is_an_error_naming_the_columns(formats, tmp_path):
    for kind in ("csv", "parquet", "datasets"):
        with pytest.raises(ValueError, match=r'no column "body" \(columns: id, text, label'):
            list(iter_corpus(formats[kind], fields=FieldNames(text="body")))
    duplicated = tmp_path / "dup.csv"
    duplicated.write_text("text,text\na,b\n")
    with pytest.raises(InputError, match="duplicate columns: text"):
        list(iter_corpus(duplicated))


def test_tabular_values_become_json(tmp_path):
    import datetime

    table = pa.table({
        "text": ["song band", "oven", "goal"],
        "label": pa.array([1.0, None, float("nan")]),  # pandas' int column with gaps
        "when": pa.array([datetime.date(2026, 1, 2), None, None]),
        "blob": pa.array([b"\x00\xff", None, None]),
    })
    pq.write_table(table, tmp_path / "t.parquet")
    rows = list(iter_corpus(tmp_path / "t.parquet"))
    assert [r.label for r in rows] == [1, None, None]  # integer labels keep their type
    assert rows[0].record == {"text": "song band", "label": 1, "when": "2026-01-02",
                              "blob": "AP8="}


def test_a_datasets_class_label_column_gives_its_names(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["bad", "good", "meh"], "label": [0, 1, -1]},
                                    features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    assert [r.label for r in iter_corpus(tmp_path / "ds")] == ["neg", "pos", None]
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"DatasetDict with splits train; give one split"):
        list(iter_corpus(tmp_path / "dd"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a dataset saved with datasets' save_to_disk"):
        list(iter_corpus(tmp_path / "empty"))


@pytest.mark.parametrize("row_group_size", [20_000, 1_000])
def test_parquet_is_streamed_not_read_whole(tmp_path, row_group_size):
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    rows = [{"text": " ".join(rng.choices(words, k=200)), "label": "music"}
            for _ in range(20_000)]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    text_bytes = sum(len(r["text"]) for r in rows)
    items = iter_corpus(path)
    before = pa.total_allocated_bytes()
    peak = 0
    for _ in range(len(rows)):
        next(items)
        peak = max(peak, pa.total_allocated_bytes() - before)
    assert next(items, None) is None
    assert peak < text_bytes / 4, (peak, text_bytes)


def refined_fields(path: Path) -> list[dict]:
    from sidyp_prod.evaluate import read_records

    return list(read_records(path))


def test_every_format_refines_to_the_same_labels_and_accounts_for_every_row(
        trained, formats, tmp_path):
    bundle, _, _ = trained
    reference = None
    for kind, path in formats.items():
        out = tmp_path / f"{kind}.jsonl"
        summary = api.refine(path, bundle, out, chunk_size=64)
        rejects = [json.loads(line) for line in out.with_name(f"{kind}.rejects.jsonl").open()]
        rows = refined_fields(out)
        assert summary.read == len(corpus_rows()) == len(rows) + len(rejects), kind
        assert [where(r) for r in rejects] == [a + 1 for a in BAD_AT], kind
        assert {r["field"] for r in rejects} == {"text", "label"}, kind
        if reference is None:
            reference = rows
        assert rows == reference, kind


def test_output_format_follows_the_extension_and_evaluate_reads_it(trained, formats, tmp_path):
    bundle, _, _ = trained
    api.refine(formats["jsonl"], bundle, tmp_path / "r.jsonl")
    expected = refined_fields(tmp_path / "r.jsonl")
    for suffix in ("csv", "tsv", "parquet"):
        out = tmp_path / f"r.{suffix}"
        api.refine(formats["csv"], bundle, out)
        assert refined_fields(out) == expected, suffix
        assert api.evaluate(out).refined_accuracy == api.evaluate(tmp_path / "r.jsonl") \
            .refined_accuracy
    with (tmp_path / "r.csv").open(newline="") as f:
        header = next(csv.reader(f))
    assert header == [*COLUMNS, "given_label", "predicted_label", "label_score",
                      "is_label_issue", "confidence", "candidates"]


def test_cli_refines_a_csv_to_csv_with_input_format(trained, formats, tmp_path):
    from typer.testing import CliRunner

    from sidyp_prod.cli.main import app

    bundle, _, _ = trained
    corpus = tmp_path / "export.dat"
    corpus.write_bytes(formats["tsv"].read_bytes())
    result = CliRunner().invoke(app, ["refine", str(corpus), "--input-format", "tsv", "--model",
                                      str(bundle), "--out", str(tmp_path / "o.csv"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"{len(BAD)} rejected" in result.output
    result = CliRunner().invoke(app, ["refine", str(formats["csv"]), "--model", str(bundle),
                                      "--out", str(tmp_path / "x.jsonl"), "--strict"])
    assert result.exit_code == 2 and "c.csv: row 6 (line 8): " in result.output


def test_a_killed_csv_refine_resumes_by_row_to_identical_output(trained, tmp_path):
    bundle, _, _ = trained
    rows = make_rows(2400, seed=12)
    for row in rows[::3]:
        row["text"] = row["text"].replace(" ", "\n", 1)  # records spanning two lines
    corpus = write_csv(tmp_path / "big.csv", rows)
    reference = tmp_path / "ref.csv"
    api.refine(corpus, bundle, reference, chunk_size=100)
    out = tmp_path / "out.csv"
    journal = tmp_path / "out.csv.journal.json"
    command = [sys.executable, "-m", "sidyp_prod.cli.main", "refine", str(corpus),
               "--model", str(bundle), "--out", str(out), "--chunk-size", "100", "--quiet"]
    done = kill_when_journal_passes(command, journal, 500)
    assert not out.exists() and 0 < done < 2400
    summary = api.refine(corpus, bundle, out, chunk_size=100, resume=True)
    assert summary.read == summary.refined == 2400
    assert out.read_bytes() == reference.read_bytes()


def test_compressed_csv_and_a_bad_input_format_on_the_cli(formats, tmp_path):
    from typer.testing import CliRunner

    from sidyp_prod.cli.main import app

    packed = tmp_path / "c.csv.gz"
    packed.write_bytes(gzip.compress(formats["csv"].read_bytes()))
    assert detect_format(packed) == "csv"
    plain = [getattr(i, "record", i) for i in iter_corpus(formats["csv"])]
    assert [getattr(i, "record", i) for i in iter_corpus(packed)] == plain
    result = CliRunner().invoke(app, ["train", str(packed), "--input-format", "xml", "--out",
                                      str(tmp_path / "b"), "--quiet"])
    assert result.exit_code == 2 and "unknown input format 'xml'" in result.output


def test_same_file_follows_the_file_not_the_spelling(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "c.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "a", "label": "x"}\n')
    identity = file_identity(tmp_path / "sub" / ".." / "sub" / "c.jsonl")
    monkeypatch.chdir(tmp_path)
    assert same_file(identity, "sub/c.jsonl")
    assert not same_file(identity, "-") and not same_file(None, path)
    path.write_text('{"text": "b", "label": "x"}\n{"text": "c", "label": "x"}\n')
    assert not same_file(identity, path)  # changed since
