#!/usr/bin/env bash
# Single-node Apache Kafka 4.1 broker for the tests: KRaft, broker and controller in one plain
# Java 17 process, jars resolved from Maven Central (tests/services/kafka/pom.xml). No Docker.
#
#   tests/services/kafka.sh start      start (or reuse a healthy running broker); waits until ready
#   tests/services/kafka.sh stop       SIGTERM (SIGKILL after 30 s), then delete the data folder
#   tests/services/kafka.sh pause      SIGTERM the broker and keep its data (a broker restart)
#   tests/services/kafka.sh resume     start a paused broker again over its data
#   tests/services/kafka.sh status     exit 0 when the broker answers metadata requests, 1 otherwise
#   tests/services/kafka.sh bootstrap  print the bootstrap address (127.0.0.1:19092)
#
# Data: .services/run/kafka (wiped on every fresh start), log: .services/logs/kafka.log,
# pid: .services/pids/kafka.pid (the java process itself).
set -euo pipefail

# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

KAFKA_POM="$SERVICES_SRC/kafka/pom.xml"
KAFKA_READY_SRC="$SERVICES_SRC/kafka/KafkaReady.java"
KAFKA_HOME="$RUN_DIR/kafka"
KAFKA_LOG="$LOG_DIR/kafka.log"
KAFKA_PID_FILE="$PID_DIR/kafka.pid"
KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
KAFKA_START_TIMEOUT="${PILLOWTOP_KAFKA_START_TIMEOUT:-90}"

KAFKA_JVM_OPTS=(
  -Xms512m -Xmx1g
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true
)
# The probe is a short-lived client: small heap, quick JIT, no log output below ERROR.
KAFKA_PROBE_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true)

now_ms() { date +%s%3N; }

require_tools() {
  command -v java >/dev/null || die "java is not installed: the Kafka broker needs Java 17 or newer on PATH"
  local v
  v="$(java -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n1)"
  [[ -n "$v" && "$v" -ge 17 ]] || die "Kafka 4.x needs Java 17 or newer; \`java -version\` reports: $(java -version 2>&1 | head -n1)"
  command -v mvn >/dev/null || die "mvn is not installed: Maven is needed to resolve the Kafka jars from Maven Central"
}

kafka_lib() { maven_resolve kafka "$KAFKA_POM"; }

# kafka_pid_ok: the pid file names a live process that is our broker (guards against pid reuse).
kafka_pid_ok() {
  pid_alive kafka || return 1
  tr '\0' ' ' <"/proc/$(cat "$KAFKA_PID_FILE")/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka '
}

# kafka_probe LIB [WAIT_SECONDS]: real DescribeCluster + Metadata requests; prints one line.
kafka_probe() {
  # pipefail: the status is java's; tail keeps the one summary line (drops stray client logging).
  java "${KAFKA_PROBE_OPTS[@]}" -cp "$1/*" "$KAFKA_READY_SRC" "$KAFKA_BOOTSTRAP" "${2:-0}" 2>&1 | tail -n 1
}

# kafka_healthy LIB: our process is alive and the broker answers.
kafka_healthy() { kafka_pid_ok && kafka_probe "$1" 0 >/dev/null; }

random_cluster_id() {
  # 16 random bytes as URL-safe base64 without padding (22 chars), as Uuid.randomUuid() does;
  # Kafka refuses ids that start with '-'.
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" != -* ]] && break
  done
  echo "$id"
}

write_config() {
  mkdir -p "$KAFKA_HOME/data"
  cat >"$KAFKA_HOME/server.properties" <<EOF
# Written by tests/services/kafka.sh; regenerated on every fresh start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_HOME/data

auto.create.topics.enable=false
delete.topic.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.retention.check.interval.ms=5000
EOF
  cat >"$KAFKA_HOME/log4j2.properties" <<'EOF'
# Written by tests/services/kafka.sh.
status = warn
name = pillowtop-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.request.additivity = false
logger.request.appenderRef.stdout.ref = STDOUT
EOF
}

cmd_start() {
  require_tools
  local t0 lib pid id out deadline left p
  t0="$(now_ms)"
  lib="$(kafka_lib)"

  if kafka_pid_ok; then
    if kafka_healthy "$lib"; then
      log "kafka already running (pid $(cat "$KAFKA_PID_FILE")) at $KAFKA_BOOTSTRAP"
      echo "kafka already running"
      return 0
    fi
    log "kafka (pid $(cat "$KAFKA_PID_FILE")) is not answering: restarting it"
    stop_pid kafka 30
  fi
  rm -f "$KAFKA_PID_FILE"
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port 127.0.0.1:$p is already in use by a process this script did not start (see \`ss -ltnp\`); stop it first"
    fi
  done

  rm -rf "$KAFKA_HOME"
  write_config
  id="$(random_cluster_id)"
  log "formatting kafka storage (cluster id $id)"
  if ! out="$(java -Xmx256m -XX:TieredStopAtLevel=1 -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
      -cp "$lib/*" kafka.tools.StorageTool format -t "$id" -c "$KAFKA_HOME/server.properties" 2>&1)"; then
    printf '%s\n' "$out" >&2
    die "kafka storage format failed"
  fi

  launch "$lib" "$t0"
}

# launch LIB T0: starts the broker over the existing data folder and waits until it answers.
launch() {
  local lib="$1" t0="$2" pid out deadline left
  log "starting kafka on $KAFKA_BOOTSTRAP (log: $KAFKA_LOG)"
  # setsid: own session, so the broker survives the calling shell. The inner bash records its own
  # pid and then execs java, so the pid file names the java process itself.
  setsid nohup bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-launch "$KAFKA_PID_FILE" \
    java "${KAFKA_JVM_OPTS[@]}" -Dlog4j2.configurationFile="$KAFKA_HOME/log4j2.properties" \
    -cp "$lib/*" kafka.Kafka "$KAFKA_HOME/server.properties" \
    </dev/null >"$KAFKA_LOG" 2>&1 &
  for _ in $(seq 50); do [[ -s "$KAFKA_PID_FILE" ]] && break; sleep 0.1; done
  [[ -s "$KAFKA_PID_FILE" ]] || die "kafka launcher did not record a pid"
  pid="$(cat "$KAFKA_PID_FILE")"

  deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log_tail kafka 100
      rm -f "$KAFKA_PID_FILE"
      die "kafka (pid $pid) exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      show_log_tail kafka 100
      stop_pid kafka 10
      die "kafka did not log 'Kafka Server started' within ${KAFKA_START_TIMEOUT}s (stopped it; log kept in $KAFKA_LOG)"
    fi
    sleep 0.25
  done
  left=$((deadline - SECONDS))
  ((left > 5)) || left=5
  if ! out="$(kafka_probe "$lib" "$left")"; then
    show_log_tail kafka 100
    stop_pid kafka 10
    die "kafka logged start-up but does not answer metadata requests: $out (stopped it; log kept in $KAFKA_LOG)"
  fi
  log "$out"
  log "kafka started (pid $pid) in $(awk -v ms="$(($(now_ms) - t0))" 'BEGIN { printf "%.1f", ms / 1000 }') s"
}

cmd_stop() {
  if [[ -f "$KAFKA_PID_FILE" ]] && ! kafka_pid_ok; then
    log "stale kafka pid file (pid $(cat "$KAFKA_PID_FILE") is not a running broker): removing it"
    rm -f "$KAFKA_PID_FILE"
  fi
  if [[ -f "$KAFKA_PID_FILE" ]]; then
    stop_pid kafka 30
  else
    log "kafka is not running"
  fi
  rm -rf "$KAFKA_HOME"
}

# pause: stop the broker (SIGTERM, as an operator's restart does) but keep its data folder.
cmd_pause() {
  kafka_pid_ok || die "kafka is not running"
  stop_pid kafka 30
}

# resume: start a paused broker again over its data (topics and offsets intact).
cmd_resume() {
  require_tools
  [[ -f "$KAFKA_HOME/server.properties" ]] || die "no paused kafka data in $KAFKA_HOME: use start"
  kafka_pid_ok && { log "kafka already running"; return 0; }
  launch "$(kafka_lib)" "$(now_ms)"
}

cmd_status() {
  local lib out
  if ! kafka_pid_ok; then
    echo "kafka not running"
    return 1
  fi
  require_tools
  lib="$(kafka_lib)"
  if out="$(kafka_probe "$lib" 0)"; then
    echo "kafka running (pid $(cat "$KAFKA_PID_FILE")): $out"
  else
    echo "kafka process $(cat "$KAFKA_PID_FILE") alive but unhealthy: $out"
    return 1
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  pause) cmd_pause ;;
  resume) cmd_resume ;;
  status) cmd_status ;;
  bootstrap) echo "$KAFKA_BOOTSTRAP" ;;
  *)
    echo "usage: $0 {start|stop|pause|resume|status|bootstrap}" >&2
    exit 2
    ;;
esac
