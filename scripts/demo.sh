#!/usr/bin/env bash
# The demo (README quick start): from a fresh clone, install the daemon into .venv and run
# `orchestrator demo` -- the daemon, the MetaStudio sandbox and a simulated audience in one process, with an
# embedded in-memory store. Nothing to configure, no credentials, no Redis needed.
#
#   bash scripts/demo.sh [orchestrator demo options: --duration S, --redis-url URL, --speed F ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv ""
exec "$VENV/bin/orchestrator" demo "$@"
