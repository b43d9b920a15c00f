"""End to end on planted noise of known size: the noise estimate's interval, and a low-noise
corpus where the product must change few labels and break fewer than it fixes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conftest import tiny_config
from synthetic import make_rows, write_jsonl


def _scores(path: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    labelled = [r for r in rows if r["label"] is not None]
    changed = [r for r in labelled if r["predicted_label"] != r["label"]]
    return {
        "llm": float(np.mean([r["label"] == r["gold_label"] for r in labelled])),
        "refined": float(np.mean([r["predicted_label"] == r["gold_label"] for r in labelled])),
        "changed": len(changed),
        "fixed": sum(r["predicted_label"] == r["gold_label"] for r in changed),
        "broken": sum(r["label"] == r["gold_label"] for r in changed),
    }


def test_noise_interval_is_reported_and_brackets_the_estimate(trained, train_corpus):
    _, _, summary = trained
    low, high = summary.noise_ratio_interval
    estimate = summary.calibration_noise_ratio or summary.noise_ratio
    assert 0.0 <= low <= estimate <= high <= 1.0
    assert "90% interval" in summary.to_text()
    manifest = json.loads((trained[0] / "manifest.json").read_text())
    assert manifest["training"]["noise_ratio_interval"] == [low, high]


def test_low_noise_corpus_changes_few_labels_and_breaks_fewer_than_it_fixes(tiny_encoder,
                                                                            tmp_path):
    from sidyp_prod import api

    corpus = write_jsonl(tmp_path / "low.jsonl", make_rows(600, noise=0.08, seed=3))
    refined = tmp_path / "refined.jsonl"
    api.train(corpus, tmp_path / "bundle", tiny_config(), encoder=str(tiny_encoder),
              refined_out=refined, export=False)
    scores = _scores(refined)
    assert scores["refined"] >= scores["llm"], scores
    assert scores["broken"] < max(1, scores["fixed"]), scores
    assert scores["changed"] <= 0.2 * 600, scores
