"""Every supported transformers family: trains, exports, passes the ONNX parity check and
refines planted noise better than the given labels. And a bundle written by sidyp-prod 0.1's
hand-written BERT still loads and gives the same labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from synthetic import make_rows, make_tiny_encoder, write_jsonl


def _accuracy(path: Path, field: str) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return float(np.mean([r[field] == r["gold_label"] for r in rows]))


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "mpnet", "deberta-v2"])
def test_family_trains_exports_and_beats_its_given_labels(family, tmp_path, train_corpus,
                                                          fresh_corpus):
    from sidyp_prod import api
    from sidyp_prod.export.onnx import validate_onnx

    encoder = make_tiny_encoder(tmp_path / "encoder", hidden=64, family=family,
                                sentence_transformers=family == "mpnet")
    config = tiny_config(held_out_folds=0, classifier_epochs=6, diffusion_epochs=15)
    bundle = tmp_path / "bundle"
    api.train(train_corpus, bundle, config, encoder=str(encoder), device="cpu")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["encoder"]["family"] == family
    assert manifest["encoder"]["checkpoint_sha256"]["model.safetensors"]
    if family == "mpnet":
        assert manifest["encoder"]["pooling"]["mode"] == "cls"
    report = validate_onnx(bundle)
    assert report.ok, report
    refined = tmp_path / "refined.jsonl"
    api.refine(fresh_corpus, bundle, refined)
    assert _accuracy(refined, "predicted_label") > _accuracy(refined, "label")


def _as_legacy_bundle(bundle: Path, out: Path) -> Path:
    """Rewrite a BERT bundle as sidyp-prod 0.1 wrote it: the hand-written BERT's weight names
    and a ``bert`` shape record instead of the transformers config."""
    from sidyp_prod.bundle import load_bundle, save_bundle
    from sidyp_prod.model_io import ENCODER_FILE
    from sidyp_prod.torch_bundle import _LEGACY_LAYER_NAMES

    loaded = load_bundle(bundle)
    manifest = {k: v for k, v in loaded.manifest.items() if k not in ("files", "format_version")}
    record = manifest["encoder"]
    hf = record["config"]
    shape = {k: hf[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                "num_attention_heads", "intermediate_size",
                                "max_position_embeddings", "type_vocab_size",
                                "layer_norm_eps", "hidden_act")}
    manifest["encoder"] = {"name": record["name"], "bert": shape, "pooling": "mean"}
    ours = {v: k for k, v in _LEGACY_LAYER_NAMES.items()}
    legacy = {}
    for key, value in loaded.arrays(ENCODER_FILE).items():
        for prefix, old in (("trunk.lower.encoder.layer.", "trunk.stack.layers."),
                            ("sentence_top.encoder.layer.", "sentence_top.layers.")):
            if key.startswith(prefix):
                i, rest = key[len(prefix):].split(".", 1)
                name, p = rest.rsplit(".", 1)
                key = f"{old}{i}.{ours[name]}.{p}"
        if key.startswith("snapshots."):
            _, m, s, _, _, i, rest = key.split(".", 6)
            name, p = rest.rsplit(".", 1)
            key = f"snapshots.{m}.{s}.layers.{i}.{ours[name]}.{p}"
        legacy[key] = value
    arrays = {name: loaded.arrays(name) for name in loaded.files if name.endswith(".safetensors")}
    arrays[ENCODER_FILE] = legacy
    files = {name: loaded.path(name) for name in loaded.files
             if not name.endswith(".safetensors")}
    return save_bundle(out, manifest, arrays, files)


def test_a_bundle_of_the_hand_written_bert_gives_the_same_labels(trained, fresh_corpus, tmp_path):
    from sidyp_prod import api

    bundle, _, _ = trained
    legacy = _as_legacy_bundle(bundle, tmp_path / "legacy")
    assert "bert" in json.loads((legacy / "manifest.json").read_text())["encoder"]
    api.refine(fresh_corpus, bundle, tmp_path / "new.jsonl", backend="torch")
    api.refine(fresh_corpus, legacy, tmp_path / "old.jsonl", backend="torch")
    assert (tmp_path / "new.jsonl").read_bytes() == (tmp_path / "old.jsonl").read_bytes()


def test_cuda_requested_without_cuda_is_a_clear_error(tiny_encoder, tmp_path):
    import torch
    from typer.testing import CliRunner

    from sidyp_prod.cli.main import app

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(40, seed=2))
    result = CliRunner().invoke(app, ["train", str(corpus), "--out", str(tmp_path / "b"),
                                      "--encoder", str(tiny_encoder), "--device", "cuda"])
    assert result.exit_code == 2
    assert "no CUDA device" in result.output
    assert not (tmp_path / "b").exists()


def test_device_auto_falls_back_to_the_cpu():
    import torch

    from sidyp_prod.device import Precision, resolve_device

    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Precision(torch.device("cpu")).name == "fp32"
    with pytest.raises(ValueError, match="choose"):
        resolve_device("tpu")
