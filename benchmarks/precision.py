"""The default encoder precision against the fp32 reference: label agreement, accuracy, batch
independence, speed.

Copies a bundle, re-exports its graphs with the int8 channels calibrated the way ``train`` does
(evenly spaced training rows), then refines the SemEval rows (train + valid, LLM labels) with
``--precision fp32`` and with the default (``auto``: the per-row int8 encoder on a CPU), and the
default again with other chunk sizes, which must give the same bytes.

    python benchmarks/precision.py --model BUNDLE [--work runs/precision]

``--settings '{"new_row_agreement": true}'`` records prediction settings in the copy first (a
bundle trained before a setting existed reads it as off; no weight depends on them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from throughput import machine  # benchmarks/ is on sys.path as a script

from sidyp_prod import api
from sidyp_prod.config import PREDICTION, SiDyPConfig
from sidyp_prod.export.onnx import export_onnx
from sidyp_prod.export.quantize import calibration_sample

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "semeval-fewshot-mixtral"


def with_prediction_settings(bundle: Path, settings: dict) -> None:
    """Record ``settings`` (fields of the Prediction panel only) in the bundle's config."""
    unknown = set(settings) - {f.name for f in fields(SiDyPConfig)
                               if f.metadata.get("panel") == PREDICTION}
    if unknown:
        raise SystemExit(f"--settings: not prediction settings: {sorted(unknown)}")
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["config"].update(settings)
    path.write_text(json.dumps(manifest, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="a bundle trained on SemEval's train.jsonl")
    parser.add_argument("--work", type=Path, default=Path("runs/precision"))
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[1024, 37, 1])
    parser.add_argument("--settings", type=json.loads, default={},
                        help="prediction settings to record in the copied bundle, as JSON")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundle = args.work / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(args.model, bundle)
    with_prediction_settings(bundle, args.settings)
    train = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()]
    export_onnx(bundle, calibration_texts=calibration_sample([r["text"] for r in train]))

    corpus = args.work / "semeval.jsonl"
    records = train + [json.loads(line) for line in
                       (DATA / "valid.jsonl").read_text().splitlines()]
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    runs: dict[str, dict] = {}
    for name, precision, chunk in [("fp32", "fp32", args.chunk_sizes[0])] + [
            (f"default-chunk{c}", "auto", c) for c in args.chunk_sizes]:
        out = args.work / f"{name}.jsonl"
        start = time.perf_counter()
        summary = api.refine(corpus, bundle, out, precision=precision, chunk_size=chunk)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        runs[name] = {"precision": summary.to_dict().get("precision", precision),
                      "seconds": round(time.perf_counter() - start, 1),
                      "labels": [r["predicted_label"] for r in rows], "bytes": out.read_bytes()}
    reference = runs["fp32"]["labels"]
    gold = [r["gold_label"] for r in records]
    default = runs[f"default-chunk{args.chunk_sizes[0]}"]
    differ = sum(a != b for a, b in zip(default["labels"], reference, strict=True))
    result = {
        "machine": machine(),
        "rows": len(records),
        "default_precision": default["precision"],
        "labels_differing": differ,
        "agreement": round(1 - differ / len(records), 4),
        "accuracy_fp32": round(sum(a == g for a, g in zip(reference, gold, strict=True))
                               / len(gold), 4),
        "accuracy_default": round(sum(a == g for a, g in zip(default["labels"], gold,
                                                             strict=True)) / len(gold), 4),
        "same_bytes_at_every_chunk_size": all(
            runs[f"default-chunk{c}"]["bytes"] == default["bytes"] for c in args.chunk_sizes),
        "seconds": {name: run["seconds"] for name, run in runs.items()},
    }
    print(json.dumps(result, indent=1))
    (args.work / "precision.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
