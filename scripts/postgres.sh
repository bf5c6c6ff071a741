#!/usr/bin/env bash
# Make sure a throwaway PostgreSQL server is running for the tests, and print
# its URL as the last line. Debian's `postgresql` package (installed if
# missing), a cluster owned by `postgres` under /tmp/ingest-pg, listening only
# on 127.0.0.1:55432 with trust auth, and a database `ingest_test`.
# Safe to run again: it creates and starts only what is missing.
# INGEST_TEST_POSTGRES_DIR and INGEST_TEST_POSTGRES_PORT give another cluster
# (tests/postgres.py: a test that stops its server has one of its own).
set -euo pipefail

DIR=${INGEST_TEST_POSTGRES_DIR:-/tmp/ingest-pg}
PORT=${INGEST_TEST_POSTGRES_PORT:-55432}
DATABASE=ingest_test

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }

pgbin() {
  # The newest installed major version that has both initdb and pg_ctl.
  local dir
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; return 0; fi
  done
  return 1
}

if ! PGBIN=$(pgbin); then
  echo "postgres: installing Debian's postgresql package" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(pgbin)
fi

as_root install -d -o postgres -g postgres "$DIR"
if [ ! -f "$DIR/data/PG_VERSION" ]; then
  # A data dir without PG_VERSION is what an interrupted initdb leaves.
  as_root rm -rf "$DIR/data"
  echo "postgres: initdb $DIR/data" >&2
  as_postgres "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
fi

if ! as_postgres "$PGBIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
  echo "postgres: starting on 127.0.0.1:$PORT" >&2
  if ! as_postgres "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w \
      -o "-p $PORT -k $DIR -c listen_addresses=127.0.0.1" start >/dev/null; then
    tail -n 20 "$DIR/log" >&2
    exit 1
  fi
fi

psql=("$PGBIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -X -q -v ON_ERROR_STOP=1)
if [ -z "$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DATABASE'")" ]; then
  "${psql[@]}" -d postgres -c "CREATE DATABASE $DATABASE"
fi

echo "postgresql://postgres@127.0.0.1:$PORT/$DATABASE"
