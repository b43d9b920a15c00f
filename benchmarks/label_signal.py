"""How much the sentence-embedding neighbourhoods can say about the true labels, and what
re-weighting the LLM's label frequencies does to a neighbour vote, on two corpora.

For the SemEval few-shot Mixtral data and a second corpus built from the same texts with the
opposite label bias (written to OUT/frequent-bias-{train,valid}.jsonl for `quality.py --corpus`),
prints the accuracy of:

- a distance-weighted kNN vote (K = 10, the row itself left out) of the *gold* labels: what the
  embedding space supports if the labels were right;
- kNN votes (K = 50) of the *given* labels with each class's votes divided by the class's share of
  the given labels to the power 0 (the plain vote), 0.5 or 1 (the "lift" over the LLM's base
  rate), relabeling when the vote makes another class kappa times as likely as the given label,
  with the labels fixed and broken.

Mixtral under-uses the largest class (Member-Collection: 29% of the gold labels, 8% of the
LLM's), so dividing by the label share helps there. The second corpus flips 38% of the labels
(62% right, like the held-back ChatGPT corpus) toward the class most common among a row's
nearest gold neighbours, rows with the most mixed neighbourhoods first: its given labels
over-use the frequent classes. Gold labels are read here for scoring and for building the
second corpus only.

    python benchmarks/label_signal.py [--out runs/label-signal]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from quality import SHARED  # benchmarks/ is on sys.path when run as a script
from throughput import machine

from sidyp_prod.config import SiDyPConfig
from sidyp_prod.pretrained import load_pretrained
from sidyp_prod.prior import knn_vote
from sidyp_prod.training import pretrained_sentence_embeddings


def read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def neighbours(queries: np.ndarray, reference: np.ndarray, k: int, leave_out_self: bool):
    """(distances, indices) of the k nearest reference rows (unit vectors: exact, in numpy)."""
    d2 = np.maximum(2.0 - 2.0 * queries @ reference.T, 0.0)
    if leave_out_self:
        np.fill_diagonal(d2, np.inf)
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, order, axis=1)), order


def divided_by_share(votes: np.ndarray, share: np.ndarray, power: float) -> np.ndarray:
    """Each class's votes over its share of the given labels ** power, renormalised."""
    weighted = votes * np.where(share > 0, np.maximum(share, 1e-12) ** -power, 0.0)
    return weighted / np.maximum(weighted.sum(axis=1, keepdims=True), 1e-12)


def relabel(votes: np.ndarray, given: np.ndarray, odds: float) -> np.ndarray:
    rows = np.arange(len(given))
    best = votes.argmax(axis=1)
    p_given = np.where(given >= 0, votes[rows, np.maximum(given, 0)], 0.0)
    return np.where((best != given) & (votes[rows, best] >= odds * p_given), best, given)


def frequent_bias_labels(gold: np.ndarray, dist_idx: np.ndarray, ref_gold: np.ndarray,
                         n_classes: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Flip ``rate`` of the labels to the most common other class among the rows' nearest gold
    neighbours, most mixed neighbourhoods first: errors that follow the text and favour the
    classes that are frequent nearby."""
    other = np.zeros((len(gold), n_classes))
    for i, row in enumerate(ref_gold[dist_idx]):
        other[i] = np.bincount(row[row != gold[i]], minlength=n_classes)
    mixed = other.sum(axis=1) + rng.random(len(gold))
    flip = np.zeros(len(gold), dtype=bool)
    flip[np.argsort(-mixed)[: int(rate * len(gold))]] = True
    random_other = (gold + 1 + rng.integers(0, n_classes - 1, len(gold))) % n_classes
    target = np.where(other.sum(axis=1) > 0, other.argmax(axis=1), random_other)
    return np.where(flip, target, gold)


def report(name: str, emb: np.ndarray, given: np.ndarray, gold: np.ndarray, n: int) -> None:
    print(f"\n{name}: {len(gold)} rows, given labels {100 * (given == gold).mean():.1f}% right")
    share = np.bincount(given[given >= 0], minlength=n) / max((given >= 0).sum(), 1)
    gold_share = np.bincount(gold, minlength=n) / len(gold)
    pairs = zip(share, gold_share, strict=True)
    print("given-label share / gold share per class: "
          + ", ".join(f"{s:.3f}/{g:.3f}" for s, g in pairs))
    d, idx = neighbours(emb, emb, 10, leave_out_self=True)
    gold_vote = knn_vote(d, gold[idx], n).argmax(axis=1)
    ceiling = 100 * (gold_vote == gold).mean()
    print(f"kNN-10 vote of the gold labels (ceiling of the space): {ceiling:.1f}")
    d, idx = neighbours(emb, emb, 50, leave_out_self=True)
    print("| votes of the given labels (K = 50) | kappa | accuracy | fixed/broken |")
    print("| --- | --- | --- | --- |")
    for power in (0.0, 0.5, 1.0):
        votes = divided_by_share(knn_vote(d, given[idx], n), share, power)
        for odds in (1.0, 2.0):
            pred = relabel(votes, given, odds)
            changed = pred != given
            fixed, broken = (changed & (pred == gold)).sum(), (changed & (given == gold)).sum()
            print(f"| divided by share^{power:g} | {odds:g} | {100 * (pred == gold).mean():.1f} "
                  f"| {fixed}/{broken} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHARED / "train.jsonl")
    parser.add_argument("--valid", type=Path, default=SHARED / "valid.jsonl")
    parser.add_argument("--out", type=Path, default=Path("runs/label-signal"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine())
    train, valid = read(args.corpus), read(args.valid)
    classes = sorted({r["gold_label"] for r in train})
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)

    def labels(rows: list[dict], key: str) -> np.ndarray:
        return np.array([index.get(r.get(key), -1) for r in rows])

    config = SiDyPConfig()
    pretrained = load_pretrained(None)
    emb = pretrained_sentence_embeddings([r["text"] for r in train], pretrained, config)
    v_emb = pretrained_sentence_embeddings([r["text"] for r in valid], pretrained, config)
    gold, v_gold = labels(train, "gold_label"), labels(valid, "gold_label")
    report(args.corpus.parent.name, emb, labels(train, "label"), gold, n)

    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows, x, g, self_match in (("train", train, emb, gold, True),
                                          ("valid", valid, v_emb, v_gold, False)):
        _, idx = neighbours(x, emb, 10, leave_out_self=self_match)
        flipped = frequent_bias_labels(g, idx, gold, n, 0.38, rng)
        path = args.out / f"frequent-bias-{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for row, label in zip(rows, flipped, strict=True):
                f.write(json.dumps({**row, "label": classes[label]}) + "\n")
        if split == "train":
            report(f"frequent-bias ({path})", emb, flipped, gold, n)


if __name__ == "__main__":
    main()
