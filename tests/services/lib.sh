# shellcheck shell=bash
# Shared helpers for the service scripts in tests/services/. Sourced, never run.
#
# Layout (all git-ignored, under the repository root):
#   ~/.cache/pillowtop/services/   Maven repository and resolved jar folders (kept between runs
#                                  and checkouts; PILLOWTOP_SERVICES_CACHE overrides)
#   .services/run/     one data folder per service (throwaway: wiped on each fresh start)
#   .services/logs/    one log file per service
#   .services/pids/    one pid file per service
#   .services/env      the TEST_* addresses, written by `up`, sourced by tests/run, benches, demo
set -euo pipefail

SERVICES_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SERVICES_SRC/../.." && pwd)"
SERVICES_HOME="${PILLOWTOP_SERVICES_HOME:-$REPO_ROOT/.services}"
# The jar cache outlives checkouts (CI runs in a fresh clone), so it lives in the user cache.
CACHE_DIR="${PILLOWTOP_SERVICES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pillowtop/services}"
RUN_DIR="$SERVICES_HOME/run"
LOG_DIR="$SERVICES_HOME/logs"
PID_DIR="$SERVICES_HOME/pids"
ENV_FILE="$SERVICES_HOME/env"
mkdir -p "$CACHE_DIR" "$RUN_DIR" "$LOG_DIR" "$PID_DIR"

# Fixed loopback ports (non-default so a developer's own services do not clash).
KAFKA_PORT="${PILLOWTOP_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${PILLOWTOP_KAFKA_CONTROLLER_PORT:-19093}"
POSTGRES_PORT="${PILLOWTOP_POSTGRES_PORT:-15432}"
SEARCH_HTTP_PORT="${PILLOWTOP_SEARCH_HTTP_PORT:-19200}"
SEARCH_TRANSPORT_PORT="${PILLOWTOP_SEARCH_TRANSPORT_PORT:-19300}"

log() { printf '[services %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive NAME: true when the pid file of NAME names a live process.
pid_alive() {
  local f="$PID_DIR/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# stop_pid NAME [TIMEOUT]: SIGTERM, wait up to TIMEOUT seconds (default 30), then SIGKILL.
stop_pid() {
  local name="$1" timeout="${2:-30}" f="$PID_DIR/$1.pid" pid i
  [[ -f "$f" ]] || return 0
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop within ${timeout}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$f"
}

# show_log_tail NAME [LINES]: print the end of a service log to stderr (used on start-up failure).
show_log_tail() {
  local f="$LOG_DIR/$1.log"
  if [[ -f "$f" ]]; then
    log "last ${2:-100} lines of $f:"
    tail -n "${2:-100}" "$f" >&2 || true
  fi
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# apt_install PKG...: install Debian packages that are missing (we run as root on these machines).
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing Debian packages: ${missing[*]}"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# maven_resolve NAME POM: copy the runtime closure of POM into $CACHE_DIR/NAME/lib, once per POM
# hash (a stamp file records the hash of the POM that produced the folder). Prints the lib folder.
maven_resolve() {
  local name="$1" pom="$2" lib="$CACHE_DIR/$1/lib" stamp="$CACHE_DIR/$1/stamp" hash
  hash="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
    echo "$lib"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn is not installed: Maven is needed to resolve the $name jars"
  log "resolving $name jars from Maven Central (first run only; cached in $CACHE_DIR)"
  rm -rf "$lib"
  mkdir -p "$lib"
  if ! mvn -B -q -Dstyle.color=never -f "$pom" -Dmaven.repo.local="$CACHE_DIR/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib" >&2; then
    die "could not resolve the $name jars with Maven (is Maven Central reachable?)"
  fi
  echo "$hash" >"$stamp"
  echo "$lib"
}

# env_set KEY VALUE: write or replace KEY=VALUE in the env file.
env_set() {
  local key="$1" value="$2" tmp
  touch "$ENV_FILE"
  tmp="$(mktemp)"
  grep -v "^export $key=" "$ENV_FILE" >"$tmp" || true
  printf 'export %s=%q\n' "$key" "$value" >>"$tmp"
  mv "$tmp" "$ENV_FILE"
}

# wait_until TIMEOUT DESCRIPTION CMD...: poll CMD every 0.5 s until it succeeds or TIMEOUT seconds pass.
wait_until() {
  local timeout="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out after ${timeout}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
}
