#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, slow integration tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# DCMTK keeps Nagle's algorithm on unless told otherwise (~40 ms per C-STORE response).
export TCP_NODELAY=1
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
