/**
 * Starts the real server (dist/main.js, built by `npm test` before tap runs) as a child process on a free port with a
 * fresh DATA_DIR, and gives tests an official `stripe` client pointed at it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Stripe from 'stripe';

export const ROOT = path.resolve(__dirname, '..', '..');
export const MAIN = path.join(ROOT, 'dist', 'main.js');

export interface TestServer {
  url: string;
  port: number;
  key: string;
  dataDir: string;
  proc: ChildProcess;
  stdout: string[];
  stderr: string[];
  /** A stripe client for `key` (or another key / session token). */
  stripe(key?: string): Stripe;
  /** Raw HTTP helper for wire-level tests. */
  request(
    method: string,
    p: string,
    opts?: { body?: string | Buffer; headers?: Record<string, string>; key?: string | null },
  ): Promise<{ status: number; headers: Headers; body: any; text: string }>;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

export interface StartOptions {
  env?: Record<string, string>;
  dataDir?: string;
  key?: string;
}

/** `METERD_TEST_MODE=distributed` runs every test against Kafka, ClickHouse and PostgreSQL (see deploy/up.sh). */
export const DISTRIBUTED = process.env.METERD_TEST_MODE === 'distributed';

/**
 * The environment of a server under test. Embedded: the server variables are removed, whatever the shell exported.
 * Distributed: each data dir gets its own topic, ClickHouse database and PostgreSQL schema, so servers never share
 * state unless a test restarts one on the same data dir (which then finds its data again, as on one machine).
 */
export function serverEnv(dataDir: string): NodeJS.ProcessEnv {
  const env = { ...process.env };
  if (!DISTRIBUTED) {
    for (const k of ['KAFKA_BROKERS', 'CLICKHOUSE_URL', 'DATABASE_URL', 'ROLE']) delete env[k];
    return env;
  }
  for (const k of ['KAFKA_BROKERS', 'CLICKHOUSE_URL', 'DATABASE_URL']) {
    if (!env[k]) throw new Error(`METERD_TEST_MODE=distributed needs ${k}: run eval "$(deploy/up.sh)" first`);
  }
  const id = path
    .basename(dataDir)
    .replace(/[^A-Za-z0-9]/g, '_')
    .toLowerCase();
  return {
    ...env,
    KAFKA_TOPIC: `meterd-test-${id}`,
    KAFKA_PARTITIONS: env.KAFKA_PARTITIONS ?? '4',
    CLICKHOUSE_DATABASE: `t_${id}`,
    DATABASE_SCHEMA: `t_${id}`,
  };
}

export function tempDir(name = 'meterd-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), name));
}

export async function startServer(opts: StartOptions = {}): Promise<TestServer> {
  if (!fs.existsSync(MAIN)) throw new Error(`${MAIN} is missing: run \`npm run build\` (npm test does) first`);
  const dataDir = opts.dataDir ?? tempDir();
  const key = opts.key ?? 'sk_test_' + Math.random().toString(36).slice(2).padEnd(12, '0');
  const proc = spawn(process.execPath, [MAIN], {
    env: { ...serverEnv(dataDir), PORT: '0', HOST: '127.0.0.1', DATA_DIR: dataDir, API_KEYS: key, LOG_LEVEL: 'warn', ...(opts.env ?? {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  proc.stderr!.on('data', (d) => stderr.push(String(d)));
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`server did not start in 60 s: ${stderr.join('')}`)), 60_000);
    proc.stdout!.on('data', (d) => {
      buf += String(d);
      stdout.push(String(d));
      const m = /listening on http:\/\/[^:]+:(\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening: ${stderr.join('')}`));
    });
  });
  const url = `http://127.0.0.1:${port}`;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const server: TestServer = {
    url,
    port,
    key,
    dataDir,
    proc,
    stdout,
    stderr,
    stripe: (k = key) => new Stripe(k, { host: '127.0.0.1', port, protocol: 'http', telemetry: false, maxNetworkRetries: 2 }),
    async request(method, p, o = {}) {
      const headers: Record<string, string> = { ...(o.headers ?? {}) };
      const k = o.key === undefined ? key : o.key;
      if (k) headers.authorization = `Bearer ${k}`;
      const res = await fetch(url + p, { method, headers, body: o.body });
      const text = await res.text();
      let body: any = null;
      try {
        body = JSON.parse(text);
      } catch {
        body = null;
      }
      return { status: res.status, headers: res.headers, body, text };
    },
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(t);
    },
    async kill() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGKILL');
      await exited;
    },
  };
  return server;
}

/** Polls `fn` until it returns true or the deadline passes; returns the elapsed ms. */
export async function eventually(fn: () => Promise<boolean>, timeoutMs = 10_000, intervalMs = 25): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await fn()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A minute-aligned [start, end) range around now, wide enough for events stamped "now". */
export function currentRange(pastSeconds = 3600): { start: number; end: number } {
  const now = Math.floor(Date.now() / 1000);
  return { start: Math.floor((now - pastSeconds) / 60) * 60, end: Math.floor(now / 60) * 60 + 600 };
}
