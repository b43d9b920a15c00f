#!/usr/bin/env bash
# Set up and run the whole test suite (lint first).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
ruff check .
pytest -q "$@"
