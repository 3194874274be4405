#!/usr/bin/env bash
# Set up (if needed) and run the node on its embedded default configuration
# (AE PINN_NODE, 127.0.0.1:11112, files and SQLite index under ./var/).
# Extra arguments go to `dicom-node serve`, e.g. --config deploy/node.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/dicom-node serve "$@"
