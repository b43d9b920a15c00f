#!/usr/bin/env bash
# The main job end to end on the embedded defaults: set up, train on the example corpus,
# refine it with the trained bundle, and score the result against the example's gold labels.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-runs/demo}"
mkdir -p "$OUT"
sidyp-prod train examples/news.jsonl --out "$OUT/bundle" --overwrite \
  --refined-out "$OUT/news.train-refined.jsonl"
sidyp-prod refine examples/news.jsonl --model "$OUT/bundle" --out "$OUT/news.refined.jsonl"
sidyp-prod evaluate "$OUT/news.refined.jsonl"
