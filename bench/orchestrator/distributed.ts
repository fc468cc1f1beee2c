/** The distributed mode's servers (Kafka, ClickHouse, PostgreSQL): where they are, a deployment per run, its clean-up. */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { children, sleep } from './processes';
import type { Deployment } from './rows';

/** Settings that make the server distributed (or point it at one deployment): never inherited by the embedded run. */
export const DISTRIBUTED_ENV = /^(KAFKA_|CLICKHOUSE_|DATABASE_URL$|DATABASE_SCHEMA$|ROLE$)/;

export function withoutDistributedEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (!DISTRIBUTED_ENV.test(k)) out[k] = v;
  return out;
}

/** user:password@ removed, for the report and the log. */
export function redactUrl(u: string | undefined): string | null {
  if (!u) return null;
  try {
    const url = new URL(u);
    if (url.username || url.password) {
      url.username = '';
      url.password = '';
    }
    return url.toString();
  } catch {
    return '(unparsable)';
  }
}

/** The three server URLs: from the environment when all are set, else from `deploy/up.sh` (its `export` lines). */
export async function distributedServers(root: string): Promise<{ env: Record<string, string>; source: string }> {
  const names = ['KAFKA_BROKERS', 'CLICKHOUSE_URL', 'DATABASE_URL'];
  if (names.every((n) => process.env[n])) {
    return { env: Object.fromEntries(names.map((n) => [n, process.env[n]!])), source: 'environment' };
  }
  const script = path.join(root, 'deploy', 'up.sh');
  if (!fs.existsSync(script)) throw new Error(`KAFKA_BROKERS/CLICKHOUSE_URL/DATABASE_URL unset and ${script} not found`);
  process.stderr.write(`bench: ${names.filter((n) => !process.env[n]).join(', ')} unset; running deploy/up.sh\n`);
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn('bash', [script], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.add(child);
    let text = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      text += c;
    });
    const timer = setTimeout(() => child.kill('SIGTERM'), 15 * 60_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      if (code === 0) resolve(text);
      else reject(new Error(`deploy/up.sh failed (exit ${code ?? signal})`));
    });
  });
  const env: Record<string, string> = {};
  for (const line of out.split('\n')) {
    const m = /^\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2]!.trim();
    if (v.length >= 2 && ((v[0] === "'" && v.endsWith("'")) || (v[0] === '"' && v.endsWith('"')))) v = v.slice(1, -1);
    env[m[1]!] = v;
  }
  const missing = names.filter((n) => !env[n]);
  if (missing.length) throw new Error(`deploy/up.sh did not export ${missing.join(', ')}`);
  return { env, source: 'deploy/up.sh' };
}

export function deploymentNames(): Deployment {
  const d = new Date();
  const p = (n: number): string => String(n).padStart(2, '0');
  const ts =
    `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}` +
    `${p(d.getUTCSeconds())}_${randomBytes(2).toString('hex')}`;
  const topic = `bench-${ts.replace('_', '-')}`;
  return { topic, consumer_group: `${topic}.aggregator`, clickhouse_database: `bench_${ts}`, database_schema: `bench_${ts}` };
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
    }),
  ]);
}

/** Drops the run's ClickHouse database, PostgreSQL schema, Kafka consumer group and topic; best effort, each reported. */
export async function dropDeployment(env: Record<string, string>, d: Deployment): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  // The servers are shared (and restarted by other people's tests): retry for up to a minute.
  const attempt = async (what: string, fn: () => Promise<string>): Promise<void> => {
    const deadline = Date.now() + 60_000;
    for (let i = 1; ; i++) {
      try {
        out[what] = await withTimeout(fn(), 30_000, what);
        return;
      } catch (err) {
        if (Date.now() + 2000 < deadline) {
          process.stderr.write(`bench: cleanup of ${what} failed (attempt ${i}: ${(err as Error).message}); retrying\n`);
          await sleep(2000);
          continue;
        }
        out[what] = `FAILED: ${(err as Error).message}`;
        process.stderr.write(`bench: cleanup of ${what} failed: ${(err as Error).message}\n`);
        return;
      }
    }
  };
  if (!/^[A-Za-z0-9_]+$/.test(d.clickhouse_database) || !/^[a-z0-9_]+$/.test(d.database_schema)) throw new Error('bad names');
  // Each server's own driver module does the dropping: driver packages are imported nowhere else.
  await attempt('clickhouse', async () => {
    const { dropClickHouseDatabase } = await import('../../shared/analytics/server-store');
    await dropClickHouseDatabase(env.CLICKHOUSE_URL!, d.clickhouse_database);
    return `dropped database ${d.clickhouse_database}`;
  });
  await attempt('postgres', async () => {
    const { dropPostgresSchema } = await import('../../shared/state/postgres-store');
    await dropPostgresSchema(env.DATABASE_URL!, d.database_schema);
    return `dropped schema ${d.database_schema}`;
  });
  await attempt('kafka', async () => {
    const { deleteTopicAndGroup, kafkaOptionsFromEnv } = await import('../../shared/log/kafka-log');
    return deleteTopicAndGroup(kafkaOptionsFromEnv({ ...process.env, ...env }), d.topic, d.consumer_group);
  });
  return out;
}
