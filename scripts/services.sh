#!/usr/bin/env bash
# Start/stop the real services the tests and the local run need, idempotently.
#
#   scripts/services.sh start [postgres] [docker] [base-image]   (default: all three)
#   scripts/services.sh stop [postgres] [docker]                   stop what THIS script started (by PID)
#   scripts/services.sh started                                    list the services this script owns
#   scripts/services.sh env                                        print `export ...` lines for the tests
#
# State (PIDs, ports, logs, the Postgres cluster) lives in $SELFHEAL_RUN_DIR
# (default: <repo>/.run). Only processes whose PID this script recorded are stopped.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${SELFHEAL_RUN_DIR:-$REPO/.run}"
PGBIN="${SELFHEAL_PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
BASE_TAG="${SELFHEAL_BASE_IMAGE:-selfheal/base:bookworm}"
mkdir -p "$RUN"

log() { printf '[services] %s\n' "$*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# ---------------------------------------------------------------- postgres
# A private cluster on a free loopback port. initdb refuses root, so the
# cluster belongs to the `postgres` user; its directory lives under /tmp so
# that user can reach it whatever the permissions on the checkout are.
pg_dir() {
    local key
    key=$(printf '%s' "$RUN" | sha1sum | cut -c1-10)
    echo "/tmp/selfheal-pg-$key"
}

as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
    local dir port
    dir=$(pg_dir)
    if [ -f "$RUN/pg.port" ] && as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        log "postgres already running on port $(cat "$RUN/pg.port")"
        return
    fi
    [ -x "$PGBIN/initdb" ] || { log "PostgreSQL binaries not found (set SELFHEAL_PGBIN)"; exit 1; }
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        log "initdb $dir/data"
        as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >"$RUN/initdb.log" 2>&1
    fi
    port="${SELFHEAL_PG_PORT_WANTED:-$(free_port)}"
    mkdir -p "$dir/sock"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir/sock"
    # fsync off: a throwaway test cluster; durability is not what is measured.
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >/dev/null
    echo "$port" >"$RUN/pg.port"
    as_pg "$PGBIN/postmaster" --version >/dev/null
    head -1 "$dir/data/postmaster.pid" >"$RUN/pg.pid"
    for db in selfheal selfheal_test airflow; do
        "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 ||
            "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE $db" >/dev/null
    done
    log "postgres on 127.0.0.1:$port (pid $(cat "$RUN/pg.pid"))"
}

stop_postgres() {
    local dir
    dir=$(pg_dir)
    if [ -f "$dir/data/postmaster.pid" ] && [ -f "$RUN/pg.pid" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
        log "postgres stopped"
    fi
    rm -f "$RUN/pg.pid" "$RUN/pg.port"
}

# ------------------------------------------------------------------ docker
start_docker() {
    if docker info >/dev/null 2>&1; then
        log "docker engine answering"
        return
    fi
    command -v dockerd >/dev/null || { log "dockerd not installed (apt-get install docker.io)"; exit 1; }
    log "starting dockerd (log: $RUN/dockerd.log)"
    setsid dockerd >"$RUN/dockerd.log" 2>&1 &
    echo $! >"$RUN/dockerd.pid"
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && { log "dockerd up (pid $(cat "$RUN/dockerd.pid"))"; return; }
        sleep 0.5
    done
    log "dockerd did not answer within 30 s; see $RUN/dockerd.log"
    exit 1
}

stop_docker() {
    if [ -f "$RUN/dockerd.pid" ]; then
        local pid
        pid=$(cat "$RUN/dockerd.pid")
        if pid_alive "$pid"; then
            kill "$pid"
            for _ in $(seq 1 40); do pid_alive "$pid" || break; sleep 0.25; done
            log "dockerd stopped"
        fi
        rm -f "$RUN/dockerd.pid"
    fi
}

# -------------------------------------------------------------- base image
start_base_image() {
    "$REPO/include/sandbox/base-image/build.sh" "$BASE_TAG"
}

# ------------------------------------------------------------------- main
cmd="${1:-}"
shift || true
case "$cmd" in
start)
    what=("$@")
    [ ${#what[@]} -eq 0 ] && what=(postgres docker base-image)
    for w in "${what[@]}"; do
        case "$w" in
        postgres) start_postgres ;;
        docker) start_docker ;;
        base-image) start_docker; start_base_image ;;
        *) log "unknown service $w"; exit 2 ;;
        esac
    done
    ;;
stop)
    what=("$@")
    [ ${#what[@]} -eq 0 ] && what=(postgres docker)
    for w in "${what[@]}"; do
        case "$w" in
        postgres) stop_postgres ;;
        docker) stop_docker ;;
        *) log "unknown service $w"; exit 2 ;;
        esac
    done
    ;;
started)
    # Which services this script started and still owns (for callers that stop only their own).
    [ -f "$RUN/pg.pid" ] && echo postgres
    [ -f "$RUN/dockerd.pid" ] && echo docker
    true
    ;;
env)
    if [ -f "$RUN/pg.port" ]; then
        port=$(cat "$RUN/pg.port")
        echo "export SELFHEAL_PG_PORT=$port"
        echo "export SELFHEAL_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:$port/selfheal_test"
        echo "export SELFHEAL_DATABASE_URL=\${SELFHEAL_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:$port/selfheal}"
    fi
    echo "export SELFHEAL_BASE_IMAGE=$BASE_TAG"
    ;;
*)
    sed -n '2,9p' "$0"
    exit 2
    ;;
esac
