"""Corpora with known label noise of different kinds, levels and sizes, from corpora that carry
both the LLM's labels and gold labels.

- ``llm-<level>``: the LLM's own errors, each kept with probability q and otherwise replaced by
  the gold label, q chosen for a noise ratio of ``level``. The errors that remain are real LLM
  errors: they follow the text, and their shares differ per class as the LLM's do.
- ``class-flip``: gold labels, each class c flipped with its own probability (drawn between
  0.05 and 0.6) to the wrong label the LLM gives c's rows most often: class-conditional noise.
- ``uniform``: gold labels flipped with probability 0.3 to a uniformly drawn other class.

Every row keeps ``gold_label`` for scoring (the product never reads it). Deterministic given
``--seed``.

    python benchmarks/noisy_corpora.py --out runs/corpora [--corpus PATH]... [--rows N]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CORPORA = [HERE.parents[1] / "shared" / "data" / "semeval-fewshot-mixtral" / "train.jsonl",
                   HERE.parent / "examples" / "news.jsonl"]


def llm_mix(records: list[dict], level: float, rng: np.random.Generator) -> list[dict]:
    wrong = [r.get("label") is not None and r["label"] != r["gold_label"] for r in records]
    labelled = sum(r.get("label") is not None for r in records)
    q = min(1.0, level * labelled / max(1, sum(wrong)))
    keep = rng.random(len(records)) < q
    return [{**r, "label": r["label"] if (not w or k) else r["gold_label"]}
            for r, w, k in zip(records, wrong, keep, strict=True)]


def class_flip(records: list[dict], rng: np.random.Generator) -> list[dict]:
    classes = sorted({r["gold_label"] for r in records})
    confused = {}
    for c in classes:
        errors = Counter(r["label"] for r in records
                         if r["gold_label"] == c and r.get("label") not in (None, c))
        others = [o for o in classes if o != c]
        confused[c] = errors.most_common(1)[0][0] if errors else others[rng.integers(len(others))]
    rate = {c: float(rng.uniform(0.05, 0.6)) for c in classes}
    return [{**r, "label": confused[r["gold_label"]] if rng.random() < rate[r["gold_label"]]
             else r["gold_label"]} for r in records]


def uniform(records: list[dict], rng: np.random.Generator, level: float = 0.3) -> list[dict]:
    classes = sorted({r["gold_label"] for r in records})
    out = []
    for r in records:
        label = r["gold_label"]
        if rng.random() < level:
            others = [c for c in classes if c != label]
            label = others[rng.integers(len(others))]
        out.append({**r, "label": label})
    return out


def noise_ratio(records: list[dict]) -> float:
    labelled = [r for r in records if r.get("label") is not None]
    return float(np.mean([r["label"] != r["gold_label"] for r in labelled]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, nargs="*", default=DEFAULT_CORPORA)
    parser.add_argument("--out", type=Path, default=Path("runs/corpora"))
    parser.add_argument("--levels", type=float, nargs="*", default=[0.1, 0.3])
    parser.add_argument("--rows", type=int, default=0, help="also a subsample of this many rows")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for corpus in args.corpus:
        records = [json.loads(line) for line in corpus.open()]
        name = corpus.parent.name if corpus.stem in ("train", "valid") else corpus.stem
        rng = np.random.default_rng(args.seed)
        made = {f"llm-{level:g}": llm_mix(records, level, rng) for level in args.levels}
        made["class-flip"] = class_flip(records, rng)
        made["uniform"] = uniform(records, rng)
        if args.rows and args.rows < len(records):
            sample = sorted(rng.choice(len(records), args.rows, replace=False))
            made[f"llm-{args.levels[0]:g}-{args.rows}"] = [made[f"llm-{args.levels[0]:g}"][i]
                                                          for i in sample]
        for kind, rows in made.items():
            path = args.out / f"{name}-{kind}.jsonl"
            with path.open("w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            print(f"{path}: {len(rows)} rows, noise ratio {noise_ratio(rows):.3f}")


if __name__ == "__main__":
    main()
