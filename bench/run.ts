/**
 * Benchmark orchestrator.
 *
 *   npm run bench -- [--mode embedded|distributed|both] [--events N] [--duration S] [--chart]   (= node dist/bench/run.js ...)
 *
 * (a) starts the null server (bench/null-server.ts) in a child process and runs the load generator against it: the
 *     generator's ceiling on this machine;
 * (b) embedded mode: starts the real server (`node dist/main.js`, random free port, temp DATA_DIR, API_KEYS=<fresh
 *     sk_test key>, none of the distributed settings), waits for GET /healthz, runs the generator (meter creation,
 *     load, consumer lag, freshness, exactness), stops the server (SIGTERM, SIGKILL after 10 s), removes the temp dir;
 * (c) distributed mode: the same against the server on Kafka + ClickHouse + PostgreSQL (KAFKA_BROKERS, CLICKHOUSE_URL,
 *     DATABASE_URL from the environment, else from `deploy/up.sh`'s export lines), with a fresh topic, ClickHouse
 *     database, PostgreSQL schema and consumer group per run (bench-<ts> / bench_<ts>), dropped at the end. Topology
 *     `all` = one process running every role; `split` = one gateway + one aggregator + one api process (the generator
 *     streams to the gateway and manages meters / reads summaries on the api).
 * Consumer lag: the generator samples GET /healthz of every process running an aggregator (`aggregator.stored`) while
 * it loads and converges, against the events it has had acknowledged (stream-load.ts --health-url, LagSampler).
 * Prints a markdown table on stdout, writes bench/results/<timestamp>.json and, with --chart, <timestamp>.svg; server
 * logs go to bench/results/<timestamp>-server.log (embedded) and <timestamp>-distributed[-<role>].log.
 *
 * Flags:
 *   --mode embedded|distributed|both            which server runs (default embedded); the null server runs in every mode
 *   --topology all|split                        distributed process layout (default all)
 *   --events N --duration S --connections N     passed to the generator (defaults 2,000,000 / 30 / 16)
 *   --batch N --customers N --client raw|http   passed to the generator (defaults 100 / 100 / raw)
 *   --timestamps                                passed to the generator (explicit event timestamps)
 *   --rate R                                    offered load for the meterd runs, events/s (default 0: closed loop);
 *                                               e.g. half the closed-loop figure for the p99 at half of max load. The
 *                                               null server always runs closed loop: it is the generator's ceiling
 *   --poll-mode adaptive|all --freshness-timeout S   passed to the generator
 *   --health-interval MS                        consumer lag sampling period (default 250)
 *   --meter-settle-ms MS                        pause between meter creation and load (default 2500 with split, else 0)
 *   --kafka-partitions N                        partitions of the fresh topic (default: the server's, 8)
 *   --keep-data                                 do not drop the run's topic / database / schema
 *   --null-events N --null-duration S           the null-server run (defaults max(events, 10M) / min(duration, 5))
 *   --chart                                     also write an SVG chart (throughput, latency, lag over time)
 *   --skip-null | --skip-server                 run only the null server / only the meterd server(s)
 *   --server-entry PATH                         server entry point (default <repo>/dist/main.js)
 *   --data-parent DIR                           where the temp DATA_DIR is created (default the OS temp dir)
 *   --results-dir DIR                           default <repo>/bench/results
 * Exit status: 0 when every target ran and verified, 1 otherwise.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Args } from './args';

// ------------------------------------------------------------------------------------------------ helpers

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if ((JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string }).name === 'meterd') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function httpStatus(port: number, p: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

function startNode(script: string, args: string[], env: NodeJS.ProcessEnv, logPath: string): ChildProcess {
  const fd = fs.openSync(logPath, 'a');
  const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  child.kill('SIGTERM');
  if (await waitExit(child, 10_000)) return;
  process.stderr.write(`bench: pid ${child.pid} did not stop within 10 s of SIGTERM; sending SIGKILL\n`);
  child.kill('SIGKILL');
  await waitExit(child, 5_000);
}

function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

async function waitHealthy(child: ChildProcess, port: number, logPath: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited(child)) {
      const t = tail(logPath);
      const last =
        t
          .split('\n')
          .filter((l) => l.trim())
          .pop() ?? '';
      throw new Error(
        `process exited (code ${child.exitCode}, signal ${child.signalCode}) before /healthz answered 200: ` +
          `${last.slice(0, 240)} (log ${logPath}); log tail:\n${t}`,
      );
    }
    if ((await httpStatus(port, '/healthz')) === 200) return;
    await sleep(100);
  }
  throw new Error(`/healthz did not answer 200 within ${timeoutMs / 1000} s; log tail:\n${tail(logPath)}`);
}

// ------------------------------------------------------------------------------------------------ CPU of a process tree

const CLK_TCK = 100; // USER_HZ on Linux

/** Samples the CPU time (user+system, all threads) of processes and their descendants from /proc, every 500 ms. */
class TreeCpu {
  private readonly samples: [number, number][] = [];
  private timer: NodeJS.Timeout | null = null;
  private readonly rootPids: number[];

  constructor(rootPids: number | number[]) {
    this.rootPids = Array.isArray(rootPids) ? rootPids : [rootPids];
  }

  start(): void {
    if (process.platform !== 'linux') return;
    this.sample();
    this.timer = setInterval(() => this.sample(), 500);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private sample(): void {
    const stats = new Map<number, { ppid: number; ticks: number }>();
    let entries: string[];
    try {
      entries = fs.readdirSync('/proc');
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.charCodeAt(0) < 48 || e.charCodeAt(0) > 57) continue;
      try {
        const s = fs.readFileSync(`/proc/${e}/stat`, 'latin1');
        const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
        stats.set(Number(e), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
      } catch {
        /* gone */
      }
    }
    const tree = new Set<number>(this.rootPids);
    let grew = true;
    while (grew) {
      grew = false;
      for (const [pid, st] of stats) {
        if (!tree.has(pid) && tree.has(st.ppid)) {
          tree.add(pid);
          grew = true;
        }
      }
    }
    let ticks = 0;
    for (const pid of tree) ticks += stats.get(pid)?.ticks ?? 0;
    if (this.rootPids.every((p) => stats.has(p))) this.samples.push([Date.now(), ticks]);
  }

  private at(t: number): number | null {
    const s = this.samples;
    if (s.length === 0) return null;
    if (t <= s[0]![0]) return s[0]![1];
    for (let i = 1; i < s.length; i++) {
      if (s[i]![0] >= t) {
        const [t0, v0] = s[i - 1]!;
        const [t1, v1] = s[i]!;
        return v0 + ((v1 - v0) * (t - t0)) / Math.max(1, t1 - t0);
      }
    }
    return s[s.length - 1]![1];
  }

  /** CPU use between two epoch-ms instants, in % of one core; null when unknown. */
  pctBetween(t0: number, t1: number): number | null {
    const a = this.at(t0);
    const b = this.at(t1);
    if (a === null || b === null || t1 <= t0) return null;
    return Math.round(((((b - a) / CLK_TCK) * 1000) / (t1 - t0)) * 1000) / 10;
  }
}

// ------------------------------------------------------------------------------------------------ generator

/** The generator's consumer lag report (stream-load.ts, LagSampler.report). */
interface LagReport {
  health_urls: string[];
  samples: number;
  sample_errors: number;
  first_sample_error?: string;
  max_events: number | null;
  max_seconds_behind: number | null;
  caught_up_after_last_ack_ms: number | null;
  final?: { acked: number; stored: number | null; invalid: number; duplicates: number; insert_retries: number };
  /** rows: [t_ms since load start, acked, stored, lag_events, seconds_behind] */
  series?: { columns: string[]; t0_epoch_ms: number; rows: number[][] };
}

// The generator's JSON result (see stream-load.ts); only the fields used here are typed.
interface GenResult {
  ok: boolean;
  error?: string;
  events_acked?: number;
  events_per_s?: number;
  requests?: number;
  load_seconds?: number;
  ack_latency_ms?: { p50: number | null; p99: number | null; p999?: number | null };
  errors?: Record<string, number>;
  client_cpu?: { pct_of_one_core: number };
  load_start_epoch_ms?: number;
  load_end_epoch_ms?: number;
  freshness?: { after_last_ack_ms: number | null; converged: boolean } | null;
  probe_freshness_ms?: { p50: number | null; max: number | null; count: number } | null;
  verification?: { ok: boolean; mismatch_count: number; checked_customers: number } | null;
  lag?: LagReport | null;
  aborted?: string | null;
  [k: string]: unknown;
}

function runGenerator(script: string, args: string[], timeoutMs: number): Promise<{ code: number | null; result: GenResult | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.add(child);
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
    });
    const timer = setTimeout(() => {
      process.stderr.write(`bench: generator exceeded ${timeoutMs / 1000} s; killing it\n`);
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      children.delete(child);
      const last = out.trim().split('\n').pop() ?? '';
      let result: GenResult | null = null;
      try {
        result = JSON.parse(last) as GenResult;
      } catch {
        result = null;
      }
      resolve({ code, result });
    });
  });
}

// ------------------------------------------------------------------------------------------------ distributed servers

type Mode = 'null' | 'embedded' | 'distributed';
type Topology = 'all' | 'split';
type Role = 'all' | 'gateway' | 'aggregator' | 'api';

/** Settings that make the server distributed (or point it at one deployment): never inherited by the embedded run. */
const DISTRIBUTED_ENV = /^(KAFKA_|CLICKHOUSE_|DATABASE_URL$|DATABASE_SCHEMA$|ROLE$)/;

function withoutDistributedEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(env)) if (!DISTRIBUTED_ENV.test(k)) out[k] = v;
  return out;
}

/** user:password@ removed, for the report and the log. */
function redactUrl(u: string | undefined): string | null {
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
async function distributedServers(root: string): Promise<{ env: Record<string, string>; source: string }> {
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

interface Deployment {
  topic: string;
  consumer_group: string;
  clickhouse_database: string;
  database_schema: string;
}

function deploymentNames(): Deployment {
  const d = new Date();
  const p = (n: number): string => String(n).padStart(2, '0');
  const ts =
    `${d.getUTCFullYear()}${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}` +
    `${p(d.getUTCSeconds())}_${randomBytes(2).toString('hex')}`;
  const topic = `bench-${ts.replace('_', '-')}`;
  return { topic, consumer_group: `${topic}.aggregator`, clickhouse_database: `bench_${ts}`, database_schema: `bench_${ts}` };
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
    }),
  ]);
}

/** Drops the run's ClickHouse database, PostgreSQL schema, Kafka consumer group and topic; best effort, each reported. */
async function dropDeployment(env: Record<string, string>, d: Deployment): Promise<Record<string, string>> {
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
    const { dropClickHouseDatabase } = await import('../shared/analytics/server-store');
    await dropClickHouseDatabase(env.CLICKHOUSE_URL!, d.clickhouse_database);
    return `dropped database ${d.clickhouse_database}`;
  });
  await attempt('postgres', async () => {
    const { dropPostgresSchema } = await import('../shared/state/postgres-store');
    await dropPostgresSchema(env.DATABASE_URL!, d.database_schema);
    return `dropped schema ${d.database_schema}`;
  });
  await attempt('kafka', async () => {
    const { deleteTopicAndGroup, kafkaOptionsFromEnv } = await import('../shared/log/kafka-log');
    return deleteTopicAndGroup(kafkaOptionsFromEnv({ ...process.env, ...env }), d.topic, d.consumer_group);
  });
  return out;
}

// ------------------------------------------------------------------------------------------------ a meterd run

interface ProcInfo {
  role: Role;
  pid: number | null;
  port: number;
  log: string;
  exit?: string;
}

interface Row {
  target: string;
  mode: Mode;
  topology?: Topology;
  ran: boolean;
  ok: boolean;
  error?: string;
  generator_exit_code?: number | null;
  server_cpu_pct_of_one_core?: number | null;
  processes?: ProcInfo[];
  deployment?: (Deployment & { cleanup?: Record<string, string> | 'kept' }) | null;
  result?: GenResult | null;
}

interface Ctx {
  root: string;
  stamp: string;
  resultsDir: string;
  dataParent: string;
  serverEntry: string;
  genScript: string;
  genArgs: string[];
  genTimeoutMs: number;
  healthIntervalMs: number;
}

function label(r: Pick<Row, 'mode' | 'topology' | 'target'>): string {
  return r.mode === 'null' ? r.target : r.mode === 'embedded' ? 'embedded' : `distributed (${r.topology ?? 'all'})`;
}

async function runMeterd(ctx: Ctx, row: Row, o: { baseEnv: NodeJS.ProcessEnv; roles: Role[]; meterSettleMs: number; healthTimeoutMs: number }): Promise<void> {
  const procs: { info: ProcInfo; child: ChildProcess }[] = [];
  let dataDir: string | null = null;
  try {
    if (!fs.existsSync(ctx.serverEntry)) throw new Error(`server entry ${ctx.serverEntry} not found (run \`npm run build\`)`);
    dataDir = fs.mkdtempSync(path.join(ctx.dataParent, 'meterd-bench-'));
    tempDirs.add(dataDir);
    const key = `sk_test_bench_${randomBytes(12).toString('hex')}`;
    const start = async (role: Role): Promise<{ info: ProcInfo; child: ChildProcess }> => {
      const port = await freePort();
      const suffix = row.mode === 'embedded' ? 'server' : `distributed${role === 'all' ? '' : `-${role}`}`;
      const logPath = path.join(ctx.resultsDir, `${ctx.stamp}-${suffix}.log`);
      // Each process its own DATA_DIR: in distributed mode it holds nothing shared.
      const dir = path.join(dataDir!, role);
      process.stderr.write(`bench: ${label(row)}: ${role} on 127.0.0.1:${port}, log ${logPath}\n`);
      const env: NodeJS.ProcessEnv = { ...o.baseEnv, PORT: String(port), HOST: '127.0.0.1', DATA_DIR: dir, API_KEYS: key };
      if (role !== 'all') env.ROLE = role;
      const child = startNode(ctx.serverEntry, [], env, logPath);
      const p = { info: { role, pid: child.pid ?? null, port, log: logPath }, child };
      procs.push(p);
      return p;
    };
    const t0 = Date.now();
    // The first process creates the topic, the tables and the schema; the others start once it is up.
    const first = await start(o.roles[0]!);
    await waitHealthy(first.child, first.info.port, first.info.log, o.healthTimeoutMs);
    const rest = [];
    for (const role of o.roles.slice(1)) rest.push(await start(role));
    await Promise.all(rest.map((p) => waitHealthy(p.child, p.info.port, p.info.log, o.healthTimeoutMs)));
    process.stderr.write(`bench: ${label(row)}: healthy after ${Date.now() - t0} ms\n`);
    row.processes = procs.map((p) => p.info);

    const by = (r: Role): number => (procs.find((p) => p.info.role === r) ?? procs.find((p) => p.info.role === 'all'))!.info.port;
    const url = (port: number): string => `http://127.0.0.1:${port}`;
    const aggregators = procs.filter((p) => p.info.role === 'all' || p.info.role === 'aggregator');
    const args = [
      '--url',
      url(by('gateway')),
      '--api-url',
      url(by('api')),
      '--key',
      key,
      ...aggregators.flatMap((p) => ['--health-url', url(p.info.port)]),
      '--health-interval',
      String(ctx.healthIntervalMs),
      '--meter-settle-ms',
      String(o.meterSettleMs),
      ...ctx.genArgs,
    ];
    const cpu = new TreeCpu(procs.map((p) => p.child.pid!));
    cpu.start();
    const g = await runGenerator(ctx.genScript, args, ctx.genTimeoutMs + o.meterSettleMs);
    cpu.stop();
    row.ran = true;
    row.result = g.result;
    row.generator_exit_code = g.code;
    row.ok = g.code === 0 && !!g.result?.ok;
    if (g.result?.load_start_epoch_ms && g.result.load_end_epoch_ms) {
      row.server_cpu_pct_of_one_core = cpu.pctBetween(g.result.load_start_epoch_ms, g.result.load_end_epoch_ms);
    }
    if (!g.result) row.error = `generator exited ${g.code} without a result`;
    const dead = procs.filter((p) => exited(p.child));
    if (dead.length) {
      row.ok = false;
      row.error = dead
        .map((p) => `${p.info.role} exited during the run (code ${p.child.exitCode}, signal ${p.child.signalCode}); see ${p.info.log}`)
        .join('; ');
    }
  } catch (err) {
    row.error = (err as Error).message;
    process.stderr.write(`bench: ${label(row)} run failed: ${row.error}\n`);
  } finally {
    row.processes = procs.map((p) => p.info);
    await Promise.all(
      procs.map(async (p) => {
        await stopChild(p.child);
        p.info.exit = p.child.signalCode ? `signal ${p.child.signalCode}` : `code ${p.child.exitCode}`;
      }),
    );
    if (dataDir) {
      fs.rmSync(dataDir, { recursive: true, force: true });
      tempDirs.delete(dataDir);
    }
  }
}

// ------------------------------------------------------------------------------------------------ report

function fmtInt(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US');
}
function fmtMs(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : Math.round(n).toString();
}
function fmtCompact(n: number): string {
  const a = Math.abs(n);
  if (a >= 1e6) return `${(n / 1e6).toFixed(a >= 1e7 ? 0 : 1)}M`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(a >= 1e4 ? 0 : 1)}k`;
  return String(Math.round(n));
}

function lagCell(r: Row): string {
  if (r.mode === 'null') return 'n/a';
  const L = r.result?.lag;
  if (!L) return '–';
  if (L.max_events === null) return `no sample${L.first_sample_error ? ` (${L.first_sample_error.split('\n')[0]})` : ''}`;
  return `${fmtInt(L.max_events)} ev / ${(L.max_seconds_behind ?? 0).toFixed(2)} s`;
}

function markdownTable(rows: Row[]): string {
  const nullEps = rows.find((r) => r.mode === 'null')?.result?.events_per_s;
  const head = [
    'target',
    'mode',
    'events acked',
    'accepted events/s',
    'vs null server',
    'p50 ack (ms)',
    'p99 ack (ms)',
    'p999 ack (ms)',
    'freshness after last ack',
    'max consumer lag',
    'verification',
    'client CPU',
    'server CPU',
    'errors',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const g = r.result;
    const isNull = r.mode === 'null';
    if (!r.ran || !g || g.events_per_s === undefined) {
      const cells = head.map(() => '–');
      cells[0] = r.target;
      cells[1] = label(r);
      cells[10] = `FAILED: ${(r.error ?? g?.error ?? 'no result').split('\n')[0]}`;
      lines.push(`| ${cells.join(' | ')} |`);
      continue;
    }
    const ratio = nullEps ? `${((g.events_per_s / nullEps) * 100).toFixed(1)}%` : '–';
    const fresh = isNull ? 'n/a' : g.freshness?.converged ? `${fmtMs(g.freshness.after_last_ack_ms)} ms` : `not converged`;
    const ver = isNull
      ? 'n/a (null)'
      : g.verification
        ? g.verification.ok
          ? `OK (${g.verification.checked_customers} customers)`
          : `MISMATCH (${g.verification.mismatch_count})`
        : `not run${g.aborted ? `: ${g.aborted}` : ''}`;
    const errs =
      g.errors && Object.keys(g.errors).length
        ? Object.entries(g.errors)
            .map(([k, v]) => `${k}×${v}`)
            .join(' ')
        : '0';
    lines.push(
      `| ${r.target} | ${label(r)} | ${fmtInt(g.events_acked)} | ${fmtInt(g.events_per_s)} | ${ratio} | ` +
        `${fmtMs(g.ack_latency_ms?.p50)} | ${fmtMs(g.ack_latency_ms?.p99)} | ${fmtMs(g.ack_latency_ms?.p999)} | ${fresh} | ${lagCell(r)} | ${ver} | ` +
        `${g.client_cpu ? `${g.client_cpu.pct_of_one_core}%` : '–'} | ` +
        `${r.server_cpu_pct_of_one_core != null ? `${r.server_cpu_pct_of_one_core}%` : '–'} | ${errs} |`,
    );
  }
  return lines.join('\n');
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** About `n` round tick values covering [lo, hi]. */
function niceTicks(lo: number, hi: number, n: number): number[] {
  const span = Math.max(hi - lo, 1e-9);
  const raw = span / Math.max(1, n);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}

const COLORS = ['#4c78a8', '#f58518', '#54a24b', '#e45756'];

/**
 * One line chart per row with a lag series: events acknowledged (generator) and events stored (sum of the aggregators'
 * `stored`) against seconds since the load started; a dashed line marks the last acknowledgement.
 */
function lagPanel(rows: Row[], W: number, y0: number): { parts: string[]; height: number } {
  const parts: string[] = [];
  let y = y0;
  const withLag = rows.filter((r) => (r.result?.lag?.series?.rows.length ?? 0) > 1);
  if (withLag.length === 0) return { parts, height: 0 };
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Consumer lag: events acknowledged vs stored by the aggregator(s), over time</text>`);
  y += 10;
  const left = 90;
  const right = W - 30;
  const ph = 150;
  for (const r of withLag) {
    const L = r.result!.lag!;
    const data = L.series!.rows;
    const tMin = Math.min(0, data[0]![0]! / 1000);
    const tMax = Math.max(...data.map((d) => d[0]! / 1000), 1);
    const vMax = Math.max(1, ...data.map((d) => Math.max(d[1]!, d[2]!)));
    const top = y + 30;
    const bottom = top + ph;
    const X = (t: number): number => left + ((t - tMin) / (tMax - tMin)) * (right - left);
    const Y = (v: number): number => bottom - (v / vMax) * ph;
    const title =
      `${label(r)}: max lag ${fmtInt(L.max_events)} events, ~${(L.max_seconds_behind ?? 0).toFixed(2)} s behind; ` +
      (L.caught_up_after_last_ack_ms === null ? 'never caught up' : `caught up ${fmtInt(L.caught_up_after_last_ack_ms)} ms after the last ack`);
    parts.push(`<text x="${left}" y="${y + 18}" font-size="12" font-weight="bold">${esc(title)}</text>`);
    // Grid and axes.
    for (const v of niceTicks(0, vMax, 4)) {
      parts.push(`<line x1="${left}" y1="${Y(v).toFixed(1)}" x2="${right}" y2="${Y(v).toFixed(1)}" stroke="#e5e5e5"/>`);
      parts.push(`<text x="${left - 6}" y="${(Y(v) + 4).toFixed(1)}" font-size="10" text-anchor="end">${fmtCompact(v)}</text>`);
    }
    for (const t of niceTicks(tMin, tMax, 8)) {
      parts.push(`<line x1="${X(t).toFixed(1)}" y1="${bottom}" x2="${X(t).toFixed(1)}" y2="${bottom + 4}" stroke="#333"/>`);
      parts.push(`<text x="${X(t).toFixed(1)}" y="${bottom + 15}" font-size="10" text-anchor="middle">${t}s</text>`);
    }
    parts.push(`<line x1="${left}" y1="${bottom}" x2="${right}" y2="${bottom}" stroke="#333"/>`);
    parts.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${bottom}" stroke="#333"/>`);
    const loadEnd = r.result!.load_seconds;
    if (loadEnd !== undefined && loadEnd <= tMax) {
      parts.push(`<line x1="${X(loadEnd).toFixed(1)}" y1="${top}" x2="${X(loadEnd).toFixed(1)}" y2="${bottom}" stroke="#888" stroke-dasharray="4,3"/>`);
      parts.push(`<text x="${(X(loadEnd) + 4).toFixed(1)}" y="${top + 10}" font-size="10" fill="#666">last ack</text>`);
    }
    const line = (col: number, color: string, dash = ''): void => {
      const pts = data.map((d) => `${X(d[0]! / 1000).toFixed(1)},${Y(d[col]!).toFixed(1)}`).join(' ');
      parts.push(`<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="1.8"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`);
    };
    line(1, COLORS[0]!);
    line(2, COLORS[1]!, '6,3');
    // Legend.
    const ly = bottom + 30;
    parts.push(`<line x1="${left}" y1="${ly - 4}" x2="${left + 24}" y2="${ly - 4}" stroke="${COLORS[0]}" stroke-width="2"/>`);
    parts.push(`<text x="${left + 30}" y="${ly}" font-size="11">acknowledged</text>`);
    parts.push(`<line x1="${left + 130}" y1="${ly - 4}" x2="${left + 154}" y2="${ly - 4}" stroke="${COLORS[1]}" stroke-width="2" stroke-dasharray="6,3"/>`);
    parts.push(`<text x="${left + 160}" y="${ly}" font-size="11">stored (aggregator /healthz)</text>`);
    parts.push(`<text x="${right}" y="${ly}" font-size="10" text-anchor="end" fill="#666">seconds since the load started</text>`);
    y = ly + 22;
  }
  return { parts, height: y - y0 };
}

/** Hand-written SVG: accepted events/s and p50/p99 ack latency per target, then the consumer lag per meterd run. */
function svgChart(rows: Row[], title: string): string {
  const data = rows
    .filter((r) => r.result?.events_per_s !== undefined)
    .map((r) => ({
      name: label(r),
      eps: r.result!.events_per_s!,
      p50: r.result!.ack_latency_ms?.p50 ?? 0,
      p99: r.result!.ack_latency_ms?.p99 ?? 0,
      note:
        r.mode === 'null'
          ? 'baseline'
          : `freshness ${r.result!.freshness?.converged ? `${fmtMs(r.result!.freshness.after_last_ack_ms)} ms` : 'n/a'}, ` +
            `max consumer lag ${lagCell(r)}, verification ${r.result!.verification?.ok ? 'OK' : 'FAILED'}`,
    }));
  const W = 860;
  const labelW = 150;
  const barH = 26;
  const gap = 14;
  const panelW = W - labelW - 150;
  const colors = COLORS;
  let y = 50;
  const parts: string[] = [];
  parts.push(`<text x="20" y="28" font-size="15" font-weight="bold">${esc(title)}</text>`);

  // Panel 1: events/s.
  const maxEps = Math.max(1, ...data.map((d) => d.eps));
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Accepted events/s (higher is better)</text>`);
  y += 14;
  data.forEach((d, i) => {
    const w = Math.max(1, (d.eps / maxEps) * panelW);
    parts.push(`<text x="${labelW - 8}" y="${y + barH * 0.68}" font-size="13" text-anchor="end">${esc(d.name)}</text>`);
    parts.push(`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colors[i % colors.length]}"/>`);
    parts.push(`<text x="${labelW + w + 6}" y="${y + barH * 0.68}" font-size="12">${fmtInt(d.eps)}/s</text>`);
    parts.push(`<text x="${labelW}" y="${y + barH + 12}" font-size="10" fill="#555">${esc(d.note)}</text>`);
    y += barH + gap + 10;
  });

  // Panel 2: latency.
  y += 16;
  const maxLat = Math.max(0.001, ...data.map((d) => Math.max(d.p50, d.p99)));
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Ack latency per request, ms (lower is better)</text>`);
  y += 14;
  const lh = 16;
  data.forEach((d, i) => {
    parts.push(`<text x="${labelW - 8}" y="${y + lh + 4}" font-size="13" text-anchor="end">${esc(d.name)}</text>`);
    const w50 = Math.max(1, (d.p50 / maxLat) * panelW);
    const w99 = Math.max(1, (d.p99 / maxLat) * panelW);
    parts.push(`<rect x="${labelW}" y="${y}" width="${w50.toFixed(1)}" height="${lh}" fill="${colors[i % colors.length]}"/>`);
    parts.push(`<text x="${labelW + w50 + 6}" y="${y + lh * 0.78}" font-size="11">p50 ${fmtMs(d.p50)}</text>`);
    parts.push(`<rect x="${labelW}" y="${y + lh + 2}" width="${w99.toFixed(1)}" height="${lh}" fill="${colors[i % colors.length]}" fill-opacity="0.55"/>`);
    parts.push(`<text x="${labelW + w99 + 6}" y="${y + lh * 1.78 + 2}" font-size="11">p99 ${fmtMs(d.p99)}</text>`);
    y += 2 * lh + gap + 6;
  });

  // Panel 3: consumer lag over time.
  y += 16;
  const lag = lagPanel(rows, W, y);
  parts.push(...lag.parts);
  y += lag.height;
  const H = y + 10;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="Helvetica, Arial, sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`
  );
}

// ------------------------------------------------------------------------------------------------ main

async function main(): Promise<number> {
  const a = new Args(process.argv.slice(2), ['chart', 'skip-null', 'skip-server', 'timestamps', 'keep-data']);
  const root = findRepoRoot(__dirname);
  const mode = a.str('mode', 'embedded');
  if (!['embedded', 'distributed', 'both'].includes(mode)) throw new Error('--mode must be embedded, distributed or both');
  const topology = a.str('topology', 'all') as Topology;
  if (topology !== 'all' && topology !== 'split') throw new Error('--topology must be all or split');
  const events = a.num('events', 2_000_000);
  const duration = a.num('duration', 30);
  const connections = a.num('connections', 16);
  const batch = a.num('batch', 100);
  const customers = a.num('customers', 100);
  const client = a.str('client', 'raw');
  const healthInterval = a.num('health-interval', 250);
  const freshnessTimeout = a.num('freshness-timeout', 60);
  const kafkaPartitions = a.str('kafka-partitions');
  const serverEntry = path.resolve(a.str('server-entry', path.join(root, 'dist', 'main.js')));
  const resultsDir = path.resolve(a.str('results-dir', path.join(root, 'bench', 'results')));
  const dataParent = path.resolve(a.str('data-parent', os.tmpdir()));
  const nullScript = path.join(__dirname, 'null-server.js');
  const genScript = path.join(__dirname, 'stream-load.js');
  fs.mkdirSync(resultsDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');

  const rate = a.num('rate', 0);
  if (!(rate >= 0)) throw new Error('--rate must be >= 0 (events/s)');
  const genArgs = (ev: number, dur: number, offered = 0): string[] => [
    '--events',
    String(ev),
    '--duration',
    String(dur),
    '--connections',
    String(connections),
    '--batch',
    String(batch),
    '--customers',
    String(customers),
    '--client',
    client,
    ...(a.bool('timestamps') ? ['--timestamps'] : []),
    ...(offered > 0 ? ['--rate', String(offered)] : []),
    ...(a.str('poll-mode') ? ['--poll-mode', a.str('poll-mode')!] : []),
    ...(a.str('freshness-timeout') ? ['--freshness-timeout', a.str('freshness-timeout')!] : []),
  ];
  // The null server takes millions of events per second: give its run enough events and time to be more than JIT
  // warm-up, but keep it short.
  const nullEvents = a.num('null-events', Math.max(events, 10_000_000));
  const nullDuration = a.num('null-duration', Math.min(duration, 5));
  const genTimeout = (duration + freshnessTimeout + 30 + 60) * 1000;
  const rows: Row[] = [];

  // (a) null servers: uWS answering without work is the generator's ceiling; the same routes on meterd's own HTTP
  // layer show what that layer costs before any real work.
  const nullTargets: [string, string, string][] = [
    ['null server', nullScript, 'null-server'],
    ['null server, meterd HTTP layer', path.join(__dirname, 'http-null-server.js'), 'http-null-server'],
  ];
  for (const [target, script, logName] of a.bool('skip-null') ? [] : nullTargets) {
    const row: Row = { target, mode: 'null', ran: false, ok: false };
    rows.push(row);
    const logPath = path.join(resultsDir, `${stamp}-${logName}.log`);
    let child: ChildProcess | null = null;
    try {
      const port = await freePort();
      process.stderr.write(`\nbench: ${target} on 127.0.0.1:${port}\n`);
      child = startNode(script, [], { ...process.env, PORT: String(port), HOST: '127.0.0.1', NULL_SERVER_VALIDATE: '0' }, logPath);
      await waitHealthy(child, port, logPath, 15_000);
      const cpu = new TreeCpu(child.pid!);
      cpu.start();
      const g = await runGenerator(genScript, ['--url', `http://127.0.0.1:${port}`, '--null', ...genArgs(nullEvents, nullDuration)], genTimeout);
      cpu.stop();
      row.ran = true;
      row.result = g.result;
      row.generator_exit_code = g.code;
      row.ok = g.code === 0 && !!g.result?.ok;
      if (g.result?.load_start_epoch_ms && g.result.load_end_epoch_ms) {
        row.server_cpu_pct_of_one_core = cpu.pctBetween(g.result.load_start_epoch_ms, g.result.load_end_epoch_ms);
      }
      if (!g.result) row.error = `generator exited ${g.code} without a result`;
    } catch (err) {
      row.error = (err as Error).message;
      process.stderr.write(`bench: ${target} run failed: ${row.error}\n`);
    } finally {
      if (child) await stopChild(child);
    }
  }

  const ctx: Ctx = {
    root,
    stamp,
    resultsDir,
    dataParent,
    serverEntry,
    genScript,
    genArgs: genArgs(events, duration, rate),
    genTimeoutMs: genTimeout,
    healthIntervalMs: healthInterval,
  };

  // (b) the embedded server: one process, its own files; no distributed setting is inherited.
  if (!a.bool('skip-server') && (mode === 'embedded' || mode === 'both')) {
    process.stderr.write(`\n`);
    const row: Row = { target: 'meterd ×1 (all roles)', mode: 'embedded', ran: false, ok: false };
    rows.push(row);
    await runMeterd(ctx, row, {
      baseEnv: withoutDistributedEnv(process.env),
      roles: ['all'],
      meterSettleMs: a.num('meter-settle-ms', 0),
      healthTimeoutMs: 60_000,
    });
  }

  // (c) the distributed server on Kafka + ClickHouse + PostgreSQL, in a deployment of its own.
  let servers: { env: Record<string, string>; source: string } | null = null;
  if (!a.bool('skip-server') && (mode === 'distributed' || mode === 'both')) {
    process.stderr.write(`\n`);
    const split = topology === 'split';
    const row: Row = {
      target: split ? 'meterd ×3 (gateway, aggregator, api)' : 'meterd ×1 (all roles)',
      mode: 'distributed',
      topology,
      ran: false,
      ok: false,
      deployment: null,
    };
    rows.push(row);
    try {
      servers = await distributedServers(root);
      const d = deploymentNames();
      row.deployment = d;
      process.stderr.write(
        `bench: distributed (${topology}): Kafka ${servers.env.KAFKA_BROKERS} topic ${d.topic}, ClickHouse ` +
          `${redactUrl(servers.env.CLICKHOUSE_URL)} database ${d.clickhouse_database}, PostgreSQL ` +
          `${redactUrl(servers.env.DATABASE_URL)} schema ${d.database_schema} (servers from ${servers.source})\n`,
      );
      const baseEnv: NodeJS.ProcessEnv = {
        ...withoutDistributedEnv(process.env),
        // Kafka client settings (TLS, SASL, timeouts) of the operator's environment still apply.
        ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('KAFKA_'))),
        ...servers.env,
        KAFKA_TOPIC: d.topic,
        KAFKA_CONSUMER_GROUP: d.consumer_group,
        CLICKHOUSE_DATABASE: d.clickhouse_database,
        DATABASE_SCHEMA: d.database_schema,
        ...(kafkaPartitions ? { KAFKA_PARTITIONS: kafkaPartitions } : {}),
      };
      try {
        await runMeterd(ctx, row, {
          baseEnv,
          roles: split ? ['api', 'aggregator', 'gateway'] : ['all'],
          // A split aggregator learns a new meter from the state store (polled every second): events it reads
          // before that are invalid (no_meter), so the generator waits before the load.
          meterSettleMs: a.num('meter-settle-ms', split ? 2500 : 0),
          healthTimeoutMs: 120_000,
        });
      } finally {
        if (a.bool('keep-data')) {
          row.deployment = { ...d, cleanup: 'kept' };
        } else {
          process.stderr.write(`bench: dropping ${d.topic} / ${d.clickhouse_database} / ${d.database_schema}\n`);
          row.deployment = { ...d, cleanup: await dropDeployment(servers.env, d) };
        }
      }
    } catch (err) {
      row.error ??= (err as Error).message;
      process.stderr.write(`bench: distributed run failed: ${(err as Error).message}\n`);
    }
  }

  let table = markdownTable(rows);
  const notes = rows.filter((r) => r.error).map((r) => `- ${label(r)}: ${r.error!.split('\n')[0]}`);
  if (notes.length) table += `\n\n${notes.join('\n')}`;
  const cpus = os.cpus();
  const report = {
    timestamp: new Date().toISOString(),
    machine: { cpus: cpus.length, cpu_model: cpus[0]?.model ?? null, node: process.version, platform: `${os.platform()} ${os.release()}` },
    options: {
      mode,
      topology,
      events,
      duration_s: duration,
      null_events: nullEvents,
      null_duration_s: nullDuration,
      connections,
      batch,
      customers,
      client,
      timestamps: a.bool('timestamps'),
      health_interval_ms: healthInterval,
    },
    distributed_servers: servers
      ? {
          source: servers.source,
          kafka_brokers: servers.env.KAFKA_BROKERS,
          clickhouse_url: redactUrl(servers.env.CLICKHOUSE_URL),
          database_url: redactUrl(servers.env.DATABASE_URL),
        }
      : null,
    rows,
    table,
  };
  const jsonPath = path.join(resultsDir, `${stamp}.json`);
  fs.writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\n${table}\n\n`);
  process.stderr.write(`bench: results written to ${jsonPath}\n`);
  if (a.bool('chart')) {
    const svgPath = path.join(resultsDir, `${stamp}.svg`);
    const title =
      `meterd stream ingest (${mode}${mode !== 'embedded' ? `, ${topology}` : ''}): ≤${fmtInt(events)} events, ≤${duration} s, ` +
      `${connections} connections, batch ${batch}${rate > 0 ? `, offered ${fmtInt(rate)} events/s` : ''}, ${cpus.length} cores`;
    fs.writeFileSync(svgPath, svgChart(rows, title));
    process.stderr.write(`bench: chart written to ${svgPath}\n`);
  }
  return rows.length > 0 && rows.every((r) => r.ok) ? 0 : 1;
}

function cleanupAndExit(code: number): void {
  for (const c of children) {
    if (!exited(c)) c.kill('SIGKILL');
  }
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  process.exit(code);
}
process.on('SIGINT', () => cleanupAndExit(130));
process.on('SIGTERM', () => cleanupAndExit(143));

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    cleanupAndExit(1);
  },
);
