#!/usr/bin/env bash
# Install what the project needs, idempotently: Debian packages (when root),
# the project virtualenv with the pinned requirements, and Wapiti in its own venv.
# A re-run with nothing changed takes about a second.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${SELFHEAL_PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
log() { printf '[bootstrap] %s\n' "$*" >&2; }
UV_VERSION=0.13.9  # the installer of both venvs (see "Python" below)

# ------------------------------------------------------------------ Debian
# docker.io: sandboxes and the docker backend; haproxy: the gateway; debootstrap:
# the offline base image; wrk: independent load generator; redis-server: Celery broker;
# chromium + fonts-liberation: the UI browser test (Playwright drives the system Chromium);
# docker-compose: `docker-compose config` validates docker-compose.yaml (tests/unit/test_compose.py).
APT_PACKAGES=(docker.io haproxy debootstrap wrk redis-server git make chromium fonts-liberation docker-compose)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || APT_PACKAGES+=(postgresql)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        log "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install -y ${missing[*]})"
        exit 1
    fi
fi

# ---------------------------------------------------------------- Python
if [ ! -x .venv/bin/python ]; then
    log "creating .venv ($($PY --version))"
    "$PY" -m venv .venv
fi
stamp=.venv/.selfheal-install-stamp
want=$(cat requirements.txt requirements-dev.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing pinned requirements into .venv"
    # uv (PyPI) installs the same pinned set as pip (same `pip freeze`), measured cold here in
    # 10 s instead of pip's 152 s: parallel downloads, no bytecode compilation.
    .venv/bin/python -m pip install -q "uv==$UV_VERSION" 2>&1 | grep -v "is ignored" || true
    # pip itself too: it runs at run time (`pip download` fills the demo's wheel cache, the
    # dependency planner asks `pip index versions --json`) and the venv's bundled pip is too old.
    .venv/bin/uv pip install --python .venv/bin/python -q --upgrade pip \
        -r requirements.txt -r requirements-dev.txt -c constraints.txt -e .
    .venv/bin/python -c "import airflow, selfheal" || { log "install failed"; exit 1; }
    echo "$want" >"$stamp"
fi

# ---------------------------------------------------------------- Wapiti
if [ -x scripts/install-wapiti.sh ]; then
    scripts/install-wapiti.sh
fi
log "ready"
