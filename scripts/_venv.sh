# Sourced by scripts/test.sh and scripts/demo.sh: make sure "$VENV" holds a Python >= 3.11 environment with
# the package installed, extras "$1" (e.g. "[dev]", or "" for the daemon alone).
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

ensure_venv() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "Python >= 3.11 is required; set PYTHON=/path/to/python3.11" >&2
        exit 1
    }
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$1" 2> >(grep -v "^WARNING: Location" >&2)
}
