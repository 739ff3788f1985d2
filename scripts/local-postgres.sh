#!/usr/bin/env bash
# Throwaway PostgreSQL server on 127.0.0.1 for tests.
#
#   scripts/local-postgres.sh start   # start (idempotent); last stdout line is the SQLAlchemy URL
#   scripts/local-postgres.sh url     # URL of the running server (exit 1 if none)
#   scripts/local-postgres.sh stop    # stop the server and delete its data folder
#
# Env: VLBENCH_PG_DIR (default /tmp/vlbench-pg) holds data, socket, log and port; use a different
# folder per concurrent user to get independent servers. Everything but the URL goes to stderr.
# Auth is "trust" for the superuser `vlbench` on loopback: the server is for tests only.
# As root the server runs as the `postgres` user, so VLBENCH_PG_DIR's parents must be world-traversable
# (/tmp is; pytest's /tmp/pytest-of-root is not).
set -euo pipefail

PG_DIR=${VLBENCH_PG_DIR:-/tmp/vlbench-pg}
DATA=$PG_DIR/data
PORT_FILE=$PG_DIR/port
LOG=$PG_DIR/server.log
DB_USER=vlbench
DB_NAME=vlbench

log() { echo "local-postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_pg_bin() {
  # newest installed major version (Debian keeps them side by side, outside PATH)
  local d
  d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

ensure_installed() {
  PG_BIN=$(find_pg_bin || true)
  if [ -z "$PG_BIN" ]; then
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL is not installed and installing it needs root (apt-get install postgresql)"
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is not available"
    log "installing postgresql with apt-get (one-off)"
    apt-get update -qq >&2 || die "apt-get update failed"
    # the package may also create/start its own cluster on 5432 (where services may start); ours is separate
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || die "apt-get install postgresql failed"
    PG_BIN=$(find_pg_bin || true)
    [ -n "$PG_BIN" ] || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
  fi
}

# postgres refuses to run as root, so as root everything runs as the `postgres` system user
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local py
  py=$(command -v python3 || command -v python || true)
  [ -n "$py" ] || die "python3 is needed to pick a free port"
  "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

url_for() { echo "postgresql+psycopg://$DB_USER@127.0.0.1:$1/$DB_NAME"; }

is_running() {
  [ -f "$DATA/postmaster.pid" ] && [ -f "$PORT_FILE" ] && [ -n "${PG_BIN:-}" ] &&
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

cmd_start() {
  ensure_installed
  if is_running; then
    log "already running ($DATA)"
    url_for "$(cat "$PORT_FILE")"
    return
  fi
  # leftovers of a crashed or half-made server are not worth repairing
  rm -rf "$DATA" "$PORT_FILE"
  mkdir -p "$PG_DIR"
  if [ "$(id -u)" -eq 0 ]; then as_pg true; chown postgres: "$PG_DIR"; fi
  chmod 700 "$PG_DIR"

  as_pg "$PG_BIN/initdb" -D "$DATA" -U "$DB_USER" --auth=trust -E UTF8 --locale=C --no-sync >"$PG_DIR/initdb.log" 2>&1 ||
    { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  local port attempt
  # the free port may be taken between choosing and binding it: retry with a new one
  for attempt in 1 2 3; do
    port=$(free_port)
    # socket in our folder: /var/run/postgresql may not exist (no systemd / package cluster)
    cat >"$DATA/postgresql.auto.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$PG_DIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
EOF
    # 9>&-: the server must not inherit (and hold forever) the lock of this script
    if as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 start >/dev/null 2>&1 9>&-; then
      echo "$port" >"$PORT_FILE"
      break
    fi
    log "start on port $port failed (attempt $attempt):"
    tail -n 5 "$LOG" >&2 || true
    port=""
  done
  [ -n "$port" ] || die "could not start postgres; see $LOG"
  as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U "$DB_USER" "$DB_NAME" || die "createdb $DB_NAME failed"
  log "started $("$PG_BIN/postgres" --version) on 127.0.0.1:$port (data $DATA)"
  url_for "$port"
}

cmd_url() {
  PG_BIN=$(find_pg_bin || true)
  is_running || die "not running (start it with: $0 start)"
  url_for "$(cat "$PORT_FILE")"
}

cmd_stop() {
  PG_BIN=$(find_pg_bin || true)
  if is_running; then
    as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w -t 30 stop >/dev/null || log "pg_ctl stop failed"
    log "stopped"
  else
    log "not running"
  fi
  # only a folder this script made (a server's data under it) is removed, never whatever VLBENCH_PG_DIR names
  if [ -f "$PORT_FILE" ] || [ -f "$DATA/PG_VERSION" ]; then rm -rf "$PG_DIR"; fi
}

# serialise start/stop on the same folder (e.g. two pytest sessions starting at once)
lock() {
  mkdir -p "$(dirname "$PG_DIR")"
  exec 9>"${PG_DIR%/}.lock"
  flock -w 120 9 || die "timed out waiting for ${PG_DIR%/}.lock"
}

case "${1:-}" in
  start) lock; cmd_start ;;
  stop) lock; cmd_stop ;;
  url) cmd_url ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
