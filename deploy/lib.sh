# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shared settings and helpers for up.sh / down.sh / smoke.sh. Sourced, not executed.
#
# Every setting can be overridden from the environment; the defaults use ports that
# do not clash with a stock Kafka (9092), ClickHouse (8123/9000) or PostgreSQL (5432)
# that might already run on the machine.

DEPLOY_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEPLOY_DIR="${DEPLOY_DIR:-$DEPLOY_SRC/.runtime}"
# Absolute path: it ends up in configs and in the command lines we match processes by.
DEPLOY_DIR="$(realpath -m "$DEPLOY_DIR")"

# Which servers to manage (a subset is handy when only one of them is needed).
DEPLOY_SERVICES="${DEPLOY_SERVICES:-kafka clickhouse postgres}"
# Seconds to wait for a server to answer (start) or to exit (stop) before giving up.
DEPLOY_WAIT="${DEPLOY_WAIT:-180}"
DEPLOY_STOP_WAIT="${DEPLOY_STOP_WAIT:-60}"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"

CLICKHOUSE_HTTP_PORT="${CLICKHOUSE_HTTP_PORT:-18123}"
CLICKHOUSE_TCP_PORT="${CLICKHOUSE_TCP_PORT:-19000}"
# Empty = the `default` user has no password (the server only listens on 127.0.0.1).
CLICKHOUSE_PASSWORD="${CLICKHOUSE_PASSWORD:-}"

PG_MAJOR="${PG_MAJOR:-15}"
POSTGRES_PORT="${POSTGRES_PORT:-15432}"
POSTGRES_USER="${POSTGRES_USER:-meterd}"
POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-meterd}"
POSTGRES_DB="${POSTGRES_DB:-meterd}"
PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"

KAFKA_DIR="$DEPLOY_DIR/kafka"
KAFKA_LIB="$KAFKA_DIR/lib-$KAFKA_VERSION"
CH_DIR="$DEPLOY_DIR/clickhouse"
PG_DIR="$DEPLOY_DIR/postgres"
PG_DATA="$PG_DIR/data"

log() { printf '[deploy] %s\n' "$*" >&2; }
die() { printf '[deploy] ERROR: %s\n' "$*" >&2; exit 1; }

# Show the end of a server log after a failure, so the reason is on screen. Logs are
# appended to across restarts, so only what was written since mark_logs is shown.
declare -A LOG_MARK=()
mark_logs() {
  local f
  for f in "$@"; do LOG_MARK[$f]="$(stat -c %s "$f" 2>/dev/null || echo 0)"; done
}
show_tail() {
  local f
  for f in "$@"; do
    [[ -s "$f" ]] || continue
    local from=$(( ${LOG_MARK[$f]:-0} + 1 ))
    [[ "$(stat -c %s "$f")" -ge "$from" ]] || continue
    printf '[deploy] ---- last lines of %s ----\n' "$f" >&2
    tail -c "+$from" "$f" | tail -n 40 >&2
  done
}

# Run a command as a system user (the databases refuse to run as root, or should not).
# cd / first: the caller's cwd may not be readable by that user.
as_user() {
  local user="$1"; shift
  (cd / && runuser -u "$user" -- "$@")
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# PID whose command line contains all of the given strings, if such a process is alive.
# Used to find our own servers by their runtime paths (never by program name alone),
# so servers of another DEPLOY_DIR or of the system are left alone.
find_pid_by_cmdline() {
  local p cmd s ok
  for p in /proc/[0-9]*; do
    cmd="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
    ok=1
    for s in "$@"; do [[ "$cmd" == *"$s"* ]] || { ok=0; break; }; done
    if (( ok )) && [[ -n "$cmd" ]]; then echo "${p#/proc/}"; return 0; fi
  done
  return 1
}

# PID of a server: from its pid file if that process is alive and still the same
# program (pid files go stale after a reboot), else by scanning command lines.
server_pid() {
  local pidfile="$1"; shift
  local pid
  if [[ -s "$pidfile" ]]; then
    pid="$(head -n1 "$pidfile")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r "/proc/$pid/cmdline" ]]; then
      local cmd s ok=1
      cmd="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" || true)"
      for s in "$@"; do [[ "$cmd" == *"$s"* ]] || { ok=0; break; }; done
      if (( ok )); then echo "$pid"; return 0; fi
    fi
  fi
  find_pid_by_cmdline "$@"
}

# Markers that identify each of our servers' processes (see server_pid).
kafka_markers() { printf '%s\n' "kafka.Kafka" "-Dkafka.logs.dir=$KAFKA_DIR/logs"; }
ch_markers()    { printf '%s\n' "clickhouse" "--config-file=$CH_DIR/config.xml"; }

kafka_pid() { local m; mapfile -t m < <(kafka_markers); server_pid "$KAFKA_DIR/kafka.pid" "${m[@]}"; }
ch_pid()    { local m; mapfile -t m < <(ch_markers);    server_pid "$CH_DIR/clickhouse.pid" "${m[@]}"; }
# PostgreSQL keeps its own pid file; its first line is the postmaster PID.
pg_pid()    { server_pid "$PG_DATA/postmaster.pid" "postgres" "$PG_DATA"; }

wants() { [[ " $DEPLOY_SERVICES " == *" $1 "* ]]; }
