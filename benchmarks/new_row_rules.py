"""How a new row's label is best made: the combinations of the experts and the decision rules,
re-scored on the bundles an inductive run kept (no retraining).

A training row has a held-out classifier as its third expert; a new row does not, and
`for_new_rows` gives it the vote of its reference neighbours instead. This scores, on every
fold's new rows (each fold's bundle never saw them), the distributions refine could report: the
default product (a change also the ensemble's prediction, ``new_row_agreement``), the same
without that check, the product with the ensemble standing in for the third expert (the default
before), the product without a third expert, the ensemble alone, the denoiser's p(y | x) alone,
the kNN prior alone; each with the bundle's calibration, under the odds rule (2, 3, or
``--odds``) and the argmax. Beside what the changes fixed and broke, the table gives what the
distribution expected them to (the sums of p[new label] and p[given label] over the changed
rows): where the two disagree, the distribution is miscalibrated exactly where it acts.

    python benchmarks/quality.py --inductive-folds 5 --seeds 0 --out runs/inductive
    python benchmarks/new_row_rules.py runs/inductive --corpus CORPUS
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from quality import _refine_valid  # benchmarks/ is on sys.path as a script

from sidyp_prod.bundle import load_bundle
from sidyp_prod.decision import DecisionRule, calibrate, decide
from sidyp_prod.evaluate import expected_calibration_error, read_records
from sidyp_prod.model_io import load_model
from sidyp_prod.refinement import reported_distribution

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval-fewshot-mixtral"

# (name, distribution source, the third expert: "refine" (as refine makes it: the neighbours'
# vote where the bundle has held-out folds), "ensemble" or None; whether a change must be the
# ensemble's prediction too, decision.agreed_change)
SOURCES = [("product, the neighbours' vote third, the ensemble agreeing (default)", "product",
            "refine", True),
           ("product, the neighbours' vote third", "product", "refine", False),
           ("product, the ensemble standing in third", "product", "ensemble", False),
           ("product of denoiser and ensemble", "product", None, False),
           ("ensemble alone", "classifier", None, False),
           ("denoiser p(y | x) alone", "marginal", None, False)]


def rules(odds: list[float]) -> list[tuple[str, str, float]]:
    named = [(f"odds {o:g}" + (" (default)" if o == 2.0 else ""), "odds", o) for o in odds]
    return [*named, ("argmax", "argmax", 1.0)]


def fold_arrays(fold: Path, gold_by_id: dict) -> dict:
    loaded = load_model(load_bundle(fold / "bundle"))
    index = {label: i for i, label in enumerate(loaded.labels)}
    rows = list(read_records(fold / "new.jsonl"))
    given = np.array([index.get(r.get("label"), -1) for r in rows])
    gold = np.array([index.get(gold_by_id[r["id"]], -2) for r in rows])
    refinement, prior = _refine_valid([r["text"] for r in rows], given, loaded, fold / "bundle")
    return {"loaded": loaded, "given": given, "gold": gold, "refinement": refinement,
            "prior": prior}


def score_variants(folds: list[dict], odds_values: Sequence[float] = (2.0, 3.0)
                   ) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, source, third, agree in SOURCES:
        for rule_name, rule, odds in rules(list(odds_values)):
            right, changed, fixed, broken, conf = [], 0, 0, 0, []
            expected_fixed = expected_broken = 0.0
            for f in folds:
                loaded, given, gold = f["loaded"], f["given"], f["gold"]
                refinement = replace(f["refinement"], held_out={
                    "refine": f["refinement"].held_out,
                    "ensemble": f["refinement"].classifier, None: None}[third])
                decision = DecisionRule(rule, odds, loaded.label_bias, blocked=tuple(
                    loaded.calibration.blocked or ()))
                reported = reported_distribution(refinement, given, source, loaded.temperature,
                                                 loaded.label_shares)
                dist = calibrate(reported, given, decision)
                pred = decide(dist, given, decision,
                              f["refinement"].classifier if agree else None)
                right.append(pred == gold)
                moved = (pred != given) & (given >= 0)
                changed += int(moved.sum())
                fixed += int((moved & (pred == gold)).sum())
                broken += int((moved & (given == gold)).sum())
                rows = np.flatnonzero(moved)
                expected_fixed += float(dist[rows, pred[rows]].sum())
                expected_broken += float(dist[rows, given[rows]].sum())
                conf.append(dist[np.arange(len(pred)), pred])
            hits = np.concatenate(right)
            out[f"{name}, {rule_name}"] = {
                "accuracy": float(hits.mean()), "changed": changed, "fixed": fixed,
                "broken": broken, "expected_fixed": expected_fixed,
                "expected_broken": expected_broken,
                "ece": expected_calibration_error(np.concatenate(conf), hits)}
    hits = np.concatenate([f["prior"].argmax(1) == f["gold"] for f in folds])
    out["kNN prior alone, argmax"] = {"accuracy": float(hits.mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an inductive run's --out directory")
    parser.add_argument("--corpus", type=Path, default=SHARED / "train.jsonl")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--odds", type=float, nargs="+", default=[2.0, 3.0],
                        help="the odds rule's thresholds to score (the argmax is always scored)")
    args = parser.parse_args()
    gold_by_id = {r["id"]: r["gold_label"] for r in read_records(args.corpus)}
    folds = [fold_arrays(d, gold_by_id)
             for d in sorted(args.run.glob(f"seed{args.seed}-fold*")) if (d / "bundle").exists()]
    scores = score_variants(folds, args.odds)
    (args.run / f"new-row-rules-{args.seed}.json").write_text(json.dumps(scores, indent=1))
    print(f"\n{sum(len(f['given']) for f in folds)} new rows, {len(folds)} folds\n")
    print("| distribution, rule | accuracy (%) | changed | fixed/broken | expected | ECE |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, s in scores.items():
        fb = f"{s['fixed']}/{s['broken']}" if "fixed" in s else "–"
        expected = (f"{s['expected_fixed']:.0f}/{s['expected_broken']:.0f}"
                    if "fixed" in s else "–")
        ece = f"{s['ece']:.3f}" if "ece" in s else "–"
        print(f"| {name} | {100 * s['accuracy']:.1f} | {s.get('changed', '–')} | {fb} | "
              f"{expected} | {ece} |")


if __name__ == "__main__":
    main()
