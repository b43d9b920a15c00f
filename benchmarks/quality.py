"""Label quality of SiDyP against the LLM's labels and a plain fine-tuned classifier.

Trains on a JSONL corpus with gold labels (default: the SemEval few-shot Mixtral data in
../shared), writes the refined corpus, and prints one table: accuracy of the LLM labels, of a
plain classifier fine-tuned on them (same encoder, cross-fitted over 5 folds), of cleanlab's
relabeling of that classifier (when cleanlab is installed), and of SiDyP's refined labels under
each label source, plus fixed/broken counts, ECE and wall time per stage. Gold labels are read
here, after training, and nowhere else.

    python benchmarks/quality.py [--corpus PATH] [--valid PATH] [--seeds 0 1 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sidyp_prod import api
from sidyp_prod.baselines import cross_fitted_classifier_probs
from sidyp_prod.config import SiDyPConfig
from sidyp_prod.corpus import iter_corpus, label_set_from_rows
from sidyp_prod.encoder import load_pretrained
from sidyp_prod.evaluate import expected_calibration_error, read_records

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


def run_seed(corpus: Path, valid: Path | None, seed: int, out: Path, config: SiDyPConfig,
             baselines: bool = True) -> dict:
    rows = list(read_records(corpus))
    parsed = [r for r in iter_corpus(corpus) if hasattr(r, "text")]
    labels = label_set_from_rows(parsed)
    index = {label: i for i, label in enumerate(labels)}
    given = np.array([index.get(r.label, -1) if r.label is not None else -1 for r in parsed])
    gold = np.array([index.get(r["gold_label"], -2) for r in rows])
    texts = [r.text for r in parsed]
    result: dict = {"seed": seed, "rows": len(rows)}

    result["llm"] = score(given, gold, given)
    if baselines:
        start = time.perf_counter()
        plain_probs = cross_fitted_classifier_probs(
            texts, given, len(labels), load_pretrained(None), config
        )
        result["seconds_plain_classifier"] = time.perf_counter() - start
        result["plain_classifier"] = score(plain_probs.argmax(1), gold, given)
        relabeled = cleanlab_relabel(plain_probs, given)
        if relabeled is not None:
            result["cleanlab"] = score(relabeled, gold, given)

    bundle, refined = out / f"bundle-{seed}", out / f"refined-{seed}.jsonl"
    start = time.perf_counter()
    summary = api.train(corpus, bundle, config, refined_out=refined, overwrite=True)
    result["seconds_train"] = time.perf_counter() - start
    result["seconds_stages"] = summary.seconds
    result["noise_ratio"] = summary.noise_ratio
    result["prior_kinds"] = summary.prior_kinds
    result["sidyp"] = sidyp_scores(summary, gold, given, labels)

    if valid is not None:
        result["valid"] = inductive(bundle, valid, out, seed)
    return result


def sidyp_scores(summary: api.TrainSummary, gold: np.ndarray, given: np.ndarray,
                 labels: list[str]) -> dict:
    """Accuracy and calibration of each label source, from the same trained model."""
    from sidyp_prod.calibration import fit_temperature
    from sidyp_prod.refinement import reported_distribution

    scores = {}
    for source in ("marginal", "given", "candidates"):
        raw = reported_distribution(summary.refinement, given, source)
        temperature = fit_temperature(raw, given, 1.0 - summary.noise_ratio)
        dist = reported_distribution(summary.refinement, given, source, temperature)
        pred = dist.argmax(1)
        scores[source] = score(pred, gold, given)
        scores[source]["ece_uncalibrated"] = expected_calibration_error(raw.max(1), pred == gold)
        scores[source]["ece"] = expected_calibration_error(dist.max(1), pred == gold)
        scores[source]["temperature"] = temperature
    scores["classifier"] = score(summary.refinement.classifier.argmax(1), gold, given)
    return scores


def inductive(bundle: Path, valid: Path, out: Path, seed: int) -> dict:
    """Refine rows the bundle never saw and score them."""
    refined = out / f"valid-refined-{seed}.jsonl"
    api.refine(valid, bundle, refined)
    report = api.evaluate(refined)
    return {"llm": report.given_accuracy, "sidyp": report.refined_accuracy, "ece": report.ece}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED / "train.jsonl")
    parser.add_argument("--valid", type=Path, default=SHARED / "valid.jsonl")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quality"))
    parser.add_argument("--skip-baselines", action="store_true",
                        help="only SiDyP (for ablations)")
    parser.add_argument("--config", type=json.loads, default={},
                        help='hyper-parameter overrides as JSON, e.g. \'{"branches": 3}\'')
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        config = SiDyPConfig(**{**args.config, "seed": seed})
        valid = args.valid if args.valid.exists() else None
        results.append(run_seed(args.corpus, valid, seed, args.out, config,
                                baselines=not args.skip_baselines))
        print(json.dumps(results[-1], indent=1), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    report = {"machine": machine,
              "corpus": str(args.corpus), "config_overrides": args.config, "results": results}
    (args.out / "quality.json").write_text(json.dumps(report, indent=1))
    print_table(results)


def print_table(results: list[dict]) -> None:
    def stat(path: list[str]) -> str:
        values = []
        for r in results:
            v = r
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if v is not None:
                values.append(v)
        if not values:
            return "n/a"
        mean = 100 * np.mean(values)
        return f"{mean:.1f}" + (f" ± {100 * np.std(values):.1f}" if len(values) > 1 else "")

    print("\n| labels | accuracy (%) |\n| --- | --- |")
    print(f"| LLM | {stat(['llm', 'accuracy'])} |")
    print(f"| plain classifier (5-fold cross-fitted) | {stat(['plain_classifier', 'accuracy'])} |")
    print(f"| cleanlab relabeling | {stat(['cleanlab', 'accuracy'])} |")
    for source in ("marginal", "given", "candidates", "classifier"):
        print(f"| SiDyP {source} | {stat(['sidyp', source, 'accuracy'])} |")
    print(f"| valid: LLM | {stat(['valid', 'llm'])} |")
    print(f"| valid: SiDyP (inductive) | {stat(['valid', 'sidyp'])} |")


if __name__ == "__main__":
    main()
