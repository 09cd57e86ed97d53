#!/bin/bash
# Runs once, when the postgres service initialises an empty data volume (docker-entrypoint-initdb.d).
# Creates one role per tenant of the cluster and gives each only its own databases:
#   ncpi      owns  ncpi                                (the inspectorate's records; `ncpi db upgrade`)
#   temporal  owns  temporal, temporal_visibility        (Temporal persistence and visibility)
# The databases are owned by their role so that, on PostgreSQL 15, each can create its schema in
# `public` (Alembic for ncpi, auto-setup's temporal-sql-tool for Temporal, which runs with
# SKIP_DB_CREATE=true because of this script).
#
# Passwords come from the service environment (NCPI_DB_PASSWORD, TEMPORAL_DB_PASSWORD). Changing
# them later in docker-compose.yml does not change them here: this script does not run again on an
# existing volume; use ALTER ROLE ... PASSWORD instead.
set -euo pipefail

: "${NCPI_DB_PASSWORD:?NCPI_DB_PASSWORD must be set}"
: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v ncpi_password="$NCPI_DB_PASSWORD" -v temporal_password="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE ncpi LOGIN PASSWORD :'ncpi_password';
CREATE DATABASE ncpi OWNER ncpi;
REVOKE ALL ON DATABASE ncpi FROM PUBLIC;

CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
REVOKE ALL ON DATABASE temporal FROM PUBLIC;
REVOKE ALL ON DATABASE temporal_visibility FROM PUBLIC;
SQL
