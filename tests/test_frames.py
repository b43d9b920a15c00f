"""The notebook API: texts and labels in (lists, a DataFrame, a datasets.Dataset), the refined
columns out as a DataFrame in input order, the same labels as the file-based commands."""

from __future__ import annotations

import json
import math

import pytest

from sidyp_prod import api
from sidyp_prod.frames import OUTPUT_COLUMNS, REJECT_COLUMN

from conftest import tiny_config
from synthetic import make_rows

pd = pytest.importorskip("pandas")


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def assert_rows_match(frame, records: list[dict]) -> None:
    """Each frame row's refined columns equal the refined file's row, value for value."""
    assert len(frame) == len(records)
    for (_, row), record in zip(frame.iterrows(), records, strict=True):
        for name in OUTPUT_COLUMNS:
            value = row[name]
            expected = record[name]
            if expected is None:
                assert value is None or pd.isna(value), (name, value)
            else:
                assert same(value, expected), (name, value, expected)
        assert row[REJECT_COLUMN] is None


def test_apply_frame_gives_refines_labels_for_a_dataframe_a_list_and_a_dataset(
        trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    api.refine(fresh_corpus, bundle, tmp_path / "fresh.refined.jsonl")
    expected = read(tmp_path / "fresh.refined.jsonl")
    rows = read(fresh_corpus)
    frame = pd.DataFrame({"review": [r["text"] for r in rows], "llm": [r["label"] for r in rows]},
                         index=[r["id"] for r in rows])
    result = api.apply_frame(bundle, frame, text_column="review", label_column="llm",
                             chunk_size=64)
    assert list(result.columns) == [*OUTPUT_COLUMNS, REJECT_COLUMN]
    assert list(result.index) == [r["id"] for r in rows]  # joins back onto the input
    assert_rows_match(result, expected)
    assert result["is_label_issue"].sum() == sum(r["is_label_issue"] for r in expected)

    listed = api.apply_frame(bundle, [r["text"] for r in rows], [r["label"] for r in rows])
    assert list(listed.index) == list(range(len(rows)))
    assert_rows_match(listed, expected)

    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_list(rows)
    assert_rows_match(api.apply_frame(bundle, dataset), expected)


def test_unusable_rows_keep_their_place_with_a_reason(trained):
    bundle, _, _ = trained
    rows = make_rows(6, seed=9)
    texts = [r["text"] for r in rows]
    labels: list = [r["label"] for r in rows]
    texts[1] = "   "
    labels[3] = "astronomy"
    labels[4] = float("nan")  # pandas' missing label: the LLM refused
    texts[5] = "half a pair \udc00"  # no Unicode character: the tokenizer cannot take it
    result = api.apply_frame(bundle, pd.Series(texts, index=list("abcdef")), labels)
    assert list(result.index) == list("abcdef")
    assert result[REJECT_COLUMN].tolist() == [
        None, 'field "text": blank', None, 'field "label": "astronomy" is not in the label set',
        None, 'field "text": not valid Unicode: unpaired surrogate \\udc00 at character 13']
    assert result["predicted_label"].isna().tolist() == [False, True, False, True, False, True]
    assert result.loc["e", "given_label"] is None and pd.isna(result.loc["e", "label_score"])
    with pytest.raises(ValueError, match=r'data\[1\]: field "text": blank'):
        api.apply_frame(bundle, texts, labels, strict=True)
    with pytest.raises(ValueError, match="6 texts but 2 labels"):
        api.apply_frame(bundle, texts, labels[:2])
    with pytest.raises(ValueError, match='no column "body"'):
        api.apply_frame(bundle, pd.DataFrame({"text": texts}), text_column="body")


def test_refine_frame_gives_train_refined_outs_labels_and_keeps_the_bundle(
        trained, tiny_encoder, train_corpus, tmp_path):
    _, refined, summary = trained
    rows = read(train_corpus)
    frame = pd.DataFrame(rows)
    result = api.refine_frame(frame, config=tiny_config(), encoder=str(tiny_encoder),
                              save_model=tmp_path / "bundle")
    assert_rows_match(result, read(refined))
    assert result.attrs["summary"]["labels_changed"] == summary.labels_changed
    kept = api.apply_frame(tmp_path / "bundle", frame.head(5))
    assert kept[REJECT_COLUMN].isna().all() and kept["predicted_label"].notna().all()
