#!/usr/bin/env bash
# The one test command (README quick start, and .ci/run): from a fresh clone, install what the tests need
# and run them all -- ruff (lint + format check), mypy --strict on the package, and pytest.
#
#   bash scripts/test.sh [pytest args...]
#
# Environment: PYTHON (default python3, must be >= 3.11), VENV (default .venv), REDIS_URL (use that Redis
# instead of a private redis-server; the Redis-outage tests are then skipped, as they would stop it).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/_venv.sh

step() { printf '\n== %s\n' "$*"; }

step "redis-server"
if [ -n "${REDIS_URL:-}" ]; then
    echo "using REDIS_URL"
elif command -v redis-server >/dev/null 2>&1; then
    redis-server --version
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server missing: installing it with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    redis-server --version
else
    echo "redis-server is required by the tests and is not installed. Install it, then run this again:" >&2
    echo "  Debian/Ubuntu: sudo apt-get install redis-server" >&2
    echo "  Fedora/RHEL:   sudo dnf install redis" >&2
    echo "  macOS:         brew install redis" >&2
    echo "or point REDIS_URL at a Redis the tests may flush." >&2
    exit 1
fi

step "python environment ($VENV)"
ensure_venv "[dev]"

step "ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

step "mypy --strict"
"$VENV/bin/mypy" --strict orchestrator

step "pytest"
"$VENV/bin/pytest" "$@"
