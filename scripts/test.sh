#!/usr/bin/env bash
# The README's test command (`make test`): prepare everything, run pytest
# against the real services, then stop only what this run started (by PID).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
start=$(date +%s)

scripts/bootstrap.sh
before=$(scripts/services.sh started | tr '\n' ' ')
cleanup() {
    local rc=$?
    for s in $(scripts/services.sh started); do
        case " $before " in *" $s "*) ;; *) scripts/services.sh stop "$s" ;; esac
    done
    echo "[test] finished in $(($(date +%s) - start)) s (exit $rc)" >&2
    exit $rc
}
trap cleanup EXIT
scripts/services.sh start postgres docker base-image
eval "$(scripts/services.sh env)"

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
