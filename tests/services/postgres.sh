#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests: initdb into .services/run/postgres, its own port on
# 127.0.0.1, trust authentication on loopback, fsync off. Subcommands: start | stop | status | url.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The server runs as the `postgres` user when we are root, and must reach its data folder: in a
# clone whose parents it cannot traverse (under root's home, in a `mktemp -d` folder) the data
# lives in a folder of its own under /tmp instead, named after this clone's run folder.
PG_BASE="$RUN_DIR"
if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1 \
  && ! runuser -u postgres -- test -x "$RUN_DIR" 2>/dev/null; then
  PG_BASE="/tmp/pillowtop-pg-$(printf %s "$RUN_DIR" | sha1sum | cut -c1-12)"
fi
PG_DATA="$PG_BASE/postgres"
PG_SOCKETS="$PG_BASE/postgres-sockets"
PG_URL="postgres://postgres@127.0.0.1:$POSTGRES_PORT/postgres"

pg_bin() {
  local d
  for d in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    [[ -x "$d/initdb" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
  done
  return 1
}

ensure_installed() {
  if ! pg_bin >/dev/null; then
    apt_install postgresql-15 postgresql-client-15
  fi
  pg_bin >/dev/null || die "PostgreSQL server binaries not found after installing postgresql-15"
}

healthy() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres; }

# PostgreSQL refuses to run as root: use the `postgres` system user when we are root.
as_pg_user() {
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  ensure_installed
  if pid_alive postgres && healthy; then
    log "postgres already running on 127.0.0.1:$POSTGRES_PORT"
    return 0
  fi
  stop_quiet
  local bin t0=$SECONDS
  bin="$(pg_bin)"
  rm -rf "$PG_DATA" "$PG_SOCKETS"
  mkdir -p "$PG_DATA" "$PG_SOCKETS"
  [[ $(id -u) -eq 0 ]] && chown -R postgres: "$PG_DATA" "$PG_SOCKETS" && chmod 755 "$SERVICES_HOME" "$RUN_DIR" "$PG_BASE"
  as_pg_user "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$LOG_DIR/postgres-initdb.log" 2>&1 \
    || { show_log_tail postgres-initdb; die "initdb failed"; }
  cat >>"$PG_DATA/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $POSTGRES_PORT
unix_socket_directories = '$PG_SOCKETS'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
shared_buffers = 256MB
max_wal_size = 2GB
log_min_messages = warning
CONF
  : >"$LOG_DIR/postgres.log"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$LOG_DIR/postgres.log"
  # Started directly (not through pg_ctl) so the pid file holds the postmaster itself.
  as_pg_user setsid "$bin/postgres" -D "$PG_DATA" >>"$LOG_DIR/postgres.log" 2>&1 </dev/null &
  echo $! >"$PID_DIR/postgres.pid"
  if [[ $(id -u) -eq 0 ]]; then
    # runuser forks the postmaster: record the real postmaster pid once its pid file appears.
    wait_until 30 "postmaster.pid" test -s "$PG_DATA/postmaster.pid" || true
    [[ -s "$PG_DATA/postmaster.pid" ]] && head -n1 "$PG_DATA/postmaster.pid" >"$PID_DIR/postgres.pid"
  fi
  if ! wait_until 60 "postgres on 127.0.0.1:$POSTGRES_PORT" healthy; then
    show_log_tail postgres
    die "postgres did not become ready"
  fi
  log "postgres ready on 127.0.0.1:$POSTGRES_PORT in $((SECONDS - t0))s"
}

stop_quiet() {
  stop_pid postgres 30
  rm -rf "$PG_DATA" "$PG_SOCKETS"
  [[ "$PG_BASE" == "$RUN_DIR" ]] || rmdir "$PG_BASE" 2>/dev/null || true
}

case "${1:-}" in
  start) start ;;
  stop) stop_quiet ;;
  status) if pid_alive postgres && healthy; then echo "postgres: running ($PG_URL)"; else echo "postgres: not running"; exit 1; fi ;;
  url) echo "$PG_URL" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
