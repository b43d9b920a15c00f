"""``sidyp-prod refine CORPUS`` (train + refine every row) on a large corpus: peak RSS, wall time,
and the time per 100k rows past the training sample, from the progress journal.

The corpus repeats the real SemEval texts (train and valid) with fresh ids and their LLM labels,
no gold. The command runs as a child process; every second the benchmark reads the refine
journal (rows done), the child's RSS and its CPU time, so the per-100k figures are given in both
wall seconds and CPU seconds (CPU seconds do not move when something else shares the machine).
Then, with the bundle the command kept, ``refine --model`` over the same first ``--format-rows``
rows as JSONL and as Parquet, in the same run, gives the two input formats' rows/s.

    python benchmarks/one_command.py --rows 1000000 [--work runs/one-command] [--format-rows 50000]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "semeval-fewshot-mixtral"
CLI = [str(Path(sys.executable).parent / "sidyp-prod")]
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def build_corpus(path: Path, rows: int, seed: int = 0) -> Path:
    source = [json.loads(line) for name in ("train.jsonl", "valid.jsonl")
              for line in (DATA / name).read_text().splitlines()]
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(rows):
            item = rng.choice(source)
            out.write(json.dumps({"id": f"r{i}", "text": item["text"],
                                  "label": item["label"]}) + "\n")
    return path


def _proc_stats(pid: int) -> tuple[int, float]:
    """(RSS bytes, user+system CPU seconds) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    return int(fields[21]) * PAGE, cpu


def run_watched(command: list[str], journal: Path, interval: float = 1.0) -> dict:
    """Run ``command``; sample (seconds, rows done, RSS, CPU seconds) until it exits."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, int, int, float]] = []
    peak = 0
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # reaps it once it has exited
        if pid:
            break
        try:
            rss, cpu = _proc_stats(child.pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        peak = max(peak, rss)
        try:
            done = int(json.loads(journal.read_text())["progress"]["lines"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, ValueError):
            done = 0
        samples.append((time.perf_counter() - start, done, rss, cpu))
        time.sleep(interval)
    out = child.stdout.read() if child.stdout else ""
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status}):\n{out}")
    return {"seconds": time.perf_counter() - start, "peak_rss": max(peak, usage.ru_maxrss * 1024),
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "samples": samples, "output": out}


def per_block(samples: list[tuple[float, int, int, float]], block: int) -> list[dict]:
    """Wall and CPU seconds for each ``block`` rows of the refine phase, from the samples."""
    marks, rows = [], []
    for seconds, done, _, cpu in samples:
        if done and (not marks or done >= marks[-1][0] + block):
            marks.append((done, seconds, cpu))
    for (a, t0, c0), (b, t1, c1) in itertools.pairwise(marks):
        scale = block / (b - a)
        rows.append({"rows": f"{a}-{b}", "wall_s_per_block": round((t1 - t0) * scale, 1),
                     "cpu_s_per_block": round((c1 - c0) * scale, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "one-command")
    parser.add_argument("--format-rows", type=int, default=50_000)
    parser.add_argument("--block", type=int, default=100_000)
    parser.add_argument("--max-train-rows", type=int, default=None,
                        help="the command's --max-train-rows (default: the product's default)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = args.work / "corpus.jsonl"
    if not corpus.exists():
        build_corpus(corpus, args.rows)
    out = args.work / "corpus.refined.jsonl"
    journal = out.with_name(out.name + ".journal.json")
    sample = [] if args.max_train_rows is None else ["--max-train-rows", str(args.max_train_rows)]
    run = run_watched([*CLI, "refine", str(corpus), "--overwrite", "--quiet", "--json", *sample],
                      journal)
    summary = json.loads(run["output"])
    first_refined = next((t for t, done, _, _ in run["samples"] if done), run["seconds"])
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "rows": args.rows,
        "wall_s": round(run["seconds"], 1),
        "training_phase_s": round(first_refined, 1),
        "peak_rss_mib": round(run["peak_rss"] / 2**20),
        "cpu_s": round(run["cpu_seconds"], 1),
        "per_block": per_block(run["samples"], args.block),
        "summary": summary,
    }
    # Input formats: the kept bundle over the same first rows, JSONL then Parquet.
    import pyarrow as pa
    import pyarrow.parquet as pq

    head = args.work / "head.jsonl"
    with corpus.open() as src, head.open("w") as dst:
        for _, line in zip(range(args.format_rows), src, strict=False):
            dst.write(line)
    table = pa.Table.from_pylist([json.loads(line) for line in head.read_text().splitlines()])
    pq.write_table(table, args.work / "head.parquet", row_group_size=10_000)
    formats = {}
    for name in ("head.jsonl", "head.parquet"):
        target = args.work / f"{name}.refined.jsonl"
        timed = run_watched([*CLI, "refine", str(args.work / name), "--model",
                             str(args.work / "corpus.sidyp-model"), "--out", str(target),
                             "--quiet", "--json"], target.with_name(target.name + ".journal.json"))
        formats[name.split(".")[1]] = {
            "rows_per_s": round(args.format_rows / timed["seconds"], 1),
            "peak_rss_mib": round(timed["peak_rss"] / 2**20)}
    result["formats"] = formats
    (args.work / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}, indent=1))


if __name__ == "__main__":
    main()
