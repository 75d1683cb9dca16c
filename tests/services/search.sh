#!/usr/bin/env bash
# A real one-node Elasticsearch 7.17 for the tests, run as a plain Java 17 process (no Docker).
#
#   tests/services/search.sh start    start (idempotent) and wait until the cluster is yellow
#   tests/services/search.sh stop     stop it and delete its data folder
#   tests/services/search.sh status   exit 0 when it is running and healthy
#   tests/services/search.sh url      print the HTTP address
#   tests/services/search.sh engine   print the engine name and version
#
# PILLOWTOP_SEARCH_NAME (default "search") names the node's pid, log and data folder, so a test
# can run a node of its own beside the shared one (with its own PILLOWTOP_SEARCH_HTTP_PORT and
# PILLOWTOP_SEARCH_TRANSPORT_PORT): one whose disk watermarks it may lower.
# PILLOWTOP_SEARCH_SETTINGS: more node settings, space-separated key=value words.
#
# The jars are the runtime closure of search/pom.xml, resolved from Maven Central once into
# .services/cache/search/lib. search/EmbeddedSearch.java boots a Node with the netty4 transport and
# the mapper-extras, reindex and parent-join modules as classpath plugins (run by Java 17's source
# launcher: no build step). Security is absent: no x-pack on the classpath. The data folder is
# .services/run/search, wiped on every fresh start.
#
# Known limits of this node (compared with the distribution): no analysis-common (no `lowercase`
# filter, custom analyzers built from it fail) and no painless scripting; those modules are not on
# Maven Central for 7.x.
set -euo pipefail
# shellcheck source=tests/services/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SEARCH_ENGINE="elasticsearch"
SEARCH_VERSION="7.17.29" # keep in step with es.version in search/pom.xml
SEARCH_HEAP="${PILLOWTOP_SEARCH_HEAP:-1g}"
SEARCH_URL="http://127.0.0.1:$SEARCH_HTTP_PORT"
SEARCH_NAME="${PILLOWTOP_SEARCH_NAME:-search}"
SEARCH_HOME="$RUN_DIR/$SEARCH_NAME"
SEARCH_START_TIMEOUT=120

need_tools() {
  command -v curl >/dev/null || die "curl is not installed: it is needed to check the search node"
  command -v java >/dev/null || die "java is not installed: the search node needs a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
  local major
  major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = //p')"
  [[ "$major" =~ ^[0-9]+$ ]] || die "could not read the Java version from 'java -XshowSettings:properties -version'"
  ((major >= 17)) || die "java is version $major: the search node needs Java 17+"
}

# healthy: the cluster answers and is at least yellow.
healthy() {
  curl -fsS -o /dev/null --max-time 10 \
    "$SEARCH_URL/_cluster/health?wait_for_status=yellow&timeout=5s" 2>/dev/null
}

# ours PID: PID is a java process running our launcher (guards against a recycled pid).
ours() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'EmbeddedSearch'; }

# ready_or_dead: stops the start-up wait early when the process has died.
ready_or_dead() { ! pid_alive "$SEARCH_NAME" || healthy; }

running_version() {
  curl -fsS --max-time 5 "$SEARCH_URL/" 2>/dev/null |
    sed -n 's/^ *"number" *: *"\([^"]*\)".*/\1/p' | head -n 1
}

write_log4j_config() {
  cat >"$1" <<'EOF'
# Written by tests/services/search.sh: everything to the console (the service log file).
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %marker%m%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
EOF
}

cmd_start() {
  need_tools
  if pid_alive "$SEARCH_NAME" && ours "$(cat "$PID_DIR/$SEARCH_NAME.pid")" && healthy; then
    echo "$SEARCH_NAME already running"
    return 0
  fi
  if pid_alive "$SEARCH_NAME"; then
    if ours "$(cat "$PID_DIR/$SEARCH_NAME.pid")"; then
      log "search process is alive but not healthy: restarting it"
      stop_pid "$SEARCH_NAME"
    else
      rm -f "$PID_DIR/$SEARCH_NAME.pid" # a recycled pid, not ours
    fi
  fi
  rm -f "$PID_DIR/$SEARCH_NAME.pid"
  local port
  for port in "$SEARCH_HTTP_PORT" "$SEARCH_TRANSPORT_PORT"; do
    port_open "$port" && die "127.0.0.1:$port is already in use by another process (not our search node)"
  done

  local t0=$SECONDS lib
  lib="$(maven_resolve search "$SERVICES_SRC/search/pom.xml")"
  compgen -G "$lib/elasticsearch-$SEARCH_VERSION.jar" >/dev/null ||
    die "$lib has no elasticsearch-$SEARCH_VERSION.jar: search/pom.xml and SEARCH_VERSION disagree"

  rm -rf "$SEARCH_HOME"
  mkdir -p "$SEARCH_HOME/home" "$SEARCH_HOME/data" "$SEARCH_HOME/logs" "$SEARCH_HOME/tmp"
  write_log4j_config "$SEARCH_HOME/log4j2.properties"

  local jvm=(
    -Xms"$SEARCH_HEAP" -Xmx"$SEARCH_HEAP" -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true -Dfile.encoding=UTF-8 -Djna.nosys=true
    -Djava.locale.providers=SPI,COMPAT
    -Djava.io.tmpdir="$SEARCH_HOME/tmp"
    -Dlog4j.shutdownHookEnabled=false -Dlog4j2.disable.jmx=true
    -Dlog4j2.configurationFile="$SEARCH_HOME/log4j2.properties"
    # let Netty size itself instead of failing with "availableProcessors is already set"
    -Des.set.netty.runtime.available.processors=false
  )
  local settings=()
  read -r -a settings <<<"${PILLOWTOP_SEARCH_SETTINGS:-}"
  log "starting $SEARCH_ENGINE $SEARCH_VERSION on $SEARCH_URL (log: $LOG_DIR/$SEARCH_NAME.log)"
  # setsid and nohup both exec, so $! is the java pid itself.
  (
    cd "$SEARCH_HOME"
    exec setsid nohup java "${jvm[@]}" -cp "$lib/*" "$SERVICES_SRC/search/EmbeddedSearch.java" \
      "$SEARCH_HOME/home" "$SEARCH_HOME/data" "$SEARCH_HOME/logs" \
      "$SEARCH_HTTP_PORT" "$SEARCH_TRANSPORT_PORT" "${settings[@]}" \
      >"$LOG_DIR/$SEARCH_NAME.log" 2>&1 </dev/null
  ) &
  echo $! >"$PID_DIR/$SEARCH_NAME.pid"

  if ! wait_until "$SEARCH_START_TIMEOUT" "the search cluster to be yellow" ready_or_dead || ! pid_alive "$SEARCH_NAME"; then
    pid_alive "$SEARCH_NAME" || log "the search process exited during start-up"
    show_log_tail "$SEARCH_NAME"
    stop_pid "$SEARCH_NAME" 10
    die "search did not become healthy on $SEARCH_URL"
  fi
  local version
  version="$(running_version)"
  [[ "$version" == "$SEARCH_VERSION" ]] ||
    log "warning: the node reports version '$version', expected $SEARCH_VERSION"
  echo "$SEARCH_NAME started in $((SECONDS - t0))s: $SEARCH_ENGINE ${version:-$SEARCH_VERSION} at $SEARCH_URL (pid $(cat "$PID_DIR/$SEARCH_NAME.pid"))"
}

cmd_stop() {
  stop_pid "$SEARCH_NAME"
  rm -rf "$SEARCH_HOME"
}

cmd_status() {
  if pid_alive "$SEARCH_NAME" && healthy; then
    echo "$SEARCH_NAME running (pid $(cat "$PID_DIR/$SEARCH_NAME.pid")) at $SEARCH_URL"
    return 0
  fi
  echo "$SEARCH_NAME not running"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "$SEARCH_URL" ;;
  engine) echo "$SEARCH_ENGINE $SEARCH_VERSION" ;;
  *)
    echo "usage: $0 start|stop|status|url|engine" >&2
    exit 2
    ;;
esac
