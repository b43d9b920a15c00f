"""Wall time of ``refine --engine ray`` on a two-node Ray cluster against a one-node local Ray.

Same rows (synthetic, from ``throughput.py``, split into ``--files`` files), same actors
(``--workers 2 --cpus-per-worker 2``), both on this machine. The cluster is a head and a worker
node of 3 CPUs each (``ray.cluster_utils.Cluster``, under its own ``RAY_TMPDIR``), so one node
holds one actor and the job must use both; it is running before its refine starts, as a cluster
would be. The local run (no ``--address``) starts its own Ray inside the command, so its wall
time includes that start-up; the summary's ``seconds`` (the pipeline alone, first read to last
shard) compares without it. Each run is a ``sidyp-prod refine`` subprocess; their outputs are
compared row for row, and the rows each node refined are read from the cluster run's manifest.

    python benchmarks/ray_cluster.py [--model BUNDLE] [--rows 20000] [--files 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ray
from ray.cluster_utils import Cluster

from sidyp_prod.bundle import load_bundle
from sidyp_prod.engines.ray_engine import MANIFEST

sys.path.insert(0, str(Path(__file__).parent))
from ray_throughput import output_rows
from throughput import example_bundle, machine, synthetic_corpus

NODE_CPUS, WORKERS, CPUS_PER_WORKER = 3, 2, 2


def _refine(parts: Path, bundle: Path, out: Path, *options: str) -> tuple[float, dict]:
    """(wall seconds, --json summary) of one ``sidyp-prod refine --engine ray`` process."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "sidyp_prod.cli.main", "refine", str(parts), "--model",
               str(bundle), "--out", str(out), "--engine", "ray", "--workers", str(WORKERS),
               "--cpus-per-worker", str(CPUS_PER_WORKER), "--quiet", "--json", *options]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)}: exit {done.returncode}\n{done.stderr[-4000:]}")
    return seconds, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle (default: train one on the example)")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("runs/ray_cluster"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = example_bundle(args.model, args.work, reuse=True).resolve()
    labels = list(load_bundle(bundle).manifest["labels"])
    whole = synthetic_corpus(args.work / "corpus.jsonl", args.rows, labels)
    lines = whole.read_text().splitlines(keepends=True)
    parts = (args.work / "parts").resolve()
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    step = -(-len(lines) // args.files)
    for i in range(args.files):
        (parts / f"part-{i}.jsonl").write_text("".join(lines[i * step : (i + 1) * step]))

    temp = tempfile.mkdtemp(prefix="sidyp-ray-")  # short: Ray's socket paths live under it
    os.environ["RAY_TMPDIR"] = temp  # the cluster's address file stays out of /tmp/ray
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS,
                                                           "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=NODE_CPUS)
        cluster.wait_for_nodes()
        names = {cluster.head_node.node_id: "head", worker.node_id: "worker"}
        cluster_out = args.work / "two-nodes"
        cluster_wall, cluster_summary = _refine(parts, bundle, cluster_out,
                                                "--address", cluster.address)
    finally:
        cluster.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        del os.environ["RAY_TMPDIR"]
    local_out = args.work / "one-node"
    local_wall, local_summary = _refine(parts, bundle, local_out)

    manifest = json.loads((cluster_out / MANIFEST).read_text())
    per_node = {names.get(n["node_id"], n["node_id"]): n["rows"] for n in manifest["nodes"]}
    same = output_rows(cluster_out) == output_rows(local_out)
    print(f"{machine()}, ray {ray.__version__}, {args.rows} rows in {args.files} files, "
          f"{WORKERS} workers x {CPUS_PER_WORKER} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print("| run | wall s | pipeline s | rows/s (pipeline) |\n| --- | --- | --- | --- |")
    for name, wall, summary in (("two-node cluster (--address HOST:PORT)", cluster_wall,
                                 cluster_summary),
                                ("one-node local Ray (no --address)", local_wall,
                                 local_summary)):
        print(f"| {name} | {wall:.1f} | {summary['seconds']:.1f} | "
              f"{summary['rows_per_second']:.1f} |")
    print(f"ratio two-node / one-node: wall {cluster_wall / local_wall:.2f}, pipeline "
          f"{cluster_summary['seconds'] / local_summary['seconds']:.2f}")
    print(f"rows per node (two-node run): {per_node}")
    print(f"outputs identical row for row: {same}")
    (args.work / "results.json").write_text(json.dumps({
        "wall_seconds": {"two_nodes": cluster_wall, "one_node": local_wall},
        "pipeline_seconds": {"two_nodes": cluster_summary["seconds"],
                             "one_node": local_summary["seconds"]},
        "rows_per_node": per_node, "identical": same}, indent=2))


if __name__ == "__main__":
    main()
