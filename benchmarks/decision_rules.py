"""Label source x decision rule, re-scored from a quality.py run without retraining.

quality.py saves every trained model's distributions (arrays-SEED.npz) and its estimates
(result-SEED.json: rho, per-class rho). The decision rule and the calibration are applied after
refinement, so every combination can be scored from those files, exactly as `output_fields`
would apply it (temperature fitted on the training rows, then the per-class bias, then the rule).
Gold labels are read here, for scoring only.

    python benchmarks/decision_rules.py runs/quality [--odds 1 1.5 2 3 4] [--training-vote mean]
                                        [--rho 0.555]

``--training-vote`` gives the training rows' product the kNN vote a new row has as its third
expert (its neighbours among each branch's clean-marked reference rows, the row itself left
out; from the run's ``bundle-SEED/reference.safetensors``): ``mean`` averages it with the
held-out classifier, ``replace`` puts it in the held-out classifier's place. The calibration
keeps its noise target (the held-out classifier's estimate stays in it).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from sidyp_prod.bundle import load_bundle
from sidyp_prod.config import SiDyPConfig
from sidyp_prod.decision import (
    DecisionRule,
    apply_label_bias,
    calibrate,
    calibration_targets,
    decide,
    label_shares,
)
from sidyp_prod.evaluate import (
    EvaluationReport,
    evaluate_records,
    expected_calibration_error,
    write_plots,
)
from sidyp_prod.model_io import REFERENCE_FILE
from sidyp_prod.refinement import (
    BatchRefinement,
    fit_output_calibration,
    leave_self_out_vote,
    reported_distribution,
)

SOURCES = ("marginal", "product", "classifier", "given", "candidates")


def refinement(arrays: dict[str, np.ndarray], prefix: str) -> BatchRefinement:
    parts = {k: arrays[prefix + k] for k in ("classifier", "conditional", "marginal", "candidates")}
    held_out = arrays.get(prefix + "held_out")  # absent from runs made before held_out_folds
    return BatchRefinement(**parts, prior_kind=np.zeros((1, len(parts["marginal"])), dtype=int),
                           held_out=held_out)


def scores(dist: np.ndarray, given: np.ndarray, gold: np.ndarray, rule: DecisionRule) -> dict:
    pred = decide(dist, given, rule)
    changed = pred != given
    return {
        "accuracy": float((pred == gold).mean()),
        "fixed": int((changed & (pred == gold)).sum()),
        "broken": int((changed & (given == gold)).sum()),
        "ece": expected_calibration_error(dist[np.arange(len(pred)), pred], pred == gold),
    }


def _estimated(result: dict) -> bool:
    return result["config"].get("noise_ratio") is None


def training_rows_vote(bundle: Path, k: int) -> np.ndarray:
    """Each training row's kNN vote among each branch's clean-marked reference rows other than
    itself, averaged over branches (refine's vote for a new row, prior_from_neighbors)."""
    reference = load_bundle(bundle).arrays(REFERENCE_FILE)
    return leave_self_out_vote(reference["embeddings"], reference["labels"],
                               reference["clean"], k, reference["centroids"].shape[2])


def one_seed(run: Path, seed: int, odds: list[float], per_class: bool, shares: bool,
             held_out: bool = True, mixture_only: bool = False,
             training_vote: str | None = None, rho: float | None = None) -> dict:
    arrays = dict(np.load(run / f"arrays-{seed}.npz"))
    if not held_out:
        arrays = {k: v for k, v in arrays.items() if not k.endswith("held_out")}
    result = json.loads((run / f"result-{seed}.json").read_text())
    given, gold = arrays["given"], arrays["gold"]
    v_given, v_gold = arrays["v_given"], arrays["v_gold"]
    train, valid = refinement(arrays, "train_"), refinement(arrays, "valid_")
    out: dict = {}
    average = _estimated(result) and not mixture_only
    noise, class_noise = result["noise_ratio"], result["class_noise_ratios"]
    if rho is not None or training_vote:
        # The targets fixed before the training rows' product changes: the estimate's (the
        # held-out classifiers' averaged in), or ``rho`` with each class's target scaled alike.
        noise, class_noise = calibration_targets(
            noise, class_noise, given, train.held_out if average else None)
        average = False
    if rho is not None:
        noise, class_noise = rho, np.clip(np.asarray(class_noise) * rho / noise, 0.0, 1.0)
    if training_vote:
        vote = training_rows_vote(run / f"bundle-{seed}", result["config"]["knn_k"])
        third = vote if training_vote == "replace" else (train.held_out + vote) / 2
        train = replace(train, held_out=third)
    for source in SOURCES:
        share = label_shares(given, train.marginal.shape[1]) if shares else None
        temperature, bias, _ = fit_output_calibration(
            train, given, source, noise, class_noise, share, average)
        t_dist = reported_distribution(train, given, source, temperature, share)
        v_dist = reported_distribution(valid, v_given, source, temperature, share)
        if per_class:
            t_dist = apply_label_bias(t_dist, given, bias)
            v_dist = apply_label_bias(v_dist, v_given, bias)
        for k in odds:
            rule = DecisionRule("odds", k)
            out[(source, k)] = {"train": scores(t_dist, given, gold, rule),
                                "valid": scores(v_dist, v_given, v_gold, rule)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--odds", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0, 4.0])
    parser.add_argument("--plots", type=Path, default=None,
                        help="quality-accuracy.png / quality-reliability.png of the defaults here")
    parser.add_argument("--global-only", action="store_true",
                        help="the global temperature only (no per-class step)")
    parser.add_argument("--no-label-shares", action="store_true",
                        help="do not divide by the given labels' class shares (before the "
                        "label_share_correction default)")
    parser.add_argument("--no-held-out", action="store_true",
                        help="the product without the held-out classifier (two experts)")
    parser.add_argument("--mixture-rho", action="store_true",
                        help="calibrate to the noise marking's rho alone (before the held-out "
                        "classifiers' estimate was averaged in)")
    parser.add_argument("--rho", type=float, default=None,
                        help="calibrate to this noise ratio instead of the estimate (e.g. the "
                        "true one: how much of the ECE is the estimate's miss)")
    parser.add_argument("--training-vote", choices=("mean", "replace"), default=None,
                        help="the training rows' third expert with the neighbours' vote (a new "
                        "row's): averaged with the held-out classifier, or in its place")
    args = parser.parse_args()
    seeds = sorted(int(p.stem.split("-")[1]) for p in args.run.glob("arrays-*.npz"))
    per_seed = [one_seed(args.run, s, args.odds, not args.global_only, not args.no_label_shares,
                         not args.no_held_out, args.mixture_rho, args.training_vote, args.rho)
                for s in seeds]

    def cell(source: str, k: float, split: str, key: str, scale: float = 100.0) -> str:
        values = [scale * r[(source, k)][split][key] for r in per_seed]
        digits = 1 if scale == 100.0 else 3
        text = f"{np.mean(values):.{digits}f}"
        return text + (f" ± {np.std(values):.{digits}f}" if len(values) > 1 else "")

    def fb(source: str, k: float, split: str) -> str:
        fixed = sum(r[(source, k)][split]["fixed"] for r in per_seed)
        broken = sum(r[(source, k)][split]["broken"] for r in per_seed)
        return f"{fixed}/{broken} ({fixed / max(broken, 1):.2f})"

    if args.plots:
        plot(args.run, seeds[0], args.plots)
    print(f"seeds {seeds}; {'global temperature only' if args.global_only else 'per-class'}; "
          + ("not divided" if args.no_label_shares else "divided") + " by the label shares"
          + ("; two experts" if args.no_held_out else "")
          + ("; calibrated to the mixture's rho" if args.mixture_rho else "")
          + (f"; calibrated to rho {args.rho:g}" if args.rho is not None else "")
          + (f"; training rows' vote: {args.training_vote}" if args.training_vote else ""))
    print("\n| source | odds | train acc. | train fixed/broken (ratio), all seeds | train ECE "
          "| valid acc. | valid fixed/broken |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for source in SOURCES:
        for k in args.odds:
            print(f"| {source} | {k:g} | {cell(source, k, 'train', 'accuracy')} | "
                  f"{fb(source, k, 'train')} | {cell(source, k, 'train', 'ece', 1.0)} | "
                  f"{cell(source, k, 'valid', 'accuracy')} | {fb(source, k, 'valid')} |")


def plot(run: Path, seed: int, out: Path) -> None:
    """The default configuration's labels on one seed, through evaluate.write_plots."""
    config = SiDyPConfig()
    arrays = dict(np.load(run / f"arrays-{seed}.npz"))
    result = json.loads((run / f"result-{seed}.json").read_text())
    given, gold = arrays["given"], arrays["gold"]
    train = refinement(arrays, "train_")
    shares = label_shares(given, train.marginal.shape[1]) if config.label_share_correction else None
    temperature, bias, _ = fit_output_calibration(
        train, given, config.label_source, result["noise_ratio"], result["class_noise_ratios"],
        shares, _estimated(result))
    rule = DecisionRule.from_config(config, bias)
    dist = calibrate(reported_distribution(train, given, config.label_source, temperature, shares),
                     given, rule)
    pred = decide(dist, given, rule)
    records = [{"given_label": int(g), "gold_label": int(y), "predicted_label": int(p),
                "confidence": float(dist[i, p])}
               for i, (g, y, p) in enumerate(zip(given, gold, pred, strict=True))]
    save_quality_plots(evaluate_records(records), result, run / "plots-default", out)


def save_quality_plots(report: EvaluationReport, result: dict, work: Path, out: Path) -> None:
    """evaluate.write_plots with the seed's baselines as extra bars, copied to out/quality-*."""
    extra = {"plain clf": result["plain_classifier"]["accuracy"],
             "cleanlab": result["cleanlab"]["accuracy"]} if "cleanlab" in result else {}
    paths = write_plots(report, work, title=f"SemEval train, seed {result['seed']}",
                        extra_accuracies=extra)
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        (out / f"quality-{path.name}").write_bytes(path.read_bytes())


if __name__ == "__main__":
    main()
