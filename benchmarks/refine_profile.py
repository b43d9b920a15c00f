"""Where `refine`'s time goes, per stage: loading the bundle and runtime, tokenize, encode,
neighbour search, reverse process (the denoiser), the rest of the refinement (numpy), decision,
and reading/parsing/writing.

Runs the real ``api.refine`` end to end on a bundle and a corpus; each stage's function is
wrapped with a timer where ``api`` or ``pipeline`` calls it (the product code is not changed),
and the back end is wrapped to time ``encode``/``embed``/``reverse``. "read, parse, write" is
the wall time the stages leave over. Shares of one run (of thread time: a
multi-core CPU runs batches side by side), so they compare across machines better than seconds.

    python benchmarks/refine_profile.py --model BUNDLE --corpus CORPUS [--chunk-size 1024]
        [--backend onnx] [--precision auto|fp32|int8] [--triton-url grpc://127.0.0.1:8001]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from throughput import machine  # benchmarks/ is on sys.path as a script

from sidyp_prod import api, pipeline

SECONDS: dict[str, float] = defaultdict(float)


def timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[stage] += time.perf_counter() - start

    return wrapper


CHUNK_WALL = [0.0]


def timed_wall(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    start = time.perf_counter()
    try:
        return function(*args, **kwargs)
    finally:
        CHUNK_WALL[0] += time.perf_counter() - start


class TimedBackend:
    """The back end's model calls, timed; every other member passes through."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.encode = timed("encode", inner.encode)
        self.embed = timed("encode", inner.embed)
        self.reverse = timed("reverse process", inner.reverse)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--triton-url", default=None)
    args = parser.parse_args()

    load = timed("load bundle and runtime", api.load_backend)
    api.load_backend = lambda *a, **k: TimedBackend(load(*a, **k))  # type: ignore[assignment]
    api.load_model = timed("load bundle and runtime", api.load_model)  # type: ignore[assignment]
    api.load_bundle = timed("load bundle and runtime", api.load_bundle)  # type: ignore
    # The stages of one chunk are where pipeline.refine_rows calls them.
    pipeline.tokenize = timed("tokenize", pipeline.tokenize)  # type: ignore[assignment]
    pipeline.prior_from_neighbors = timed(  # type: ignore[assignment]
        "neighbour search", pipeline.prior_from_neighbors)
    pipeline.refine_batch = timed("refinement", pipeline.refine_batch)  # type: ignore
    pipeline.output_fields = timed("decision", pipeline.output_fields)  # type: ignore
    # The chunk's wall time: its batches may run side by side (OnnxBackend on a multi-core
    # CPU), so the stages inside add up thread time, not wall time.
    chunk = pipeline.refine_chunk
    api.refine_chunk = lambda *a, **k: timed_wall(chunk, *a, **k)  # type: ignore[assignment]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = api.refine(args.corpus, args.model, Path(tmp) / "out.jsonl",
                             backend=args.backend, precision=args.precision,
                             chunk_size=args.chunk_size, triton_url=args.triton_url)
        wall = time.perf_counter() - start
    # refine_batch's time includes the reverse process it calls: the rest is numpy.
    SECONDS["refinement"] -= SECONDS["reverse process"]
    SECONDS["read, parse, write, other"] = (
        wall - SECONDS["load bundle and runtime"] - CHUNK_WALL[0])
    rows = summary.refined
    # Shares of the time spent (thread time where batches ran side by side).
    spent = sum(SECONDS.values())
    table = {stage: {"seconds": round(s, 3), "share": round(s / spent, 3),
                     "ms_per_row": round(1000 * s / rows, 3)} for stage, s in SECONDS.items()}
    print(json.dumps({"machine": machine(), "rows": rows, "wall_s": round(wall, 2),
                      "rows_per_s": round(rows / wall, 1), "backend": args.backend,
                      "precision": args.precision, "thread_seconds": round(spent, 2),
                      "stages": table}, indent=1))
    print("\n| stage | ms per row | share |\n| --- | --- | --- |")
    for stage, values in table.items():
        print(f"| {stage} | {values['ms_per_row']:.2f} | {100 * values['share']:.1f}% |")


if __name__ == "__main__":
    main()
