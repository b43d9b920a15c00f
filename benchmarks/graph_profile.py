"""Encoder graphs of a bundle on one CPU thread: speed over refine's batches, and where the time
goes by ONNX op type.

Runs each graph over the same batches ``refine`` would make of the corpus's first ``--rows``
texts (rows padded to their own width, a lone row beside a copy of itself), one ONNX Runtime
thread, in ``--rounds`` rounds that alternate the order; reports rows/s and each graph's speed
relative to the first (median and range of the within-round ratios). ``--ops`` also profiles
each graph once with ONNX Runtime's profiler and lists the op types by their share of kernel
time. By default the graphs are the bundle's int8 and fp32 encoders; ``--graphs`` adds others
(e.g. the int8 graph of another exporter version).

    python benchmarks/graph_profile.py --model BUNDLE [--corpus CORPUS] [--rows 768]
        [--rounds 4] [--graphs OTHER.onnx ...] [--ops]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from sidyp_prod.bundle import load_bundle
from sidyp_prod.encoder import pad_batch, pad_token_id, tokenize, unpadded_ids, width_batches
from sidyp_prod.model_io import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval-fewshot-mixtral"


def refine_batches(bundle_dir: Path, corpus: Path, rows: int
                   ) -> tuple[list[dict[str, np.ndarray]], int]:
    """The encoder feeds ``refine`` would make of the corpus's first ``rows`` texts, and how
    many texts they hold."""
    model = load_model(load_bundle(bundle_dir))
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()
             if line.strip()][:rows]
    token_ids = unpadded_ids(*tokenize(model.tokenizer, texts))
    feeds = []
    for batch in width_batches([len(ids) for ids in token_ids], model.config.encode_batch_size):
        ids, mask = pad_batch(token_ids, batch, pad_token_id(model.tokenizer))
        if len(ids) == 1:  # as pipeline._paired runs a lone row
            ids, mask = np.repeat(ids, 2, axis=0), np.repeat(mask, 2, axis=0)
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds, len(texts)


def session(graph: Path, profile_dir: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = f"{profile_dir}/{graph.stem}"
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def op_shares(graph: Path, feeds: list[dict[str, np.ndarray]], top: int = 15) -> dict[str, Any]:
    """Kernel time by op type over one pass of ``feeds``."""
    with tempfile.TemporaryDirectory() as tmp:
        profiled = session(graph, tmp)
        for feed in feeds:
            profiled.run(None, feed)
        events = json.loads(Path(profiled.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    return {"kernel_seconds": round(total / 1e6, 3),
            "shares": {op: round(d / total, 3) for op, d in by_op.most_common(top)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, default=DATA / "train.jsonl")
    parser.add_argument("--rows", type=int, default=768)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--graphs", type=Path, nargs="*", default=[])
    parser.add_argument("--ops", action="store_true", help="profile the op types too")
    args = parser.parse_args()
    record = load_bundle(args.model).manifest["onnx"]["encoder"]
    graphs = [args.model / name for name in (record.get("int8_file"), record["file"]) if name]
    graphs += args.graphs
    feeds, rows = refine_batches(args.model, args.corpus, args.rows)
    sessions = {graph: session(graph) for graph in graphs}
    for graph in graphs:  # warm up: each padded width once
        for feed in feeds:
            sessions[graph].run(None, feed)
    seconds: dict[Path, list[float]] = {graph: [] for graph in graphs}
    for round_ in range(args.rounds):
        for graph in graphs if round_ % 2 == 0 else graphs[::-1]:
            start = time.perf_counter()
            for feed in feeds:
                sessions[graph].run(None, feed)
            seconds[graph].append(time.perf_counter() - start)
    first = seconds[graphs[0]]
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one ONNX Runtime thread",
        "rows": rows, "batches": len(feeds), "rounds": args.rounds, "graphs": {}}
    for graph in graphs:
        ratios = [a / b for a, b in zip(first, seconds[graph], strict=True)]
        entry: dict[str, Any] = {
            "rows_per_s": round(rows / statistics.median(seconds[graph]), 1),
            "speed_over_first": round(statistics.median(ratios), 3),
            "speed_over_first_range": [round(min(ratios), 3), round(max(ratios), 3)]}
        if args.ops:
            entry["ops"] = op_shares(graph, feeds)
        result["graphs"][str(graph)] = entry
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
