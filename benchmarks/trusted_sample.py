"""How the trusted-label check (``train --trusted-field``) fares over many random trusted
samples, from one refined file with gold labels (``train --refined-out`` without trusted labels,
e.g. a known_noise.py run).

For each draw of N rows as the trusted sample, ``trusted.check_changes`` picks the change rule on
those rows and the rule is scored on the other rows: accuracy gained over the LLM's labels, and
the ECE of ``confidence`` there before and after ``trusted.scaling_on_trusted`` rescales it (the
refined file's calibration is the gold-free one; train with trusted labels may also refit it to
their noise ratio first).
Rules stricter than the configured one only undo changes, so each row's distribution is rebuilt
from its output fields (label_score, and confidence where the label was changed): exact for every
rule the check can choose.

    python benchmarks/trusted_sample.py runs/known-noise/CORPUS-s0/refined.jsonl --rows 100 200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from throughput import machine  # benchmarks/ is on sys.path as a script

from sidyp_prod.decision import DecisionRule, decide, rule_name
from sidyp_prod.evaluate import expected_calibration_error
from sidyp_prod.trusted import check_changes, scalings_on_trusted


def load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distribution, given, gold) as class indices; -1 where a row has no LLM label."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    labels = sorted({r["gold_label"] for r in rows}
                    | {r["predicted_label"] for r in rows}
                    | {r["given_label"] for r in rows if r["given_label"] is not None})
    index = {label: i for i, label in enumerate(labels)}
    dist = np.zeros((len(rows), len(labels)))
    given = np.full(len(rows), -1)
    for i, r in enumerate(rows):
        if r["given_label"] is None:
            continue
        given[i] = index[r["given_label"]]
        dist[i, given[i]] = r["label_score"]
        if r["is_label_issue"]:
            dist[i, index[r["predicted_label"]]] = r["confidence"]
    gold = np.array([index[r["gold_label"]] for r in rows])
    return dist, given, gold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refined", type=Path)
    parser.add_argument("--rows", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--odds", type=float, default=2.0, help="the bundle's change_odds")
    parser.add_argument("--z", type=float, nargs="+", default=[0.0, 1.0, 1.645],
                        help="the check's sign-test deviations (the product's: 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dist, given, gold = load(args.refined)
    labelled = given >= 0
    configured = DecisionRule(rule="odds", odds=args.odds)
    full = decide(dist, given, configured)
    print(f"{args.refined}: {len(gold)} rows; the configured rule on every row: "
          f"{100 * np.mean(full[labelled] == gold[labelled]):.2f}% against the LLM's "
          f"{100 * np.mean(given[labelled] == gold[labelled]):.2f}%")
    results = []
    for n in args.rows:
        for z in args.z:
            rng = np.random.default_rng(args.seed)
            gains, kept, ece, rescaled = [], {}, [], 0
            for _ in range(args.draws):
                trusted = np.full(len(gold), -1)
                sample = rng.choice(len(gold), n, replace=False)
                trusted[sample] = gold[sample]
                rule = check_changes(dist, given, trusted, configured, z=z).decision
                name = rule_name(rule.rule, rule.odds)
                kept[name] = kept.get(name, 0) + 1
                rest = labelled & (trusted < 0)
                predicted = decide(dist, given, rule)
                right = predicted == gold
                gains.append(100 * (np.mean(right[rest]) - np.mean(given[rest] == gold[rest])))
                confidence = dist[np.arange(len(gold)), predicted]
                scaling = scalings_on_trusted(dist, given, trusted, rule)[0]  # the product's
                rescaled += scaling is not None
                after = confidence[rest] if scaling is None else scaling(confidence[rest])
                ece.append((expected_calibration_error(confidence[rest], right[rest]),
                            expected_calibration_error(after, right[rest])))
            g, e = np.array(gains), np.array(ece)
            results.append({"trusted_rows": n, "z": z, "mean_gain": round(float(g.mean()), 3),
                            "p5_gain": round(float(np.percentile(g, 5)), 3),
                            "worse_than_llm": round(float(np.mean(g < 0)), 4),
                            "kept": dict(sorted(kept.items())),
                            "ece": round(float(e[:, 0].mean()), 4),
                            "ece_rescaled": round(float(e[:, 1].mean()), 4),
                            "ece_rescaled_p95": round(float(np.percentile(e[:, 1], 95)), 4),
                            "rescaled": round(rescaled / args.draws, 4)})
    print("\n| trusted rows | z | points over the LLM, mean (5th percentile) | draws worse "
          "than the LLM | rule kept (draws) | ECE → rescaled, mean (95th percentile) | "
          "draws rescaled |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        kept = ", ".join(f"{k} {v}" for k, v in r["kept"].items())
        print(f"| {r['trusted_rows']} | {r['z']:g} | {r['mean_gain']:+.2f} ({r['p5_gain']:+.2f}) "
              f"| {100 * r['worse_than_llm']:.1f}% | {kept} | {r['ece']:.3f} → "
              f"{r['ece_rescaled']:.3f} ({r['ece_rescaled_p95']:.3f}) | "
              f"{100 * r['rescaled']:.0f}% |")
    out = args.refined.with_name("trusted-sample.json")
    out.write_text(json.dumps({"machine": machine(), "draws": args.draws, "results": results},
                              indent=1))


if __name__ == "__main__":
    main()
