#!/bin/sh
# Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d):
# the triage database and the pipeline's own role, beside Airflow's metadata DB.
# The password comes from .env (SELFHEAL_DB_PASSWORD) and is passed to psql as a
# variable, quoted by psql itself (:'pw'), never pasted into the SQL text.
set -eu
: "${SELFHEAL_DB_PASSWORD:?SELFHEAL_DB_PASSWORD is not set (copy .env.example to .env)}"
psql -v ON_ERROR_STOP=1 -v pw="$SELFHEAL_DB_PASSWORD" \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE selfheal LOGIN PASSWORD :'pw';
CREATE DATABASE selfheal OWNER selfheal;
SQL
