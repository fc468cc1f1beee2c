/**
 * Every setting comes from the environment, read once at start-up. The README's configuration table mirrors this file.
 */
import os from 'node:os';
import path from 'node:path';
import { CURRENT_API_VERSION, isKnownVersion } from './versioning/releases';

export type Role = 'all' | 'gateway' | 'aggregator' | 'api';

export interface Config {
  role: Role;
  host: string;
  port: number;
  dataDir: string;
  /** Secret keys given by the operator; empty means "generate one test key on first start". */
  apiKeys: string[];
  /** Partitions of the event log. */
  logPartitions: number;
  logSegmentBytes: number;
  /** Largest request body accepted, in bytes. */
  maxBodyBytes: number;
  /** Seconds an idle keep-alive connection is kept (announced to clients as one less). */
  httpIdleTimeoutS: number;
  /** Seconds a client has to finish sending a request it has started. */
  httpRequestTimeoutS: number;
  /** Aggregator: flush when this many events are buffered… */
  flushEvents: number;
  /** …or when the oldest buffered event has waited this long. */
  flushIntervalMs: number;
  /** Aggregator worker threads (piscina). */
  aggregatorThreads: number;
  /** Linux nice value of the aggregating threads (the aggregator's workers, the embedded engine's threads); 0: none. */
  aggregatorNice: number;
  /** Threads that own the HTTP and WebSocket connections (0: the main thread serves them). */
  gatewayThreads: number;
  /** How long the identifier dedup window and the adjustment window last. */
  dedupWindowMs: number;
  /**
   * Identifiers the dedup index keeps in memory per aggregator process (split among its partitions); older ones are
   * sealed into runs on disk behind a filter of 5–8 bytes per identifier.
   */
  dedupMemoryIdentifiers: number;
  /** Seconds between dedup index snapshots (bounds replay after a crash). */
  snapshotIntervalMs: number;
  /** Lifetime of meter event session tokens (Stripe: 15 minutes). */
  sessionTtlMs: number;
  webhookRetryBaseMs: number;
  webhookMaxAttempts: number;
  webhookTimeoutMs: number;
  webhookPollMs: number;
  /** How often period ends are billed on real time. */
  billingTickMs: number;
  /** How often active billing alerts are evaluated against the aggregated usage. */
  alertIntervalMs: number;
  /** The address clients reach this server at, for links it hands out (customer portal sessions); null: where it listens. */
  publicUrl: string | null;
  /** How long a starting process waits for an unreachable Kafka, ClickHouse or PostgreSQL. */
  startupWaitMs: number;
  kafkaBrokers: string[];
  /** Consumer group of the aggregators (default `<topic>.aggregator`). */
  kafkaConsumerGroup: string | null;
  clickhouseUrl: string | null;
  /** Database for our tables on the ClickHouse server (default: the URL's path, else `meterd`). */
  clickhouseDatabase: string | null;
  /** PostgreSQL for the shared transactional state (distributed mode). */
  databaseUrl: string | null;
  /** PostgreSQL schema holding our tables. */
  databaseSchema: string;
  /** How long an aggregator's claim on a partition lasts without renewal (distributed mode). */
  leaseMs: number;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
  /** The default API version an account gets on its first use. */
  defaultApiVersion: string;
  /** The operator's changes of accounts' default API versions, applied at start-up: account id or secret key → version. */
  accountApiVersions: { account: string; version: string }[];
  /** When set, GET /metrics needs `Authorization: Bearer <token>`. */
  metricsToken: string | null;
}

/** Every configuration problem found, all at once; main prints one line each and exits non-zero. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration: ${problems.join('; ')}`);
    this.name = 'ConfigError';
  }
}

/** Reads variables and records what is wrong with each instead of stopping at the first. */
class EnvReader {
  readonly problems: string[] = [];
  constructor(private readonly env: NodeJS.ProcessEnv) {}

  raw(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === '' ? undefined : v;
  }

  /** An integer in [min, max]; `dflt` when unset (or on error, so that the other checks still run). */
  int(name: string, dflt: number, min = 0, max = Number.MAX_SAFE_INTEGER): number {
    const raw = this.raw(name);
    if (raw === undefined) return dflt;
    const n = Number(raw.trim());
    if (!Number.isSafeInteger(n) || n < min || n > max) {
      const range = max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer from ${min} to ${max}`;
      this.problems.push(`${name}=${JSON.stringify(raw)} is not valid: expected ${range} (default ${dflt})`);
      return dflt;
    }
    return n;
  }

  oneOf<T extends string>(name: string, dflt: T, allowed: readonly T[]): T {
    const raw = this.raw(name);
    if (raw === undefined) return dflt;
    const v = raw.trim() as T;
    if (!allowed.includes(v)) {
      this.problems.push(`${name}=${JSON.stringify(raw)} is not valid: expected one of ${allowed.join(', ')} (default ${dflt})`);
      return dflt;
    }
    return v;
  }

  /** A release of the API version table (shared/versioning/releases.ts). */
  apiVersion(name: string): string {
    const raw = this.raw(name);
    if (raw === undefined) return CURRENT_API_VERSION;
    if (!isKnownVersion(raw.trim())) {
      this.problems.push(
        `${name}=${JSON.stringify(raw)} is not valid: expected a known API version such as 2024-09-30.acacia (default ${CURRENT_API_VERSION})`,
      );
      return CURRENT_API_VERSION;
    }
    return raw.trim();
  }

  /** `acct_…=version` or `sk_…=version` pairs, comma-separated. */
  accountApiVersions(name: string): { account: string; version: string }[] {
    const out: { account: string; version: string }[] = [];
    for (const pair of this.list(name)) {
      const eq = pair.indexOf('=');
      const who = eq === -1 ? '' : pair.slice(0, eq).trim();
      const version = eq === -1 ? '' : pair.slice(eq + 1).trim();
      const shown = JSON.stringify(pair.startsWith('sk_') ? `${pair.slice(0, 12)}…` : pair);
      if (!/^(acct_[0-9A-Za-z]+|sk_(test|live)_[0-9A-Za-z_]{8,})$/.test(who) || !isKnownVersion(version)) {
        this.problems.push(`${name} has ${shown}, which is not valid: expected a comma-separated list of <acct_… or sk_… key>=<known API version>`);
        continue;
      }
      out.push({ account: who, version });
    }
    return out;
  }

  list(name: string): string[] {
    return (this.env[name] ?? '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
  }
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const r = new EnvReader(env);
  const role = r.oneOf<Role>('ROLE', 'all', ['all', 'gateway', 'aggregator', 'api']);
  const apiKeys = r.list('API_KEYS');
  for (const k of apiKeys) {
    if (!/^sk_(test|live)_[0-9A-Za-z_]{8,}$/.test(k)) {
      r.problems.push(
        `API_KEYS has ${JSON.stringify(k.length > 16 ? k.slice(0, 12) + '…' : k)}, which is not a secret key: expected a comma-separated list of sk_test_… or sk_live_… keys with 8 or more letters, digits or _ after the prefix`,
      );
    }
  }
  if (role !== 'all' && !(r.raw('KAFKA_BROKERS') && r.raw('CLICKHOUSE_URL') && r.raw('DATABASE_URL'))) {
    const missing = ['KAFKA_BROKERS', 'CLICKHOUSE_URL', 'DATABASE_URL'].filter((n) => !r.raw(n));
    r.problems.push(`ROLE=${role} runs one role of the distributed mode: set ${missing.join(', ')} as well`);
  }
  const clickhouseUrl = r.raw('CLICKHOUSE_URL') ?? null;
  if (clickhouseUrl !== null && !/^https?:\/\/[^/]+/.test(clickhouseUrl)) {
    r.problems.push(`CLICKHOUSE_URL=${JSON.stringify(clickhouseUrl)} is not valid: expected http(s)://[user[:password]@]host:port[/database]`);
  }
  const databaseUrl = r.raw('DATABASE_URL') ?? null;
  if (databaseUrl !== null && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    r.problems.push(`DATABASE_URL=${JSON.stringify(databaseUrl.replace(/:[^:@/]*@/, ':***@'))} is not valid: expected postgres://user:password@host:port/db`);
  }
  const config: Config = {
    role,
    host: r.raw('HOST') ?? '127.0.0.1',
    port: r.int('PORT', 12111, 0, 65535),
    dataDir: path.resolve(r.raw('DATA_DIR') ?? './data'),
    apiKeys,
    logPartitions: r.int('LOG_PARTITIONS', 1, 1, 64),
    logSegmentBytes: r.int('LOG_SEGMENT_BYTES', 64 * 1024 * 1024, 4096),
    maxBodyBytes: r.int('MAX_BODY_BYTES', 1024 * 1024, 1024),
    httpIdleTimeoutS: r.int('HTTP_IDLE_TIMEOUT_SECONDS', 65, 2),
    httpRequestTimeoutS: r.int('HTTP_REQUEST_TIMEOUT_SECONDS', 30, 1),
    flushEvents: r.int('FLUSH_EVENTS', 100_000, 1),
    flushIntervalMs: r.int('FLUSH_INTERVAL_MS', 250, 1),
    aggregatorThreads: r.int('AGGREGATOR_THREADS', 1, 1, 64),
    aggregatorNice: r.int('AGGREGATOR_NICE', 10, 0, 19),
    gatewayThreads: r.int('GATEWAY_THREADS', os.availableParallelism(), 0, 64),
    dedupWindowMs: r.int('DEDUP_WINDOW_HOURS', 24, 1) * 3600_000,
    dedupMemoryIdentifiers: r.int('DEDUP_MEMORY_IDENTIFIERS', 1_000_000, 100),
    snapshotIntervalMs: r.int('SNAPSHOT_INTERVAL_S', 60, 1) * 1000,
    sessionTtlMs: r.int('SESSION_TTL_SECONDS', 900, 1) * 1000,
    webhookRetryBaseMs: r.int('WEBHOOK_RETRY_BASE_MS', 60_000, 1),
    webhookMaxAttempts: r.int('WEBHOOK_MAX_ATTEMPTS', 16, 1),
    webhookTimeoutMs: r.int('WEBHOOK_TIMEOUT_MS', 10_000, 1),
    webhookPollMs: r.int('WEBHOOK_POLL_MS', 1000, 1),
    billingTickMs: r.int('BILLING_TICK_MS', 60_000, 1),
    alertIntervalMs: r.int('BILLING_ALERT_INTERVAL_MS', 5000, 1),
    publicUrl: r.raw('PUBLIC_URL') ?? null,
    startupWaitMs: r.int('STARTUP_WAIT_SECONDS', 60, 0) * 1000,
    kafkaBrokers: r.list('KAFKA_BROKERS'),
    kafkaConsumerGroup: r.raw('KAFKA_CONSUMER_GROUP') ?? null,
    clickhouseUrl,
    clickhouseDatabase: r.raw('CLICKHOUSE_DATABASE') ?? null,
    databaseUrl,
    databaseSchema: r.raw('DATABASE_SCHEMA') ?? 'public',
    leaseMs: r.int('AGGREGATOR_LEASE_SECONDS', 20, 1) * 1000,
    logLevel: r.oneOf('LOG_LEVEL', 'info', ['debug', 'info', 'warn', 'error'] as const),
    defaultApiVersion: r.apiVersion('DEFAULT_API_VERSION'),
    accountApiVersions: r.accountApiVersions('ACCOUNT_API_VERSIONS'),
    metricsToken: r.raw('METRICS_TOKEN') || null,
  };
  if (config.metricsToken !== null && !/^[\x21-\x7e]+$/.test(config.metricsToken)) {
    r.problems.push('METRICS_TOKEN is not valid: expected printable ASCII without spaces (it is sent as a bearer token)');
  }
  if (config.kafkaBrokers.length > 0) kafkaSettings(env, r);
  if (r.problems.length > 0) throw new ConfigError(r.problems);
  return config;
}

/** The Kafka driver's settings (KAFKA_*), read here so that their problems are reported with all the others. */
export interface KafkaSettings {
  brokers: string[];
  topic?: string;
  partitions?: number;
  replicationFactor?: number;
  clientId?: string;
  ssl?: boolean;
  sasl?: { mechanism: 'plain' | 'scram-sha-256' | 'scram-sha-512'; username: string; password: string };
  sessionTimeoutMs?: number;
  logLevel?: 'nothing' | 'error' | 'warn' | 'info' | 'debug';
}

function kafkaSettings(env: NodeJS.ProcessEnv, r: EnvReader): KafkaSettings {
  const out: KafkaSettings = { brokers: r.list('KAFKA_BROKERS') };
  if (out.brokers.length === 0) r.problems.push('KAFKA_BROKERS is not set: expected a comma-separated list of host:port');
  const bad = out.brokers.filter((b) => !/^[^\s:]+:\d{1,5}$/.test(b) && !/^\[[0-9a-fA-F:]+\]:\d{1,5}$/.test(b));
  if (bad.length > 0) r.problems.push(`KAFKA_BROKERS has ${bad.map((b) => JSON.stringify(b)).join(', ')}: expected host:port`);
  const topic = r.raw('KAFKA_TOPIC');
  if (topic !== undefined) out.topic = topic;
  if (r.raw('KAFKA_PARTITIONS') !== undefined) out.partitions = r.int('KAFKA_PARTITIONS', 8, 1, 64);
  if (r.raw('KAFKA_REPLICATION_FACTOR') !== undefined) {
    const rf = r.int('KAFKA_REPLICATION_FACTOR', -1, -1);
    if (rf === 0) r.problems.push('KAFKA_REPLICATION_FACTOR="0" is not valid: expected -1 (the broker\'s default) or a positive integer');
    else out.replicationFactor = rf;
  }
  const clientId = r.raw('KAFKA_CLIENT_ID');
  if (clientId !== undefined) out.clientId = clientId;
  const ssl = r.raw('KAFKA_SSL')?.trim().toLowerCase();
  if (ssl !== undefined) {
    if (['true', '1', 'yes', 'on'].includes(ssl)) out.ssl = true;
    else if (['false', '0', 'no', 'off'].includes(ssl)) out.ssl = false;
    else r.problems.push(`KAFKA_SSL=${JSON.stringify(env.KAFKA_SSL)} is not valid: expected true or false`);
  }
  const mechanism = r.raw('KAFKA_SASL_MECHANISM')?.trim().toLowerCase();
  const username = env.KAFKA_SASL_USERNAME ?? '';
  const password = env.KAFKA_SASL_PASSWORD ?? '';
  if (mechanism !== undefined) {
    if (mechanism !== 'plain' && mechanism !== 'scram-sha-256' && mechanism !== 'scram-sha-512') {
      r.problems.push(`KAFKA_SASL_MECHANISM=${JSON.stringify(env.KAFKA_SASL_MECHANISM)} is not valid: expected plain, scram-sha-256 or scram-sha-512`);
    } else if (!username) r.problems.push('KAFKA_SASL_USERNAME is required with KAFKA_SASL_MECHANISM');
    else out.sasl = { mechanism, username, password };
  } else if (username || password) {
    r.problems.push('KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD need KAFKA_SASL_MECHANISM');
  }
  if (r.raw('KAFKA_SESSION_TIMEOUT_MS') !== undefined) out.sessionTimeoutMs = r.int('KAFKA_SESSION_TIMEOUT_MS', 30_000, 1);
  const level = r.raw('KAFKA_LOG_LEVEL')?.trim().toLowerCase();
  if (level !== undefined) {
    const levels = ['nothing', 'error', 'warn', 'info', 'debug'] as const;
    if (!(levels as readonly string[]).includes(level))
      r.problems.push(`KAFKA_LOG_LEVEL=${JSON.stringify(env.KAFKA_LOG_LEVEL)} is not valid: expected nothing, error, warn, info or debug`);
    else out.logLevel = level as KafkaSettings['logLevel'];
  }
  return out;
}

/** KAFKA_* settings; throws a ConfigError naming every problem. */
export function kafkaSettingsFromEnv(env: NodeJS.ProcessEnv = process.env): KafkaSettings {
  const r = new EnvReader(env);
  const settings = kafkaSettings(env, r);
  if (r.problems.length > 0) throw new ConfigError(r.problems);
  return settings;
}
