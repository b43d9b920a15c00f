"""``refine --engine ray``: same rows as the single-process refine, exactly once, even when an
actor is killed mid-job. One local Ray session (2 CPUs) serves the whole module."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from typer.testing import CliRunner  # noqa: E402

from sidyp_prod import api  # noqa: E402
from sidyp_prod.cli.main import app  # noqa: E402
from sidyp_prod.engines.ray_engine import (  # noqa: E402
    MANIFEST,
    AccountingError,
    RefineWorker,
    check_spans,
    refine_ray,
)

from ray_helpers import ray_output, single_process, write_multi_corpus  # noqa: E402

WORKER_TITLE = b"RefineWorker"


@pytest.fixture(scope="module")
def ray_session():
    # A new local Ray, whatever cluster RAY_ADDRESS or a `ray start` on this machine names.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def multi_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """Three files (one gzipped) in a directory, with bad lines of several kinds."""
    root = tmp_path_factory.mktemp("multi")
    return root, write_multi_corpus(root)


@pytest.fixture(scope="module")
def reference(trained, multi_corpus, tmp_path_factory):
    bundle, _, _ = trained
    return single_process(bundle, multi_corpus[1], tmp_path_factory.mktemp("reference"))


def test_multi_file_corpus_equals_single_process_row_for_row(
    ray_session, trained, multi_corpus, reference, tmp_path
):
    bundle, _, _ = trained
    root, files = multi_corpus
    expected_rows, expected_rejects = reference
    # A file and a glob for the other two (one gzipped).
    summary = refine_ray([root / "a.jsonl", str(root / "[bc].jsonl*")], bundle, tmp_path / "out",
                         batch_size=64, shard_rows=200)
    manifest, rows, rejects = ray_output(tmp_path / "out")
    # Byte-identical JSON lines (each names its id and text), as many as the reference's.
    assert len(rows) == len(expected_rows)
    assert sorted(rows) == sorted(line for _, _, line in expected_rows)
    assert rejects == expected_rejects
    assert [r["line"] for r in rejects if r["file"].endswith("a.jsonl")] == [11, 21, 31]
    assert summary.read == 1000 and summary.rejected == 4 and summary.refined == 996
    totals = manifest["totals"]
    assert totals == {"input": 1000, "output": 996, "rejected": 4,
                      "changed": sum(json.loads(r)["is_label_issue"] for r in rows)}
    assert {i["path"]: i["rows"] for i in manifest["inputs"]} == {
        str(files[0]): 500, str(files[1]): 300, str(files[2]): 200}
    assert sum(s["rows"] for s in manifest["shards"]) == 996 and len(manifest["shards"]) > 3
    # One node (this machine's local Ray), whose actors handled every line.
    assert [(n["node_id"], n["rows"]) for n in manifest["nodes"]] == [
        (ray.get_runtime_context().get_node_id(), 1000)]
    assert summary.nodes == 1
    # The graph the actors ran, not only what was asked for (auto: the per-row int8 on a CPU).
    assert (manifest["precision"], manifest["requested_precision"]) == ("int8", "auto")
    from sidyp_prod.bundle import file_digest, load_bundle

    assert manifest["bundle_digest"] == file_digest(load_bundle(bundle))
    assert not list(tmp_path.glob(".out.partial-*"))


def _worker_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if WORKER_TITLE in cmdline and b"MapWorker" in cmdline:
                pids.append(int(entry))
    return pids


def test_killed_worker_still_yields_complete_duplicate_free_output(
    ray_session, trained, multi_corpus, reference, tmp_path
):
    bundle, _, _ = trained
    _, files = multi_corpus
    expected_rows, expected_rejects = reference
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_first_worker_after_some_shards() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            staging = list(tmp_path.glob(".out.partial-*"))
            if staging and len(list(staging[0].glob("part-*"))) >= 2:
                for pid in _worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_worker_after_some_shards, daemon=True)
    killer.start()
    summary = refine_ray(files, bundle, out, batch_size=20, shard_rows=20)
    killer.join()
    assert killed, "no worker was killed: the job ended first"
    _, rows, rejects = ray_output(out)
    assert sorted(rows) == sorted(line for _, _, line in expected_rows)
    assert len(set(rows)) == len(rows) == 996
    assert rejects == expected_rejects
    assert summary.read == 1000


def test_two_workers_and_parquet(ray_session, trained, multi_corpus, reference, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    bundle, _, _ = trained
    _, files = multi_corpus
    expected_rows, _ = reference
    summary = refine_ray(files, bundle, tmp_path / "out", workers=2, cpus_per_worker=0.5,
                         batch_size=100, output_format="parquet")
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    table = [r for s in manifest["shards"]
             for r in pq.read_table(tmp_path / "out" / s["file"]).to_pylist()]
    expected = [json.loads(line) for _, _, line in expected_rows]
    assert len(table) == len(expected) == summary.refined
    assert sorted((r["text"], r["predicted_label"]) for r in table) == sorted(
        (r["text"], r["predicted_label"]) for r in expected)


def test_cli_engine_ray_strict_and_errors(ray_session, trained, multi_corpus, tmp_path):
    bundle, _, _ = trained
    _, files = multi_corpus
    runner = CliRunner()
    result = runner.invoke(app, ["refine", str(files[2]), str(files[1]), "--model", str(bundle),
                                 "--out", str(tmp_path / "o"), "--engine", "ray", "--quiet",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["read"] == 500
    # The output directory must be new.
    result = runner.invoke(app, ["refine", str(files[2]), "--model", str(bundle),
                                 "--out", str(tmp_path / "o"), "--engine", "ray", "--quiet"])
    assert result.exit_code == 2 and "already exists" in result.output
    result = runner.invoke(app, ["refine", str(files[0]), "--model", str(bundle), "--strict",
                                 "--out", str(tmp_path / "s"), "--engine", "ray", "--quiet"])
    assert result.exit_code == 2, result.output
    assert "a.jsonl:11" in result.output
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.partial-*"))
    # Ray Client cannot run Ray Data: refused before anything starts.
    result = runner.invoke(app, ["refine", str(files[2]), "--model", str(bundle), "--out",
                                 str(tmp_path / "c"), "--engine", "ray", "--address",
                                 "ray://127.0.0.1:10001", "--quiet"])
    assert result.exit_code == 2 and "Ray Client" in result.output, result.output
    assert not (tmp_path / "c").exists() and not list(tmp_path.glob(".c.partial-*"))
    result = runner.invoke(app, ["refine", str(files[2]), "--model", str(bundle), "--out",
                                 str(tmp_path / "c"), "--engine", "ray", "--address", "auto",
                                 "--quiet"], env={"RAY_ADDRESS": "ray://127.0.0.1:10001"})
    assert result.exit_code == 2 and "RAY_ADDRESS=ray://" in result.output, result.output
    # The local engine still takes exactly one corpus.
    result = runner.invoke(app, ["refine", str(files[0]), str(files[1]), "--model", str(bundle),
                                 "--out", str(tmp_path / "x.jsonl"), "--quiet"])
    assert result.exit_code == 2 and "one corpus" in result.output


def test_ray_actors_call_a_triton_server(ray_session, trained, multi_corpus, reference,
                                         tmp_path):
    """--engine ray --triton-url: the actors hold Triton clients instead of ONNX sessions."""
    pytest.importorskip("pytriton")
    pytest.importorskip("tritonclient.grpc")
    import urllib.request

    from servers import free_ports

    from sidyp_prod.export.triton import write_triton_repository
    from sidyp_prod.graphs import ENCODER_MODEL
    from sidyp_prod.triton_server import TritonServer

    bundle, _, _ = trained
    _, files = multi_corpus
    expected_rows, expected_rejects = reference
    repository = write_triton_repository(bundle, tmp_path / "triton_models")
    with TritonServer(repository, free_ports()) as server:
        result = CliRunner().invoke(app, [
            "refine", *map(str, files), "--model", str(bundle), "--out", str(tmp_path / "out"),
            "--engine", "ray", "--triton-url", server.grpc_url, "--quiet", "--json"])
        metrics = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    assert result.exit_code == 0, result.output
    served = [line for line in metrics.splitlines()
              if line.startswith(f'nv_inference_request_success{{model="{ENCODER_MODEL}"')]
    assert served and float(served[0].rsplit(" ", 1)[1]) > 0, "the server answered nothing"
    _, rows, rejects = ray_output(tmp_path / "out")
    assert sorted(rows) == sorted(line for _, _, line in expected_rows)
    assert rejects == expected_rejects


def test_an_actor_computes_on_the_cores_reserved_for_it(trained):
    """Several actors on one node must not each start a thread per core of the node."""
    bundle, _, _ = trained
    worker = RefineWorker(str(bundle), "onnx", "fp32", {}, api.DEFAULT_FIELDS, threads=1)
    for session in (worker.backend.encoder, worker.backend.denoiser):
        assert session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ValueError, match="cpus_per_worker"):
        refine_ray([bundle], bundle, bundle.parent / "never", cpus_per_worker=0)


def test_check_spans_finds_gaps_duplicates_and_a_lost_tail():
    assert check_spans([["f", 1, 5, False], ["f", 6, 9, True], ["g", 1, 1, True]]) == {
        "f": 9, "g": 1}
    with pytest.raises(AccountingError, match="lines 4-5 written twice"):
        check_spans([["f", 1, 5, False], ["f", 4, 9, True]])
    with pytest.raises(AccountingError, match="lines 6-6 missing"):
        check_spans([["f", 1, 5, False], ["f", 7, 9, True]])
    with pytest.raises(AccountingError, match="after 5 missing"):
        check_spans([["f", 1, 5, False]])
