"""Triton: the model repository, a real tritonserver (nvidia-pytriton's binary), refine through it,
the BLS model, a server restart mid-run, a mismatched server, and `serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sidyp_prod import api
from sidyp_prod.backends.triton_backend import TritonError, config_problems
from sidyp_prod.bundle import load_bundle
from sidyp_prod.cli.main import app
from sidyp_prod.export.triton import CONFIG_NAMES, REFINE_MODEL, write_triton_repository
from sidyp_prod.graphs import (
    DENOISER_MODEL,
    ENCODE_ENSEMBLE,
    ENCODER_MODEL,
    REFERENCE_ENCODER_FILE,
    TOKENIZER_MODEL,
)

pytest.importorskip("pytriton")
grpcclient = pytest.importorskip("tritonclient.grpc")

from servers import free_ports  # noqa: E402

from sidyp_prod.triton_server import (  # noqa: E402
    SHM_DIR,
    ServerError,
    TritonServer,
    instances_note,
)

from synthetic import make_rows, write_jsonl  # noqa: E402


def parse_config(path: Path) -> dict:
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    message = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


@pytest.fixture(scope="module")
def repository(trained, tmp_path_factory) -> Path:
    bundle, _, _ = trained
    # Two instances of each ONNX model, one thread each: the server's batches run side by side.
    return write_triton_repository(bundle, tmp_path_factory.mktemp("triton") / "triton_models",
                                   cpu_instances=2)


@pytest.fixture(scope="module")
def server(repository):
    with TritonServer(repository, free_ports()) as running:
        yield running


@pytest.fixture(scope="module")
def onnx_output(trained, fresh_corpus, tmp_path_factory) -> Path:
    bundle, _, _ = trained
    out = tmp_path_factory.mktemp("onnx") / "out.jsonl"
    api.refine(fresh_corpus, bundle, out, chunk_size=64)
    return out


def test_every_config_matches_the_onnx_graphs(trained, repository):
    import onnx

    bundle, _, _ = trained
    graphs = load_bundle(bundle).manifest["onnx"]
    onnx_types = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}
    for model, part in ((ENCODER_MODEL, "encoder"), (DENOISER_MODEL, "denoiser")):
        graph = onnx.load(repository / model / "1" / "model.onnx").graph
        paths = [repository / model / "config.pbtxt"]
        paths += [repository / model / "configs" / f"{n}.pbtxt" for n in CONFIG_NAMES]
        for path in paths:
            config = parse_config(path)
            assert config["name"] == model
            assert config_problems(config, graphs[part], model) == [], path
            # ... and straight against the graph: names, element types, dims after the batch.
            for kind, values in (("input", graph.input), ("output", graph.output)):
                served = {t["name"]: t for t in config[kind]}
                assert list(served) == [v.name for v in values]
                for v in values:
                    dims = [d.dim_value if d.HasField("dim_value") else -1
                            for d in v.type.tensor_type.shape.dim][1:]
                    assert served[v.name]["data_type"] == onnx_types[v.type.tensor_type.elem_type]
                    served_dims = [int(d) for d in served[v.name]["dims"]]
                    # A dim the graph leaves symbolic may be fixed by the config, not changed.
                    assert len(served_dims) == len(dims)
                    assert all(g in (-1, d) for g, d in zip(dims, served_dims, strict=True))
        flavours = {parse_config(p).get("backend") for p in paths}
        assert flavours == {"onnxruntime", "python"}
        assert "tensorrt" in (repository / model / "configs" / "tensorrt.pbtxt").read_text()
        labels = (repository / model / "labels.txt").read_text().split()
        assert labels == load_bundle(bundle).manifest["labels"]
    refine = parse_config(repository / REFINE_MODEL / "config.pbtxt")
    assert [t["name"] for t in refine["input"]] == ["text", "label"]
    tokenizer = parse_config(repository / TOKENIZER_MODEL / "config.pbtxt")
    assert [t["name"] for t in tokenizer["output"]] == ["input_ids", "attention_mask"]
    ensemble = parse_config(repository / ENCODE_ENSEMBLE / "config.pbtxt")
    assert ensemble["platform"] == "ensemble"
    assert [step["model_name"] for step in ensemble["ensemble_scheduling"]["step"]] == [
        TOKENIZER_MODEL, ENCODER_MODEL]
    encoder = parse_config(repository / ENCODER_MODEL / "config.pbtxt")
    assert ensemble["output"] == encoder["output"] or [
        {k: v for k, v in t.items() if k != "label_filename"} for t in encoder["output"]
    ] == ensemble["output"]
    assert (repository / REFINE_MODEL / "1" / "bundle" / "manifest.json").is_file()


def test_the_encode_ensemble_tokenizes_and_encodes_raw_text(trained, server):
    from sidyp_prod.backends import load_backend
    from sidyp_prod.encoder import pad_ids, pad_token_id, padded_width, tokenize, unpadded_ids
    from sidyp_prod.model_io import load_bundle_tokenizer

    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    local = load_backend(loaded, "onnx")  # the CPU default, as the server's CPU configs
    tokenizer = load_bundle_tokenizer(loaded)
    client = grpcclient.InferenceServerClient(f"localhost:{server.ports.grpc}")
    for text in ("song band melody guitar", "oven"):
        tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        result = client.infer(ENCODE_ENSEMBLE, [tensor])
        (row,) = unpadded_ids(*tokenize(tokenizer, [text]))
        expected = local.encode(*pad_ids([row], pad_token_id(tokenizer),
                                          padded_width(len(row))))
        for name in ("probs", "conditioning", "embedding"):
            served = result.as_numpy(name)
            assert served.shape[0] == 1
            np.testing.assert_array_equal(served[0], getattr(expected, name)[:, 0]
                                          if name != "embedding" else expected.embedding[0])


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_refine_through_triton_equals_in_process_onnx(trained, fresh_corpus, onnx_output, server,
                                                      scheme, tmp_path):
    bundle, _, _ = trained
    url = server.http_url if scheme == "http" else server.grpc_url
    out = tmp_path / "out.jsonl"
    summary = api.refine(fresh_corpus, bundle, out, chunk_size=64, triton_url=url)
    assert summary.refined == 400
    assert out.read_bytes() == onnx_output.read_bytes()


def test_over_triton_int8_close_calls_are_refined_again_here_in_fp32(
        trained, fresh_corpus, repository, server, tmp_path, monkeypatch):
    """The server runs the int8 encoder: the client re-checks close calls with the bundle's fp32
    graph, as in-process refine does; with every row close, the output is fp32's bytes. The BLS
    model's configurations say which encoder the server runs."""
    from sidyp_prod import pipeline

    bundle, _, _ = trained
    monkeypatch.setattr(pipeline, "CLOSE_CALL", np.inf)
    api.refine(fresh_corpus, bundle, tmp_path / "fp32.jsonl", precision="fp32")
    api.refine(fresh_corpus, bundle, tmp_path / "triton.jsonl", chunk_size=64,
               triton_url=server.grpc_url)
    assert (tmp_path / "triton.jsonl").read_bytes() == (tmp_path / "fp32.jsonl").read_bytes()
    for name, precision in (("configs/python", "int8"), ("configs/cpu", "int8"),
                            ("config", "fp32"), ("configs/tensorrt", "fp32")):
        config = parse_config(repository / REFINE_MODEL / f"{name}.pbtxt")
        assert config["parameters"]["encoder_precision"]["string_value"] == precision
    assert (repository / REFINE_MODEL / "1" / REFERENCE_ENCODER_FILE).is_file()


def test_the_bls_model_answers_raw_text(trained, server):
    from sidyp_prod.backends import load_backend
    from sidyp_prod.corpus import Row
    from sidyp_prod.model_io import load_model
    from sidyp_prod.pipeline import refine_rows

    bundle, _, _ = trained
    loaded = load_bundle(bundle)
    model = load_model(loaded)
    texts = ["song band melody guitar", "oven bake flour", "the flight to the island"]
    labels = [model.labels[0], "", model.labels[1]]
    client = grpcclient.InferenceServerClient(f"localhost:{server.ports.grpc}")
    inputs = []
    for name, values in (("text", texts), ("label", labels)):
        tensor = grpcclient.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[v.encode()] for v in values], dtype=object))
        inputs.append(tensor)
    result = client.infer(REFINE_MODEL, inputs)
    rows = [Row(i + 1, {}, i + 1, t, lab or None) for i, (t, lab) in
            enumerate(zip(texts, labels, strict=True))]
    expected = refine_rows(rows, model, load_backend(loaded, "onnx"))
    got = [v.decode() for v in result.as_numpy("predicted_label").ravel()]
    assert got == [r["predicted_label"] for r in expected]
    np.testing.assert_allclose(result.as_numpy("confidence").ravel(),
                               [r["confidence"] for r in expected], atol=1e-5)
    score = result.as_numpy("label_score").ravel()
    assert np.isnan(score[1]) and abs(score[0] - expected[0]["label_score"]) < 1e-5
    assert result.as_numpy("is_label_issue").ravel().tolist() == [
        r["is_label_issue"] for r in expected
    ]
    unknown = grpcclient.InferInput("label", [1, 1], "BYTES")
    unknown.set_data_from_numpy(np.array([[b"no-such-label"]], dtype=object))
    text = grpcclient.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"x"]], dtype=object))
    with pytest.raises(Exception, match="no-such-label"):
        client.infer(REFINE_MODEL, [text, unknown])


def test_a_server_restart_mid_refine_costs_time_not_rows(trained, repository, tmp_path):
    bundle, _, _ = trained
    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(2400, seed=5))
    reference = tmp_path / "ref.jsonl"
    api.refine(corpus, bundle, reference, chunk_size=32)

    ports = free_ports()
    first = TritonServer(repository, ports).start()
    out = tmp_path / "out.jsonl"
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = api.refine(corpus, bundle, out, chunk_size=32,
                                            triton_url=f"grpc://localhost:{ports.grpc}")
        except BaseException as exc:  # reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    first.kill()  # a crash: SIGKILL, mid-run
    killed_mid_run = worker.is_alive()
    time.sleep(1.0)
    second = TritonServer(repository, ports).start()
    try:
        worker.join(180)
    finally:
        second.stop()
        first.stop()
    assert killed_mid_run, "refine finished before the server was killed: test proves nothing"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["summary"].refined == 2400
    assert out.read_bytes() == reference.read_bytes()


def test_a_server_of_another_bundle_is_refused(server, tiny_encoder, tmp_path):
    from conftest import tiny_config

    corpus = write_jsonl(tmp_path / "c.jsonl", make_rows(80, seed=3))
    other = tmp_path / "other"
    api.train(corpus, other, tiny_config(classifier_epochs=2, diffusion_epochs=2),
              encoder=str(tiny_encoder))
    with pytest.raises(TritonError, match="does not serve the models of bundle"):
        api.refine(corpus, other, tmp_path / "o.jsonl", triton_url=server.grpc_url)
    assert not (tmp_path / "o.jsonl").exists()
    result = CliRunner().invoke(app, ["refine", str(corpus), "--model", str(other), "--out",
                                      str(tmp_path / "o.jsonl"), "--triton-url", server.http_url])
    assert result.exit_code == 1
    assert "sidyp_graph_sha256" in result.output or "graph sha256" in result.output


def test_cpu_instances_set_the_cpu_configurations_only(trained, tmp_path):
    bundle, _, _ = trained
    for count, threads in ((3, "1"), (1, "0")):
        repo = tmp_path / f"repo-{count}"
        result = CliRunner().invoke(app, ["export", str(bundle), "--no-onnx", "--triton-repo",
                                          str(repo), "--cpu-instances", str(count)])
        assert result.exit_code == 0, result.output
        for model in (ENCODER_MODEL, DENOISER_MODEL):
            for name in ("cpu", "python"):
                config = parse_config(repo / model / "configs" / f"{name}.pbtxt")
                assert config["instance_group"] == [{"kind": "KIND_CPU", "count": count}]
                assert config["parameters"]["intra_op_thread_count"] == {"string_value": threads}
            gpu = parse_config(repo / model / "config.pbtxt")
            assert gpu["instance_group"] == [{"kind": "KIND_GPU", "count": 1}]
            assert "intra_op_thread_count" not in gpu["parameters"]
        # `serve` says when one-thread instances do not match the host's cores.
        for name in ("cpu", "python"):
            note = instances_note(repo, name, cores=8)
            if count == 1:  # one instance runs every core
                assert note is None
            else:
                assert f"{ENCODER_MODEL} 3" in note and f"{DENOISER_MODEL} 3" in note
                assert "--cpu-instances 8" in note and instances_note(repo, name, 3) is None
        assert instances_note(repo, "config", cores=8) is None  # the GPU configuration
    result = CliRunner().invoke(app, ["export", str(bundle), "--no-onnx", "--triton-repo",
                                      str(tmp_path / "bad"), "--cpu-instances", "0"])
    assert result.exit_code == 2 and "--cpu-instances" in result.output


def test_config_problems_name_the_mismatch():
    record = {"inputs": {"x": ["rows", 3, "float32"]}, "outputs": {"y": ["rows", 2, "float32"]}}
    good = {"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}],
            "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": ["2"]}]}
    assert config_problems(good, record, "m") == []
    wrong = json.loads(json.dumps(good))
    wrong["input"][0]["dims"] = [4]
    wrong["output"][0]["data_type"] = "TYPE_INT64"
    problems = config_problems(wrong, record, "m")
    assert any("m.x: dims" in p for p in problems) and any("m.y: type" in p for p in problems)


def test_unreachable_server_fails_after_the_retry_budget(trained, fresh_corpus, tmp_path):
    bundle, _, _ = trained
    ports = free_ports()
    start = time.monotonic()
    result = CliRunner().invoke(app, [
        "refine", str(fresh_corpus), "--model", str(bundle), "--out", str(tmp_path / "o.jsonl"),
        "--triton-url", f"grpc://localhost:{ports.grpc}", "--triton-retry-seconds", "1",
    ])
    assert result.exit_code == 1
    assert "unreachable" in result.output
    assert time.monotonic() - start < 30


def shm_regions() -> set[str]:
    return {p.name for p in SHM_DIR.glob("*")} if SHM_DIR.is_dir() else set()


def test_serve_prints_urls_and_stops_cleanly_on_sigterm(repository):
    before = shm_regions()
    ports = free_ports()
    process = subprocess.Popen(
        [sys.executable, "-m", "sidyp_prod.cli.main", "serve", str(repository),
         "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
         "--metrics-port", str(ports.metrics)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "Ctrl-C" in line:
            break
    output = "".join(lines)
    assert f"http://127.0.0.1:{ports.http}" in output
    assert f"grpc://127.0.0.1:{ports.grpc}" in output and "metrics" in output
    assert TritonServer(repository, ports).ready()
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert not TritonServer(repository, ports).ready()
    assert shm_regions() <= before


def test_serve_fails_with_the_servers_error_on_a_broken_model(repository, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(repository / ENCODER_MODEL, broken / ENCODER_MODEL)
    (broken / ENCODER_MODEL / "1" / "model.py").write_text(
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        "        raise RuntimeError('this model cannot load')\n"
    )
    ports = free_ports()
    result = CliRunner().invoke(app, [
        "serve", str(broken), "--http-port", str(ports.http), "--grpc-port", str(ports.grpc),
        "--metrics-port", str(ports.metrics), "--startup-timeout", "60",
    ])
    assert result.exit_code == 1
    assert "this model cannot load" in result.output


def test_a_missing_repository_is_a_clear_error(tmp_path):
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(tmp_path / "nope", free_ports()).start()


def test_export_writes_the_repository(trained, tmp_path):
    import shutil

    bundle, _, _ = trained
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    repo = tmp_path / "repo"
    result = CliRunner().invoke(app, ["export", str(copy), "--no-validate", "--no-int8",
                                      "--triton-repo", str(repo)])
    assert result.exit_code == 0, result.output
    for model in (ENCODER_MODEL, DENOISER_MODEL, REFINE_MODEL):
        assert (repo / model / "config.pbtxt").is_file()
    assert os.path.getsize(repo / ENCODER_MODEL / "1" / "model.onnx") > 0
