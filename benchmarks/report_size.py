"""Page size, build time and peak memory of ``sidyp-prod report`` at several corpus sizes.

A refined JSONL of N rows is made by repeating the rows of a real refined output (ids made
unique), then ``sidyp-prod report`` runs on it in a fresh process per size, so its peak RSS is
its own; the bundle (``--model``) adds the neighbour search of the shown issues.

    python benchmarks/report_size.py REFINED [--model BUNDLE] [--train-corpus CORPUS]
                                     [--rows 10000 1000000] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthesize(source: Path, rows: int, out: Path) -> None:
    """``rows`` refined rows: ``source``'s rows over and over, each copy's ids made unique."""
    lines = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    with out.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            rec = dict(lines[i % len(lines)])
            rec["id"] = f"{rec.get('id', i)}-{i // len(lines)}"
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def measure(refined: Path, page: Path, model: Path | None, train: Path | None) -> dict:
    cmd = [sys.executable, "-m", "sidyp_prod.cli.main", "report", str(refined), "--out",
           str(page), "--json"]
    if model is not None:
        cmd += ["--model", str(model)]
    if train is not None:
        cmd += ["--train-corpus", str(train)]
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout:
        child = subprocess.Popen(cmd, stdout=stdout)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if child.returncode:
            raise SystemExit(f"{' '.join(cmd)} exited with {child.returncode}")
        stdout.seek(0)
        summary = json.load(stdout)
    return {
        "rows": summary["rows"],
        "issues": summary["issues"],
        "shown": summary["shown"],
        "refined_mb": round(refined.stat().st_size / 1e6, 1),
        "page_mb": round(summary["bytes"] / 1e6, 3),
        "build_seconds": round(summary["seconds"], 2),
        "process_seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refined", type=Path, help="a real refined JSONL to repeat")
    parser.add_argument("--model", type=Path, help="the bundle that refined it")
    parser.add_argument("--train-corpus", type=Path, help="the bundle's training corpus")
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--work", type=Path, help="where the synthetic files go (default: tmp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sidyp-report-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for rows in sorted(args.rows):
        refined = work / f"refined-{rows}.jsonl"
        synthesize(args.refined, rows, refined)
        results.append(measure(refined, work / f"report-{rows}.html", args.model,
                               args.train_corpus))
        refined.unlink()
        if not args.json:
            print(results[-1], flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
