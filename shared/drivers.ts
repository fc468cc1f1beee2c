/**
 * Picks the drivers once, at start-up: each interface gets its embedded driver unless its server is configured.
 *   event log        embedded segment files (DATA_DIR/log)     | Kafka (KAFKA_BROKERS)
 *   analytics store  chdb in-process (DATA_DIR/clickhouse)     | ClickHouse server (CLICKHOUSE_URL)
 *   state store      SQLite (DATA_DIR/state.sqlite)            | PostgreSQL (DATABASE_URL)
 * Several processes can share the servers; the embedded parts are private to one process.
 *
 * The log drivers are folders, imported by their index explicitly: a dist/ built before they were split still holds
 * the old single-file kafka-log.js and embedded-log.js, which Node would otherwise prefer to the folder.
 */
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import type { Config } from './config';
import type { EventLog } from './log';
import type { AnalyticsStore } from './analytics-store';
import type { StateStore } from './state-store';
import { log } from './logger';

export interface Drivers {
  mode: 'embedded' | 'distributed' | 'mixed';
  state: StateStore;
  analytics: AnalyticsStore;
  log: EventLog;
  /** The log is shared with other processes (Kafka): several aggregators may own its partitions. */
  sharedLog: boolean;
  /** The aggregators' consumer group: one per topic, so deployments sharing a Kafka cluster never mix. */
  consumerGroup: string;
  describe: string;
}

/**
 * A server that is restarting (or starting along with us) is waited for, with backoff, up to `STARTUP_WAIT_SECONDS`
 * (default 60), rather than failing the start.
 */
async function connecting<T>(what: string, waitMs: number, open: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + waitMs;
  let delay = 250;
  for (;;) {
    try {
      return await open();
    } catch (err) {
      if (Date.now() + delay > deadline) throw err;
      log.warn(`${what} is not reachable yet; retrying`, { err: String(err), delayMs: delay });
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/** `store` once init() succeeded; closed again when it failed, so a retry starts clean. */
async function initialized<T extends { init(): Promise<void>; close(): Promise<void> }>(store: T): Promise<T> {
  try {
    await store.init();
    return store;
  } catch (err) {
    await store.close().catch(() => undefined);
    throw err;
  }
}

export async function openDrivers(config: Config, env: NodeJS.ProcessEnv = process.env): Promise<Drivers> {
  const opened: Array<{ close(): Promise<void> }> = [];
  try {
    fs.mkdirSync(config.dataDir, { recursive: true });
    let state: StateStore;
    if (config.databaseUrl) {
      const { PostgresStateStore } = await import('./state/postgres-store');
      const url = config.databaseUrl;
      state = await connecting('PostgreSQL', config.startupWaitMs, () => initialized(new PostgresStateStore({ url, schema: config.databaseSchema })));
    } else {
      const { SqliteStateStore } = await import('./state/sqlite-store');
      state = new SqliteStateStore(path.join(config.dataDir, 'state.sqlite'));
      await state.init();
    }
    opened.push(state);

    let analytics: AnalyticsStore;
    if (config.clickhouseUrl) {
      const { ClickHouseServerStore } = await import('./analytics/server-store');
      const url = config.clickhouseUrl;
      analytics = await connecting('ClickHouse', config.startupWaitMs, () =>
        initialized(new ClickHouseServerStore({ url, database: config.clickhouseDatabase ?? undefined })),
      );
    } else {
      const { ChdbStore } = await import('./analytics/chdb-store');
      analytics = new ChdbStore(path.join(config.dataDir, 'clickhouse'), { threadNice: config.aggregatorNice });
      await analytics.init();
    }
    opened.push(analytics);

    let eventLog: EventLog;
    let consumerGroup = 'meterd-aggregator';
    if (config.kafkaBrokers.length > 0) {
      const { KafkaLog, kafkaOptionsFromEnv } = await import('./log/kafka-log/index');
      const kafka = await connecting('Kafka', config.startupWaitMs, () =>
        KafkaLog.open({
          ...kafkaOptionsFromEnv(env),
          clientId: `meterd-${config.role}-${os.hostname()}-${process.pid}`,
          producerThread: true,
          // The gateway threads append through it: without it they could take no event. Exit for the supervisor to
          // restart the process (every acknowledged event is in Kafka).
          onProducerThreadExit: () => {
            log.error('the Kafka producer thread stopped; stopping the process');
            process.exit(1);
          },
        }),
      );
      consumerGroup = config.kafkaConsumerGroup ?? `${kafka.topic}.aggregator`;
      eventLog = kafka;
    } else {
      const { EmbeddedLog } = await import('./log/embedded-log/index');
      eventLog = await EmbeddedLog.open(path.join(config.dataDir, 'log'), {
        partitions: config.logPartitions,
        segmentBytes: config.logSegmentBytes,
        writerThread: true,
        // Without its writer the log can take no event: exit for the supervisor to restart the process (every
        // acknowledged event is durable).
        onWriterThreadExit: (code, error) => {
          log.error('the event log writer thread stopped; stopping the process', { code, error });
          process.exit(1);
        },
      });
    }
    opened.push(eventLog);

    const servers = [config.kafkaBrokers.length > 0, !!config.clickhouseUrl, !!config.databaseUrl];
    const mode = servers.every(Boolean) ? 'distributed' : servers.some(Boolean) ? 'mixed' : 'embedded';
    const describe = [
      config.kafkaBrokers.length ? `Kafka ${config.kafkaBrokers.join(',')}` : 'embedded log',
      config.clickhouseUrl ? `ClickHouse ${new URL(config.clickhouseUrl).host}` : 'embedded ClickHouse',
      config.databaseUrl ? `PostgreSQL ${new URL(config.databaseUrl).host}` : 'SQLite',
    ].join(', ');
    return { mode, state, analytics, log: eventLog, sharedLog: config.kafkaBrokers.length > 0, consumerGroup, describe };
  } catch (err) {
    for (const o of opened.reverse()) await o.close().catch(() => undefined);
    throw err;
  }
}
