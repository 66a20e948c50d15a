#!/usr/bin/env bash
# Run selfheal locally on the embedded default: `airflow standalone` with this
# repo's dags/ and plugins/, SQLite metadata by default (Postgres when
# SELFHEAL_AIRFLOW_DB_URL is set), the triage DB on the private Postgres, the
# demo stack (HAProxy gateway, the demo target behind it, moto as the AWS
# stand-in: `selfheal stack`), then the demo run (`selfheal demo run`).
#
#   scripts/airflow-local.sh up      start (idempotent), print the UI URL and admin credentials, run the demo
#                                    (SELFHEAL_DEMO=0: services only, no demo run)
#   scripts/airflow-local.sh down    stop what `up` started: Airflow's process group, the stack, then services
#   scripts/airflow-local.sh demo    run the demo again on what `up` started (`selfheal demo run`)
#   scripts/airflow-local.sh status
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
RUN="${SELFHEAL_RUN_DIR:-$REPO/.run}"
mkdir -p "$RUN"
PORT="${SELFHEAL_AIRFLOW_PORT:-8080}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$RUN/airflow-home}"
export AIRFLOW__CORE__DAGS_FOLDER="$REPO/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$REPO/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
# 2 cores: the default of 32 LocalExecutor workers only thrashes.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
# ...and there the API server's first answers can take longer than the 5 s default: a task whose
# start call times out is killed and retried (seen on the demo's first scan).
export AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT="${AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT:-30}"
export AIRFLOW__API__PORT="$PORT"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
if [ -n "${SELFHEAL_AIRFLOW_DB_URL:-}" ]; then
    export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$SELFHEAL_AIRFLOW_DB_URL"
fi
log() { printf '[airflow-local] %s\n' "$*" >&2; }
alive() { [ -f "$RUN/airflow.pid" ] && kill -0 "$(cat "$RUN/airflow.pid")" 2>/dev/null; }

api() {  # api METHOD PATH [JSON]: call the REST API with a fresh token
    local token
    token=$(curl -sf -X POST "http://127.0.0.1:$PORT/auth/token" -H 'Content-Type: application/json' \
        -d "{\"username\":\"admin\",\"password\":\"$(password)\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
    curl -sf -X "$1" "http://127.0.0.1:$PORT$2" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' ${3:+-d "$3"}
}

password() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["admin"])' \
        "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
}

up() {
    scripts/bootstrap.sh
    scripts/services.sh start postgres docker base-image
    eval "$(scripts/services.sh env)"
    export SELFHEAL_DATABASE_URL AIRFLOW_VAR_SELFHEAL_BASE_IMAGE="$SELFHEAL_BASE_IMAGE"
    .venv/bin/selfheal db upgrade --url "$SELFHEAL_DATABASE_URL" >/dev/null
    # The stack before Airflow: its tasks find the gateway settings, the run catalog and the AWS
    # stand-in through these variables, which must be in Airflow's environment when it starts.
    log "demo stack: gateway, demo target behind it, AWS stand-in"
    .venv/bin/selfheal stack up
    eval "$(.venv/bin/selfheal stack env)"
    if alive; then
        log "already running (pid $(cat "$RUN/airflow.pid"))"
    else
        log "starting airflow standalone (AIRFLOW_HOME=$AIRFLOW_HOME, log $RUN/airflow.log)"
        # setsid: its own process group, so `down` can SIGINT the whole tree.
        PATH="$REPO/.venv/bin:$PATH" setsid .venv/bin/airflow standalone >"$RUN/airflow.log" 2>&1 &
        echo $! >"$RUN/airflow.pid"
    fi
    for _ in $(seq 1 180); do
        curl -sf "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null 2>&1 && break
        alive || { log "airflow exited; last lines of $RUN/airflow.log:"; tail -20 "$RUN/airflow.log" >&2; exit 1; }
        sleep 1
    done
    curl -sf "http://127.0.0.1:$PORT/api/v2/monitor/health" >/dev/null || { log "UI not answering"; exit 1; }
    local expected loaded
    expected=$(find dags -maxdepth 1 -name '*.py' ! -name '_*' | wc -l)
    for _ in $(seq 1 120); do
        loaded=$(api GET "/api/v2/dags?limit=100" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["total_entries"])' 2>/dev/null || echo 0)
        [ "$loaded" -ge "$expected" ] && break
        sleep 1
    done
    log "$loaded DAGs loaded (dags/ has $expected files)"
    cat <<EOT

  selfheal is running.
    Airflow UI   http://127.0.0.1:$PORT
    user         admin
    password     $(password)
    triage DB    $(python3 -c 'import sys; from urllib.parse import urlsplit as u; p=u(sys.argv[1]); print(f"{p.scheme}://{p.hostname}:{p.port}{p.path}")' "$SELFHEAL_DATABASE_URL")
    logs         $RUN/airflow.log
  Stop it with: make down

EOT
    if [ "${SELFHEAL_DEMO:-1}" != 0 ]; then
        SELFHEAL_AIRFLOW_PORT="$PORT" .venv/bin/selfheal demo run
    else
        log "SELFHEAL_DEMO=0: demo run skipped (run it any time with: .venv/bin/selfheal demo run)"
    fi
}

# Members of a process group that still run (zombies are finished: they only wait to be
# reaped by their parent or by PID 1, which in a container may never do it).
# group_alive PGID [SKIP_PID]: SKIP_PID (the group leader) does not count.
group_alive() {
    local p s
    for p in $(pgrep -g "$1" 2>/dev/null); do
        [ "$p" = "${2:-}" ] && continue
        s=$(sed -E "s/.*\) ([A-Za-z]).*/\1/" "/proc/$p/stat" 2>/dev/null) || continue
        [ "$s" != "Z" ] && return 0
    done
    return 1
}

wait_group() {  # wait_group PGID SECONDS [SKIP_PID]: true once the group has no running member
    local i
    for i in $(seq 1 $(($2 * 4))); do group_alive "$1" "${3:-}" || return 0; sleep 0.25; done
    ! group_alive "$1" "${3:-}"
}

down() {
    if [ -f "$RUN/airflow.pid" ]; then
        local pid
        pid=$(cat "$RUN/airflow.pid")
        if group_alive "$pid"; then
            # SIGINT to the group is what the scheduler, API server, triggerer and workers handle
            # cleanly (about 1 s); `airflow standalone` itself then waits for a SIGTERM (measured:
            # it outlives its children indefinitely). Escalate early only if a child outlives 30 s.
            log "stopping airflow (SIGINT to process group $pid)"
            kill -INT -- "-$pid" 2>/dev/null || true
            wait_group "$pid" 30 "$pid" || log "group $pid: children still running after 30 s"
            kill -TERM -- "-$pid" 2>/dev/null || true
            wait_group "$pid" 10 || { log "group $pid still running: SIGKILL"; kill -KILL -- "-$pid" 2>/dev/null || true; }
            wait_group "$pid" 10 || { log "process group $pid did not stop"; exit 1; }
        fi
    fi
    rm -f "$RUN/airflow.pid"
    # The stack's containers and desired state are cleaned while Postgres still runs.
    if [ -x .venv/bin/selfheal ]; then
        eval "$(scripts/services.sh env)"
        .venv/bin/selfheal stack down || log "stack down reported a problem (see above)"
    fi
    scripts/services.sh stop
}

demo() {
    alive || { log "not running: start it with make up"; exit 1; }
    eval "$(scripts/services.sh env)"
    export SELFHEAL_DATABASE_URL SELFHEAL_AIRFLOW_PORT="$PORT"
    eval "$(.venv/bin/selfheal stack env)"
    .venv/bin/selfheal demo run
}

case "${1:-}" in
up) up ;;
down) down ;;
demo) demo ;;
status)
    if alive; then echo "airflow running (pid $(cat "$RUN/airflow.pid")) on http://127.0.0.1:$PORT"; else echo "airflow stopped"; fi
    [ -x .venv/bin/selfheal ] && { eval "$(scripts/services.sh env)"; .venv/bin/selfheal stack status || true; }
    ;;
*) sed -n '2,14p' "$0"; exit 2 ;;
esac
