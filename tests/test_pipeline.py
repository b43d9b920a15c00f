"""End to end: train on a synthetic corpus with planted noise, refine, and check the result."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sidyp_prod import api
from sidyp_prod.bundle import BundleError
from sidyp_prod.corpus import InputError

from conftest import tiny_config
from synthetic import make_rows, write_jsonl

NEW_FIELDS = ("given_label", "predicted_label", "label_score", "is_label_issue", "confidence",
              "candidates")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_gold(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "gold_label"} for r in rows]


def test_transductive_refinement_beats_the_given_labels(trained):
    _, refined, summary = trained
    report = api.evaluate(refined)
    assert report.n_rows == summary.rows == 800
    assert report.refined_accuracy >= report.given_accuracy + 0.08, report.to_text()
    assert report.fixed > 2 * report.broken


def test_the_papers_dynamic_prior_also_beats_the_given_labels(trained, tiny_encoder,
                                                             train_corpus, tmp_path):
    import numpy as np

    _, _, static = trained
    dynamic = api.train(train_corpus, tmp_path / "bundle", tiny_config(dynamic_prior=True),
                        encoder=str(tiny_encoder), refined_out=tmp_path / "refined.jsonl")
    report = api.evaluate(tmp_path / "refined.jsonl")
    assert report.refined_accuracy >= report.given_accuracy + 0.08, report.to_text()
    # The switch acts: the Stage II targets (candidate weights) moved away from the kNN prior's.
    assert not np.allclose(dynamic.refinement.candidates, static.refinement.candidates)


def test_the_bundle_carries_the_label_shares_refine_divides_by(trained, train_corpus):
    import numpy as np

    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.model_io import load_model

    bundle, _, summary = trained
    labels = [r["label"] for r in read(train_corpus) if r["label"] is not None]
    model = load_model(load_bundle(bundle))
    expected = [labels.count(name) / len(labels) for name in model.labels]
    np.testing.assert_allclose(summary.label_shares, expected)
    np.testing.assert_allclose(model.label_shares, expected)


def test_the_held_out_expert_has_not_seen_the_training_rows_labels(trained, train_corpus):
    import numpy as np

    _, _, summary = trained
    refinement = summary.refinement
    rows = read(train_corpus)
    labels = sorted({r["label"] for r in rows if r["label"] is not None})
    given = np.array([labels.index(r["label"]) if r["label"] is not None else -1 for r in rows])
    labelled = np.flatnonzero(given >= 0)
    in_sample = refinement.classifier[labelled, given[labelled]].mean()
    held_out = refinement.held_out[labelled, given[labelled]].mean()
    # The ensemble fitted these very labels (noise included); out-of-fold classifiers did not.
    assert held_out < in_sample - 0.01, (held_out, in_sample)
    np.testing.assert_allclose(refinement.held_out.sum(axis=1), 1.0, rtol=1e-5)
    # The calibration's target sits between the mixture's rho and the held-out classifiers'.
    held_out_noise = 1.0 - held_out
    low, high = sorted((summary.noise_ratio, held_out_noise))
    assert low <= summary.calibration_noise_ratio <= high
    assert summary.calibration_noise_ratio == pytest.approx((low + high) / 2, abs=1e-6)


def test_inductive_refinement_beats_the_given_labels(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    summary = api.refine(fresh_corpus, bundle, tmp_path / "out.jsonl")
    assert summary.refined == 400 and summary.rejected == 0
    report = api.evaluate(tmp_path / "out.jsonl")
    assert report.refined_accuracy >= report.given_accuracy + 0.08, report.to_text()


def test_output_rows_keep_input_fields_and_order(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    api.refine(fresh_corpus, bundle, tmp_path / "out.jsonl", chunk_size=37)
    inputs, outputs = read(fresh_corpus), read(tmp_path / "out.jsonl")
    assert [o["id"] for o in outputs] == [i["id"] for i in inputs]
    for i, o in zip(inputs, outputs, strict=True):
        assert {k: o[k] for k in i} == i
        assert all(f in o for f in NEW_FIELDS)
        assert o["given_label"] == i["label"]
        assert 0.0 <= o["confidence"] <= 1.0
        assert abs(sum(o["candidates"].values()) - 1.0) < 1e-3
        if i["label"] is None:  # refused by the LLM: unlabeled, nothing to score
            assert o["label_score"] is None and o["is_label_issue"] is False
        else:
            assert o["is_label_issue"] == (o["predicted_label"] != i["label"])


def test_chunking_does_not_change_the_output(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    api.refine(fresh_corpus, bundle, tmp_path / "a.jsonl", chunk_size=1000)
    api.refine(fresh_corpus, bundle, tmp_path / "b.jsonl", chunk_size=13)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_batches_side_by_side_do_not_change_the_output(trained, fresh_corpus, tmp_path,
                                                      monkeypatch):
    import numpy as np

    from sidyp_prod.backends import onnx_backend
    from sidyp_prod.pipeline import _spread

    bundle, _, _ = trained
    outputs = []
    for cores in (1, 3):  # one batch on every core; three batches side by side, one thread each
        monkeypatch.setattr(onnx_backend, "available_cores", lambda cores=cores: cores)
        out = tmp_path / f"cores-{cores}.jsonl"
        api.refine(fresh_corpus, bundle, out, chunk_size=50)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    # A small chunk's batches are split so that every worker gets rows: each row once.
    batches = _spread([np.arange(5), np.arange(5, 8)], 4)
    assert len(batches) == 4
    assert np.concatenate(batches).tolist() == list(range(8))
    assert len(_spread([np.arange(1)], 4)) == 1


def test_batches_side_by_side_search_neighbours_on_one_openmp_thread(trained, monkeypatch):
    import faiss
    import numpy as np

    from sidyp_prod.backends import load_backend, onnx_backend
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.pipeline import _map_batches

    bundle, _, _ = trained
    monkeypatch.setattr(onnx_backend, "available_cores", lambda: 2)
    backend = load_backend(load_bundle(bundle), "onnx", device="cpu")
    assert backend.parallel_batches == 2
    before = faiss.omp_get_max_threads()
    # Two OpenMP teams on two cores wait on each other's descheduled threads.
    threads = _map_batches(backend, lambda _: faiss.omp_get_max_threads(),
                           [np.arange(2), np.arange(2, 4)])
    assert threads == [1, 1]
    assert faiss.omp_get_max_threads() == before  # the caller's own setting is left alone
    # A lone batch runs in the caller, searching on one thread too (an idle team thread would
    # spin on the core the other batches need), and the caller's setting comes back.
    faiss.omp_set_num_threads(2)
    try:
        assert _map_batches(backend, lambda _: faiss.omp_get_max_threads(),
                            [np.arange(2)]) == [1]
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)


def test_same_seed_same_bundle_and_output(trained, tiny_encoder, train_corpus, tmp_path):
    _, refined, _ = trained
    api.train(train_corpus, tmp_path / "again", tiny_config(), encoder=str(tiny_encoder),
              refined_out=tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_bytes() == refined.read_bytes()


def test_gold_labels_never_influence_refinement(trained, tiny_encoder, train_corpus, tmp_path):
    _, refined, _ = trained
    rows = read(train_corpus)
    labels = sorted({r["gold_label"] for r in rows})
    scrambled = [{**r, "gold_label": random.Random(i).choice(labels)} for i, r in enumerate(rows)]
    removed = strip_gold(rows)
    for name, variant in (("scrambled", scrambled), ("removed", removed)):
        corpus = write_jsonl(tmp_path / f"{name}.jsonl", variant)
        api.train(corpus, tmp_path / f"{name}-bundle", tiny_config(), encoder=str(tiny_encoder),
                  refined_out=tmp_path / f"{name}-refined.jsonl")
        assert strip_gold(read(tmp_path / f"{name}-refined.jsonl")) == strip_gold(read(refined))


def test_bad_rows_go_to_rejects_and_nothing_is_lost(trained, tmp_path):
    bundle, _, _ = trained
    good = [json.dumps(r) for r in make_rows(60, seed=3)]
    bad = [
        "{not json",
        "[1, 2]",
        json.dumps({"id": "x", "label": "music"}),
        json.dumps({"text": "   ", "label": "music"}),
        json.dumps({"text": "song band", "label": "astronomy"}),
        json.dumps({"text": 12, "label": "music"}),
    ]
    lines = good[:20] + bad[:3] + good[20:40] + bad[3:] + good[40:]
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "caf\xe9"}\n')
    summary = api.refine(corpus, bundle, tmp_path / "out.jsonl")
    rejects = read(tmp_path / "out.rejects.jsonl")
    outputs = read(tmp_path / "out.jsonl")
    assert summary.read == len(lines) + 1 == len(outputs) + len(rejects)
    assert len(outputs) == 60 and len(rejects) == 7
    assert [r["line"] for r in rejects] == [21, 22, 23, 44, 45, 46, 67]
    assert {r["field"] for r in rejects} >= {"text", "label", None}


def test_strict_mode_fails_on_the_first_bad_row(trained, tmp_path):
    bundle, _, _ = trained
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(json.dumps({"text": "song", "label": "music"}) + "\n" + '{"label": 1}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2.*text"):
        api.refine(corpus, bundle, tmp_path / "out.jsonl", strict=True)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_tampered_bundle_is_refused(trained, fresh_corpus, tmp_path):
    import shutil

    bundle, _, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    weights = copy / "denoiser.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"denoiser\.safetensors"):
        api.refine(fresh_corpus, copy, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_bundle_records_every_hyper_parameter(trained):
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.config import SiDyPConfig

    bundle, _, summary = trained
    manifest = load_bundle(bundle).manifest
    assert SiDyPConfig.from_dict(manifest["config"]) == tiny_config()
    assert manifest["labels"] == ["cooking", "music", "sports", "travel"]
    assert set(manifest["files"]) >= {"encoder.safetensors", "denoiser.safetensors",
                                      "reference.safetensors", "tokenizer.json"}
    assert manifest["training"]["noise_ratio"] == pytest.approx(summary.noise_ratio)


def test_a_noise_ratio_the_user_gives_is_what_the_calibration_fits(tiny_encoder, tmp_path):
    rows = make_rows(120, seed=5)
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    config = tiny_config(classifier_epochs=2, diffusion_epochs=3, noise_ratio=0.3)
    summary = api.train(corpus, tmp_path / "b", config, encoder=str(tiny_encoder),
                        refined_out=tmp_path / "r.jsonl", export=False)
    # Not averaged with the held-out classifiers' estimate: the user knows better.
    assert summary.noise_ratio == summary.calibration_noise_ratio == 0.3
    scores = [r["label_score"] for r in read(tmp_path / "r.jsonl") if r["label_score"] is not None]
    assert sum(scores) / len(scores) == pytest.approx(0.7, abs=0.03)


def test_explicit_label_set_keeps_rare_classes(tiny_encoder, tmp_path):
    rows = make_rows(120, seed=5)
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    labels = ["cooking", "music", "sports", "travel", "weather"]
    api.train(corpus, tmp_path / "b", tiny_config(classifier_epochs=2, diffusion_epochs=3),
              encoder=str(tiny_encoder), labels=labels)
    from sidyp_prod.bundle import load_bundle

    assert load_bundle(tmp_path / "b").manifest["labels"] == labels


def test_refine_reports_the_knn_candidates_when_training_kept_them(trained, fresh_corpus):
    """Static prior (the default): training never refined the candidate weights, so neither
    does refine; a new row's candidates are its neighbours' vote, as a training row's are."""
    import numpy as np

    from sidyp_prod.backends import load_backend
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.corpus import Row, iter_corpus
    from sidyp_prod.encoder import tokenize
    from sidyp_prod.model_io import load_model
    from sidyp_prod.pipeline import refine_rows
    from sidyp_prod.refinement import RefineSettings, prior_from_neighbors

    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    model = load_model(loaded)
    assert not model.config.dynamic_prior
    backend = load_backend(loaded, "onnx")
    rows = [r for r in iter_corpus(fresh_corpus) if isinstance(r, Row)][:40]
    refined = refine_rows(rows, model, backend)
    ids, mask = tokenize(model.tokenizer, [r.text for r in rows])
    settings = RefineSettings.from_config(model.config, len(model.labels))
    prior = prior_from_neighbors(backend.encode(ids, mask).embedding, model.indexes, settings)
    expected = prior.weights.mean(axis=0)
    for row, fields, w in zip(rows, refined, expected, strict=True):
        got = np.zeros(len(model.labels))
        for label, value in fields["candidates"].items():
            got[model.labels.index(label)] = value
        np.testing.assert_allclose(got, w, atol=1e-5, err_msg=row.text)


def test_a_new_rows_third_expert_is_its_neighbours_vote(trained, fresh_corpus):
    """The product's third expert on a new row: the kNN vote over each branch's clean-marked
    reference rows, averaged over branches, which is what refine's labels are made from."""
    import numpy as np

    from sidyp_prod.backends import load_backend
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.corpus import Row, iter_corpus
    from sidyp_prod.diffusion import text_key
    from sidyp_prod.encoder import tokenize
    from sidyp_prod.model_io import load_model
    from sidyp_prod.prior import knn_vote
    from sidyp_prod.refinement import (
        RefineSettings,
        for_new_rows,
        prior_from_neighbors,
        refine_batch,
    )

    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    model = load_model(loaded)
    assert model.config.held_out_folds
    backend = load_backend(loaded, "onnx")
    rows = [r for r in iter_corpus(fresh_corpus) if isinstance(r, Row)][:24]
    ids, mask = tokenize(model.tokenizer, [r.text for r in rows])
    encoded = backend.encode(ids, mask)
    settings = RefineSettings.from_config(model.config, len(model.labels))
    prior = prior_from_neighbors(encoded.embedding, model.indexes, settings)
    by_hand = np.mean([knn_vote(*index.search(encoded.embedding, settings.knn_k),
                                len(model.labels)) for index in model.indexes], axis=0)
    np.testing.assert_allclose(prior.vote, by_hand, atol=1e-6)
    given = np.array([model.labels.index(r.label) if r.label else -1 for r in rows])
    refined = refine_batch(backend, encoded, prior.weights, prior.kind, given,
                           [text_key(r.text) for r in rows], settings, update_prior=False,
                           conditional=False, neighbor_vote=prior.vote)
    new_rows = for_new_rows(refined, model.config.held_out_folds)
    np.testing.assert_array_equal(new_rows.held_out, prior.vote)
    assert not np.allclose(new_rows.distribution("product"),
                           for_new_rows(refined, 0).distribution("product"))


def test_a_new_rows_change_is_the_ensembles_prediction(trained, fresh_corpus, tmp_path):
    """refine changes a new row's label only to the class the classifier ensemble predicts
    (``new_row_agreement``), whatever the product proposes."""
    import numpy as np

    from sidyp_prod.backends import load_backend
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.encoder import tokenize
    from sidyp_prod.evaluate import read_records
    from sidyp_prod.model_io import load_model

    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    model = load_model(loaded)
    assert model.config.new_row_agreement
    api.refine(fresh_corpus, bundle, tmp_path / "out.jsonl", precision="fp32")
    out = list(read_records(tmp_path / "out.jsonl"))
    changed = [r for r in out if r["is_label_issue"]]
    assert changed
    ids, mask = tokenize(model.tokenizer, [r["text"] for r in changed])
    probs = load_backend(loaded, "onnx", precision="fp32").encode(ids, mask).probs.mean(axis=0)
    predicted = [model.labels.index(r["predicted_label"]) for r in changed]
    np.testing.assert_array_equal(probs.argmax(1), predicted)


def test_a_new_rows_vote_is_tempered_as_the_training_rows_votes_fit_their_labels(
        trained, fresh_corpus, tmp_path):
    """The bundle records the temperature that fits the training rows' own neighbour votes
    (each row left out of its own) to their labels; refine tempers a new row's vote by it only
    where ``temper_vote`` is on."""
    import shutil

    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.calibration import likelihood_temperature
    from sidyp_prod.config import SiDyPConfig
    from sidyp_prod.model_io import REFERENCE_FILE, load_model
    from sidyp_prod.refinement import leave_self_out_vote

    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    model = load_model(loaded)
    reference = loaded.arrays(REFERENCE_FILE)
    vote = leave_self_out_vote(reference["embeddings"], reference["labels"], reference["clean"],
                               model.config.knn_k, len(model.labels))
    fitted = model.calibration.vote_temperature
    assert fitted == pytest.approx(likelihood_temperature(vote, reference["labels"]), rel=1e-6)
    assert fitted != pytest.approx(1.0, abs=0.05)
    assert not model.config.temper_vote
    assert model.calibration.new_row_vote_temperature(model.config) == 1.0
    on = SiDyPConfig.from_dict({**model.config.to_dict(), "temper_vote": True})
    assert model.calibration.new_row_vote_temperature(on) == fitted

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["temper_vote"] = True
    (copy / "manifest.json").write_text(json.dumps(manifest))
    api.refine(fresh_corpus, bundle, tmp_path / "off.jsonl", precision="fp32")
    api.refine(fresh_corpus, copy, tmp_path / "on.jsonl", precision="fp32")
    off, on_rows = read(tmp_path / "off.jsonl"), read(tmp_path / "on.jsonl")
    assert [r["id"] for r in off] == [r["id"] for r in on_rows]
    assert [r["confidence"] for r in off] != [r["confidence"] for r in on_rows]


def test_skipping_the_own_label_chains_leaves_the_marginal_unchanged(trained, fresh_corpus):
    """refine skips the n_s chains conditioned on the row's own label when nothing uses them;
    the other chains keep their noise, so p(y | x) is what it was (to float rounding: the
    denoiser's batch is smaller)."""
    import numpy as np

    from sidyp_prod.backends import load_backend
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.corpus import Row, iter_corpus
    from sidyp_prod.diffusion import text_key
    from sidyp_prod.encoder import tokenize
    from sidyp_prod.model_io import load_model
    from sidyp_prod.refinement import RefineSettings, prior_from_neighbors, refine_batch

    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    model = load_model(loaded)
    backend = load_backend(loaded, "onnx")
    rows = [r for r in iter_corpus(fresh_corpus) if isinstance(r, Row)][:24]
    ids, mask = tokenize(model.tokenizer, [r.text for r in rows])
    encoded = backend.encode(ids, mask)
    settings = RefineSettings.from_config(model.config, len(model.labels))
    prior = prior_from_neighbors(encoded.embedding, model.indexes, settings)
    weights, kind = prior.weights, prior.kind
    given = np.array([model.labels.index(r.label) if r.label else -1 for r in rows])
    keys = [text_key(r.text) for r in rows]
    full = refine_batch(backend, encoded, weights, kind, given, keys, settings,
                        update_prior=False, conditional=True)
    lean = refine_batch(backend, encoded, weights, kind, given, keys, settings,
                        update_prior=False, conditional=False)
    assert lean.conditional is None and full.conditional is not None
    np.testing.assert_allclose(lean.marginal, full.marginal, atol=1e-6)
    np.testing.assert_allclose(lean.distribution("product"), full.distribution("product"),
                               atol=1e-6)
    with pytest.raises(ValueError, match="not computed"):
        lean.distribution("given")
