#!/usr/bin/env bash
# Quick end-to-end check of the servers started by deploy/up.sh (run that first):
#   Kafka       create a topic, produce one message, consume it back, delete the topic
#               (Kafka's own console tools, and KafkaJS too when node_modules has it)
#   ClickHouse  SELECT 1 over HTTP, and a MergeTree table round trip
#   PostgreSQL  SELECT 1 through DATABASE_URL, and a table round trip
# Uses the same settings (ports, DEPLOY_DIR, ...) as up.sh. Exits non-zero on the first failure.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"
CLICKHOUSE_URL="http://127.0.0.1:$CLICKHOUSE_HTTP_PORT"
DATABASE_URL="postgres://$POSTGRES_USER:$POSTGRES_PASSWORD@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB"
stamp="$(date +%s)-$$"

if wants kafka; then
  [[ -f "$KAFKA_LIB/.complete" ]] || die "kafka: $KAFKA_LIB missing; run deploy/up.sh first"
  # Tools get a small heap and Log4j's default config (errors only, to the console).
  ktool() { java -Xmx256m -cp "$KAFKA_LIB/*" "$@"; }
  topic="meterd-smoke-$stamp"
  msg="hello $stamp"
  ktool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BROKERS" \
    --create --topic "$topic" --partitions 1 --replication-factor 1 >/dev/null \
    || die "kafka: topic create failed"
  printf '%s\n' "$msg" | ktool org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$KAFKA_BROKERS" --topic "$topic" --producer-property acks=all \
    || die "kafka: produce failed"
  got="$(ktool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$KAFKA_BROKERS" \
    --topic "$topic" --from-beginning --max-messages 1 --timeout-ms 30000 2>/dev/null)" || true
  ktool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BROKERS" \
    --delete --topic "$topic" >/dev/null || log "kafka: could not delete topic $topic"
  [[ "$got" == "$msg" ]] || die "kafka: consumed '$got', expected '$msg'"
  log "kafka: OK (console producer -> consumer on $KAFKA_BROKERS)"

  # The product's own client, if installed: proves it speaks this broker's protocol
  # versions (Kafka 4 dropped old ones), including consumer groups.
  kafkajs="$DEPLOY_SRC/../node_modules/kafkajs"
  if command -v node >/dev/null && [[ -d "$kafkajs" ]]; then
    KAFKAJS="$kafkajs" KAFKA_BROKERS="$KAFKA_BROKERS" STAMP="$stamp" KAFKAJS_NO_PARTITIONER_WARNING=1 \
      timeout 90 node - <<'JS' || die "kafka: KafkaJS round trip failed"
const { Kafka, logLevel } = require(process.env.KAFKAJS);
(async () => {
  const kafka = new Kafka({ clientId: 'meterd-smoke', brokers: [process.env.KAFKA_BROKERS], logLevel: logLevel.ERROR });
  const topic = 'meterd-smoke-kafkajs-' + process.env.STAMP;
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 2 }], waitForLeaders: true });
  const producer = kafka.producer();
  await producer.connect();
  await producer.send({ topic, acks: -1, messages: [{ key: 'k', value: 'v-' + process.env.STAMP }] });
  const consumer = kafka.consumer({ groupId: topic });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no message within 60s')), 60000);
    consumer.run({ eachMessage: async ({ message }) => { clearTimeout(t); resolve(message.value.toString()); } });
  });
  await consumer.disconnect();
  await producer.disconnect();
  await admin.deleteTopics({ topics: [topic] });
  await admin.deleteGroups([topic]).catch(() => {});
  await admin.disconnect();
  if (got !== 'v-' + process.env.STAMP) throw new Error('consumed ' + got);
})().catch((e) => { console.error(e); process.exit(1); });
JS
    log "kafka: OK (KafkaJS producer -> consumer group)"
  fi
fi

if wants clickhouse; then
  chq() { curl -fsS --max-time 30 -u "default:$CLICKHOUSE_PASSWORD" "$CLICKHOUSE_URL/" --data-binary "$1"; }
  [[ "$(chq 'SELECT 1')" == 1 ]] || die "clickhouse: SELECT 1 failed"
  t="meterd_smoke_${stamp//-/_}"
  chq "CREATE TABLE default.$t (k UInt64, v Decimal(38, 15)) ENGINE = MergeTree ORDER BY k" \
    || die "clickhouse: CREATE TABLE failed"
  chq "INSERT INTO default.$t VALUES (1, 1.25), (2, 2.5)" || die "clickhouse: INSERT failed"
  sum="$(chq "SELECT sum(v) FROM default.$t")"
  chq "DROP TABLE default.$t" || true
  [[ "$sum" == 3.75* ]] || die "clickhouse: sum was '$sum', expected 3.75"
  log "clickhouse: OK ($CLICKHOUSE_URL, version $(chq 'SELECT version()'))"
fi

if wants postgres; then
  out="$(psql -X -q -t -A -v ON_ERROR_STOP=1 "$DATABASE_URL" <<'SQL'
CREATE TEMP TABLE smoke (k int PRIMARY KEY, v numeric);
INSERT INTO smoke VALUES (1, 1.25), (2, 2.5);
SELECT 1;
SELECT sum(v) FROM smoke;
SQL
)" || die "postgres: query through DATABASE_URL failed"
  [[ "$out" == $'1\n3.75' ]] || die "postgres: unexpected output '$out'"
  log "postgres: OK (postgres://$POSTGRES_USER:***@127.0.0.1:$POSTGRES_PORT/$POSTGRES_DB)"
fi

log "smoke: all checks passed"
