#!/usr/bin/env bash
# Install (if missing) and start (if not running) a single-node Apache Kafka (KRaft),
# a ClickHouse server and a PostgreSQL cluster for meterd's distributed mode, all with
# their data under $DEPLOY_DIR (default deploy/.runtime). No Docker, no systemd.
#
#   eval "$(deploy/up.sh)"     # starts everything, then exports KAFKA_BROKERS,
#                              # CLICKHOUSE_URL and DATABASE_URL into this shell
#
# Progress goes to stderr; stdout carries only the final `export` lines.
# Safe to run again: it only does what is missing. Stop with deploy/down.sh.
set -euo pipefail

# Keep stdout clean for `eval`: everything goes to stderr except the exports (fd 3).
exec 3>&1 1>&2

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $EUID -eq 0 ]] || die "run as root (it installs Debian packages and switches to the postgres/clickhouse users)"

# Values we put into URLs unescaped must be URL-safe.
[[ "$POSTGRES_USER" =~ ^[a-z_][a-z0-9_]*$ && "$POSTGRES_DB" =~ ^[a-z_][a-z0-9_]*$ ]] \
  || die "POSTGRES_USER and POSTGRES_DB must be lower-case identifiers"
[[ "$POSTGRES_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]] || die "POSTGRES_PASSWORD must be non-empty and URL-safe ([A-Za-z0-9._~-])"
[[ -z "$CLICKHOUSE_PASSWORD" || "$CLICKHOUSE_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]] \
  || die "CLICKHOUSE_PASSWORD must be URL-safe ([A-Za-z0-9._~-])"

mkdir -p "$DEPLOY_DIR"
touch "$DEPLOY_DIR/.meterd-deploy"   # down.sh --purge only deletes a folder carrying this mark
T0=$SECONDS

# ---------------------------------------------------------------------------------------
# Package installation
# ---------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
  if (( ! APT_UPDATED )); then
    log "apt-get update"
    apt-get update -q >/dev/null || die "apt-get update failed"
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  # Package maintainer scripts would start the *system* instances (on the stock ports,
  # through systemd/init.d). We run our own, so forbid that with a temporary
  # policy-rc.d unless the machine already has one (containers usually do).
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null || rc=$?
  (( own_policy )) && rm -f /usr/sbin/policy-rc.d
  (( rc == 0 )) || die "apt-get install $* failed (exit $rc)"
}

need_pkgs=()
command -v curl >/dev/null || need_pkgs+=(curl)
command -v runuser >/dev/null || need_pkgs+=(util-linux)
if wants kafka; then
  command -v java >/dev/null || need_pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null || need_pkgs+=(maven)
fi
if wants clickhouse; then
  command -v clickhouse-server >/dev/null || need_pkgs+=(clickhouse-server)
fi
if wants postgres; then
  [[ -x "$PG_BIN/initdb" ]] || need_pkgs+=("postgresql-$PG_MAJOR")
  command -v psql >/dev/null || need_pkgs+=("postgresql-client-$PG_MAJOR")
fi
if (( ${#need_pkgs[@]} )); then apt_install "${need_pkgs[@]}"; fi

# ---------------------------------------------------------------------------------------
# Generic start / wait helpers
# ---------------------------------------------------------------------------------------

# wait_until NAME PIDFN CHECKFN LOG...: poll CHECKFN until it succeeds; fail early if
# the process dies, or after $DEPLOY_WAIT seconds, showing the end of the logs.
wait_until() {
  local name="$1" pidfn="$2" check="$3"; shift 3
  local deadline=$((SECONDS + DEPLOY_WAIT))
  while ! "$check"; do
    if ! "$pidfn" >/dev/null; then
      show_tail "$@"
      die "$name exited during startup (logs above)"
    fi
    if (( SECONDS >= deadline )); then
      show_tail "$@"
      die "$name did not answer within ${DEPLOY_WAIT}s (logs above; it is left running, stop it with deploy/down.sh)"
    fi
    sleep 1
  done
}

# Refuse to start a server whose port is taken by someone else: it would fail anyway,
# and worse, the wait loop could mistake the other program for ours.
require_free_port() {
  local name="$1" port="$2"
  if port_open "$port"; then
    die "$name: port $port on 127.0.0.1 is already in use by another program (set a different port, see deploy/README.md)"
  fi
}

# ---------------------------------------------------------------------------------------
# Kafka (KRaft, combined broker + controller), from Maven Central jars
# ---------------------------------------------------------------------------------------

# A real protocol round trip, not just a TCP connect: the broker binds its port before
# it is ready, and the kernel completes handshakes for it. We send ApiVersions v0
# (api_key 18, correlation id "METR", null client id) and expect the same correlation
# id and error_code 0 back. ApiVersions v0 is kept by every Kafka version.
kafka_answers() {
  local reply
  # shellcheck disable=SC2016  # $1 is expanded by the inner bash
  reply="$(timeout 5 bash -c '
      exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
      printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x4d\x45\x54\x52\xff\xff" >&3
      head -c 10 <&3 | od -An -tx1' _ "$KAFKA_PORT" 2>/dev/null)" || return 1
  reply="${reply//[[:space:]]/}"
  [[ "${reply:8}" == "4d4554520000" ]]
}

kafka_install() {
  # Java 17+ is required by Kafka 4.x brokers.
  local jv
  jv="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
  [[ "${jv%%.*}" -ge 17 ]] 2>/dev/null || die "Kafka $KAFKA_VERSION needs Java 17 or later (found: ${jv:-none})"

  if [[ -f "$KAFKA_LIB/.complete" ]]; then return 0; fi
  log "kafka: resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION and its dependencies from Maven Central (first run: a minute or two)"
  rm -rf "$KAFKA_LIB.tmp"
  mkdir -p "$KAFKA_DIR"
  # copy-dependencies copies the jars out of ~/.m2 into one folder for `java -cp lib/*`.
  if ! mvn -B -q -f "$DEPLOY_SRC/kafka/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB.tmp" >"$KAFKA_DIR/mvn.log" 2>&1; then
    show_tail "$KAFKA_DIR/mvn.log"
    die "kafka: Maven could not resolve Kafka $KAFKA_VERSION (log above)"
  fi
  ls "$KAFKA_LIB.tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "kafka: kafka_2.13 jar missing after resolve"
  touch "$KAFKA_LIB.tmp/.complete"
  rm -rf "$KAFKA_LIB"
  mv "$KAFKA_LIB.tmp" "$KAFKA_LIB"
}

kafka_write_config() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  # Rewritten on every start so that port changes take effect; the data dir does not
  # remember listeners.
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by deploy/up.sh; edits are overwritten.
process.roles=broker,controller
node.id=1
# Static single-voter quorum: needs no --standalone at format time and works on 3.x too.
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=true
# Single node: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumers in tests should not wait 3 s for a rebalance that never gets more members.
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
  # Kafka 4.x logs through Log4j 2; everything goes to a size-capped file.
  cat >"$KAFKA_DIR/log4j2.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/up.sh; edits are overwritten. -->
<Configuration status="warn">
  <Appenders>
    <RollingFile name="server" fileName="${sys:kafka.logs.dir}/server.log"
                 filePattern="${sys:kafka.logs.dir}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
  </Loggers>
</Configuration>
EOF
}

# JVM command line shared by the storage tool and the broker: the same flags as Kafka's
# own kafka-run-class.sh, with a small heap, logging to $KAFKA_DIR/logs.
kafka_java_args() {
  # shellcheck disable=SC2206  # KAFKA_HEAP_OPTS is a list of flags
  KAFKA_JAVA=(java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
    "-Dkafka.logs.dir=$KAFKA_DIR/logs" "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.xml"
    -cp "$KAFKA_LIB/*")
}
kafka_java() { kafka_java_args; "${KAFKA_JAVA[@]}" "$@"; }

kafka_start() {
  if kafka_pid >/dev/null; then
    log "kafka: already running (pid $(kafka_pid))"
    grep -qx "listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT" \
      "$KAFKA_DIR/server.properties" || die "kafka: running with other ports than requested; run deploy/down.sh first"
  else
    kafka_install
    require_free_port kafka "$KAFKA_PORT"
    require_free_port "kafka controller" "$KAFKA_CONTROLLER_PORT"
    kafka_write_config
    # KRaft needs its log dir formatted once with a cluster id; keep the id so a
    # re-format (e.g. after deleting only data/) joins the same cluster.
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
      mark_logs "$KAFKA_DIR/logs/tool.log"
      if [[ ! "$(cat "$KAFKA_DIR/cluster.id" 2>/dev/null)" =~ ^[A-Za-z0-9_-]{22}$ ]]; then
        kafka_java kafka.tools.StorageTool random-uuid >"$KAFKA_DIR/cluster.id.tmp" 2>>"$KAFKA_DIR/logs/tool.log" || true
        # A cluster id is 16 random bytes in URL-safe base64 (22 chars); anything else is an error text.
        if [[ "$(tail -n1 "$KAFKA_DIR/cluster.id.tmp")" =~ ^[A-Za-z0-9_-]{22}$ ]]; then
          tail -n1 "$KAFKA_DIR/cluster.id.tmp" >"$KAFKA_DIR/cluster.id"
        else
          cat "$KAFKA_DIR/cluster.id.tmp" >>"$KAFKA_DIR/logs/tool.log"
        fi
        rm -f "$KAFKA_DIR/cluster.id.tmp"
      fi
      [[ -s "$KAFKA_DIR/cluster.id" ]] || { show_tail "$KAFKA_DIR/logs/tool.log"; die "kafka: could not generate a cluster id"; }
      log "kafka: formatting storage (cluster id $(cat "$KAFKA_DIR/cluster.id"))"
      kafka_java kafka.tools.StorageTool format -t "$(cat "$KAFKA_DIR/cluster.id")" \
        -c "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/logs/tool.log" 2>&1 \
        || { show_tail "$KAFKA_DIR/logs/tool.log"; die "kafka: storage format failed"; }
    fi
    mark_logs "$KAFKA_DIR/logs/stdout.log" "$KAFKA_DIR/logs/server.log"
    log "kafka: starting $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (controller :$KAFKA_CONTROLLER_PORT)"
    # setsid: own session, so a Ctrl-C in the terminal that ran up.sh does not reach it.
    # 3>&-: do not hold the stdout of `eval "$(deploy/up.sh)"` open forever.
    kafka_java_args
    setsid "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" \
      </dev/null >>"$KAFKA_DIR/logs/stdout.log" 2>&1 3>&- &
    echo $! >"$KAFKA_DIR/kafka.pid"
  fi
}
kafka_wait() {
  wait_until kafka kafka_pid kafka_answers "$KAFKA_DIR/logs/stdout.log" "$KAFKA_DIR/logs/server.log"
  log "kafka: answering on 127.0.0.1:$KAFKA_PORT"
}

# ---------------------------------------------------------------------------------------
# ClickHouse (Debian's clickhouse-server package), run as the `clickhouse` user
# ---------------------------------------------------------------------------------------

ch_query() {
  curl -fsS --max-time 10 -u "default:$CLICKHOUSE_PASSWORD" \
    "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/" --data-binary "$1"
}
ch_answers() { [[ "$(curl -fsS --max-time 3 "http://127.0.0.1:$CLICKHOUSE_HTTP_PORT/ping" 2>/dev/null)" == Ok* ]]; }

ch_write_config() {
  mkdir -p "$CH_DIR"/{data,tmp,user_files,format_schemas,log}
  local pw_xml=""
  [[ -n "$CLICKHOUSE_PASSWORD" ]] && pw_xml="$CLICKHOUSE_PASSWORD"
  # <yandex> is the root element in this (18.x) generation of ClickHouse.
  cat >"$CH_DIR/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/up.sh; edits are overwritten. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$CH_DIR/log/clickhouse-server.log</log>
        <errorlog>$CH_DIR/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <http_port>$CLICKHOUSE_HTTP_PORT</http_port>
    <tcp_port>$CLICKHOUSE_TCP_PORT</tcp_port>
    <!-- No interserver_http_port: single server, no replication. -->
    <listen_host>127.0.0.1</listen_host>
    <max_connections>4096</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>536870912</mark_cache_size>
    <path>$CH_DIR/data/</path>
    <tmp_path>$CH_DIR/tmp/</tmp_path>
    <user_files_path>$CH_DIR/user_files/</user_files_path>
    <format_schema_path>$CH_DIR/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <!-- Fixed server time zone, so DateTime values do not depend on the host's. -->
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
EOF
  cat >"$CH_DIR/users.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by deploy/up.sh; edits are overwritten. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>4000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <!-- LowCardinality is still "experimental" in 18.16 (Decimal is not). -->
            <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
        </default>
    </profiles>
    <users>
        <default>
            <password>$pw_xml</password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
  chmod 640 "$CH_DIR/users.xml"
  # The server writes config-preprocessed.xml next to the config, so it owns the folder.
  chown -R clickhouse:clickhouse "$CH_DIR"
  as_user clickhouse test -w "$CH_DIR/data" \
    || die "clickhouse: user 'clickhouse' cannot reach $CH_DIR (a parent folder is not traversable?); set DEPLOY_DIR elsewhere"
}

ch_start() {
  if ch_pid >/dev/null; then
    log "clickhouse: already running (pid $(ch_pid))"
    grep -q "<http_port>$CLICKHOUSE_HTTP_PORT</http_port>" "$CH_DIR/config.xml" \
      || die "clickhouse: running with other ports than requested; run deploy/down.sh first"
  else
    id clickhouse >/dev/null 2>&1 || die "clickhouse: system user 'clickhouse' missing (the clickhouse-server package creates it)"
    require_free_port "clickhouse http" "$CLICKHOUSE_HTTP_PORT"
    require_free_port "clickhouse tcp" "$CLICKHOUSE_TCP_PORT"
    ch_write_config
    mark_logs "$CH_DIR"/log/{stdout.log,clickhouse-server.err.log,clickhouse-server.log}
    log "clickhouse: starting on 127.0.0.1:$CLICKHOUSE_HTTP_PORT (http), :$CLICKHOUSE_TCP_PORT (native)"
    # setpriv execs (no fork, unlike runuser/su), so $! is the server's own PID.
    setsid setpriv --reuid=clickhouse --regid=clickhouse --init-groups \
      "$(command -v clickhouse-server)" --config-file="$CH_DIR/config.xml" \
      </dev/null >>"$CH_DIR/log/stdout.log" 2>&1 3>&- &
    echo $! >"$CH_DIR/clickhouse.pid"
  fi
}
ch_wait() {
  wait_until clickhouse ch_pid ch_answers \
    "$CH_DIR/log/stdout.log" "$CH_DIR/log/clickhouse-server.err.log" "$CH_DIR/log/clickhouse-server.log"
  local v
  v="$(ch_query 'SELECT version()')" || die "clickhouse: /ping answers but SELECT version() fails (wrong CLICKHOUSE_PASSWORD for an existing server?)"
  log "clickhouse: answering on 127.0.0.1:$CLICKHOUSE_HTTP_PORT, version $v"
}

# ---------------------------------------------------------------------------------------
# PostgreSQL (Debian's postgresql-$PG_MAJOR), own cluster run as the `postgres` user
# ---------------------------------------------------------------------------------------

pg_answers() {
  PGPASSWORD="$POSTGRES_PASSWORD" psql -X -q -t -A -w \
    "postgresql://$POSTGRES_USER@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB?connect_timeout=3" \
    -c 'SELECT 1' >/dev/null 2>&1
}
pg_superuser_sql() {
  # Over the private Unix socket (peer auth as the postgres OS user).
  as_user postgres "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR/run" -p "$POSTGRES_PORT" \
    -U postgres -d postgres "$@"
}

# pg_ctl -w already waits for the postmaster, so PostgreSQL is started *and* set up here.
pg_start() {
  id postgres >/dev/null 2>&1 || die "postgres: system user 'postgres' missing (the postgresql package creates it)"
  mkdir -p "$PG_DIR/run" "$PG_DIR/log"
  chown postgres:postgres "$PG_DIR" "$PG_DIR/run" "$PG_DIR/log"
  chmod 700 "$PG_DIR/run"   # the socket dir: only postgres (and root) may connect through it
  as_user postgres test -w "$PG_DIR" \
    || die "postgres: user 'postgres' cannot reach $PG_DIR (a parent folder is not traversable?); set DEPLOY_DIR elsewhere"

  if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
    log "postgres: initdb $PG_DATA"
    # peer auth on the socket (for this script), passwords over TCP (for the product).
    as_user postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C \
      --auth-local=peer --auth-host=scram-sha-256 >"$PG_DIR/log/initdb.log" 2>&1 \
      || { show_tail "$PG_DIR/log/initdb.log"; die "postgres: initdb failed"; }
  fi

  if pg_pid >/dev/null; then
    log "postgres: already running (pid $(pg_pid))"
    # Line 4 of postmaster.pid is the port the running server listens on.
    [[ "$(sed -n 4p "$PG_DATA/postmaster.pid")" == "$POSTGRES_PORT" ]] \
      || die "postgres: running with another port than requested; run deploy/down.sh first"
  else
    require_free_port postgres "$POSTGRES_PORT"
    mark_logs "$PG_DIR/log/postgres.log"
    log "postgres: starting $PG_MAJOR on 127.0.0.1:$POSTGRES_PORT"
    # Settings on the command line (not postgresql.conf) so a changed port just works.
    # 3>&-: the postmaster must not inherit our stdout (see kafka_start).
    if ! as_user postgres "$PG_BIN/pg_ctl" start -D "$PG_DATA" -l "$PG_DIR/log/postgres.log" \
          -w -t "$DEPLOY_WAIT" -s \
          -o "-c port=$POSTGRES_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='$PG_DIR/run'" 3>&-; then
      show_tail "$PG_DIR/log/postgres.log"
      die "postgres: pg_ctl start failed (log above)"
    fi
  fi

  # Create (or re-sync the password of) the application role and database. Idempotent.
  pg_superuser_sql -v u="$POSTGRES_USER" -v pw="$POSTGRES_PASSWORD" -v db="$POSTGRES_DB" \
    >/dev/null <<'SQL' || die "postgres: creating role/database failed"
SELECT format('CREATE ROLE %I LOGIN', :'u') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'u', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'u') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
}
pg_wait() {
  wait_until postgres pg_pid pg_answers "$PG_DIR/log/postgres.log"
  log "postgres: answering on 127.0.0.1:$POSTGRES_PORT, $(PGPASSWORD="$POSTGRES_PASSWORD" psql -X -t -A -w \
    "postgresql://$POSTGRES_USER@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB" -c 'SHOW server_version')"
}

# ---------------------------------------------------------------------------------------

log "runtime folder: $DEPLOY_DIR"
# Start everything first (the slow JVM first), then wait: the servers boot in
# parallel, so the total is roughly the slowest one, not the sum.
wants kafka && kafka_start
wants clickhouse && ch_start
wants postgres && pg_start
wants kafka && kafka_wait
wants clickhouse && ch_wait
wants postgres && pg_wait
log "all up in $((SECONDS - T0))s"

{
  wants kafka && echo "export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
  wants clickhouse && if [[ -n "$CLICKHOUSE_PASSWORD" ]]; then
    echo "export CLICKHOUSE_URL=http://default:$CLICKHOUSE_PASSWORD@127.0.0.1:$CLICKHOUSE_HTTP_PORT"
  else
    echo "export CLICKHOUSE_URL=http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"
  fi
  wants postgres && echo "export DATABASE_URL=postgres://$POSTGRES_USER:$POSTGRES_PASSWORD@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB"
  true
} >&3
