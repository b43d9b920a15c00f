"""ONNX export: parity with PyTorch, the manifest record, and the ONNX Runtime back end."""

from __future__ import annotations

import json

import onnx
import pytest
from typer.testing import CliRunner

from sidyp_prod import api
from sidyp_prod.bundle import load_bundle
from sidyp_prod.cli.main import app
from sidyp_prod.export.onnx import validate_onnx
from sidyp_prod.graphs import DENOISER_INPUTS, DENOISER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS


def test_export_is_recorded_with_hashes_names_and_shapes(trained):
    bundle, _, _ = trained
    manifest = load_bundle(bundle).manifest  # verifies every hash, the ONNX files included
    graphs = manifest["onnx"]
    for part, inputs, outputs in (("encoder", ENCODER_INPUTS, ENCODER_OUTPUTS),
                                  ("denoiser", DENOISER_INPUTS, DENOISER_OUTPUTS)):
        assert graphs[part]["file"] in manifest["files"]
        if part == "encoder":
            assert graphs[part]["int8_file"] in manifest["files"]
        model = onnx.load(bundle / graphs[part]["file"])
        onnx.checker.check_model(model)
        assert [i.name for i in model.graph.input] == list(inputs)
        assert [o.name for o in model.graph.output] == list(outputs)
        assert list(graphs[part]["inputs"]) == list(inputs)
        assert list(graphs[part]["outputs"]) == list(outputs)


def test_onnx_matches_torch_within_tolerance(trained):
    bundle, _, _ = trained
    report = validate_onnx(bundle, texts=["song band melody", "oven", "the flight to the island"])
    assert report.ok, report.to_text()
    assert set(report.max_abs_diff) == {
        "encoder.probs", "encoder.conditioning", "encoder.embedding", "denoiser.logits"
    }
    assert report.labels_compared == 3 and report.labels_differing == 0
    assert not report.signature_problems


def test_denoiser_graph_avoids_the_scalar_softplus_kernel(trained):
    # ONNX Runtime's Softplus kernel is not vectorised: it was 2/3 of the reverse process on CPU.
    bundle, _, _ = trained
    graph = onnx.load(bundle / load_bundle(bundle).manifest["onnx"]["denoiser"]["file"]).graph
    ops = {node.op_type for node in graph.node}
    assert "Softplus" not in ops and {"Exp", "Log"} <= ops


def test_signature_check_catches_a_graph_that_disagrees_with_its_record(trained):
    import onnxruntime as ort

    from sidyp_prod.export.onnx import signature_problems

    bundle, _, _ = trained
    graphs = load_bundle(bundle).manifest["onnx"]
    session = ort.InferenceSession(str(bundle / graphs["denoiser"]["file"]),
                                   providers=["CPUExecutionProvider"])
    assert signature_problems(session, graphs["denoiser"], "denoiser") == []
    wrong_width = json.loads(json.dumps(graphs["denoiser"]))
    wrong_width["inputs"]["conditioning"][2] += 1
    assert "denoiser.conditioning" in signature_problems(session, wrong_width, "denoiser")[0]
    renamed = json.loads(json.dumps(graphs["encoder"]))
    renamed["outputs"] = {"logits": renamed["outputs"].pop("probs"), **renamed["outputs"]}
    assert signature_problems(session, renamed, "encoder")


def test_graphs_of_an_older_layout_are_refused(trained, tmp_path):
    import shutil

    from sidyp_prod.backends import load_backend
    from sidyp_prod.bundle import BundleError

    bundle, _, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["onnx"]["graph_version"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="re-run `sidyp-prod export"):
        load_backend(load_bundle(copy, verify=False), "onnx")


def test_onnx_and_torch_backends_give_the_same_refined_labels(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    api.refine(fresh_corpus, bundle, tmp_path / "onnx.jsonl", backend="onnx", precision="fp32")
    api.refine(fresh_corpus, bundle, tmp_path / "torch.jsonl", backend="torch")
    api.refine(fresh_corpus, bundle, tmp_path / "int8.jsonl", backend="onnx", precision="int8")

    def labels(path):
        return [json.loads(line)["predicted_label"] for line in path.read_text().splitlines()]

    reference = labels(tmp_path / "torch.jsonl")
    assert labels(tmp_path / "onnx.jsonl") == reference
    # The quantized encoder trades a little agreement for speed; it must stay close.
    int8 = labels(tmp_path / "int8.jsonl")
    assert sum(a == b for a, b in zip(int8, reference, strict=True)) >= 0.9 * len(reference)


def test_export_command_reports_differences(trained, tmp_path):
    import shutil

    bundle, _, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    result = CliRunner().invoke(app, ["export", str(copy)])
    assert result.exit_code == 0, result.output
    assert "encoder.embedding" in result.output and "denoiser.logits" in result.output
    load_bundle(copy)


def test_export_calibrates_the_int8_encoder_on_a_corpus_given(trained, train_corpus, tmp_path):
    import shutil

    bundle, _, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["onnx"]["encoder"]["int8_scheme"] = "per-row-uint8"  # an older export's graph
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["export", str(copy), "--no-validate"])
    assert result.exit_code == 0, result.output
    assert load_bundle(copy).manifest["onnx"]["encoder"]["int8_rounding"] == "nearest"
    # The training corpus gives the graph train wrote: the same sample, the same rounding.
    result = CliRunner().invoke(app, ["export", str(copy), "--no-validate",
                                      "--calibration", str(train_corpus)])
    assert result.exit_code == 0, result.output
    encoder = load_bundle(copy).manifest["onnx"]["encoder"]
    assert encoder["int8_rounding"] == "gptq"
    assert ((copy / encoder["int8_file"]).read_bytes()
            == (bundle / encoder["int8_file"]).read_bytes())
    result = CliRunner().invoke(app, ["export", str(copy), "--no-validate", "--calibration",
                                      str(train_corpus), "--text-field", "body"])
    assert result.exit_code == 2
    assert str(train_corpus) in result.output and "'body'" in result.output


def test_refine_without_onnx_models_says_how_to_get_them(tiny_encoder, tmp_path):
    from conftest import tiny_config
    from synthetic import make_rows, write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(60))
    api.train(corpus, tmp_path / "b", tiny_config(classifier_epochs=2, diffusion_epochs=2),
              encoder=str(tiny_encoder), export=False)
    result = CliRunner().invoke(app, ["refine", str(corpus), "--model", str(tmp_path / "b"),
                                      "--out", str(tmp_path / "o.jsonl"), "--quiet"])
    assert result.exit_code == 2
    assert "sidyp-prod export" in result.output


def test_export_to_another_directory_leaves_the_bundle_alone(trained, tmp_path):
    bundle, _, _ = trained
    before = (bundle / "manifest.json").read_bytes()
    result = CliRunner().invoke(app, ["export", str(bundle), "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    assert (bundle / "manifest.json").read_bytes() == before
    record = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    for name in ("encoder.onnx", "denoiser.onnx", "encoder.int8.onnx"):
        assert (tmp_path / "onnx" / name).is_file() and name in record["sha256"]
    assert "denoiser.logits" in result.output
