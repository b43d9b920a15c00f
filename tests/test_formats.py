"""Parquet output: every field of every row survives, one schema for the whole file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidyp_prod.formats import jsonl_to_parquet

pq = pytest.importorskip("pyarrow.parquet")


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_fields_that_appear_late_or_start_null_are_kept(tmp_path):
    rows = [{"id": i, "label": None, "candidates": {"a": 1.0}} for i in range(4)]
    rows += [{"id": 4 + i, "label": "x", "candidates": {"b": 0.5, "a": 0.5}} for i in range(4)]
    rows[1]["score"] = 1  # int here, float later: one double column
    rows[6]["score"] = 0.25
    rows[7]["meta"] = {"source": "web"}  # only in the very last row
    source = write(tmp_path / "in.jsonl", rows)
    jsonl_to_parquet(source, tmp_path / "out.parquet", batch_rows=3)
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.names == ["id", "label", "candidates", "score", "meta"]
    back = table.to_pylist()
    assert [r["label"] for r in back] == [None] * 4 + ["x"] * 4
    assert back[1]["score"] == 1.0 and back[6]["score"] == 0.25 and back[0]["score"] is None
    assert back[7]["meta"] == {"source": "web"} and back[0]["meta"] is None
    assert dict(back[5]["candidates"]) == {"b": 0.5, "a": 0.5}


@pytest.mark.parametrize("late", [True, False])
def test_a_field_with_two_types_is_an_error_naming_it(tmp_path, late):
    rows = [{"id": i, "score": 1.0} for i in range(6)]
    rows[5 if late else 1]["score"] = "high"
    source = write(tmp_path / "in.jsonl", rows)
    with pytest.raises(ValueError, match="score"):
        jsonl_to_parquet(source, tmp_path / "out.parquet", batch_rows=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_no_rows_give_a_valid_empty_file(tmp_path):
    jsonl_to_parquet(write(tmp_path / "in.jsonl", []), tmp_path / "out.parquet")
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 0


def test_the_refine_fields_keep_their_types_when_a_file_has_only_nulls(tmp_path):
    rows = [{"id": i, "given_label": None, "predicted_label": "a", "label_score": None,
             "is_label_issue": False, "confidence": 1, "candidates": {}} for i in range(3)]
    jsonl_to_parquet(write(tmp_path / "in.jsonl", rows), tmp_path / "out.parquet")
    types = {f.name: str(f.type) for f in pq.read_table(tmp_path / "out.parquet").schema}
    assert types["given_label"] == "string" and types["label_score"] == "double"
    assert types["confidence"] == "double" and types["is_label_issue"] == "bool"
