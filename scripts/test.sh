#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite, slow integration tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# the linter first (rules in pyproject.toml): unused imports, shadowed names, import order
.venv/bin/ruff check .
# DCMTK keeps Nagle's algorithm on unless told otherwise (~40 ms per C-STORE response).
export TCP_NODELAY=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
