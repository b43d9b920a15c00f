#!/usr/bin/env bash
# The main job end to end on the embedded defaults: set up, train on the example corpus (its own
# refined labels come from classifiers that never saw each row's label), refine it again through
# the streaming path as new rows, and score both against the example's gold labels.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
OUT="${1:-runs/demo}"
mkdir -p "$OUT"
sidyp-prod train examples/news.jsonl --out "$OUT/bundle" --overwrite \
  --refined-out "$OUT/news.train-refined.jsonl"
sidyp-prod refine examples/news.jsonl --model "$OUT/bundle" --out "$OUT/news.refined.jsonl"
echo "== the training corpus's refined labels (train --refined-out)"
sidyp-prod evaluate "$OUT/news.train-refined.jsonl"
echo "== the same rows refined as new rows (refine)"
sidyp-prod evaluate "$OUT/news.refined.jsonl"
