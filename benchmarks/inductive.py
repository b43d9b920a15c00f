"""Quality on new rows: K-fold cross-fitting through the product's own paths.

For each fold k, `train` a bundle on the other folds and `refine` fold k with it, so every
training row is scored as a row the bundle never saw; then `train --refined-out` on every row
(the transductive labels) and `refine` of the valid file with that bundle. In the same run, on
the same folds, the plain alternative: one classifier, every layer fine-tuned on the LLM labels
(baselines.plain_fine_tune_config). Gold labels are stripped from every file the product reads
and used here only to score. With ``--resume`` a finished fold (its ``fold.json``) is reused.

    python benchmarks/quality.py --inductive-folds 5 --seeds 0 1 2 --out runs/inductive [--resume]
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sidyp_prod import api
from sidyp_prod.baselines import fine_tuned_classifier_probs, plain_fine_tune_config
from sidyp_prod.config import SiDyPConfig
from sidyp_prod.evaluate import expected_calibration_error, read_records
from sidyp_prod.pretrained import load_pretrained


def _write(path: Path, records: list[dict]) -> Path:
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps({k: v for k, v in r.items() if k != "gold_label"}) + "\n")
    return path


def scored(pred: list, given: list, gold: list, confidence: list[float] | None = None) -> dict:
    """Accuracy, changes, fixed and broken of ``pred`` against the LLM's ``given`` labels."""
    pred_a, given_a, gold_a = (np.array(x, dtype=object) for x in (pred, given, gold))
    right, changed = pred_a == gold_a, pred_a != given_a
    out = {"rows": len(pred), "accuracy": float(right.mean()), "changed": int(changed.sum()),
           "fixed": int((changed & right).sum()),
           "broken": int((changed & (given_a == gold_a)).sum())}
    if confidence is not None:
        out["ece"] = expected_calibration_error(np.array(confidence, dtype=float), right)
    return out


def _refined(path: Path) -> tuple[list, list[float]]:
    rows = list(read_records(path))
    return [r["predicted_label"] for r in rows], [float(r["confidence"]) for r in rows]


def _plain_labels(texts: list[str], given: list, predict: np.ndarray, labels: list,
                  config: SiDyPConfig, pretrained: object) -> list:
    """The plain fine-tune's label of each row where ``predict``, trained on the other rows."""
    index = {label: i for i, label in enumerate(labels)}
    train_given = np.array([-1 if p or g is None else index[g]
                            for g, p in zip(given, predict, strict=True)])
    probs = fine_tuned_classifier_probs(texts, train_given, len(labels), pretrained,
                                        plain_fine_tune_config(config))
    return [labels[int(c)] for c in probs[predict].argmax(1)]


def _run_fold(work: Path, records: list[dict], fold: np.ndarray, k: int, config: SiDyPConfig,
              encoder: str | None, embedding_model: str | None,
              plain_labels: Callable[[np.ndarray], list] | None,
              resume: bool) -> dict:
    """Train on the other folds, refine fold k; the plain fine-tune's labels of fold k when
    ``plain_labels`` is given. What a fold gives is kept in ``fold.json`` (its refined rows in
    ``refined.jsonl``) so that ``resume`` reuses a finished fold after a crash (a fold finished
    without the plain fine-tune gets only that)."""
    done = work / "fold.json"
    changed = True
    if resume and done.exists() and (work / "refined.jsonl").exists():
        print(f"fold {k}: reusing {work}", flush=True)
        saved = json.loads(done.read_text())
        changed = False
    else:
        work.mkdir(exist_ok=True)
        train_file = _write(work / "train.jsonl",
                            [records[i] for i in np.flatnonzero(fold != k)])
        held_file = _write(work / "new.jsonl", [records[i] for i in np.flatnonzero(fold == k)])
        start = time.perf_counter()
        summary = api.train(train_file, work / "bundle", config, overwrite=True,
                            encoder=encoder, embedding_model=embedding_model)
        seconds = {"train": time.perf_counter() - start}
        start = time.perf_counter()
        api.refine(held_file, work / "bundle", work / "refined.jsonl")
        seconds["refine"] = time.perf_counter() - start
        saved = {"noise_ratio": summary.noise_ratio, "seconds": seconds, "plain": None}
    if plain_labels is not None and saved["plain"] is None:
        start = time.perf_counter()
        saved["plain"] = plain_labels(fold == k)
        saved["seconds"]["plain"] = time.perf_counter() - start
        changed = True
    if changed:
        done.write_text(json.dumps(saved))
    return saved


def run_inductive(corpus: Path, valid: Path | None, seed: int, folds: int, out: Path,
                  config: SiDyPConfig, encoder: str | None = None,
                  embedding_model: str | None = None, plain: bool = True,
                  resume: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    records = list(read_records(corpus))
    texts = [r["text"] for r in records]
    given = [r.get("label") for r in records]
    gold = [r["gold_label"] for r in records]
    labels = sorted({g for g in given if g is not None})
    fold = np.random.default_rng(seed).permutation(len(records)) % folds
    pretrained = load_pretrained(encoder) if plain else None
    result: dict = {"seed": seed, "folds": folds, "rows": len(records),
                    "config": config.to_dict(), "llm": scored(given, given, gold)}
    plain_config = SiDyPConfig(**{**config.to_dict(), "seed": seed})

    def plain_labels(predict: np.ndarray) -> list:
        return _plain_labels(texts, given, predict, labels, plain_config, pretrained)

    sidyp_pred: list = [None] * len(records)
    sidyp_conf: list[float] = [0.0] * len(records)
    plain_pred: list = [None] * len(records)
    seconds = {"train": 0.0, "refine": 0.0, "plain": 0.0}
    noise = []
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        work = out / f"seed{seed}-fold{k}"
        saved = _run_fold(work, records, fold, k, config, encoder, embedding_model,
                          plain_labels if plain else None, resume)
        noise.append(saved["noise_ratio"])
        for name, value in saved["seconds"].items():
            seconds[name] += value
        pred, conf = _refined(work / "refined.jsonl")
        for j, i in enumerate(held):
            sidyp_pred[i], sidyp_conf[i] = pred[j], conf[j]
            if plain:
                plain_pred[i] = saved["plain"][j]
        fold_score = scored(pred, [given[i] for i in held], [gold[i] for i in held])
        print(f"seed {seed} fold {k}: sidyp {fold_score}", flush=True)
    result["inductive"] = {"sidyp": scored(sidyp_pred, given, gold, sidyp_conf),
                           "fold_noise_ratios": noise}
    if plain:
        result["inductive"]["plain"] = scored(plain_pred, given, gold)

    full = out / f"seed{seed}-full"
    full.mkdir(exist_ok=True)
    train_file = _write(full / "train.jsonl", records)
    start = time.perf_counter()
    summary = api.train(train_file, full / "bundle", config, overwrite=True,
                        refined_out=full / "refined.jsonl", encoder=encoder,
                        embedding_model=embedding_model)
    seconds["train_full"] = time.perf_counter() - start
    pred, conf = _refined(full / "refined.jsonl")
    result["transductive"] = scored(pred, given, gold, conf)
    result["noise_ratio"] = summary.noise_ratio  # the mixture's, which marks the rows
    result["calibration_noise_ratio"] = summary.calibration_noise_ratio  # the reported estimate
    result["noise_ratio_interval"] = summary.noise_ratio_interval
    labelled = [g is not None for g in given]
    result["true_noise_ratio"] = float(np.mean(
        [g != t for g, t, m in zip(given, gold, labelled, strict=True) if m]))
    if valid is not None:
        v_records = list(read_records(valid))
        v_given = [r.get("label") for r in v_records]
        v_gold = [r["gold_label"] for r in v_records]
        api.refine(_write(full / "valid.jsonl", v_records), full / "bundle",
                   full / "valid-refined.jsonl")
        pred, conf = _refined(full / "valid-refined.jsonl")
        result["valid"] = {"llm": scored(v_given, v_given, v_gold),
                           "sidyp": scored(pred, v_given, v_gold, conf)}
        if plain:
            start = time.perf_counter()
            both = [r["text"] for r in records] + [r["text"] for r in v_records]
            predict = np.r_[np.zeros(len(records), bool), np.ones(len(v_records), bool)]
            v_plain = _plain_labels(both, given + [None] * len(v_records), predict, labels,
                                    plain_config, pretrained)
            seconds["plain_full"] = time.perf_counter() - start
            result["valid"]["plain"] = scored(v_plain, v_given, v_gold)
    result["seconds"] = seconds
    (out / f"inductive-{seed}.json").write_text(json.dumps(result, indent=1))
    return result


def mean_sd(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """Mean ± standard deviation of ``values`` (scaled), or n/a."""
    if not values:
        return "n/a"
    text = f"{scale * np.mean(values):.{digits}f}"
    if len(values) > 1:
        text += f" ± {scale * np.std(values):.{digits}f}"
    return text


def print_inductive_table(results: list[dict]) -> None:
    """One table: every number issue 21 asks for, mean ± sd over seeds, fixed/broken per seed."""
    def get(r: dict, *path: str) -> dict | None:
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        return r

    rows = [("LLM labels", ("llm",), ("valid", "llm")),
            ("plain full fine-tune (same folds)", ("inductive", "plain"), ("valid", "plain")),
            ("SiDyP as new rows (`train` 4 folds, `refine` 1)", ("inductive", "sidyp"),
             ("valid", "sidyp")),
            ("SiDyP transductive (`train --refined-out`)", ("transductive",), None)]
    print("\n| labels | train rows accuracy (%) | fixed/broken per seed | ECE | "
          "valid accuracy (%) | valid fixed/broken |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, path, v_path in rows:
        found = [get(r, *path) for r in results if get(r, *path)]
        v_found = [get(r, *v_path) for r in results if v_path and get(r, *v_path)]
        print(f"| {name} | {mean_sd([f['accuracy'] for f in found])} | "
              + " ; ".join(f"{f['fixed']}/{f['broken']}" for f in found if name != "LLM labels")
              + f" | {mean_sd([f['ece'] for f in found if 'ece' in f], 1, 3)} | "
              f"{mean_sd([f['accuracy'] for f in v_found])} | "
              + " ; ".join(f"{f['fixed']}/{f['broken']}" for f in v_found
                           if name != "LLM labels") + " |")
    estimates = [r.get("calibration_noise_ratio") or r["noise_ratio"] for r in results]
    print(f"\nnoise ratio estimated {mean_sd(estimates, 1, 3)} "
          f"(true {mean_sd([r['true_noise_ratio'] for r in results], 1, 3)}); intervals "
          + "; ".join(str(r.get("noise_ratio_interval")) for r in results))
    print("seconds per seed: " + "; ".join(
        ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) for r in results))
