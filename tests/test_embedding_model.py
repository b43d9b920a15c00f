"""A separate sentence-embedding model for the neighbour prior (``--embedding-model``): recorded
and stored in the bundle, exported to its own ONNX graph with its own tokenizer, served from
Triton, and the same embeddings at refine time as in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_config
from synthetic import make_tiny_encoder

EMBEDDER_HIDDEN = 48


def _accuracy(path: Path, field: str) -> float:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return float(np.mean([r[field] == r["gold_label"] for r in rows]))


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another family, width and vocabulary order than the classifier encoder: a row's token
    ids differ between the two tokenizers."""
    return make_tiny_encoder(tmp_path_factory.mktemp("embedder"), hidden=EMBEDDER_HIDDEN,
                             family="mpnet", seed=3, vocab_seed=7)


@pytest.fixture(scope="module")
def separate(tmp_path_factory, tiny_encoder, embedder_dir, train_corpus) -> tuple[Path, Path]:
    """(bundle, its transductive refined output), trained with a separate embedding model."""
    from sidyp_prod import api

    out = tmp_path_factory.mktemp("separate")
    api.train(train_corpus, out / "bundle", tiny_config(held_out_folds=0),
              encoder=str(tiny_encoder), embedding_model=str(embedder_dir),
              refined_out=out / "refined.jsonl", device="cpu")
    return out / "bundle", out / "refined.jsonl"


def test_the_bundle_records_and_stores_both_models(separate, trained, embedder_dir):
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.model_io import EMBEDDER_FILE, EMBEDDING_TOKENIZER_FILE, REFERENCE_FILE

    bundle = load_bundle(separate[0])
    record = bundle.manifest["embedding_model"]
    assert record["name"] == str(embedder_dir) and record["family"] == "mpnet"
    assert record["shared_with_encoder"] is False
    assert record["checkpoint_sha256"]["model.safetensors"]
    assert bundle.manifest["encoder"]["family"] == "bert"
    assert {EMBEDDER_FILE, EMBEDDING_TOKENIZER_FILE} <= set(bundle.files)
    assert bundle.arrays(REFERENCE_FILE)["embeddings"].shape[1] == EMBEDDER_HIDDEN
    graphs = bundle.manifest["onnx"]
    assert graphs["embedder"]["outputs"] == {"embedding": ["batch", EMBEDDER_HIDDEN, "float32"]}
    assert list(graphs["encoder"]["outputs"]) == ["probs", "conditioning"]
    # The encoder graph carries no sentence-embedding top of its own.
    assert not any(k.startswith("sentence_top.") for k in bundle.arrays("encoder.safetensors"))
    default = load_bundle(trained[0]).manifest["embedding_model"]
    assert default["shared_with_encoder"] is True and "embedder" not in load_bundle(
        trained[0]).manifest["onnx"]


def test_refine_embeds_as_training_did_with_the_embedders_own_tokens(separate, train_corpus):
    """The reference set's embeddings (computed in training by PyTorch) are what the ONNX and
    torch back ends give for the same texts: the embedding tokenizer is the one used."""
    from sidyp_prod.backends import load_backend
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.model_io import REFERENCE_FILE, load_model
    from sidyp_prod.pipeline import sentence_embeddings

    bundle = load_bundle(separate[0])
    model = load_model(bundle)
    assert model.embedding_tokenizer is not None
    text = "goal match team"
    assert model.embedding_tokenizer.encode(text).ids != model.tokenizer.encode(text).ids
    texts = [json.loads(line)["text"] for line in train_corpus.read_text().splitlines()][:40]
    reference = bundle.arrays(REFERENCE_FILE)["embeddings"][:40]
    for name in ("onnx", "torch"):
        got = sentence_embeddings(model, load_backend(bundle, name), texts)
        np.testing.assert_allclose(got, reference, atol=1e-4)


@pytest.mark.parametrize("knn_embedding", ["trunk", "top"])
def test_refine_embeds_as_training_did_from_the_encoders_own_layers(knn_embedding, trained,
                                                                   tiny_encoder, train_corpus,
                                                                   tmp_path):
    """The default bundle runs the pretrained top layers, ``--knn-embedding trunk`` pools the
    frozen trunk: either way the back ends give the reference set's embeddings."""
    from sidyp_prod import api
    from sidyp_prod.backends import load_backend
    from sidyp_prod.bundle import load_bundle
    from sidyp_prod.model_io import REFERENCE_FILE, load_model
    from sidyp_prod.pipeline import sentence_embeddings

    if knn_embedding == "top":
        directory = trained[0]
    else:
        directory = tmp_path / "bundle"
        api.train(train_corpus, directory, tiny_config(held_out_folds=0, knn_embedding="trunk"),
                  encoder=str(tiny_encoder), device="cpu")
    bundle = load_bundle(directory)
    assert bundle.manifest["config"]["knn_embedding"] == knn_embedding
    has_top = any(k.startswith("sentence_top.") for k in bundle.arrays("encoder.safetensors"))
    assert has_top == (knn_embedding == "top")
    model = load_model(bundle)
    texts = [json.loads(line)["text"] for line in train_corpus.read_text().splitlines()][:40]
    reference = bundle.arrays(REFERENCE_FILE)["embeddings"][:40]
    for name in ("onnx", "torch"):  # the fp32 graph: the int8 one rounds its activations
        got = sentence_embeddings(model, load_backend(bundle, name, precision="fp32"), texts)
        np.testing.assert_allclose(got, reference, atol=1e-4)


def test_export_validates_the_embedder_and_refine_beats_the_given_labels(separate, fresh_corpus,
                                                                           tmp_path):
    from sidyp_prod import api
    from sidyp_prod.export.onnx import validate_onnx

    report = validate_onnx(separate[0])
    assert report.ok, report.to_text()
    assert "embedder.embedding" in report.max_abs_diff
    assert "encoder.embedding" not in report.max_abs_diff
    onnx_out, torch_out = tmp_path / "onnx.jsonl", tmp_path / "torch.jsonl"
    api.refine(fresh_corpus, separate[0], onnx_out)
    api.refine(fresh_corpus, separate[0], torch_out, backend="torch")
    onnx_rows = [json.loads(line) for line in onnx_out.read_text().splitlines()]
    torch_rows = [json.loads(line) for line in torch_out.read_text().splitlines()]
    assert [r["predicted_label"] for r in onnx_rows] == [r["predicted_label"] for r in torch_rows]
    assert _accuracy(onnx_out, "predicted_label") > _accuracy(onnx_out, "label")
    assert _accuracy(separate[1], "predicted_label") > _accuracy(separate[1], "label")


def test_refine_through_triton_equals_in_process(separate, fresh_corpus, tmp_path):
    pytest.importorskip("pytriton")
    pytest.importorskip("tritonclient.grpc")
    from servers import free_ports

    from sidyp_prod import api
    from sidyp_prod.export.triton import write_triton_repository
    from sidyp_prod.graphs import EMBEDDER_MODEL
    from sidyp_prod.triton_server import TritonServer

    repository = write_triton_repository(separate[0], tmp_path / "triton_models")
    assert (repository / EMBEDDER_MODEL / "1" / "model.onnx").is_file()
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    api.refine(fresh_corpus, separate[0], local, chunk_size=64)
    with TritonServer(repository, free_ports()) as server:
        api.refine(fresh_corpus, separate[0], remote, chunk_size=64,
                   triton_url=f"grpc://localhost:{server.ports.grpc}")
    assert remote.read_bytes() == local.read_bytes()


def test_the_cli_takes_an_embedding_model(tiny_encoder, embedder_dir, train_corpus, tmp_path):
    from sidyp_prod.cli.main import app

    runner = CliRunner()
    assert "--embedding-model" in runner.invoke(app, ["train", "--help"]).output
    missing = runner.invoke(app, ["train", str(train_corpus), "--out", str(tmp_path / "b"),
                                  "--encoder", str(tiny_encoder),
                                  "--embedding-model", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "nowhere" in missing.output
