"""Label quality of SiDyP against the LLM's labels and a plain fine-tuned classifier.

Trains on a JSONL corpus with gold labels (default: the SemEval few-shot Mixtral data in
../shared), writes the refined corpus, and prints one table: accuracy of the LLM labels, of a
plain classifier fine-tuned on them (same encoder, cross-fitted over 5 folds), of cleanlab's
relabeling of that classifier (when cleanlab is installed), and of SiDyP's refined labels under
each label source, plus fixed/broken counts, ECE and wall time per stage. Gold labels are read
here, after training, and nowhere else.

    python benchmarks/quality.py [--corpus PATH] [--valid PATH] [--seeds 0 1 2] [--out DIR]

With ``--inductive-folds K`` it scores every training row as a new row instead: `train` on K-1
folds, `refine` the last, against a plain full fine-tune on the same folds (inductive.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from decision_rules import save_quality_plots  # benchmarks/ is on sys.path as a script
from inductive import mean_sd, print_inductive_table, run_inductive
from throughput import machine

from sidyp_prod import api
from sidyp_prod.backends import load_backend
from sidyp_prod.baselines import cross_fitted_classifier_probs
from sidyp_prod.bundle import load_bundle
from sidyp_prod.calibration import fit_temperature, temper
from sidyp_prod.config import SiDyPConfig
from sidyp_prod.corpus import iter_corpus, label_set_from_rows
from sidyp_prod.decision import DecisionRule, calibrate, decide
from sidyp_prod.diffusion import text_key
from sidyp_prod.encoder import tokenize
from sidyp_prod.evaluate import expected_calibration_error, read_records
from sidyp_prod.model_io import REFERENCE_FILE, LoadedModel, load_model
from sidyp_prod.pipeline import sentence_embeddings
from sidyp_prod.pretrained import load_pretrained
from sidyp_prod.refinement import (
    BatchRefinement,
    RefineSettings,
    fit_output_calibration,
    for_new_rows,
    prior_from_neighbors,
    refine_batch,
    reported_distribution,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval-fewshot-mixtral"


def cleanlab_relabel(probs: np.ndarray, given: np.ndarray) -> np.ndarray | None:
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    labelled = given >= 0
    issues = np.zeros(len(given), dtype=bool)
    issues[labelled] = find_label_issues(given[labelled], probs[labelled])
    relabeled = np.where(issues | ~labelled, probs.argmax(1), given)
    return relabeled


def score(pred: np.ndarray, gold: np.ndarray, given: np.ndarray) -> dict:
    changed = pred != given
    return {
        "accuracy": float((pred == gold).mean()),
        "changed": int(changed.sum()),
        "fixed": int((changed & (pred == gold)).sum()),
        "broken": int((changed & (given == gold)).sum()),
    }


# Decision rules scored from the same trained model (the rule is applied after refinement, so
# changing it needs no retraining): (name, change_rule, change_odds, class_calibration).
# (name, rule, odds, per-class step, variant). A variant other than "trained" re-scores the same
# models as a bundle trained without that setting would (calibration refitted): "undivided"
# without label_share_correction, "two experts" without the held-out classifier, "mixture rho"
# calibrated to the noise marking's rho alone (decision.calibration_targets).
RULES = [
    ("argmax (paper)", "argmax", 1.0, False, "trained"),
    ("argmax, per-class calibration", "argmax", 1.0, True, "trained"),
    ("odds 1.5, per-class", "odds", 1.5, True, "trained"),
    ("odds 2, global temperature only", "odds", 2.0, False, "trained"),
    ("odds 2, per-class (default)", "odds", 2.0, True, "trained"),
    ("odds 2, per-class, label shares not divided", "odds", 2.0, True, "undivided"),
    ("odds 2, per-class, no held-out classifier", "odds", 2.0, True, "two experts"),
    ("odds 2, per-class, calibrated to the mixture's rho", "odds", 2.0, True, "mixture rho"),
    ("odds 3, per-class", "odds", 3.0, True, "trained"),
    ("odds 4, per-class", "odds", 4.0, True, "trained"),
]
DEFAULT_RULE = "odds 2, per-class (default)"

# Ablations of the method's stages, each a retraining with these overrides (issue 5).
ABLATIONS = {
    "static kNN prior (no dynamic prior)": {"dynamic_prior": False},
    "no co-regularisation": {"coreg_alpha": 0.0, "coreg_lambda": 0.0},
    "paper's rho = 0.5": {"noise_ratio": 0.5},
}


def run_seed(corpus: Path, valid: Path | None, seed: int, out: Path, config: SiDyPConfig,
             baselines: bool = True, encoder: str | None = None,
             embedding_model: str | None = None) -> dict:
    rows = list(read_records(corpus))
    parsed = [r for r in iter_corpus(corpus) if hasattr(r, "text")]
    labels = label_set_from_rows(parsed)
    index = {label: i for i, label in enumerate(labels)}
    given = np.array([index.get(r.label, -1) if r.label is not None else -1 for r in parsed])
    gold = np.array([index.get(r["gold_label"], -2) for r in rows])
    texts = [r.text for r in parsed]
    result: dict = {"seed": seed, "rows": len(rows), "config": config.to_dict(),
                    "encoder": encoder, "embedding_model": embedding_model}
    v_texts, v_given, v_gold = _valid_rows(valid, index) if valid else ([], None, None)

    result["llm"] = score(given, gold, given)
    if baselines:
        start = time.perf_counter()
        # Valid rows ride along unlabelled: each is predicted by a classifier of 4/5 of train.
        all_given = np.concatenate([given, np.full(len(v_texts), -1)])
        all_probs = cross_fitted_classifier_probs(
            texts + v_texts, all_given, len(labels), load_pretrained(encoder), config
        )
        plain_probs = all_probs[: len(texts)]
        result["seconds_plain_classifier"] = time.perf_counter() - start
        result["plain_classifier"] = score(plain_probs.argmax(1), gold, given)
        relabeled = cleanlab_relabel(plain_probs, given)
        if relabeled is not None:
            result["cleanlab"] = score(relabeled, gold, given)
        if v_given is not None:
            v_probs = all_probs[len(texts):]
            result["valid_plain_classifier"] = score(v_probs.argmax(1), v_gold, v_given)
            v_relabeled = cleanlab_relabel(v_probs, v_given)
            if v_relabeled is not None:
                result["valid_cleanlab"] = score(v_relabeled, v_gold, v_given)

    bundle, refined = out / f"bundle-{seed}", out / f"refined-{seed}.jsonl"
    start = time.perf_counter()
    summary = api.train(corpus, bundle, config, refined_out=refined, overwrite=True,
                        encoder=encoder, embedding_model=embedding_model)
    result["seconds_train"] = time.perf_counter() - start
    result["seconds_stages"] = summary.seconds
    result["noise_ratio"] = summary.noise_ratio
    result["class_noise_ratios"] = summary.class_noise_ratios
    result["calibration_noise_ratio"] = summary.calibration_noise_ratio
    result["true_class_noise"] = _class_noise(given, gold, len(labels))
    result["prior_kinds"] = summary.prior_kinds
    calibrations = _calibrations(summary, given, config)
    result["sidyp"] = sidyp_scores(summary, gold, given, config, calibrations)
    result["refined_file"] = api.evaluate(refined).refined_accuracy

    loaded = load_model(load_bundle(bundle))
    reference = loaded.bundle.arrays(REFERENCE_FILE)
    result["prior_only"] = score(_prior(reference["embeddings"], loaded).argmax(1), gold, given)
    arrays = {"given": given, "gold": gold, **_refinement_arrays(summary.refinement, "train_")}
    if v_given is not None:
        v_refinement, v_prior = _refine_valid(v_texts, v_given, loaded, bundle)
        decisions = {}
        for name, rule, odds, per_class, variant in RULES:
            temperature, bias, shares, held_out = calibrations[variant]
            decision = DecisionRule(rule, odds, bias if per_class else None)
            refinement = v_refinement if held_out else replace(v_refinement, held_out=None)
            decisions[name] = _score_rule(refinement, v_given, v_gold, config.label_source,
                                          temperature, decision, shares)
        result["valid"] = {"llm": score(v_given, v_gold, v_given), "rules": decisions,
                           "prior_only": score(v_prior.argmax(1), v_gold, v_given)}
        arrays.update(v_given=v_given, v_gold=v_gold, **_refinement_arrays(v_refinement, "valid_"))
    np.savez_compressed(out / f"arrays-{seed}.npz", **arrays)
    (out / f"result-{seed}.json").write_text(json.dumps(result, indent=1))
    return result


def _valid_rows(path: Path, index: dict[str, int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    records = list(read_records(path))
    texts = [r["text"] for r in records]
    given = np.array([index.get(r.get("label"), -1) for r in records])
    gold = np.array([index.get(r["gold_label"], -2) for r in records])
    return texts, given, gold


def _class_noise(given: np.ndarray, gold: np.ndarray, n_classes: int) -> list[float | None]:
    """Per class, the true fraction of wrong labels (gold: evaluation only)."""
    return [float((gold[given == c] != c).mean()) if (given == c).any() else None
            for c in range(n_classes)]


def _refinement_arrays(refinement: BatchRefinement, prefix: str) -> dict[str, np.ndarray]:
    return {prefix + name: getattr(refinement, name)
            for name in ("classifier", "conditional", "marginal", "candidates", "held_out")
            if getattr(refinement, name) is not None}


def _prior(embedding: np.ndarray, loaded: LoadedModel) -> np.ndarray:
    """The kNN prior alone (no diffusion stage), averaged over branches."""
    settings = RefineSettings.from_config(loaded.config, loaded.n_classes)
    return prior_from_neighbors(embedding, loaded.indexes, settings).weights.mean(axis=0)


def _refine_valid(texts: list[str], given: np.ndarray, loaded: LoadedModel,
                  bundle: Path) -> tuple[BatchRefinement, np.ndarray]:
    """The distributions behind `refine` for rows the bundle never saw (what refine_rows runs)."""
    backend = load_backend(loaded.bundle, "onnx")
    settings = RefineSettings.from_config(loaded.config, loaded.n_classes)
    embeddings = (sentence_embeddings(loaded, backend, texts)
                  if loaded.embedding_tokenizer is not None else None)
    parts, priors = [], []
    for start in range(0, len(texts), loaded.config.encode_batch_size):
        batch = texts[start : start + loaded.config.encode_batch_size]
        ids, mask = tokenize(loaded.tokenizer, batch)
        encoded = backend.encode(ids, mask)
        if embeddings is not None:
            encoded = replace(encoded, embedding=embeddings[start : start + len(batch)])
        prior = prior_from_neighbors(encoded.embedding, loaded.indexes, settings)
        refined = refine_batch(backend, encoded, prior.weights, prior.kind,
                               given[start : start + len(batch)], [text_key(t) for t in batch],
                               settings, update_prior=loaded.config.dynamic_prior,
                               neighbor_vote=prior.vote)
        parts.append(for_new_rows(refined, loaded.config.held_out_folds,
                                  loaded.calibration.new_row_vote_temperature(loaded.config)))
        priors.append(prior.weights.mean(axis=0))
    return BatchRefinement.concatenate(parts), np.concatenate(priors)


def _score_rule(refinement: BatchRefinement, given: np.ndarray, gold: np.ndarray, source: str,
                temperature: float, decision: DecisionRule,
                shares: np.ndarray | None) -> dict:
    reported = reported_distribution(refinement, given, source, temperature, shares)
    dist = calibrate(reported, given, decision)
    pred = decide(dist, given, decision)
    scored = score(pred, gold, given)
    scored["ece"] = expected_calibration_error(dist[np.arange(len(pred)), pred], pred == gold)
    return scored


# temperature, per-class bias, label shares (None: not divided), held-out expert kept
Calibration = tuple[float, np.ndarray, np.ndarray | None, bool]


def _calibrations(summary: api.TrainSummary, given: np.ndarray,
                  config: SiDyPConfig) -> dict[str, Calibration]:
    """Per RULES variant: the bundle's calibration, or one refitted as that variant would."""
    shares = np.asarray(summary.label_shares) if summary.label_shares is not None else None
    two = replace(summary.refinement, held_out=None)

    def refit(refinement: BatchRefinement, divide: np.ndarray | None,
              mixture_only: bool = False) -> tuple[float, np.ndarray]:
        temperature, bias, _ = fit_output_calibration(
            refinement, given, config.label_source, summary.noise_ratio,
            summary.class_noise_ratios, divide,
            summary.noise_ratio_estimated and not mixture_only)
        return temperature, bias

    return {"trained": (summary.temperature, np.asarray(summary.label_bias), shares, True),
            "undivided": (*refit(summary.refinement, None), None, True),
            "two experts": (*refit(two, shares), shares, False),
            "mixture rho": (*refit(summary.refinement, shares, mixture_only=True), shares, True)}


def sidyp_scores(summary: api.TrainSummary, gold: np.ndarray, given: np.ndarray,
                 config: SiDyPConfig, calibrations: dict[str, Calibration]) -> dict:
    """Accuracy and calibration of each label source and decision rule, from one trained model."""
    scores: dict = {}
    calibrated_noise = summary.calibration_noise_ratio or summary.noise_ratio
    for source in ("marginal", "given", "candidates"):
        raw = reported_distribution(summary.refinement, given, source)
        temperature = fit_temperature(raw, given, 1.0 - calibrated_noise)
        dist = temper(raw, temperature)
        pred = dist.argmax(1)
        scores[source] = score(pred, gold, given)
        scores[source]["ece_uncalibrated"] = expected_calibration_error(raw.max(1), pred == gold)
        scores[source]["ece"] = expected_calibration_error(dist.max(1), pred == gold)
        scores[source]["temperature"] = temperature
    scores["rules"] = {}
    for name, rule, odds, per_class, variant in RULES:
        temperature, bias, shares, held_out = calibrations[variant]
        refinement = summary.refinement if held_out else replace(summary.refinement, held_out=None)
        scores["rules"][name] = _score_rule(
            refinement, given, gold, config.label_source, temperature,
            DecisionRule(rule, odds, bias if per_class else None), shares,
        )
    scores["classifier"] = score(summary.refinement.classifier.argmax(1), gold, given)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED / "train.jsonl")
    parser.add_argument("--valid", type=Path, default=SHARED / "valid.jsonl")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0],
                        help="main runs; `--seeds` with no value runs only the ablations")
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--skip-baselines", action="store_true",
                        help="only SiDyP (for ablations)")
    parser.add_argument("--config", type=json.loads, default={},
                        help='hyper-parameter overrides as JSON, e.g. \'{"branches": 3}\'')
    parser.add_argument("--ablation-seeds", type=int, nargs="*", default=[],
                        help="also retrain each stage ablation (ABLATIONS) on these seeds")
    parser.add_argument("--plots", type=Path, default=None,
                        help="write quality-accuracy.png and quality-reliability.png here")
    parser.add_argument("--encoder", default=None, help="classifier encoder (train --encoder)")
    parser.add_argument("--embedding-model", default=None,
                        help="the prior's sentence-embedding model (train --embedding-model)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1: the runs in docs/benchmarks.md, two side by side)")
    parser.add_argument("--inductive-folds", type=int, default=0,
                        help="score every row as a new row by K-fold cross-fitting through "
                        "train and refine, with a plain full fine-tune on the same folds")
    parser.add_argument("--resume", action="store_true",
                        help="with --inductive-folds: reuse the folds a crashed run finished")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    valid = args.valid if args.valid.exists() else None
    if args.inductive_folds:
        runs = [run_inductive(args.corpus, valid, seed, args.inductive_folds, args.out,
                              SiDyPConfig(**{**args.config, "seed": seed}), args.encoder,
                              args.embedding_model, plain=not args.skip_baselines,
                              resume=args.resume)
                for seed in args.seeds]
        (args.out / "inductive.json").write_text(json.dumps(
            {"machine": machine(), "corpus": str(args.corpus), "config_overrides": args.config,
             "results": runs}, indent=1))
        print_inductive_table(runs)
        return
    results = []
    for seed in args.seeds:
        config = SiDyPConfig(**{**args.config, "seed": seed})
        results.append(run_seed(args.corpus, valid, seed, args.out, config,
                                baselines=not args.skip_baselines, encoder=args.encoder,
                                embedding_model=args.embedding_model))
        print(json.dumps(results[-1], indent=1), flush=True)
    ablations: dict[str, list[dict]] = {}
    for name, overrides in ABLATIONS.items():
        for seed in args.ablation_seeds:
            config = SiDyPConfig(**{**args.config, **overrides, "seed": seed})
            sub = args.out / ("ablation-" + "-".join(overrides))
            sub.mkdir(parents=True, exist_ok=True)
            ablations.setdefault(name, []).append(
                run_seed(args.corpus, valid, seed, sub, config, baselines=False,
                         encoder=args.encoder, embedding_model=args.embedding_model))
            print(name, json.dumps(ablations[name][-1]["sidyp"]["rules"]), flush=True)
    report = {"machine": machine(), "corpus": str(args.corpus), "config_overrides": args.config,
              "results": results, "ablations": ablations}
    (args.out / "quality.json").write_text(json.dumps(report, indent=1))
    print_table(results, ablations)
    if args.plots and results:
        plot(results, args.out, args.plots)


def stat(results: list[dict], path: list[str], scale: float = 100.0, digits: int = 1) -> str:
    """Mean ± standard deviation over seeds of the value at ``path``, with the per-seed values."""
    values = []
    for r in results:
        v: object = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            values.append(float(v))  # type: ignore[arg-type]
    return mean_sd(values, scale, digits)


def fixed_broken(results: list[dict], path: list[str]) -> str:
    parts = []
    for r in results:
        v: object = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, dict):
            parts.append(f"{v['fixed']}/{v['broken']}")
    return " ; ".join(parts) or "n/a"


def print_table(results: list[dict], ablations: dict[str, list[dict]]) -> None:
    print("\n| labels | train accuracy (%) | fixed/broken per seed | valid accuracy (%) |")
    print("| --- | --- | --- | --- |")
    print(f"| LLM | {stat(results, ['llm', 'accuracy'])} | – | "
          f"{stat(results, ['valid', 'llm', 'accuracy'])} |")
    for name, key in (("plain classifier (5-fold cross-fitted)", "plain_classifier"),
                      ("cleanlab relabeling", "cleanlab")):
        print(f"| {name} | {stat(results, [key, 'accuracy'])} | "
              f"{fixed_broken(results, [key])} | {stat(results, ['valid_' + key, 'accuracy'])} |")
    print(f"| kNN prior alone (no diffusion stage) | {stat(results, ['prior_only', 'accuracy'])} | "
          f"{fixed_broken(results, ['prior_only'])} | "
          f"{stat(results, ['valid', 'prior_only', 'accuracy'])} |")
    for name, *_ in RULES:
        print(f"| SiDyP, {name} | {stat(results, ['sidyp', 'rules', name, 'accuracy'])} | "
              f"{fixed_broken(results, ['sidyp', 'rules', name])} | "
              f"{stat(results, ['valid', 'rules', name, 'accuracy'])} |")
    print("\n| decision rule | train ECE | valid ECE | train changed | valid changed |")
    print("| --- | --- | --- | --- | --- |")
    for name, *_ in RULES:
        print(f"| {name} | {stat(results, ['sidyp', 'rules', name, 'ece'], 1, 3)} | "
              f"{stat(results, ['valid', 'rules', name, 'ece'], 1, 3)} | "
              f"{stat(results, ['sidyp', 'rules', name, 'changed'], 1, 0)} | "
              f"{stat(results, ['valid', 'rules', name, 'changed'], 1, 0)} |")
    print(f"\nestimated rho {stat(results, ['noise_ratio'], 1, 3)}; "
          f"train seconds {stat(results, ['seconds_train'], 1, 0)}")
    if ablations:
        print("\n| variant | seeds | train argmax | train odds 2 (default rule) | "
              "valid argmax | valid default rule | rho |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        rows = {"defaults": results, **ablations} if results else ablations
        for name, rs in rows.items():
            print(f"| {name} | {len(rs)} | "
                  f"{stat(rs, ['sidyp', 'rules', RULES[0][0], 'accuracy'])} | "
                  f"{stat(rs, ['sidyp', 'rules', DEFAULT_RULE, 'accuracy'])} | "
                  f"{stat(rs, ['valid', 'rules', RULES[0][0], 'accuracy'])} | "
                  f"{stat(rs, ['valid', 'rules', DEFAULT_RULE, 'accuracy'])} | "
                  f"{stat(rs, ['noise_ratio'], 1, 3)} |")
        if results:
            print(f"| kNN prior alone (no diffusion stage) | {len(results)} | "
                  f"{stat(results, ['prior_only', 'accuracy'])} | – | "
                  f"{stat(results, ['valid', 'prior_only', 'accuracy'])} | – | – |")


def plot(results: list[dict], out: Path, plots: Path) -> None:
    """Accuracy of the LLM, the baselines and SiDyP, and the reliability of `confidence`.

    Reuses evaluate.write_plots on the first seed's refined file (written with the default
    rule); the bars for the baselines are that seed's numbers.
    """
    first = results[0]
    report = api.evaluate(out / f"refined-{first['seed']}.jsonl")
    save_quality_plots(report, first, out / "plots", plots)


if __name__ == "__main__":
    main()
