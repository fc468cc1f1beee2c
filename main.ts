/**
 * Composition root: reads the configuration, picks the drivers once (embedded log + chdb + SQLite by default), wires
 * the gateway, the REST layer and the aggregator, and prints where it listens and which key to use.
 */
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { loadConfig, type Config } from './shared/config';
import { log } from './shared/logger';
import { SqliteStateStore } from './shared/state/sqlite-store';
import { ChdbStore } from './shared/analytics/chdb-store';
import { EmbeddedLog } from './shared/log/embedded-log';
import type { StateStore, ApiKeyRecord } from './shared/state-store';
import { MeterRegistry } from './shared/meters';
import { Authenticator, accountForKey } from './shared/http/auth';
import { Idempotency, MemoryIdempotencyRecords, StoreIdempotencyRecords, IDEMPOTENCY_RETENTION_MS } from './shared/http/idempotency';
import { HttpServer, json } from './shared/http/server';
import { newSecretKey } from './shared/ids';
import type { Services } from './shared/services';
import { registerMeterRoutes } from './api/meters';
import { registerSummaryRoutes } from './api/summaries';
import { registerCoreEventRoutes } from './api/core-events';
import { registerMeterEventRoutes } from './ingest/meter-events';
import { Aggregator } from './aggregator/aggregator';
import { FileSnapshots } from './aggregator/snapshots';
import { SoleOwner } from './aggregator/leases';

const SYSTEM_ACCOUNT = '_system';

async function apiKeys(config: Config, state: StateStore): Promise<{ keys: ApiKeyRecord[]; generated: string | null }> {
  for (const secret of config.apiKeys) {
    await state.putApiKey({ secret, account: accountForKey(secret), livemode: secret.startsWith('sk_live_'), createdMs: Date.now() });
  }
  let keys = await state.listApiKeys();
  let generated: string | null = null;
  if (keys.length === 0) {
    generated = newSecretKey(false);
    await state.putApiKey({ secret: generated, account: accountForKey(generated), livemode: false, createdMs: Date.now() });
    keys = await state.listApiKeys();
  }
  return { keys, generated };
}

/** The secret that signs meter event session tokens, created once and shared by every process through the store. */
async function sessionSecret(state: StateStore): Promise<Buffer> {
  const found = await state.getObject<{ key: string }>(SYSTEM_ACCOUNT, 'secret', 'session_hmac');
  if (found) return Buffer.from(found.data.key, 'base64');
  const key = crypto.randomBytes(32).toString('base64');
  try {
    await state.insertObject({ account: SYSTEM_ACCOUNT, type: 'secret', id: 'session_hmac', createdMs: Date.now(), data: { key } });
  } catch {
    return sessionSecret(state);
  }
  return Buffer.from(key, 'base64');
}

export interface RunningServer {
  port: number;
  services: Services;
  aggregator: Aggregator;
  stop(): Promise<void>;
}

export async function startServer(config: Config): Promise<RunningServer> {
  if (config.kafkaBrokers.length > 0 || config.clickhouseUrl) {
    throw new Error('KAFKA_BROKERS / CLICKHOUSE_URL: the distributed mode is not available in this version; unset them to run the embedded mode.');
  }
  fs.mkdirSync(config.dataDir, { recursive: true });
  const state = new SqliteStateStore(path.join(config.dataDir, 'state.sqlite'));
  await state.init();
  const { keys, generated } = await apiKeys(config, state);
  const analytics = new ChdbStore(path.join(config.dataDir, 'clickhouse'));
  await analytics.init();
  const eventLog = await EmbeddedLog.open(path.join(config.dataDir, 'log'), { partitions: config.logPartitions, segmentBytes: config.logSegmentBytes });
  const meters = new MeterRegistry();
  await meters.load(state);
  const durableKeys = new StoreIdempotencyRecords(state);
  const recentKeys = new MemoryIdempotencyRecords();
  const services: Services = {
    config,
    state,
    analytics,
    meters,
    auth: new Authenticator(keys, await sessionSecret(state), config.sessionTtlMs),
    idempotency: new Idempotency(durableKeys, [recentKeys]),
    hotIdempotency: new Idempotency(recentKeys, [durableKeys]),
    producer: eventLog.producer(),
    now: () => Date.now(),
  };

  const aggregator = new Aggregator({
    log: eventLog,
    analytics,
    state,
    meters,
    snapshots: new FileSnapshots(path.join(config.dataDir, 'aggregator')),
    leases: new SoleOwner(),
    threads: config.aggregatorThreads,
    flushEvents: config.flushEvents,
    flushIntervalMs: config.flushIntervalMs,
    dedupWindowMs: config.dedupWindowMs,
    snapshotIntervalMs: config.snapshotIntervalMs,
  });
  await aggregator.start();

  const http = new HttpServer(config.maxBodyBytes);
  registerMeterEventRoutes(http, services);
  registerMeterRoutes(http, services);
  registerSummaryRoutes(http, services);
  registerCoreEventRoutes(http, services);
  http.route('GET', '/healthz', () => json(200, { status: 'ok', aggregator: aggregator.stats }));
  const port = await http.listen(config.host, config.port);

  const prune = setInterval(() => {
    const now = Date.now();
    state.prune(now, now - IDEMPOTENCY_RETENTION_MS).catch((err) => log.warn('prune failed', { err: String(err) }));
  }, 3600_000);
  prune.unref();

  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  process.stdout.write(`meterd listening on ${url} (embedded mode, data in ${config.dataDir})\n`);
  if (generated) process.stdout.write(`generated a test API key (kept in DATA_DIR): ${generated}\n`);
  else process.stdout.write(`API keys: ${keys.length} configured (API_KEYS or DATA_DIR)\n`);

  let stopped: Promise<void> | null = null;
  return {
    port,
    services,
    aggregator,
    stop: () =>
      (stopped ??= (async () => {
        clearInterval(prune);
        await http.close();
        await eventLog.producer().close();
        await aggregator.stop();
        await eventLog.close();
        await analytics.close();
        await state.close();
      })()),
  };
}

if (require.main === module) {
  const config = loadConfig();
  log.setLevel(config.logLevel);
  startServer(config).then(
    (server) => {
      const shutdown = (signal: string) => {
        log.info('shutting down', { signal });
        server.stop().then(
          () => process.exit(0),
          (err) => {
            log.error('shutdown failed', { err: String(err) });
            process.exit(1);
          },
        );
      };
      process.once('SIGTERM', () => shutdown('SIGTERM'));
      process.once('SIGINT', () => shutdown('SIGINT'));
    },
    (err) => {
      log.error('start failed', { err: String((err as Error)?.stack ?? err) });
      process.exit(1);
    },
  );
}
