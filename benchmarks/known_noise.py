"""On corpora of known noise: is the product never worse than the LLM, calibrated, and is its
noise estimate right?

Runs `train --refined-out` on each corpus (made by noisy_corpora.py, or any corpus with
``gold_label``), then scores the refined file: accuracy against the LLM's, fixed/broken, the ECE
of ``confidence``, and the estimated noise ratio with its 90% interval against the true one.

    python benchmarks/noisy_corpora.py --out runs/corpora --rows 600
    python benchmarks/known_noise.py runs/corpora/*.jsonl --seeds 0 --out runs/known-noise

``--trusted-rows N`` gives a random N rows (drawn by the seed) their gold label in a
``trusted_label`` field and trains with ``--trusted-field trusted_label``; the scores are then
those of the other rows. ``--new-rows F`` holds a random fraction F of the rows out of training
and scores them too, refined as new rows by `refine` with the bundle (the default int8 graph):
whether the rule and calibration fitted on the training rows carry over.
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
from sidyp_prod.decision import rule_name
from sidyp_prod.evaluate import evaluate_records, read_records

TRUSTED_FIELD = "trusted_label"


def true_noise(corpus: Path) -> float:
    rows = [r for r in read_records(corpus) if r.get("label") is not None]
    return float(np.mean([r["label"] != r["gold_label"] for r in rows]))


def with_trusted_rows(corpus: Path, rows: int, seed: int, out: Path) -> Path:
    """A copy of ``corpus`` where ``rows`` random rows carry their gold label as trusted."""
    records = list(read_records(corpus))
    chosen = set(np.random.default_rng(seed).choice(len(records), rows, replace=False).tolist())
    out.write_text("".join(json.dumps({**r, TRUSTED_FIELD: r["gold_label"]} if i in chosen
                                      else r) + "\n" for i, r in enumerate(records)))
    return out


def split_new_rows(corpus: Path, fraction: float, seed: int, work: Path) -> tuple[Path, Path]:
    """``corpus`` split at random (by ``seed``) into rows to train on and ``fraction`` new rows."""
    records = list(read_records(corpus))
    new = np.random.default_rng(seed + 1000).random(len(records)) < fraction
    paths = work / "train-rows.jsonl", work / "new-rows.jsonl"
    for path, keep in zip(paths, (~new, new), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r, k in zip(records, keep, strict=True)
                                if k))
    return paths


def scores(path: Path) -> dict:
    report = evaluate_records(r for r in read_records(path) if TRUSTED_FIELD not in r)
    return {"rows": report.n_rows, "llm": report.given_accuracy,
            "refined": report.refined_accuracy, "changed": report.changed,
            "fixed": report.fixed, "broken": report.broken, "ece": report.ece}


def run(corpus: Path, seed: int, out: Path, config: SiDyPConfig, trusted_rows: int = 0,
        new_rows: float = 0.0) -> dict:
    work = out / (f"{corpus.stem}-s{seed}" + (f"-t{trusted_rows}" if trusted_rows else "")
                  + (f"-new{new_rows:g}" if new_rows else ""))
    work.mkdir(parents=True, exist_ok=True)
    train_rows, new_path = (split_new_rows(corpus, new_rows, seed, work) if new_rows
                            else (corpus, None))
    trained_on = (with_trusted_rows(train_rows, trusted_rows, seed, work / "corpus.jsonl")
                  if trusted_rows else train_rows)
    start = time.perf_counter()
    summary = api.train(trained_on, work / "bundle", config, refined_out=work / "refined.jsonl",
                        overwrite=True, export=new_path is not None,
                        trusted_field=TRUSTED_FIELD if trusted_rows else None)
    seconds = time.perf_counter() - start
    new = None
    if new_path is not None:
        api.refine(new_path, work / "bundle", work / "new-refined.jsonl")
        new = scores(work / "new-refined.jsonl")
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
    return {"corpus": corpus.stem, "seed": seed, **scores(work / "refined.jsonl"),
            "noise_true": true_noise(corpus), "noise_estimate": estimate,
            "noise_mixture": summary.noise_ratio, "noise_interval": summary.noise_ratio_interval,
            "trusted_check": summary.trusted_check, "new_rows": new, "seconds": seconds}


def print_table(results: list[dict]) -> None:
    print("\n| corpus | seed | rows | LLM | refined | fixed/broken | ECE | true noise | "
          "estimate (90% interval) | rule kept on trusted rows |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        lo, hi = r["noise_interval"] or (float("nan"), float("nan"))
        check = r.get("trusted_check")
        if check and check.get("calibrated_to_trusted"):  # the estimate is then theirs
            lo, hi = check["noise_ratio_interval"]
        chosen = None if check is None else check["chosen"]
        kept = "–" if chosen is None else (
            f"{rule_name(chosen['rule'], chosen['odds'])} ({check['rows']} rows)")
        print(f"| {r['corpus']} | {r['seed']} | {r['rows']} | {100 * r['llm']:.1f} | "
              f"{100 * r['refined']:.1f} | {r['fixed']}/{r['broken']} | {r['ece']:.3f} | "
              f"{r['noise_true']:.3f} | {r['noise_estimate']:.3f} ({lo:.3f}–{hi:.3f}) | {kept} |")
        new = r.get("new_rows")
        if new:
            print(f"| {r['corpus']}, new rows | {r['seed']} | {new['rows']} | "
                  f"{100 * new['llm']:.1f} | {100 * new['refined']:.1f} | "
                  f"{new['fixed']}/{new['broken']} | {new['ece']:.3f} | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpora", type=Path, nargs="+")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/known-noise"))
    parser.add_argument("--trusted-rows", type=int, default=0,
                        help="rows given their gold label as trusted labels (0: none)")
    parser.add_argument("--new-rows", type=float, default=0.0,
                        help="fraction of rows held out of training and refined as new rows")
    parser.add_argument("--config", type=json.loads, default={},
                        help='hyper-parameter overrides as JSON, e.g. \'{"branches": 3}\'')
    args = parser.parse_args()
    results = []
    for corpus in args.corpora:
        for seed in args.seeds:
            config = SiDyPConfig(**{**args.config, "seed": seed})
            results.append(run(corpus, seed, args.out, config, args.trusted_rows,
                               args.new_rows))
            print(json.dumps(results[-1]), flush=True)
    (args.out / "known-noise.json").write_text(json.dumps(
        {"machine": machine(), "config_overrides": args.config, "results": results}, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
