"""Throughput of ``refine`` through a local Triton server against the in-process ONNX back end.

One run, one bundle, one corpus: in-process ONNX Runtime, then the same refine with the model calls
sent to ``sidyp-prod serve``'s tritonserver (python-backend flavour, onnxruntime inside) over HTTP
and over gRPC, one server per ``--cpu-instances`` count; and the per-request overhead: the median
round trip of a one-chain denoiser request through the server minus the same call in process.

    python benchmarks/triton_throughput.py [--model BUNDLE] [--rows 2000] [--cpu-instances 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from sidyp_prod import api
from sidyp_prod.backends import load_backend
from sidyp_prod.backends.onnx_backend import available_cores
from sidyp_prod.bundle import load_bundle
from sidyp_prod.export.onnx import export_onnx
from sidyp_prod.export.triton import write_triton_repository
from sidyp_prod.graphs import GRAPH_VERSION
from sidyp_prod.triton_server import Ports, TritonServer

sys.path.insert(0, str(Path(__file__).parent))
from throughput import example_bundle, machine, synthetic_corpus


def median_call_ms(call, repeats: int = 200) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def one_chain_call(backend, bundle) -> Callable[[], np.ndarray]:
    manifest = bundle.manifest
    *_, steps, branches, classes, _ = manifest["onnx"]["denoiser"]["inputs"]["noise"]
    width = manifest["onnx"]["denoiser"]["inputs"]["conditioning"][2]
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, steps, branches, classes)).astype(np.float32)
    cond = rng.standard_normal((1, branches, width)).astype(np.float32)
    y = np.zeros((1, classes), np.float32)
    return lambda: backend.reverse(noise, cond, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle (default: train one on the example)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("runs/triton"))
    parser.add_argument("--port", type=int, default=18100, help="HTTP port; gRPC +1, metrics +2")
    parser.add_argument("--cpu-instances", type=int, nargs="*", default=[],
                        help="one server per count (export --cpu-instances; default: the cores)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle_dir = example_bundle(args.model, args.work)
    bundle = load_bundle(bundle_dir)
    if bundle.manifest.get("onnx", {}).get("graph_version") != GRAPH_VERSION:
        export_onnx(bundle_dir)
        bundle = load_bundle(bundle_dir)
    corpus = synthetic_corpus(args.work / "rows.jsonl", args.rows, bundle.manifest["labels"])
    results: dict = {
        "machine": machine(),
        "rows": args.rows,
    }
    local = load_backend(bundle, "onnx")
    results["in_process_one_chain_ms"] = round(median_call_ms(one_chain_call(local, bundle)), 3)
    reference = args.work / "onnx.jsonl"
    in_process = api.refine(corpus, bundle_dir, reference).rows_per_second
    results["refine_onnx_in_process_rows_per_s"] = round(in_process, 1)
    # One server per instance count, each measured against the same in-process run.
    results["servers"] = []
    for count in args.cpu_instances or [None]:
        repository = write_triton_repository(bundle_dir, args.work / "triton_models",
                                             cpu_instances=count)
        entry: dict = {"cpu_instances": count or available_cores()}
        with TritonServer(repository, Ports(args.port, args.port + 1, args.port + 2)) as server:
            for scheme, url in (("http", server.http_url), ("grpc", server.grpc_url)):
                out = args.work / f"{scheme}.jsonl"
                rate = api.refine(corpus, bundle_dir, out, triton_url=url).rows_per_second
                entry[f"refine_triton_{scheme}_rows_per_s"] = round(rate, 1)
                entry[f"refine_triton_{scheme}_over_in_process"] = round(rate / in_process, 2)
                entry[f"triton_{scheme}_output_identical"] = (
                    out.read_bytes() == reference.read_bytes())
                remote = load_backend(bundle, "triton", url=url)
                ms = median_call_ms(one_chain_call(remote, bundle))
                entry[f"triton_{scheme}_one_chain_ms"] = round(ms, 3)
                entry[f"triton_{scheme}_overhead_per_request_ms"] = round(
                    ms - results["in_process_one_chain_ms"], 3)
        results["servers"].append(entry)
        print(json.dumps(entry), flush=True)
    print(json.dumps(results, indent=1))
    (args.work / "triton.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
