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

from hardware import machine  # benchmarks/ is on sys.path as a script

from sidyp_prod import api, pipeline

SECONDS: dict[str, float] = defaultdict(float)
# CPU seconds of the calling thread: ONNX Runtime's one-thread sessions and faiss' one-thread
# searches run on it, so this is what a stage costs, without the time a thread spent waiting
# for the GIL or a core (which wall time inside a stage counts when batches run side by side).
CPU_SECONDS: dict[str, float] = defaultdict(float)


def timed(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, start_cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[stage] += time.perf_counter() - start
            CPU_SECONDS[stage] += time.thread_time() - start_cpu

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
        # The fp32 back end that re-runs an int8 run's close calls: its calls are the same stages.
        self.reference = None if inner.reference is None else TimedBackend(inner.reference)

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
        start, start_cpu = time.perf_counter(), time.process_time()
        summary = api.refine(args.corpus, args.model, Path(tmp) / "out.jsonl",
                             backend=args.backend, precision=args.precision,
                             chunk_size=args.chunk_size, triton_url=args.triton_url)
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    # refine_batch's time includes the reverse process it calls: the rest is numpy.
    SECONDS["refinement"] -= SECONDS["reverse process"]
    CPU_SECONDS["refinement"] -= CPU_SECONDS["reverse process"]
    SECONDS["read, parse, write, other"] = (
        wall - SECONDS["load bundle and runtime"] - CHUNK_WALL[0])
    # Every thread's CPU the stages do not account for (the main thread's reading and
    # writing, thread hand-offs, any thread a library starts).
    CPU_SECONDS["read, parse, write, other"] = cpu - sum(CPU_SECONDS.values())
    rows = summary.refined
    # Shares of the time spent (thread time where batches ran side by side).
    spent = sum(SECONDS.values())
    spent_cpu = sum(CPU_SECONDS.values())
    table = {stage: {"seconds": round(s, 3), "share": round(s / spent, 3),
                     "ms_per_row": round(1000 * s / rows, 3),
                     "cpu_ms_per_row": round(1000 * CPU_SECONDS[stage] / rows, 3),
                     "cpu_share": round(CPU_SECONDS[stage] / spent_cpu, 3)}
             for stage, s in SECONDS.items()}
    print(json.dumps({"machine": machine(), "rows": rows, "wall_s": round(wall, 2),
                      "rows_per_s": round(rows / wall, 1), "backend": args.backend,
                      "precision": args.precision, "thread_seconds": round(spent, 2),
                      "cpu_seconds": round(spent_cpu, 2),
                      "stages": table}, indent=1))
    print("\n| stage | ms per row | share | CPU ms per row | CPU share |")
    print("| --- | --- | --- | --- | --- |")
    for stage, v in table.items():
        print(f"| {stage} | {v['ms_per_row']:.2f} | {100 * v['share']:.1f}% | "
              f"{v['cpu_ms_per_row']:.2f} | {100 * v['cpu_share']:.1f}% |")
    load = CPU_SECONDS["load bundle and runtime"]
    outside = spent_cpu - load - CPU_SECONDS["encode"]
    share = outside / (spent_cpu - load)
    print(f"\nCPU outside the encoder graphs, load aside: {100 * share:.1f}%")


if __name__ == "__main__":
    main()
