"""The per-row int8 encoder (export/quantize.py): batch independence, closeness to fp32, the
default precision, and a re-export that gives the same graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sidyp_prod import api
from sidyp_prod.backends import load_backend
from sidyp_prod.bundle import BundleError, load_bundle
from sidyp_prod.encoder import tokenize
from sidyp_prod.export.onnx import export_onnx, int8_encoder
from sidyp_prod.export.quantize import calibrate, fp32_channels, gptq_weights, quantize_per_row
from sidyp_prod.graphs import INT8_SCHEME
from sidyp_prod.model_io import load_bundle_tokenizer

TEXTS = ["song band melody", "the flight to the island was late again", "oven",
         "a recipe with garlic, onions and a long list of other things to buy", "goal"]


def _labels(path: Path) -> list[str]:
    return [json.loads(line)["predicted_label"] for line in path.read_text().splitlines()]


def _session(graph: bytes | str) -> ort.InferenceSession:
    return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])


def test_a_rows_int8_outputs_do_not_depend_on_the_rows_beside_it(trained):
    bundle, _, _ = trained
    graphs = load_bundle(bundle).manifest["onnx"]["encoder"]
    assert graphs["int8_scheme"] == INT8_SCHEME
    session = _session(str(bundle / graphs["int8_file"]))
    ids, mask = tokenize(load_bundle_tokenizer(load_bundle(bundle)), TEXTS)
    together = session.run(None, {"input_ids": ids, "attention_mask": mask})
    for i in range(len(TEXTS)):
        alone = session.run(None, {"input_ids": ids[i:i + 1], "attention_mask": mask[i:i + 1]})
        for a, b in zip(alone, together, strict=True):
            # Per-tensor scales would move a row by ~1e-2 here; per-row scales leave only the
            # fp32 kernels' last-bit differences between batch sizes.
            np.testing.assert_allclose(a[0], b[i], rtol=0, atol=1e-5)


def test_int8_graph_is_close_to_fp32_and_keeps_the_named_channels_in_fp32(trained):
    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    fp32 = (bundle / loaded.manifest["onnx"]["encoder"]["file"]).read_bytes()
    ids, mask = tokenize(load_bundle_tokenizer(loaded), TEXTS)
    calibration = calibrate(fp32, [(ids, mask)])
    channels = fp32_channels(calibration.ranges, count=2)
    assert all(len(c) == 2 for c in channels.values())
    assert {n: g.shape for n, g in calibration.grams.items()} == {
        n: (len(r), len(r)) for n, r in calibration.ranges.items()}
    quantized = quantize_per_row(fp32, channels)
    model = onnx.load_from_string(quantized)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") >= len(channels)
    assert "MatMulInteger" not in ops and ops.count("QuantizeLinear") == len(channels)
    # 7-bit weights: no CPU's uint8 x int8 kernel saturates, so the integer products are exact.
    integer_weights = [numpy_helper.to_array(i) for i in model.graph.initializer
                       if i.data_type == onnx.TensorProto.INT8]
    assert integer_weights and max(int(np.abs(w.astype(int)).max()) for w in integer_weights) <= 63
    # Every remaining fp32 MatMul with a weight is a side product: the 2 fp32 channels, the
    # offsets and the bias, whose Adds are folded in.
    weights = {i.name: i for i in model.graph.initializer}
    assert all(weights[n.input[1]].dims[0] == 2 + 2 for n in model.graph.node
               if n.op_type == "MatMul" and n.input[1] in weights)
    fp32_ops = [n.op_type for n in onnx.load_from_string(fp32).graph.node]
    assert ops.count("Add") == fp32_ops.count("Add")  # each bias Add became its MatMul's one
    # Nothing left dead by the folding (the exporter passes shared biases on through Identity).
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    assert all(any(o in read for o in n.output) for n in model.graph.node)
    feeds = {"input_ids": ids, "attention_mask": mask}
    reference = _session(fp32).run(None, feeds)
    for graph in (quantized, quantize_per_row(fp32, channels, calibration.grams)):
        ours = _session(graph).run(None, feeds)
        for name, a, b in zip(("probs", "conditioning", "embedding"), ours, reference,
                              strict=False):
            scale = float(np.abs(b).max())
            assert np.abs(a - b).max() <= 0.05 * scale, name


def test_gptq_rounding_moves_the_products_less_than_nearest_rounding():
    rng = np.random.default_rng(0)
    # Correlated inputs with a few wide channels, as in a transformer's hidden states.
    # 300 inputs: rounded in three blocks (GPTQ_BLOCK), each updating the rows after it.
    mixing = rng.normal(size=(300, 300)) * np.where(np.arange(300) < 3, 8.0, 1.0)[:, None]
    calibration_x, held_out_x = rng.normal(size=(2, 3000, 300)) @ mixing
    weight = rng.normal(size=(300, 32)).astype(np.float32)
    kept = [0, 1, 2]
    rest = weight.copy()
    rest[kept] = 0.0
    w_scale = np.abs(rest).max(axis=0) / 63

    def error(w_int8: np.ndarray, kept_weight: np.ndarray) -> float:
        approx = w_int8 * w_scale
        approx[kept] = kept_weight
        return float(np.abs(held_out_x @ (approx - weight)).mean())

    w_int8, kept_weight = gptq_weights(weight, calibration_x.T @ calibration_x, kept, w_scale)
    assert np.abs(w_int8.astype(int)).max() <= 63 and not w_int8[kept].any()
    assert not np.allclose(kept_weight, weight[kept])  # the fp32 rows absorbed rounding errors
    nearest = error(np.round(rest / w_scale), weight[kept])
    assert error(w_int8, kept_weight) < 0.7 * nearest


def test_default_precision_is_int8_on_cpu_and_chunking_does_not_change_the_output(
        trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    assert load_backend(load_bundle(bundle), "onnx", device="cpu").precision == "int8"
    assert load_backend(load_bundle(bundle), "onnx", precision="fp32").precision == "fp32"
    outputs = {}
    for chunk in (1000, 7):
        summary = api.refine(fresh_corpus, bundle, tmp_path / f"c{chunk}.jsonl", chunk_size=chunk)
        assert summary.precision == "int8"
        assert "int8 encoder, close calls in fp32)" in summary.to_text()
        outputs[chunk] = (tmp_path / f"c{chunk}.jsonl").read_bytes()
    assert outputs[1000] == outputs[7]
    api.refine(fresh_corpus, bundle, tmp_path / "fp32.jsonl", precision="fp32")
    fp32, int8 = _labels(tmp_path / "fp32.jsonl"), _labels(tmp_path / "c1000.jsonl")
    assert sum(a == b for a, b in zip(int8, fp32, strict=True)) >= 0.97 * len(fp32)


def test_int8_close_calls_are_refined_again_with_the_fp32_encoder(trained, fresh_corpus,
                                                                  tmp_path, monkeypatch):
    """Rows within CLOSE_CALL of going another way, or whose label a trade of neighbours at
    the edge of the k nearest would change (BOUNDARY_BAND), get the fp32 graph's fields
    exactly: with every row close, the int8 run writes the fp32 run's bytes; with none,
    int8's own; the re-checked rows are the close ones and nothing else."""
    from sidyp_prod import pipeline

    bundle, _, _ = trained
    backend = load_backend(load_bundle(bundle), "onnx", device="cpu")
    assert backend.precision == "int8" and backend.reference.precision == "fp32"
    assert load_backend(load_bundle(bundle), "onnx", precision="fp32").reference is None
    api.refine(fresh_corpus, bundle, tmp_path / "fp32.jsonl", precision="fp32")
    outputs = {}
    settings = {"all": (np.inf, 0.0), "none": (0.0, 0.0), "trades": (0.0, 0.5),
                "default": (pipeline.CLOSE_CALL, pipeline.BOUNDARY_BAND)}
    for name, (threshold, band) in settings.items():
        monkeypatch.setattr(pipeline, "CLOSE_CALL", threshold)
        monkeypatch.setattr(pipeline, "BOUNDARY_BAND", band)
        api.refine(fresh_corpus, bundle, tmp_path / f"{name}.jsonl")
        outputs[name] = [json.loads(line) for line in
                         (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert (tmp_path / "all.jsonl").read_bytes() == (tmp_path / "fp32.jsonl").read_bytes()
    fp32 = [json.loads(line) for line in (tmp_path / "fp32.jsonl").read_text().splitlines()]
    assert outputs["none"] != fp32
    for name in ("trades", "default"):
        for plain, checked, exact in zip(outputs["none"], outputs[name], fp32, strict=True):
            assert checked in (plain, exact)
    assert outputs["trades"] != outputs["none"]  # some trades change a label: re-checked
    labels = {k: [r["predicted_label"] for r in v] for k, v in outputs.items()}
    exact_labels = [r["predicted_label"] for r in fp32]
    agree = {k: sum(a == b for a, b in zip(v, exact_labels, strict=True))
             for k, v in labels.items()}
    assert agree["default"] >= agree["none"] and agree["trades"] >= agree["none"]


def test_reexport_reuses_the_recorded_fp32_channels(trained, tmp_path):
    bundle, _, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    before = load_bundle(copy).manifest
    export_onnx(copy)  # no calibration texts: the channels train picked
    after = load_bundle(copy).manifest
    encoder = after["onnx"]["encoder"]
    assert encoder["int8_fp32_channels"] == before["onnx"]["encoder"]["int8_fp32_channels"]
    assert encoder["int8_rounding"] == before["onnx"]["encoder"]["int8_rounding"] == "gptq"
    name = encoder["int8_file"]
    assert after["files"][name]["sha256"] == before["files"][name]["sha256"]


def test_without_calibration_rows_another_fp32_graph_gets_nearest_rounding(trained):
    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    encoder = loaded.manifest["onnx"]["encoder"]
    fp32 = (bundle / encoder["file"]).read_bytes()
    int8 = (bundle / encoder["int8_file"]).read_bytes()
    previous = {"int8_fp32_channels": encoder["int8_fp32_channels"], "int8_rounding": "gptq",
                "bytes": int8, "fp32_sha256": loaded.files[encoder["file"]]["sha256"]}
    tokenizer = load_bundle_tokenizer(loaded)
    assert int8_encoder(fp32, tokenizer, None, previous)[0] == int8
    graph, record = int8_encoder(fp32, tokenizer, None, {**previous, "fp32_sha256": "other"})
    assert record == {"int8_fp32_channels": encoder["int8_fp32_channels"],
                      "int8_rounding": "nearest"}
    assert graph != int8


def test_fp16_encoder_is_written_on_request_and_refines_close_to_fp32(
        trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with pytest.raises(BundleError, match="--fp16"):
        load_backend(load_bundle(copy), "onnx", precision="fp16")
    export_onnx(copy, fp16=True)
    graph = onnx.load(copy / load_bundle(copy).manifest["onnx"]["encoder"]["fp16_file"])
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)
    summary = api.refine(fresh_corpus, copy, tmp_path / "fp16.jsonl", precision="fp16")
    assert summary.precision == "fp16"
    api.refine(fresh_corpus, copy, tmp_path / "fp32.jsonl", precision="fp32")
    fp32, fp16 = _labels(tmp_path / "fp32.jsonl"), _labels(tmp_path / "fp16.jsonl")
    assert sum(a == b for a, b in zip(fp16, fp32, strict=True)) >= 0.97 * len(fp32)
