"""``refine --engine ray --address`` on a real two-node Ray cluster that the test starts on this
machine: a head node and a worker node, each with its own raylet, object store and CPUs. The
output must equal the single-process refine row for row, and both nodes' actors must have
refined rows.

How both nodes are known to have worked: each model actor records the id of the node it runs on
(``ray.get_runtime_context().get_node_id()``) and the job manifest counts the rows per node; the
test compares those ids with the ids of the two nodes it started. Each node has 3 CPUs and each
actor asks for 2, so one node cannot hold both actors of ``--workers 2``: the pool must use both
nodes (the CPU left on each node runs the read, tokenize and write tasks; actors taking every CPU
would starve those and hang the job).

The nodes listen on this machine's own address, not 127.0.0.1: Ray rewrites a loopback address
given to ``ray.init`` into the machine's address, where a loopback-only GCS does not answer. The
cluster runs under its own ``RAY_TMPDIR``, so its address file (which ``ray.init()`` and
``auto`` read) cannot redirect Ray sessions of other processes on this machine, even when a
killed test leaves it behind.

One driver per process: this module must not run while another module's Ray session is open
(pytest finishes a module's fixtures before the next module's tests); the fixture checks it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from sidyp_prod.cli.main import app  # noqa: E402

from ray_helpers import ray_output, single_process, write_multi_corpus  # noqa: E402

NODE_CPUS = 3
CPUS_PER_WORKER = 2  # more than half a node: one actor per node


@pytest.fixture(scope="module")
def cluster():
    """(GCS address, head node id, worker node id) of a running two-node cluster."""
    assert not ray.is_initialized(), "a Ray session of this process is still open"
    # Short: Ray's socket paths under it must stay within the Unix limit.
    temp = tempfile.mkdtemp(prefix="sidyp-ray-")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp)
        nodes = Cluster(initialize_head=True, head_node_args={
            "num_cpus": NODE_CPUS, "include_dashboard": False})
        try:
            worker = nodes.add_node(num_cpus=NODE_CPUS)
            nodes.wait_for_nodes()
            yield nodes.address, nodes.head_node.node_id, worker.node_id
        finally:
            nodes.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def multi_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_multi_corpus(tmp_path_factory.mktemp("multi"))


@pytest.fixture(scope="module")
def reference(trained, multi_corpus, tmp_path_factory):
    bundle, _, _ = trained
    return single_process(bundle, multi_corpus, tmp_path_factory.mktemp("reference"))


def _refine(bundle: Path, files: list[Path], out: Path, *options: str) -> dict:
    result = CliRunner().invoke(app, [
        "refine", *map(str, files), "--model", str(bundle), "--out", str(out), "--engine", "ray",
        "--workers", "2", "--cpus-per-worker", str(CPUS_PER_WORKER), "--chunk-size", "64",
        "--quiet", "--json", *options])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_two_node_cluster_refines_on_both_nodes_the_single_process_rows(
    cluster, trained, multi_corpus, reference, tmp_path
):
    address, head, worker = cluster
    bundle, _, _ = trained
    expected_rows, expected_rejects = reference
    # The GCS address as `ray start --head` prints it (HOST:PORT), through the CLI.
    summary = _refine(bundle, multi_corpus, tmp_path / "out", "--address", address)
    assert not ray.is_initialized(), "refine left its driver connected"
    manifest, rows, rejects = ray_output(tmp_path / "out")
    assert len(rows) == len(expected_rows) == 996
    assert sorted(rows) == sorted(line for _, _, line in expected_rows)
    assert rejects == expected_rejects
    assert summary["read"] == 1000 and summary["rejected"] == 4
    # Both nodes' actors refined rows, and every input row was counted on one of them.
    per_node = {n["node_id"]: n["rows"] for n in manifest["nodes"]}
    assert set(per_node) == {head, worker}, (per_node, head, worker)
    assert min(per_node.values()) > 0
    assert sum(per_node.values()) == manifest["totals"]["input"] == 1000
    assert summary["nodes"] == 2


def test_without_address_a_local_ray_starts_beside_a_running_cluster(
    cluster, trained, multi_corpus, reference, tmp_path
):
    """The cluster's address file names it as this machine's latest cluster, which a bare
    ``ray.init()`` would join; refine without --address starts its own Ray all the same."""
    _, head, worker = cluster
    bundle, _, _ = trained
    expected_rows, _ = reference
    _refine(bundle, multi_corpus[2:], tmp_path / "out")
    manifest, rows, _ = ray_output(tmp_path / "out")
    assert sorted(rows) == sorted(line for path, _, line in expected_rows
                                  if path == str(multi_corpus[2]))
    assert len(manifest["nodes"]) == 1
    assert manifest["nodes"][0]["node_id"] not in {head, worker}
    assert manifest["nodes"][0]["rows"] == 200
