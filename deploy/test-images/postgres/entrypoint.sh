#!/bin/sh
# Start PostgreSQL as the official image does, in short: create the cluster on the first
# start (superuser $POSTGRES_USER with $POSTGRES_PASSWORD, database $POSTGRES_DB, password
# logins over TCP), then run `postgres` with the command's options, as the postgres user.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
[ "${1:-}" = postgres ] && shift

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA"
chown postgres:postgres "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" >"$pwfile"
    chown postgres "$pwfile"
    as_postgres initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        as_postgres pg_ctl --wait --silent -o "-c listen_addresses=''" start
        as_postgres psql --quiet --username="$POSTGRES_USER" --dbname=postgres \
            --command="CREATE DATABASE \"$POSTGRES_DB\""
        as_postgres pg_ctl --wait --silent --mode=fast stop
    fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres "$@"
