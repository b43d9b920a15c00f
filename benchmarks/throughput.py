"""Throughput and memory of ``refine``: ONNX back end vs torch back end vs a bare encoder pass.

All three run in one process on the same bundle (default encoder) and the same synthetic rows of
realistic length, in ``--rounds`` rounds that alternate the order of the measures; each ratio is
taken within a round and reported as the median over rounds with its range, so that a noisy
machine's drift cancels. ``--rss`` also measures the peak RSS of ``sidyp-prod refine`` (a fresh
process each) at two corpus sizes.

    python benchmarks/throughput.py [--model BUNDLE] [--rows 2000] [--rounds 3]
        [--rss 10000 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from hardware import machine

from sidyp_prod import api
from sidyp_prod.backends.onnx_backend import available_cores
from sidyp_prod.bundle import load_bundle
from sidyp_prod.encoder import tokenize
from sidyp_prod.model_io import load_model
from sidyp_prod.models import SentenceEmbedder
from sidyp_prod.pretrained import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the company said on monday that its quarterly profit rose as demand for cloud services grew "
    "while the team won the final after a late goal and scientists reported a new species of "
    "frog found in the rain forest near the river where officials announced plans for a bridge "
    "to ease traffic during the holiday season after heavy rain flooded several roads"
).split()


def example_bundle(model: Path | None, work: Path, reuse: bool = False) -> Path:
    """``model``, or a bundle trained with the defaults on the example corpus into WORK/bundle
    (kept from an earlier run with ``reuse``)."""
    if model is not None:
        return model
    bundle = work / "bundle"
    if not (reuse and (bundle / "manifest.json").exists()):
        api.train(ROOT / "examples" / "news.jsonl", bundle, overwrite=True)
    return bundle


def synthetic_corpus(path: Path, rows: int, labels: list[str], seed: int = 0) -> Path:
    """Rows of 15-40 words (SemEval sentences average 21), with LLM labels from the label set."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(rows):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 40)))
            f.write(json.dumps({"id": i, "text": text, "label": rng.choice(labels)}) + "\n")
    return path


def encoder_passes(bundle_dir: Path, corpus: Path, work: Path) -> dict[str, Callable[[], float]]:
    """Per bare pass, a function that runs it once and returns rows/s: ONNX Runtime running only
    an encoder graph (the bundle's fp32 and int8 graphs, and a plain single pass of the
    pretrained encoder) over refine's batches, one batch at a time on every core (ONNX Runtime's
    default) and side by side on one thread each (as refine runs them on a CPU)."""
    import onnxruntime as ort

    bundle = load_bundle(bundle_dir)
    model = load_model(bundle)
    # The base checkpoint itself (every layer, its pooling): what a user's own pass would run.
    pretrained = load_pretrained(bundle.manifest["encoder"]["name"])
    plain = work / "plain-encoder.onnx"
    ids = torch.ones(2, 8, dtype=torch.long)
    axes = {"input_ids": {0: "b", 1: "n"}, "attention_mask": {0: "b", 1: "n"}}
    torch.onnx.export(
        SentenceEmbedder(pretrained.model, pretrained.pooling.mode).eval(),
        (ids, ids),
        str(plain),
        dynamo=False,
        input_names=["input_ids", "attention_mask"],
        dynamic_axes=axes,
        opset_version=17,
    )
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()]
    size = model.config.encode_batch_size
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    feeds = [
        dict(zip(("input_ids", "attention_mask"),
                 tokenize(model.tokenizer, [texts[i] for i in order[s : s + size]]),
                 strict=True))
        for s in range(0, len(texts), size)
    ]
    record = bundle.manifest["onnx"]["encoder"]
    graphs = {
        "plain_encoder_pass": plain,
        "bundle_encoder_graph": bundle.path(record["file"]),
        "bundle_int8_encoder_graph": bundle.path(record["int8_file"]),
    }
    workers = available_cores()

    def timed(session: Any, threads: int) -> float:
        start = time.perf_counter()
        if threads:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(partial(session.run, None), feeds))
        else:
            for feed in feeds:
                session.run(None, feed)
        return len(texts) / (time.perf_counter() - start)

    passes = {}
    for name, path in graphs.items():
        for mode, threads in (("", 0), ("_side_by_side", 1)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
            session.run(None, feeds[-1])  # warm-up: the arena's first allocations
            passes[name + mode] = partial(timed, session, threads)
    return passes


def peak_rss_mib(bundle_dir: Path, corpus: Path, out: Path, precision: str) -> tuple[float, float]:
    """Peak RSS (MiB) and rows/s of `sidyp-prod refine` in a fresh process."""
    code = (
        "import resource, sys, time; from sidyp_prod import api; t = time.perf_counter(); "
        "s = api.refine(sys.argv[1], sys.argv[2], sys.argv[3], precision=sys.argv[4]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "s.refined / (time.perf_counter() - t))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(corpus), str(bundle_dir), str(out), precision],
        check=True,
        capture_output=True,
        text=True,
    )
    rss, rate = result.stdout.split()
    return float(rss), float(rate)


# Ratios reported, each taken within a round: (numerator, denominator) measures.
RATIOS = {
    "refine_onnx_default_over_plain_encoder_pass": ("refine_onnx_default", "plain_encoder_pass"),
    "refine_onnx_fp32_over_plain_encoder_pass": ("refine_onnx_fp32", "plain_encoder_pass"),
    "refine_onnx_default_over_plain_pass_side_by_side": (
        "refine_onnx_default", "plain_encoder_pass_side_by_side"),
    # What the pipeline outside the encoder graph leaves of the graph's own speed, the graph run
    # as refine runs it.
    "refine_onnx_default_over_its_graph": (
        "refine_onnx_default", "bundle_int8_encoder_graph_side_by_side"),
    "refine_onnx_fp32_over_its_graph": ("refine_onnx_fp32", "bundle_encoder_graph_side_by_side"),
    "refine_onnx_default_over_torch": ("refine_onnx_default", "refine_torch"),
}


def _refine_rate(corpus: Path, bundle: Path, out: Path, kwargs: dict) -> float:
    return api.refine(corpus, bundle, out, **kwargs).rows_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="bundle (default: train one on the example)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every measure, alternating their order")
    parser.add_argument("--rss", type=int, nargs=2, metavar=("SMALL", "LARGE"))
    parser.add_argument(
        "--rss-precision",
        default="auto",
        choices=["auto", "fp32", "int8"],
        help="encoder precision for the RSS runs (auto: int8 on a CPU)",
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("runs/throughput"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = example_bundle(args.model, args.work)
    labels = load_bundle(bundle).manifest["labels"]
    corpus = synthetic_corpus(args.work / "rows.jsonl", args.rows, labels)

    results: dict = {
        "machine": machine(),
        "rows": args.rows,
    }
    if not args.skip_throughput:
        measures = encoder_passes(bundle, corpus, args.work)
        for name, kwargs in (
            ("onnx_default", {"backend": "onnx"}),  # precision auto: int8 on a CPU
            ("onnx_fp32", {"backend": "onnx", "precision": "fp32"}),
            ("torch", {"backend": "torch"}),
        ):
            measures["refine_" + name] = partial(_refine_rate, corpus, bundle,
                                                 args.work / f"{name}.jsonl", kwargs)
        rates: dict[str, list[float]] = {name: [] for name in measures}
        for r in range(args.rounds):
            for name in list(measures)[:: 1 if r % 2 == 0 else -1]:
                rates[name].append(measures[name]())
        results["rounds"] = args.rounds
        results.update({(k if k.startswith("refine_") else f"bare_{k}") + "_rows_per_s":
                        round(statistics.median(v), 1) for k, v in rates.items()})
        for ratio, (top, bottom) in RATIOS.items():
            per_round = [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
            results[ratio] = round(statistics.median(per_round), 2)
            results[ratio + "_range"] = [round(min(per_round), 2), round(max(per_round), 2)]
    if args.rss:
        for n in args.rss:
            rows = synthetic_corpus(args.work / f"rss-{n}.jsonl", n, labels, seed=n)
            rss, rate = peak_rss_mib(
                bundle, rows, args.work / f"rss-{n}.out.jsonl", args.rss_precision
            )
            results[f"peak_rss_mib_{n}"] = round(rss, 1)
            results[f"rows_per_s_{n}"] = round(rate, 1)
        results["rss_precision"] = args.rss_precision
        small, large = args.rss
        results["rss_ratio"] = round(
            results[f"peak_rss_mib_{large}"] / results[f"peak_rss_mib_{small}"], 3
        )
    results["self_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(results, indent=1))
    (args.work / "throughput.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
