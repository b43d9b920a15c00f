"""The training sample: per LLM label, every class kept, the same rows for the same seed."""

from __future__ import annotations

import json

import numpy as np

from sidyp_prod.sampling import MIN_PER_CLASS, stratified_sample

from conftest import tiny_config
from synthetic import make_rows, write_jsonl


def test_sample_keeps_every_class_and_its_share():
    rng = np.random.default_rng(0)
    codes = np.concatenate([np.zeros(9000), np.ones(900), np.full(5, 2), np.full(95, -1)])
    codes = rng.permutation(codes).astype(np.int64)
    chosen = stratified_sample(codes, 1000, seed=3)
    assert len(chosen) == 1000 and len(set(chosen.tolist())) == 1000
    assert np.all(np.diff(chosen) > 0)
    counts = {int(v): int((codes[chosen] == v).sum()) for v in (-1, 0, 1, 2)}
    assert counts[2] == 5  # a class smaller than the minimum keeps every row
    assert counts[1] >= MIN_PER_CLASS and abs(counts[1] - 90) <= 2
    assert abs(counts[0] - 900) <= 25
    np.testing.assert_array_equal(chosen, stratified_sample(codes, 1000, seed=3))
    assert not np.array_equal(chosen, stratified_sample(codes, 1000, seed=4))


def test_small_corpus_is_taken_whole():
    np.testing.assert_array_equal(stratified_sample(np.array([0, 1, 1]), 10, 0), [0, 1, 2])


def test_train_on_a_sample_refines_the_rest_as_new_rows(tiny_encoder, tmp_path):
    from sidyp_prod import api

    rows = make_rows(300, seed=7)
    corpus = write_jsonl(tmp_path / "big.jsonl", rows)
    config = tiny_config(max_train_rows=120, held_out_folds=0, classifier_epochs=3,
                         diffusion_epochs=4)
    refined = tmp_path / "refined.jsonl"
    summary = api.train(corpus, tmp_path / "bundle", config, encoder=str(tiny_encoder),
                        refined_out=refined, export=False)
    assert summary.rows == 120 and summary.refined_as_new == 180
    assert "120 trained on, 180 refined as new" in summary.to_text()
    out = [json.loads(line) for line in refined.read_text().splitlines()]
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # every row, input order
    assert all("predicted_label" in r for r in out)


def test_rows_with_a_trusted_label_always_join_the_training_sample(tmp_path, monkeypatch):
    import sys

    from sidyp_prod.checks import CorpusTally
    from sidyp_prod.corpus import FieldNames
    from sidyp_prod.training_rows import read_training_rows

    rows = make_rows(600, seed=7)
    for row in rows[::5]:
        row["human_label"] = row["gold_label"]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    with corpus.open("a") as handle:  # rejected lines shift the usable rows' places
        handle.write("not json\n")
    corpus.write_text("\n" + corpus.read_text() + json.dumps(rows[0]) + "\n")
    trusted_ids = {r["id"] for r in rows[::5]}
    usable = [line_no for line_no, line in enumerate(corpus.read_text().splitlines(), 1)
              if line.startswith("{")]

    def sample(path: object, trusted_field: str | None) -> list:
        picked = read_training_rows(path, FieldNames(), None, False, 200, 0,
                                    CorpusTally("label"), None, trusted_field)
        assert picked.usable == len(usable)
        # Each row's place among the usable rows: the row of the whole corpus's refined file.
        assert [usable[p] for p in picked.positions] == [r.line_no for r in picked.rows]
        return picked.rows

    with corpus.open() as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        from_stdin = sample("-", "human_label")  # read in memory
    for picked in (sample(corpus, "human_label"), from_stdin):  # two passes over a file
        ids = {r.id for r in picked}
        assert trusted_ids <= ids
        assert 200 < len(picked) <= 200 + len(trusted_ids)
        assert [r.line_no for r in picked] == sorted(r.line_no for r in picked)
    without = sample(corpus, None)
    assert len(without) == 200 and not trusted_ids <= {r.id for r in without}
