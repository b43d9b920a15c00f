"""On corpora of known noise: is the product never worse than the LLM, calibrated, and is its
noise estimate right?

Runs `train --refined-out` on each corpus (made by noisy_corpora.py, or any corpus with
``gold_label``), then scores the refined file: accuracy against the LLM's, fixed/broken, the ECE
of ``confidence``, and the estimated noise ratio with its 90% interval against the true one.

    python benchmarks/noisy_corpora.py --out runs/corpora --rows 600
    python benchmarks/known_noise.py runs/corpora/*.jsonl --seeds 0 --out runs/known-noise
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from throughput import machine  # benchmarks/ is on sys.path as a script

from sidyp_prod import api
from sidyp_prod.config import SiDyPConfig
from sidyp_prod.evaluate import read_records


def true_noise(corpus: Path) -> float:
    rows = [r for r in read_records(corpus) if r.get("label") is not None]
    return float(np.mean([r["label"] != r["gold_label"] for r in rows]))


def run(corpus: Path, seed: int, out: Path, config: SiDyPConfig) -> dict:
    work = out / f"{corpus.stem}-s{seed}"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = api.train(corpus, work / "bundle", config, refined_out=work / "refined.jsonl",
                        overwrite=True, export=False)
    seconds = time.perf_counter() - start
    report = api.evaluate(work / "refined.jsonl")
    # The training rows' distributions, for trying other noise estimators without retraining.
    records = list(read_records(work / "refined.jsonl"))
    index = {label: i for i, label in enumerate(sorted(
        {r["label"] for r in records if r.get("label") is not None}))}
    refinement = summary.refinement
    np.savez_compressed(
        work / "arrays.npz",
        given=np.array([index.get(r.get("label"), -1) for r in records]),
        gold=np.array([index.get(r["gold_label"], -2) for r in records]),
        **{name: getattr(refinement, name) for name in ("classifier", "marginal", "held_out")
           if getattr(refinement, name) is not None})
    estimate = summary.calibration_noise_ratio or summary.noise_ratio
    return {"corpus": corpus.stem, "seed": seed, "rows": report.n_rows,
            "llm": report.given_accuracy, "refined": report.refined_accuracy,
            "changed": report.changed, "fixed": report.fixed, "broken": report.broken,
            "ece": report.ece, "noise_true": true_noise(corpus), "noise_estimate": estimate,
            "noise_mixture": summary.noise_ratio, "noise_interval": summary.noise_ratio_interval,
            "seconds": seconds}


def print_table(results: list[dict]) -> None:
    print("\n| corpus | seed | rows | LLM | refined | fixed/broken | ECE | true noise | "
          "estimate (90% interval) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        lo, hi = r["noise_interval"] or (float("nan"), float("nan"))
        print(f"| {r['corpus']} | {r['seed']} | {r['rows']} | {100 * r['llm']:.1f} | "
              f"{100 * r['refined']:.1f} | {r['fixed']}/{r['broken']} | {r['ece']:.3f} | "
              f"{r['noise_true']:.3f} | {r['noise_estimate']:.3f} ({lo:.3f}–{hi:.3f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/known-noise"))
    parser.add_argument("--config", type=json.loads, default={},
                        help='hyper-parameter overrides as JSON, e.g. \'{"branches": 3}\'')
    args = parser.parse_args()
    results = []
    for corpus in args.corpora:
        for seed in args.seeds:
            config = SiDyPConfig(**{**args.config, "seed": seed})
            results.append(run(corpus, seed, args.out, config))
            print(json.dumps(results[-1]), flush=True)
    (args.out / "known-noise.json").write_text(json.dumps(
        {"machine": machine(), "config_overrides": args.config, "results": results}, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
