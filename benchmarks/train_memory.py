"""Peak RSS and Stage I throughput of ``train`` at two corpus sizes of full-length rows.

Rows are built from real SemEval texts joined until each is at least ``--max-length`` tokens
long (so every row fills the encoder's window), with the LLM label of the first text. Each run
is a fresh process; its peak RSS comes from ``wait4``. ``--code-root`` runs another checkout's
``sidyp_prod`` (e.g. a worktree of an older commit) with the same settings in the same run, so
before/after figures are ratios of one run.

    python benchmarks/train_memory.py --rows 1000 6000 [--code-root ../old-checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEMEVAL = ROOT.parent / "shared" / "data" / "semeval-fewshot-mixtral" / "train.jsonl"
# Short runs: what is measured is memory that grows with rows, not label quality.
SETTINGS = {"classifier_epochs": 1, "diffusion_epochs": 2, "held_out_folds": 0, "snapshots": 1}

RUNNER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from sidyp_prod import api
from sidyp_prod.config import SiDyPConfig
config = SiDyPConfig(**json.loads(sys.argv[4]))
summary = api.train(sys.argv[2], sys.argv[3], config, export=False, overwrite=True)
print(json.dumps({"seconds": summary.seconds, "rows": summary.rows}))
"""


def full_length_corpus(path: Path, rows: int, min_words: int, seed: int = 0) -> Path:
    source = [json.loads(line) for line in SEMEVAL.read_text().splitlines()]
    rng = random.Random(seed)
    with path.open("w") as out:
        for i in range(rows):
            first = rng.choice(source)
            words = first["text"].split()
            while len(words) < min_words:
                words += rng.choice(source)["text"].split()
            out.write(json.dumps({"id": f"r{i}", "text": " ".join(words),
                                  "label": first["label"]}) + "\n")
    return path


def measure(code_root: Path, corpus: Path, work: Path, settings: dict) -> dict:
    """Peak RSS (MiB) and timings of one ``api.train`` in a fresh process."""
    process = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(code_root), str(corpus), str(work / "bundle"),
         json.dumps(settings)],
        stdout=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"train failed ({process.returncode}) in {code_root}")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 6000])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--code-root", type=Path, action="append", default=[],
                        help="another checkout to measure beside this one (repeatable)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from throughput import machine

    settings = {**SETTINGS, "max_length": args.max_length}
    print(f"machine: {machine()}; settings {settings}")
    roots = [ROOT, *args.code_root]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results: dict[str, dict[int, dict]] = {str(r): {} for r in roots}
        for n in args.rows:
            # ~0.75 words a token for SemEval-like English: enough words to fill the window.
            corpus = full_length_corpus(work / f"rows-{n}.jsonl", n, args.max_length)
            for root in roots:
                r = measure(root, corpus, work, settings)
                per_epoch = n * settings["classifier_epochs"] / r["seconds"]["stage_one"]
                r["stage_one_rows_per_s"] = per_epoch
                results[str(root)][n] = r
                print(f"{root.name or root}: {n} rows: peak RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"encode {r['seconds']['encode']:.1f} s, Stage I {per_epoch:.1f} rows/s "
                      f"per epoch, total {sum(r['seconds'].values()):.0f} s", flush=True)
        for root in roots:
            by_rows = results[str(root)]
            lo, hi = min(by_rows), max(by_rows)
            if hi > lo:
                growth = (by_rows[hi]["peak_rss_mib"] - by_rows[lo]["peak_rss_mib"]) / (hi - lo)
                print(f"{root.name or root}: growth {1000 * growth:.1f} MiB per 1,000 rows")


if __name__ == "__main__":
    main()
