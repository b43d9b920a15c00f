"""Hand-computed checks of the evaluation metrics and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sidyp_prod.evaluate import (
    EvaluationReport,
    accuracy,
    confusion_matrix,
    evaluate_records,
    expected_calibration_error,
    per_class_report,
    read_records,
    reliability_bins,
    write_plots,
)


def test_accuracy_none_counts_as_wrong() -> None:
    assert accuracy(["a", None, "b", "b"], ["a", "a", "b", "a"]) == pytest.approx(0.5)
    assert accuracy([None], ["a"]) == 0.0


def test_accuracy_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_ece_hand_computed() -> None:
    # 5 bins of width 0.2. Bin [0.8,1]: conf .9 x2, acc .5 -> gap .4, weight 2/5.
    # Bin [0.6,0.8): conf .6 x2 (edge belongs to the upper bin), acc 1 -> gap .4, weight 2/5.
    # Bin [0.2,0.4): conf .2, acc 0 -> gap .2, weight 1/5.  ECE = .16 + .16 + .04 = .36
    conf = np.array([0.9, 0.9, 0.6, 0.6, 0.2])
    correct = np.array([True, False, True, True, False])
    assert expected_calibration_error(conf, correct, n_bins=5) == pytest.approx(0.36)

    bins = reliability_bins(conf, correct, n_bins=5)
    assert [b["count"] for b in bins] == [0, 1, 0, 2, 2]
    assert bins[0]["accuracy"] is None and bins[0]["mean_confidence"] is None
    assert bins[3]["lo"] == pytest.approx(0.6) and bins[3]["hi"] == pytest.approx(0.8)
    assert bins[3]["accuracy"] == pytest.approx(1.0)
    assert bins[4]["mean_confidence"] == pytest.approx(0.9)
    assert bins[4]["accuracy"] == pytest.approx(0.5)


def test_ece_confidence_one_lands_in_last_bin() -> None:
    bins = reliability_bins(np.array([1.0, 0.0]), np.array([1, 0]), n_bins=4)
    assert bins[-1]["count"] == 1 and bins[0]["count"] == 1
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0]), n_bins=4) == 0.0


def test_ece_perfectly_calibrated_is_zero() -> None:
    conf = np.array([0.75] * 4 + [1.0] * 2)
    correct = np.array([1, 1, 1, 0, 1, 1])
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0, abs=1e-12)

    rng = np.random.default_rng(0)
    conf = rng.uniform(0.0, 1.0, 200_000)
    correct = rng.uniform(0.0, 1.0, conf.size) < conf
    assert expected_calibration_error(conf, correct) < 0.01


def test_ece_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([1.5]), np.array([1]))
    with pytest.raises(ValueError, match="length"):
        expected_calibration_error(np.array([0.5, 0.5]), np.array([1]))
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error(np.array([]), np.array([]))


def test_confusion_matrix_orientation() -> None:
    # Rows gold, columns predicted; the None prediction is left out of the matrix.
    mat = confusion_matrix(["b", "b", "a", None], ["a", "b", "a", "a"], ["a", "b"])
    np.testing.assert_array_equal(mat, [[1, 1], [0, 1]])
    with pytest.raises(ValueError, match="'z'"):
        confusion_matrix(["a"], ["z"], ["a", "b"])


def test_per_class_precision_recall() -> None:
    pred = ["a", "a", "b", None, "b"]
    gold = ["a", "b", "b", "a", "a"]
    rep = {r["label"]: r for r in per_class_report(pred, gold, ["a", "b", "c"])}
    # a: tp 1, predicted 2, gold 3 (the None row still counts in support).
    assert rep["a"]["precision"] == pytest.approx(0.5)
    assert rep["a"]["recall"] == pytest.approx(1 / 3)
    assert rep["a"]["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert rep["a"]["support"] == 3
    # b: tp 1, predicted 2, gold 2.
    assert rep["b"]["precision"] == pytest.approx(0.5)
    assert rep["b"]["recall"] == pytest.approx(0.5)
    assert rep["b"]["support"] == 2
    # c: never seen -> zeros, not NaN.
    assert rep["c"] == {"label": "c", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def _rows() -> list[dict]:
    return [
        # gold, given, predicted: unchanged and right
        {
            "text": "1",
            "gold_label": "a",
            "given_label": "a",
            "predicted_label": "a",
            "confidence": 0.9,
        },
        # changed, fixed
        {
            "text": "2",
            "gold_label": "b",
            "given_label": "a",
            "predicted_label": "b",
            "confidence": 0.8,
        },
        # changed, broken
        {
            "text": "3",
            "gold_label": "a",
            "given_label": "a",
            "predicted_label": "b",
            "confidence": 0.6,
        },
        # LLM refused (given None), refined right: filled, right (not changed)
        {
            "text": "4",
            "gold_label": "c",
            "given_label": None,
            "predicted_label": "c",
            "confidence": 0.7,
        },
        # changed, wrong before and after: neither fixed nor broken
        {
            "text": "5",
            "gold_label": "c",
            "given_label": "b",
            "predicted_label": "a",
            "confidence": 0.55,
        },
        # no gold: counted, not scored
        {"text": "6", "given_label": "a", "predicted_label": "c", "confidence": 0.5},
        {
            "text": "7",
            "gold_label": None,
            "given_label": "b",
            "predicted_label": "b",
            "confidence": 0.5,
        },
    ]


def test_evaluate_records_counts() -> None:
    rep = evaluate_records(_rows())
    assert rep.n_rows == 7
    assert rep.n_scored == 5
    assert rep.labels == ["a", "b", "c"]
    assert rep.given_accuracy == pytest.approx(2 / 5)
    assert rep.refined_accuracy == pytest.approx(3 / 5)
    assert (rep.changed, rep.fixed, rep.broken) == (3, 1, 1)
    assert (rep.filled, rep.filled_right) == (1, 1)
    assert rep.confusion == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    per = {r["label"]: r for r in rep.per_class}
    assert per["c"]["precision"] == pytest.approx(1.0)
    assert per["c"]["recall"] == pytest.approx(0.5)
    assert per["a"]["support"] == 2
    conf = np.array([0.9, 0.8, 0.6, 0.7, 0.55])
    correct = np.array([True, True, False, True, False])
    assert rep.ece == pytest.approx(expected_calibration_error(conf, correct))
    assert sum(b["count"] for b in rep.reliability) == 5


def test_evaluate_records_explicit_labels_and_custom_fields() -> None:
    rows = [
        {"human": "x", "llm": "x", "out": "y", "p": 0.5},
        {"human": "y", "llm": "x", "out": "y", "p": 1.0},
    ]
    rep = evaluate_records(
        rows,
        gold_field="human",
        given_field="llm",
        predicted_field="out",
        confidence_field="p",
        labels=["y", "x"],
    )
    assert rep.labels == ["y", "x"]
    assert rep.confusion == [[1, 0], [1, 0]]
    assert (rep.changed, rep.fixed, rep.broken) == (2, 1, 1)


def test_evaluate_records_missing_field_names_field_and_row() -> None:
    rows = _rows()
    del rows[2]["confidence"]
    with pytest.raises(ValueError, match=r"row 3: required field 'confidence' is missing"):
        evaluate_records(rows)
    with pytest.raises(ValueError, match=r"row 1: required field 'refined' is missing"):
        evaluate_records(_rows(), predicted_field="refined")


def test_evaluate_records_bad_confidence() -> None:
    rows = _rows()
    rows[1]["confidence"] = None
    with pytest.raises(ValueError, match=r"row 2: field 'confidence'"):
        evaluate_records(rows)


def test_gold_labels_that_are_not_labels_are_refused_and_blank_ones_not_scored() -> None:
    rows = _rows()
    rows[1]["gold_label"] = "   "
    assert evaluate_records(rows).n_scored == evaluate_records(_rows()).n_scored - 1
    for bad in (["a"], True, 1.5, {"a": 1}):
        rows[1]["gold_label"] = bad
        with pytest.raises(ValueError, match=r"row 2: field 'gold_label': expected a label"):
            evaluate_records(rows)


def test_evaluate_names_the_file_and_line_of_a_bad_row(tmp_path: Path) -> None:
    from sidyp_prod import api

    rows = _rows()
    del rows[3]["confidence"]
    path = tmp_path / "refined.jsonl"
    path.write_text("\n\n" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"refined\.jsonl:6: required field 'confidence' is "
                       r"missing \(is this refine's output\?\)"):
        api.evaluate(path)


def test_evaluate_records_without_gold_raises() -> None:
    rows = [r for r in _rows() if not r.get("gold_label")]
    with pytest.raises(ValueError, match="no row has a gold label in field 'gold_label'"):
        evaluate_records(rows)
    with pytest.raises(ValueError, match="no row has a gold label"):
        evaluate_records([])


def test_report_to_dict_and_text() -> None:
    rep = evaluate_records(_rows())
    d = rep.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["fixed"] == 1 and d["confusion"][2] == [1, 0, 1]
    text = rep.to_text()
    for needle in (
        "0.4000",
        "0.6000",
        "+0.2000",
        "changed: 3 (LLM label replaced)",
        "fixed: 1",
        "filled: 1",
        "broken: 1",
        f"{rep.ece:.4f}",
        "precision",
        "rows = gold",
    ):
        assert needle in text
    assert "\n  c  " in text  # a per-class / confusion row for label c


def test_to_text_long_labels_get_short_headings() -> None:
    rep = EvaluationReport(
        n_rows=2,
        n_scored=2,
        labels=["business_news", "business_sport"],
        given_accuracy=0.5,
        refined_accuracy=1.0,
        changed=1,
        fixed=1,
        broken=0,
        ece=0.1,
        per_class=[],
        confusion=[[1, 0], [0, 1]],
    )
    header = next(line for line in rep.to_text().splitlines() if "0:" in line)
    assert "0:busin" in header and "1:busin" in header
    assert "business_news" not in header


def test_read_records(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert list(read_records(path)) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"out\.jsonl:2: invalid JSON"):
        list(read_records(path))
    path.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"out\.jsonl:1: expected a JSON object"):
        list(read_records(path))


def test_read_records_reads_compressed_outputs(tmp_path: Path) -> None:
    # A refined file compressed after the fact (gzip out.jsonl) reads like the plain one.
    import gzip

    zstandard = pytest.importorskip("zstandard")
    rows = _rows()
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "out.jsonl.gz").write_bytes(gzip.compress(text))
    (tmp_path / "out.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(text))
    (tmp_path / "out.csv.gz").write_bytes(gzip.compress(b"id,given_label\n1,a\n2,\n"))
    for name in ("out.jsonl.gz", "out.jsonl.zst"):
        assert list(read_records(tmp_path / name)) == rows, name
    assert list(read_records(tmp_path / "out.csv.gz")) == [
        {"id": "1", "given_label": "a"}, {"id": "2", "given_label": None}]
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(text)[:-12])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.gz.*corrupt gzip"):
        list(read_records(tmp_path / "cut.jsonl.gz"))


def test_read_then_evaluate(tmp_path: Path) -> None:
    path = tmp_path / "refined.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    assert evaluate_records(read_records(path)).refined_accuracy == pytest.approx(0.6)


def test_write_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rep = evaluate_records(_rows())
    paths = write_plots(rep, tmp_path / "plots", title="toy", extra_accuracies={"cleanlab": 0.4})
    assert [p.name for p in paths] == ["accuracy.png", "reliability.png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_records_names_a_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"a": 1}\n\xd8\xff\x00\n')
    with pytest.raises(ValueError, match=r"out\.jsonl:2: not UTF-8"):
        list(read_records(path))


def test_read_records_reads_parquet_and_shard_directories(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    from sidyp_prod.formats import jsonl_to_parquet

    rows = [{"id": i, "label": "a", "candidates": {"a": 0.75, "b": 0.25}} for i in range(3)]
    source = tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    jsonl_to_parquet(source, tmp_path / "out.parquet")
    assert list(read_records(tmp_path / "out.parquet")) == rows
    shards = tmp_path / "ray-out"
    shards.mkdir()
    jsonl_to_parquet(source, shards / "part-b-1.parquet")
    (shards / "part-a-1.jsonl").write_text(source.read_text(), encoding="utf-8")
    (shards / "rejects-a.jsonl").write_text('{"line": 9}\n', encoding="utf-8")
    assert list(read_records(shards)) == rows + rows
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without part-"):
        list(read_records(tmp_path / "empty"))
