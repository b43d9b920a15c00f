#!/usr/bin/env bash
# Create (or reuse) .venv with the project and its test dependencies. Sourced by the other scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1
# torch first, pinned, and the build chosen explicitly (the same version pin alone is the CUDA
# build on the standard index for Linux, a multi-GB download):
#   SIDYP_TORCH=cpu  (default) the CPU build, torch==VERSION+cpu: from pip's configured indexes
#                    or wheel directories if one has it, else from PyTorch's CPU wheel index;
#   SIDYP_TORCH=cuda the build the index serves under the bare version (CUDA on Linux from
#                    PyPI); SIDYP_TORCH_INDEX=https://download.pytorch.org/whl/cu126 picks
#                    another CUDA version;
#   SIDYP_TORCH=keep leave the torch that is installed alone.
TORCH_VERSION=2.13.0
case "${SIDYP_TORCH:-cpu}" in
  cpu)
    python -m pip install -q "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
      || python -m pip install -q "torch==${TORCH_VERSION}+cpu" \
           --extra-index-url "${SIDYP_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" ;;
  cuda)
    python -m pip install -q "torch==${TORCH_VERSION}" \
      ${SIDYP_TORCH_INDEX:+--extra-index-url "$SIDYP_TORCH_INDEX"} ;;
  keep) ;;
  *) echo "SIDYP_TORCH must be cpu, cuda or keep, not '${SIDYP_TORCH}'" >&2; exit 2 ;;
esac
python -m pip install -q "setuptools>=70" wheel
python -m pip install -q -e ".[test]"
