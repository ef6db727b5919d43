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

step "chromium, a CJK font, promtool, systemd-analyze (console, alert rules, unit file)"
# The console is tested in a real headless Chromium (Debian's, driven by Playwright through its path: never
# a downloaded browser); the Prometheus rules by promtool; the systemd unit by systemd-analyze verify.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# Chinese room texts in the console's screenshots: a CJK font (boxes otherwise).
[ -n "$(fc-list :lang=zh 2>/dev/null)" ] || missing+=(fonts-wqy-zenhei)
if [ ${#missing[@]} -eq 0 ]; then
    chromium --version 2>/dev/null || true
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing with apt-get: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "missing: ${missing[*]} -- the tests that need them fail until they are installed" >&2
    echo "  Debian/Ubuntu: sudo apt-get install chromium fonts-wqy-zenhei prometheus systemd" >&2
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
