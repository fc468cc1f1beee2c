/**
 * Composition root: reads the configuration, picks the drivers once (embedded log + chdb + SQLite by default), wires
 * the gateway, the REST layer and the aggregator, and prints where it listens and which key to use.
 */
import crypto from 'node:crypto';
import { ConfigError, loadConfig, type Config } from './shared/config';
import { log } from './shared/logger';
import os from 'node:os';
import path from 'node:path';
import { openDrivers, type Drivers } from './shared/drivers';
import { FileSnapshots, StateStoreSnapshots, type SnapshotStore } from './aggregator/snapshots';
import { SoleOwner, StoreLeases, type PartitionLeases } from './aggregator/leases';
import type { StateStore, ApiKeyRecord } from './shared/state-store';
import { MeterRegistry } from './shared/meters';
import { Authenticator, accountForKey } from './shared/http/auth';
import { Idempotency, MemoryIdempotencyRecords, StoreIdempotencyRecords, IDEMPOTENCY_RETENTION_MS } from './shared/http/idempotency';
import { HttpServer, json } from './shared/http/server';
import { newSecretKey } from './shared/ids';
import type { Services } from './shared/services';
import { AccountVersions } from './shared/versioning/account-versions';
import { ApiVersioning } from './shared/versioning/versioning';
import { registerMeterRoutes } from './api/meters';
import { registerSummaryRoutes } from './api/summaries';
import { registerCoreEventRoutes } from './api/core-events';
import { registerEventDestinationRoutes } from './api/event-destinations';
import { registerBillingRoutes, stopBillingJobs } from './api/billing';
import { setPortalOrigin } from './api/billing/portal';
import { appendSocketBatch, registerMeterEventRoutes, registerSessionRoute } from './ingest/meter-events';
import { MeterEventSocketServer } from './ingest/ws-stream';
import { GatewayThreads } from './ingest/gateway-threads';
import { Aggregator } from './aggregator/aggregator';
import { collectProcessMetrics, metrics, trackEventLoop } from './shared/metrics';
import { countedAnalytics, countedLog } from './shared/metrics/drivers';
import { registerMetricsRoute } from './shared/metrics/endpoint';
import { registerDashboardRoutes } from './api/dashboard';

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

/**
 * Dedup snapshots and partition leases are shared exactly when the log is: several aggregators can then own its
 * partitions, and the next owner of one must find the last snapshot of the previous owner and wait out its lease.
 */
function aggregatorCoordination(config: Config, drivers: Drivers): { snapshots: SnapshotStore; leases: PartitionLeases } {
  if (!drivers.sharedLog) return { snapshots: new FileSnapshots(path.join(config.dataDir, 'aggregator')), leases: new SoleOwner() };
  const owner = `${os.hostname()}:${process.pid}:${Date.now().toString(36)}`;
  const snapshots = drivers.state.putBlob
    ? new StateStoreSnapshots(drivers.state, drivers.consumerGroup, path.join(config.dataDir, 'aggregator', 'run-cache'))
    : new FileSnapshots(path.join(config.dataDir, 'aggregator'));
  return { snapshots, leases: new StoreLeases(drivers.state, owner, config.leaseMs, drivers.consumerGroup) };
}

export interface RunningServer {
  port: number;
  services: Services;
  aggregator: Aggregator | null;
  stop(): Promise<void>;
}

export async function startServer(config: Config): Promise<RunningServer> {
  const drivers = await openDrivers(config);
  const { state } = drivers;
  const analytics = countedAnalytics(drivers.analytics);
  const eventLog = countedLog(drivers.log);
  const { keys, generated } = await apiKeys(config, state);
  const meters = new MeterRegistry(state, drivers.mode !== 'embedded');
  await meters.load();
  const secret = await sessionSecret(state);
  const durableKeys = new StoreIdempotencyRecords(state, { shared: !!config.databaseUrl });
  const recentKeys = new MemoryIdempotencyRecords();
  const accountVersions = new AccountVersions(state, config.defaultApiVersion);
  for (const { account, version } of config.accountApiVersions) {
    await accountVersions.set(account.startsWith('sk_') ? accountForKey(account) : account, version);
  }
  const services: Services = {
    config,
    state,
    analytics,
    meters,
    auth: new Authenticator(keys, secret, config.sessionTtlMs),
    idempotency: new Idempotency(durableKeys, [recentKeys]),
    hotIdempotency: new Idempotency(recentKeys, [durableKeys], 'memory'),
    producer: eventLog.producer(),
    versioning: new ApiVersioning(accountVersions),
    now: () => Date.now(),
  };
  const roles = {
    gateway: config.role === 'all' || config.role === 'gateway',
    api: config.role === 'all' || config.role === 'api',
    aggregator: config.role === 'all' || config.role === 'aggregator',
  };

  // Other processes change meters and keys in a shared store: follow them.
  const timers: NodeJS.Timeout[] = [];
  if (drivers.mode !== 'embedded') {
    timers.push(
      setInterval(() => {
        meters.load().catch((err) => log.warn('meter refresh failed', { err: String(err) }));
        state
          .listApiKeys()
          .then((all) => {
            for (const k of all) services.auth.addKey(k);
          })
          .catch((err) => log.warn('key refresh failed', { err: String(err) }));
      }, 1000),
    );
  }

  let aggregator: Aggregator | null = null;
  if (roles.aggregator) {
    aggregator = new Aggregator({
      log: eventLog,
      analytics,
      state,
      meters,
      ...aggregatorCoordination(config, drivers),
      threads: config.aggregatorThreads,
      threadNice: config.aggregatorNice,
      flushEvents: config.flushEvents,
      flushIntervalMs: config.flushIntervalMs,
      dedupWindowMs: config.dedupWindowMs,
      dedupMemoryIdentifiers: config.dedupMemoryIdentifiers,
      snapshotIntervalMs: config.snapshotIntervalMs,
      consumerGroup: drivers.consumerGroup,
      leaseRenewMs: Math.max(250, Math.floor(config.leaseMs / 4)),
    });
    await aggregator.start();
    aggregator.trackMetrics();
  }

  const http = new HttpServer({
    maxBodyBytes: config.maxBodyBytes,
    idleTimeoutSeconds: config.httpIdleTimeoutS,
    requestTimeoutSeconds: config.httpRequestTimeoutS,
  });
  const sockets = new MeterEventSocketServer(services.auth, (principal, receivedMs, batch) => appendSocketBatch(services, principal, receivedMs, batch));
  if (roles.gateway) registerMeterEventRoutes(http, services, sockets);
  else if (roles.api) registerSessionRoute(http, services);
  if (roles.api) {
    registerMeterRoutes(http, services);
    registerSummaryRoutes(http, services);
    registerCoreEventRoutes(http, services);
    registerEventDestinationRoutes(http, services);
    registerBillingRoutes(http, services);
  }
  // Declared before the routes that read it; set when the threads start.
  let gateway: GatewayThreads | null = null;
  http.route('GET', '/healthz', async () => {
    const streams = roles.gateway ? await (gateway ? gateway.streamStats() : sockets.snapshot()) : null;
    return json(200, {
      status: 'ok',
      role: config.role,
      mode: drivers.mode,
      gateway_threads: config.gatewayThreads,
      aggregator: aggregator?.health() ?? null,
      stream_sockets: streams
        ? {
            connections: streams.connections,
            batches_in_flight: streams.batchesInFlight,
            peak_batches_in_flight_per_connection: streams.peakBatchesInFlightPerConnection,
          }
        : null,
    });
  });
  const remoteMetrics = async () => (gateway ? gateway.metricSnapshots() : []);
  registerMetricsRoute(http, config.metricsToken, remoteMetrics);
  if (roles.api) registerDashboardRoutes(http, services, remoteMetrics);
  metrics.info.child(config.role, drivers.mode).set(1);
  trackEventLoop('main');
  collectProcessMetrics();
  if (roles.gateway) {
    metrics.streamConnections.collector = async () => {
      const streams = await (gateway ? gateway.streamStats() : sockets.snapshot());
      metrics.streamConnections.child().set(streams.connections);
      metrics.streamBatchesInFlight.child().set(streams.batchesInFlight);
    };
  }
  // With gateway threads, they own the sockets and this thread's router answers what they forward.
  gateway = config.gatewayThreads > 0 ? new GatewayThreads(http, services) : null;
  const port = gateway
    ? await gateway.start({ threads: config.gatewayThreads, host: config.host, port: config.port, sessionSecret: secret, serveStream: roles.gateway })
    : await http.listen(config.host, config.port);

  timers.push(
    setInterval(() => {
      const now = Date.now();
      state.prune(now, now - IDEMPOTENCY_RETENTION_MS).catch((err) => log.warn('prune failed', { err: String(err) }));
    }, 3600_000),
  );
  for (const t of timers) t.unref();

  const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
  setPortalOrigin(config.publicUrl ?? url);
  process.stdout.write(
    `meterd listening on ${url} (role ${config.role}, ${drivers.mode} mode: ${drivers.describe}; ${gateway ? `${config.gatewayThreads} gateway threads` : 'HTTP on the main thread'}; data in ${config.dataDir})\n`,
  );
  if (generated) process.stdout.write(`generated a test API key (kept in the state store): ${generated}\n`);
  else if (config.apiKeys.length > 0) process.stdout.write(`API keys: ${keys.length} configured (API_KEYS and the state store)\n`);
  // Started without API_KEYS: say which stored key to use, as on the first start.
  else process.stdout.write(`API keys: ${keys.length} configured; use ${keys[0].secret}\n`);

  let stopped: Promise<void> | null = null;
  return {
    port,
    services,
    aggregator,
    stop: () =>
      (stopped ??= (async () => {
        for (const t of timers) clearInterval(t);
        await Promise.all([gateway ? gateway.close() : http.close(), sockets.close()]);
        await stopBillingJobs();
        await services.producer.close();
        if (aggregator) await aggregator.stop();
        await eventLog.close();
        await analytics.close();
        await state.close();
      })()),
  };
}

/** Configuration problems are the operator's to fix: one line each, all of them, no stack trace. */
function loadConfigOrExit(): Config {
  try {
    return loadConfig();
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const problem of err.problems) process.stderr.write(`meterd: configuration error: ${problem}\n`);
    process.stderr.write(
      `meterd: not started (${err.problems.length} configuration error${err.problems.length === 1 ? '' : 's'}; see the README's Configuration table)\n`,
    );
    process.exit(2);
  }
}

if (require.main === module) {
  const config = loadConfigOrExit();
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
      // What the operator can act on (a port in use, a server unreachable) is the message; the stack is for debug.
      process.stderr.write(`meterd: start failed: ${String((err as Error)?.message ?? err)}\n`);
      log.debug('start failed', { err: String((err as Error)?.stack ?? err) });
      process.exit(1);
    },
  );
}
