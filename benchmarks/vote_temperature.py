"""A new row's neighbours' vote tempered (``temper_vote``), through `refine`, on the fold bundles
an inductive run kept (no retraining).

Bundles trained before the vote temperature was recorded get it here exactly as `train` fits
it: the temperature that fits each training row's vote among the other clean-marked reference
rows to its label (``post_training``). Each fold's bundle is copied, the temperature written
into the copy's ``calibration.json`` (its hash recorded), ``temper_vote`` set on or off in the
copy's config, and the fold's new rows refined with both; gold labels are read for scoring only.

    python benchmarks/quality.py --inductive-folds 5 --seeds 0 --out runs/inductive
    python benchmarks/vote_temperature.py runs/inductive --seed 0 [--settings '{"...": ...}']
    python benchmarks/vote_temperature.py runs/quality/bundle-0 --rows valid.jsonl   # one bundle
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from decision_rules import training_rows_vote  # benchmarks/ is on sys.path as a script
from inductive import _refined, scored

from sidyp_prod import api
from sidyp_prod.bundle import add_to_bundle, load_bundle
from sidyp_prod.calibration import likelihood_temperature
from sidyp_prod.evaluate import read_records
from sidyp_prod.model_io import CALIBRATION_FILE, REFERENCE_FILE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval-fewshot-mixtral"


def with_vote_temperature(source: Path, copy: Path, temper_vote: bool,
                          settings: dict | None = None) -> float:
    """Copy the bundle at ``source`` to ``copy`` with its fitted vote temperature recorded and
    ``temper_vote`` (and ``settings``) set in its config; return the temperature."""
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(source, copy)
    bundle = load_bundle(copy)
    config = bundle.manifest["config"]
    labels = bundle.arrays(REFERENCE_FILE)["labels"]
    temperature = likelihood_temperature(training_rows_vote(copy, config["knn_k"]), labels)
    calibration = json.loads(bundle.path(CALIBRATION_FILE).read_text())
    calibration["vote_temperature"] = temperature
    add_to_bundle(bundle, {CALIBRATION_FILE: json.dumps(calibration, indent=1).encode()},
                  {"config": {**config, **(settings or {}), "temper_vote": temper_vote}})
    return temperature


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path,
                        help="an inductive run (seedS-foldK/ directories), or with --rows a "
                        "bundle trained on --corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", type=Path, default=SHARED / "train.jsonl",
                        help="where the folds' rows (and their gold labels) come from")
    parser.add_argument("--rows", type=Path, default=None,
                        help="refine these rows (with gold_label) with the bundle RUN instead, "
                        "e.g. SemEval's valid.jsonl")
    parser.add_argument("--settings", type=json.loads, default={},
                        help="other prediction settings to record in both copies, as JSON")
    args = parser.parse_args()
    if args.rows is not None:
        # (bundle, its new rows, where its outputs go)
        jobs = [(args.run, args.rows, args.run.parent / f"{args.run.name}-vote")]
        gold_file = args.rows
    else:
        folds = sorted(d for d in args.run.glob(f"seed{args.seed}-fold*")
                       if (d / "bundle").exists())
        jobs = [(fold / "bundle", fold / "new.jsonl", fold / "refined-vote") for fold in folds]
        gold_file = args.corpus
    gold = {r["id"]: r["gold_label"] for r in read_records(gold_file)}
    outputs: dict[bool, list[Path]] = {False: [], True: []}
    for bundle, new_rows, stem in jobs:
        for on in (False, True):
            suffix = "on" if on else "off"
            copy = stem.parent / f"{stem.name}-bundle-{suffix}"
            temperature = with_vote_temperature(bundle, copy, on, args.settings)
            out = stem.parent / f"{stem.name}-{suffix}.jsonl"
            api.refine(new_rows, copy, out)
            shutil.rmtree(copy)
            outputs[on].append(out)
        print(f"{bundle}: vote temperature {temperature:.2f}", flush=True)
    rows = [r for _, new_rows, _ in jobs for r in read_records(new_rows)]
    for on, paths in outputs.items():
        pred, conf = [], []
        for path in paths:
            labels, confidences = _refined(path)
            pred += labels
            conf += confidences
        result = scored(pred, [r.get("label") for r in rows], [gold[r["id"]] for r in rows],
                        conf)
        print(f"temper_vote {'on ' if on else 'off'}: {len(rows)} rows, accuracy "
              f"{100 * result['accuracy']:.2f}%, fixed/broken {result['fixed']}/"
              f"{result['broken']}, ECE {result['ece']:.3f}, mean confidence "
              f"{np.mean(conf):.3f}")


if __name__ == "__main__":
    main()
