"""Which int8 rows the fp32 re-check must catch: labels that differ from ``--precision fp32``
without any re-check, and how many rows each re-check rule refines again and leaves different.

Refines a corpus twice through ``api.refine`` (fp32; the int8 encoder with the re-check off,
keeping each batch's refinement and embeddings by wrapping ``pipeline.refine_batch``), then
applies the rules offline: a row is re-checked when its decision margin is below
``pipeline.CLOSE_CALL`` or, for each band, when one trade of neighbours at the edge of its k
nearest (``prior.boundary_swaps``) changes its label. A re-checked row gets exactly the fp32
run's fields (tests/test_quantize.py), so the labels left different are the unflagged ones.

    python benchmarks/int8_trades.py --model BUNDLE --corpus CORPUS [--bands 0.001 0.002 0.005]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sidyp_prod import api, pipeline
from sidyp_prod.bundle import load_bundle
from sidyp_prod.diffusion import text_key
from sidyp_prod.model_io import load_model
from sidyp_prod.refinement import BatchRefinement, RefineSettings, prior_from_neighbors


def predicted(path: Path) -> list[str]:
    return [json.loads(line)["predicted_label"] for line in path.read_text().splitlines()]


def int8_without_recheck(corpus: Path, bundle: Path, out: Path) -> list[tuple[Any, ...]]:
    """The int8 run's (text keys, embeddings, given, refinement) per batch, re-check off."""
    captured: list[tuple[Any, ...]] = []
    refine_batch = pipeline.refine_batch

    def capturing(runtime: Any, encoded: Any, weights: Any, kind: Any, given: Any, keys: Any,
                  *args: Any, **kwargs: Any) -> BatchRefinement:
        result = refine_batch(runtime, encoded, weights, kind, given, keys, *args, **kwargs)
        captured.append((list(keys), encoded.embedding, np.asarray(given), result))
        return result

    saved = pipeline.refine_batch, pipeline.CLOSE_CALL, pipeline.BOUNDARY_BAND
    pipeline.refine_batch, pipeline.CLOSE_CALL, pipeline.BOUNDARY_BAND = capturing, 0.0, 0.0
    try:
        api.refine(corpus, bundle, out, precision="int8")
    finally:
        pipeline.refine_batch, pipeline.CLOSE_CALL, pipeline.BOUNDARY_BAND = saved
    return captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--bands", type=float, nargs="+", default=[0.001, 0.002, 0.005, 0.01])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="int8-trades-"))
    api.refine(args.corpus, args.model, work / "fp32.jsonl", precision="fp32")
    captured = int8_without_recheck(args.corpus, args.model, work / "int8.jsonl")
    texts = [json.loads(line)["text"] for line in args.corpus.read_text().splitlines()]
    fp32, int8 = predicted(work / "fp32.jsonl"), predicted(work / "int8.jsonl")
    differs_by_key = {text_key(t): a != b for t, a, b in zip(texts, fp32, int8, strict=True)}

    model = load_model(load_bundle(args.model))
    settings = RefineSettings.from_config(model.config, model.n_classes)
    rule = model.calibration.decision_rule(model.config)
    rows = differ = close = margin_left = 0
    flagged = {band: 0 for band in args.bands}
    left = {band: 0 for band in args.bands}
    for keys, embedding, given, refinement in captured:
        label, margin = pipeline.new_row_decisions(model, refinement, given, rule)
        near = margin < pipeline.CLOSE_CALL
        flips = np.array([differs_by_key[k] for k in keys])
        rows, differ, close = rows + len(keys), differ + int(flips.sum()), close + int(near.sum())
        margin_left += int((flips & ~near).sum())
        for band in args.bands:
            trades = prior_from_neighbors(embedding, model.indexes, settings, band).trades
            checked = near | pipeline.relabelled_by_trades(model, refinement, trades, given,
                                                           label, rule)
            flagged[band] += int(checked.sum())
            left[band] += int((flips & ~checked).sum())
    result = {
        "rows": rows, "differ_without_recheck": differ,
        "close_calls": {"rechecked": close, "differ": margin_left},
        "with_trades": {str(band): {"rechecked": flagged[band], "differ": left[band]}
                        for band in args.bands},
    }
    print(json.dumps(result, indent=1))
    print(f"\n| rule | rows re-checked | labels differing from fp32 (of {rows}) |")
    print("| --- | --- | --- |")
    print(f"| none | 0 | {differ} |")
    print(f"| decision margin < {pipeline.CLOSE_CALL} | {close} | {margin_left} |")
    for band in args.bands:
        print(f"| and trades, band {band} | {flagged[band]} | {left[band]} |")


if __name__ == "__main__":
    main()
