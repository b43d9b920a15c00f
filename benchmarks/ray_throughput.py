"""Rows/s of ``refine --engine ray`` (1-2 actors x 1-2 CPUs) against the single-process refine.

Same bundle (default encoder, trained on ``examples/news.jsonl`` unless ``--model``), same
synthetic rows (from ``throughput.py``), one process, one run: the single-process refine reads
them as one file, the Ray engine as ``--files`` files. One local Ray is started first and kept
for both Ray runs, as a cluster would already be running; each Ray time still includes starting
the actors (loading the bundle) and the CPU tokenizing stage, as the single-process time includes
loading the bundle. Output rows are compared with the single-process ones (the count of rows that
differ is printed: batches differ between the runs, and a float on a rounding boundary of the
6-decimal outputs can flip in the last digit).

    python benchmarks/ray_throughput.py [--model BUNDLE] [--rows 2000] [--files 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ray

from sidyp_prod import api
from sidyp_prod.bundle import load_bundle
from sidyp_prod.engines.ray_engine import MANIFEST, refine_ray

sys.path.insert(0, str(Path(__file__).parent))
from throughput import example_bundle, machine, synthetic_corpus


def output_rows(directory: Path) -> list[str]:
    """Every row of a --engine ray output directory, sorted (comparable across runs)."""
    manifest = json.loads((directory / MANIFEST).read_text())
    return sorted(line for s in manifest["shards"]
                  for line in (directory / s["file"]).read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle (default: train one on the example)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--work", type=Path, default=Path("runs/ray_throughput"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = example_bundle(args.model, args.work, reuse=True)
    labels = list(load_bundle(bundle).manifest["labels"])
    whole = synthetic_corpus(args.work / "corpus.jsonl", args.rows, labels)
    lines = whole.read_text().splitlines(keepends=True)
    parts = args.work / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    step = -(-len(lines) // args.files)
    for i in range(args.files):
        (parts / f"part-{i}.jsonl").write_text("".join(lines[i * step : (i + 1) * step]))

    results: dict[str, float] = {}
    differing: dict[str, int] = {}
    start = time.perf_counter()
    api.refine(whole, bundle, args.work / "single.jsonl")
    results["single-process refine"] = args.rows / (time.perf_counter() - start)
    single = sorted((args.work / "single.jsonl").read_text().splitlines())

    # Two workers need 2 CPUs of their own plus a little for the read/tokenize/write tasks.
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        # (actors, CPUs each = the threads each actor computes with)
        for workers, cpus in ((1, 1), (1, 2), (2, 1)):
            out = args.work / f"ray-{workers}x{cpus}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            refine_ray([parts], bundle, out, workers=workers, cpus_per_worker=cpus)
            name = f"--engine ray, {workers} worker(s) x {cpus} CPU(s)"
            results[name] = args.rows / (time.perf_counter() - start)
            differing[name] = len(set(output_rows(out)) ^ set(single)) // 2
    finally:
        ray.shutdown()

    base = results["single-process refine"]
    print(f"{machine()}, ray {ray.__version__}, {args.rows} rows in {args.files} files")
    print("| what | rows/s | ratio |\n| --- | --- | --- |")
    for name, rate in results.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} |")
    for name, count in differing.items():
        # Not zero only where a float lands on a rounding boundary of the 6-decimal outputs:
        # the encoder's sums depend slightly on how rows are batched (padding width).
        print(f"{name}: {count} of {args.rows} rows differ from the single-process output")
    (args.work / "results.json").write_text(json.dumps(
        {"rows_per_second": results, "differing_rows": differing}, indent=2))


if __name__ == "__main__":
    main()
