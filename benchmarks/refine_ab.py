"""Refine speed of two bundles (e.g. the same bundle exported by two versions of the exporter),
interleaved in one process so that the machine's noise falls on both alike.

Each bundle refines the corpus once to warm up, then ``--runs`` times, alternating which goes
first; prints rows/s of each and the ratio B / A, and whether the outputs are the same bytes.

    python benchmarks/refine_ab.py BUNDLE_A BUNDLE_B --corpus CORPUS [--runs 4]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from throughput import machine  # benchmarks/ is on sys.path as a script

from sidyp_prod import api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs=2, metavar="BUNDLE")
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=Path("runs/refine-ab"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    outs = [args.work / f"{name}.jsonl" for name in ("a", "b")]
    rows = sum(1 for line in args.corpus.open() if line.strip())

    def run(i: int) -> float:
        start = time.perf_counter()
        api.refine(args.corpus, args.bundles[i], outs[i], chunk_size=args.chunk_size)
        return time.perf_counter() - start

    run(0), run(1)  # warm-up: file cache, sessions' first allocations
    seconds = [0.0, 0.0]
    for r in range(args.runs):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            seconds[i] += run(i)
    result = {"machine": machine(), "rows": rows, "runs": args.runs,
              "a": str(args.bundles[0]), "b": str(args.bundles[1]),
              "a_rows_per_s": round(rows * args.runs / seconds[0], 1),
              "b_rows_per_s": round(rows * args.runs / seconds[1], 1),
              "b_over_a": round(seconds[0] / seconds[1], 3),
              "same_bytes": filecmp.cmp(outs[0], outs[1], shallow=False)}
    (args.work / "refine-ab.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
