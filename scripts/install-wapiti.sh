#!/usr/bin/env bash
# Install the real Wapiti scanner (PyPI: wapiti3) into its OWN virtualenv.
#
# Why a separate venv: wapiti3 pins its own httpx/sqlalchemy/etc. and must never
# change what Airflow's environment resolves to. The selfheal runner finds the
# binary at $SELFHEAL_WAPITI (default: <repo>/.venv-wapiti/bin/wapiti).
#
# Idempotent: if the venv already holds the wanted version, it does nothing.
# Environment:
#   WAPITI_VERSION  version to install          (default 3.2.3)
#   WAPITI_VENV     where the venv lives        (default <repo>/.venv-wapiti)
#   PYTHON          interpreter for the venv    (default python3; needs >= 3.10)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WAPITI_VERSION="${WAPITI_VERSION:-3.2.3}"
WAPITI_VENV="${WAPITI_VENV:-$ROOT/.venv-wapiti}"
PYTHON="${PYTHON:-python3}"
LOCK="$ROOT/scripts/wapiti-requirements.txt"

installed_version() {
    "$WAPITI_VENV/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print(version("wapiti3"))
PY
}

if [[ -x "$WAPITI_VENV/bin/wapiti" && "$(installed_version)" == "$WAPITI_VERSION" ]]; then
    echo "wapiti3 $WAPITI_VERSION already installed in $WAPITI_VENV"
    exit 0
fi

start=$(date +%s)
if [[ ! -x "$WAPITI_VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$WAPITI_VENV"
fi
# The lock file pins wapiti's whole dependency tree (made with `pip freeze` after a
# clean install), so every machine scans with the same code. Use it only when it
# matches the version asked for.
# uv from the project venv when bootstrap put it there (same packages, much faster), else pip.
UV="$ROOT/.venv/bin/uv"
pip_install() {
    if [[ -x "$UV" ]]; then
        "$UV" pip install --python "$WAPITI_VENV/bin/python" --quiet "$@"
    else
        "$WAPITI_VENV/bin/python" -m pip install --quiet "$@"
    fi
}
if [[ -f "$LOCK" ]] && grep -qx "wapiti3==$WAPITI_VERSION" "$LOCK"; then
    pip_install -r "$LOCK"
else
    pip_install "wapiti3==$WAPITI_VERSION"
fi
"$WAPITI_VENV/bin/wapiti" --version >/dev/null
echo "installed wapiti3 $(installed_version) in $WAPITI_VENV in $(( $(date +%s) - start )) s"
