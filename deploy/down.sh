#!/usr/bin/env bash
# Stop the Kafka, ClickHouse and PostgreSQL servers that deploy/up.sh started from
# $DEPLOY_DIR (default deploy/.runtime): gracefully first, killed after
# $DEPLOY_STOP_WAIT seconds. Safe to run when nothing is running.
#
#   deploy/down.sh           # stop; data stays for the next up.sh
#   deploy/down.sh --purge   # stop and delete $DEPLOY_DIR (data, logs, jars copied from ~/.m2)
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

purge=0
case "${1:-}" in
  "") ;;
  --purge) purge=1 ;;
  *) die "usage: $0 [--purge]" ;;
esac

# stop_pid NAME PIDFN: SIGTERM (what each server treats as a clean shutdown: Kafka does
# a controlled shutdown, ClickHouse finishes and flushes), then SIGKILL after a timeout.
stop_pid() {
  local name="$1" pidfn="$2" pid
  if ! pid="$("$pidfn")"; then
    log "$name: not running"
    return 0
  fi
  log "$name: stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + DEPLOY_STOP_WAIT))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      log "$name: still running after ${DEPLOY_STOP_WAIT}s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  log "$name: stopped"
}

pg_stop() {
  local pid
  if ! pid="$(pg_pid)"; then
    log "postgres: not running"
    return 0
  fi
  log "postgres: stopping (pid $pid)"
  # Fast mode: roll back open transactions, checkpoint, exit. Immediate (crash-like,
  # recovered at next start) only if that does not finish in time.
  if ! as_user postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$DEPLOY_STOP_WAIT" -s; then
    log "postgres: fast shutdown timed out, using immediate mode"
    as_user postgres "$PG_BIN/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t 10 -s || true
  fi
  if pid="$(pg_pid)"; then kill -KILL "$pid" 2>/dev/null || true; fi
  log "postgres: stopped"
}

# Kafka first: it may still be writing to its log segments when the others go down.
wants kafka && stop_pid kafka kafka_pid
wants clickhouse && stop_pid clickhouse ch_pid
wants postgres && pg_stop
rm -f "$KAFKA_DIR/kafka.pid" "$CH_DIR/clickhouse.pid"

if (( purge )) && [[ -d "$DEPLOY_DIR" ]]; then
  # Only delete a folder that up.sh made (it leaves this mark), never an arbitrary
  # DEPLOY_DIR someone mistyped.
  [[ -f "$DEPLOY_DIR/.meterd-deploy" ]] || die "refusing to purge $DEPLOY_DIR: not created by deploy/up.sh"
  # Only if every server of this folder is really gone, whatever DEPLOY_SERVICES says.
  if kafka_pid >/dev/null || ch_pid >/dev/null || pg_pid >/dev/null; then
    die "refusing to purge $DEPLOY_DIR: a server is still running from it"
  fi
  log "purging $DEPLOY_DIR"
  rm -rf "$DEPLOY_DIR"
fi
