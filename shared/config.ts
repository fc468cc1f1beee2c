/**
 * Every setting comes from the environment, read once at start-up. The README's configuration table mirrors this file.
 */
import path from 'node:path';

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
  /** Aggregator: flush when this many events are buffered… */
  flushEvents: number;
  /** …or when the oldest buffered event has waited this long. */
  flushIntervalMs: number;
  /** Aggregator worker threads (piscina). */
  aggregatorThreads: number;
  /** How long the identifier dedup window and the adjustment window last. */
  dedupWindowMs: number;
  /** Seconds between dedup index snapshots (bounds replay after a crash). */
  snapshotIntervalMs: number;
  /** Lifetime of meter event session tokens (Stripe: 15 minutes). */
  sessionTtlMs: number;
  kafkaBrokers: string[];
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
}

function int(env: NodeJS.ProcessEnv, name: string, dflt: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return n;
}

function list(env: NodeJS.ProcessEnv, name: string): string[] {
  return (env[name] ?? '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const role = (env.ROLE ?? 'all') as Role;
  if (!['all', 'gateway', 'aggregator', 'api'].includes(role)) throw new Error(`ROLE must be all, gateway, aggregator or api`);
  const apiKeys = list(env, 'API_KEYS');
  for (const k of apiKeys) {
    if (!/^sk_(test|live)_[0-9A-Za-z_]{8,}$/.test(k)) throw new Error(`API_KEYS: ${k.slice(0, 12)}… is not a secret key (sk_test_… or sk_live_…, 8+ characters after the prefix)`);
  }
  if (role !== 'all' && !(env.KAFKA_BROKERS && env.CLICKHOUSE_URL && env.DATABASE_URL)) {
    throw new Error(`ROLE=${role} runs one role of the distributed mode: set KAFKA_BROKERS, CLICKHOUSE_URL and DATABASE_URL`);
  }
  const level = (env.LOG_LEVEL ?? 'info') as Config['logLevel'];
  return {
    role,
    host: env.HOST || '127.0.0.1',
    port: int(env, 'PORT', 12111),
    dataDir: path.resolve(env.DATA_DIR || './data'),
    apiKeys,
    logPartitions: Math.max(1, int(env, 'LOG_PARTITIONS', 1)),
    logSegmentBytes: int(env, 'LOG_SEGMENT_BYTES', 64 * 1024 * 1024),
    maxBodyBytes: int(env, 'MAX_BODY_BYTES', 1024 * 1024),
    flushEvents: Math.max(1, int(env, 'FLUSH_EVENTS', 100_000)),
    flushIntervalMs: Math.max(1, int(env, 'FLUSH_INTERVAL_MS', 250)),
    aggregatorThreads: Math.max(1, int(env, 'AGGREGATOR_THREADS', 1)),
    dedupWindowMs: int(env, 'DEDUP_WINDOW_HOURS', 24) * 3600_000,
    snapshotIntervalMs: int(env, 'SNAPSHOT_INTERVAL_S', 60) * 1000,
    sessionTtlMs: Math.max(1, int(env, 'SESSION_TTL_SECONDS', 900)) * 1000,
    kafkaBrokers: list(env, 'KAFKA_BROKERS'),
    clickhouseUrl: env.CLICKHOUSE_URL || null,
    clickhouseDatabase: env.CLICKHOUSE_DATABASE || null,
    databaseUrl: env.DATABASE_URL || null,
    databaseSchema: env.DATABASE_SCHEMA || 'public',
    leaseMs: Math.max(1, int(env, 'AGGREGATOR_LEASE_SECONDS', 20)) * 1000,
    logLevel: ['debug', 'info', 'warn', 'error'].includes(level) ? level : 'info',
  };
}
