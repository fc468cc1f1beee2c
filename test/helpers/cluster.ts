/**
 * Distributed-mode test clusters: several meterd processes (ROLE=gateway|aggregator|api) started on the SAME data dir,
 * which serverEnv() maps to one Kafka topic, one ClickHouse database and one PostgreSQL schema, i.e. one deployment.
 * Also: stopping and restarting the shared servers (deploy/down.sh, deploy/up.sh) for fault tests, reading the event
 * summaries and waiting for them to equal a load client's model.
 */
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { startServer, tempDir, currentRange, ROOT, type TestServer } from './server';
import { EVENT_NAME, type Load, LoadClient, sleep, type Target } from './load';

export type Role = 'gateway' | 'aggregator' | 'api';

interface Member {
  name: string;
  role: Role;
  server: TestServer;
  /** Stopped or killed by the test (an exit is then expected). */
  meant: boolean;
}

export class Cluster {
  readonly dataDir: string;
  readonly key: string;
  readonly members = new Map<string, Member>();
  /** Processes that exited although the test did not stop them. */
  readonly exits: string[] = [];

  constructor(
    private readonly t: Test,
    prefix: string,
    readonly env: Record<string, string>,
  ) {
    this.dataDir = tempDir(`meterd-${prefix}-`);
    this.key = 'sk_test_fault' + Math.random().toString(36).slice(2, 12);
  }

  async start(name: string, role: Role, env: Record<string, string> = {}): Promise<TestServer> {
    if (this.members.has(name)) throw new Error(`${name} is already a member`);
    const server = await startServer({ dataDir: this.dataDir, key: this.key, env: { ...this.env, ROLE: role, ...env } });
    const m: Member = { name, role, server, meant: false };
    this.members.set(name, m);
    server.proc.once('exit', (code, signal) => {
      if (!m.meant) this.exits.push(`${name} (${role}) exited on its own: code ${code}, signal ${signal}`);
    });
    return server;
  }

  server(name: string): TestServer {
    const m = this.members.get(name);
    if (!m) throw new Error(`no member ${name}`);
    return m.server;
  }

  target(name: string): Target {
    return { name, port: this.server(name).port };
  }

  names(role: Role): string[] {
    return [...this.members.values()].filter((m) => m.role === role).map((m) => m.name);
  }

  alive(name: string): boolean {
    const p = this.server(name).proc;
    return p.exitCode === null && p.signalCode === null;
  }

  /** SIGKILL. */
  async kill(name: string): Promise<void> {
    const m = this.members.get(name)!;
    m.meant = true;
    await m.server.kill();
  }

  /** SIGTERM (SIGKILL after 15 s) every member still running. */
  async stopAll(): Promise<void> {
    await Promise.all(
      [...this.members.values()].map(async (m) => {
        m.meant = true;
        await m.server.stop();
      }),
    );
  }

  async killAll(): Promise<void> {
    await Promise.all(
      [...this.members.values()].map(async (m) => {
        m.meant = true;
        await m.server.kill();
      }),
    );
  }

  /**
   * The end of every member's stderr: its own JSON log lines and the first line of anything else (the ClickHouse
   * client prints multi-line errors), consecutive repeats of one message folded.
   */
  dumpLogs(maxLines = 40): void {
    for (const m of this.members.values()) {
      const lines = m.server.stderr
        .join('')
        .split('\n')
        .filter((l) => l.startsWith('{') || /^\[\d{4}-/.test(l) || /^[A-Za-z].*(Error|error)/.test(l));
      const folded: string[] = [];
      let prevMsg = '';
      let repeats = 0;
      for (const l of lines) {
        const msg = /"msg":"([^"]*)"/.exec(l)?.[1] ?? l.replace(/^\[[^\]]*\]/, '');
        if (msg === prevMsg) {
          repeats++;
          folded[folded.length - 1] = `${l}   (x${repeats + 1})`;
          continue;
        }
        prevMsg = msg;
        repeats = 0;
        folded.push(l);
      }
      if (folded.length) this.t.comment(`${m.name} (${m.role}) stderr, last ${maxLines} lines (folded):\n${folded.slice(-maxLines).join('\n')}`);
    }
  }

  /** Lines of a member's stderr matching `re` (JSON log lines). */
  grepLogs(name: string, re: RegExp): string[] {
    return this.server(name)
      .stderr.join('')
      .split('\n')
      .filter((l) => re.test(l));
  }

  async health(name: string): Promise<any> {
    const res = await this.server(name).request('GET', '/healthz', { key: null });
    if (res.status !== 200) throw new Error(`${name} /healthz: ${res.status} ${res.text}`);
    return res.body;
  }

  /** Partitions an aggregator has recovered and is processing (its health's `aggregator.partitions`). */
  async owned(name: string): Promise<number[]> {
    const h = await this.health(name);
    return Object.keys(h?.aggregator?.partitions ?? {})
      .map(Number)
      .sort((a, b) => a - b);
  }

  /**
   * Waits until the given aggregators own disjoint, non-empty sets of partitions that cover 0..partitions-1.
   * Returns the ownership, or null on timeout (with the last one seen in `last`).
   */
  async waitForSplit(aggregators: string[], partitions: number, timeoutMs: number): Promise<{ ok: boolean; owned: Record<string, number[]> }> {
    const deadline = Date.now() + timeoutMs;
    let owned: Record<string, number[]> = {};
    for (;;) {
      owned = {};
      for (const a of aggregators) owned[a] = await this.owned(a).catch(() => []);
      const all = Object.values(owned).flat();
      const distinct = new Set(all);
      const ok =
        Object.values(owned).every((ps) => ps.length > 0) &&
        distinct.size === all.length &&
        distinct.size === partitions &&
        [...distinct].every((p) => p >= 0 && p < partitions);
      if (ok) return { ok, owned };
      if (Date.now() >= deadline) return { ok: false, owned };
      await sleep(200);
    }
  }

  /** Removes the data dir (after a passing test; a failing one keeps it for inspection). */
  cleanup(): void {
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Meters, sessions, summaries
// ---------------------------------------------------------------------------------------------------------------------

export async function createMeter(api: TestServer, eventName = EVENT_NAME): Promise<string> {
  const meter = await api.stripe().billing.meters.create({
    display_name: 'Fault test API calls',
    event_name: eventName,
    default_aggregation: { formula: 'sum' },
  });
  return meter.id;
}

export async function createSession(server: TestServer, key: string): Promise<string> {
  const res = await server.request('POST', '/v2/billing/meter_event_session', { key, body: '{}', headers: { 'content-type': 'application/json' } });
  if (res.status !== 200 || typeof res.body?.authentication_token !== 'string') {
    throw new Error(`meter event session: ${res.status} ${res.text}`);
  }
  return res.body.authentication_token as string;
}

/**
 * Waits until `gateway` knows the meter: a cancellation of an identifier that is never sent is accepted (200) exactly
 * when the meter exists there (400 no_meter before), and it counts nothing.
 */
export async function waitForMeter(gateway: TestServer, key: string, timeoutMs = 10_000, eventName = EVENT_NAME): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const body = JSON.stringify({ event_name: eventName, type: 'cancel', cancel: { identifier: `probe-never-sent-${Math.random().toString(36).slice(2)}` } });
    const res = await gateway.request('POST', '/v2/billing/meter_event_adjustments', { key, body, headers: { 'content-type': 'application/json' } });
    if (res.status === 200) return;
    last = `${res.status} ${res.text.slice(0, 200)}`;
    await sleep(100);
  }
  throw new Error(`the meter is not visible on a gateway after ${timeoutMs} ms: ${last}`);
}

export async function summaries(
  api: TestServer,
  key: string,
  meterId: string,
  customers: string[],
  range: { start: number; end: number },
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  await Promise.all(
    customers.map(async (c) => {
      const q = new URLSearchParams({ customer: c, start_time: String(range.start), end_time: String(range.end) });
      const res = await api.request('GET', `/v1/billing/meters/${meterId}/event_summaries?${q}`, { key });
      if (res.status !== 200) throw new Error(`event_summaries ${c}: ${res.status} ${res.text}`);
      out.set(c, Number(res.body.data[0]?.aggregated_value ?? NaN));
    }),
  );
  return out;
}

export function diff(expected: Map<string, number>, got: Map<string, number>): string[] {
  const out: string[] = [];
  for (const [c, e] of expected) {
    const g = got.get(c);
    if (g !== e) out.push(`${c}: expected ${e}, got ${g} (${g === undefined ? '?' : g - e > 0 ? '+' : ''}${g === undefined ? '' : g - e})`);
  }
  return out;
}

/**
 * Polls the summaries until they equal the client's model; gives up at `deadlineMs`, or once they have not moved for
 * `stallMs`. Then (when they matched) checks again `stableMs` later: nothing may be counted late.
 */
export async function converge(
  api: TestServer,
  client: LoadClient,
  meterId: string,
  range: { start: number; end: number },
  o: { deadlineMs?: number; stallMs?: number; stableMs?: number; stop?: () => boolean } = {},
): Promise<{ matched: boolean; ms: number; got: Map<string, number>; stable: Map<string, number> | null; expected: Map<string, number>; history: string[] }> {
  const deadlineMs = o.deadlineMs ?? 90_000;
  const stallMs = o.stallMs ?? 30_000;
  const expected = client.expected();
  const started = Date.now();
  let lastChange = Date.now();
  let previous = '';
  let got = new Map<string, number>();
  let matched = false;
  /** When the grand total read back changed, and to what. */
  const history: string[] = [];
  const expectedTotal = [...expected.values()].reduce((a, b) => a + b, 0);
  while (Date.now() - started < deadlineMs && Date.now() - lastChange < stallMs && !(o.stop?.() ?? false)) {
    try {
      got = await summaries(api, client.key, meterId, client.customers, range);
    } catch {
      await sleep(250);
      continue;
    }
    if (diff(expected, got).length === 0) {
      matched = true;
      break;
    }
    const now = JSON.stringify([...got].sort(([a], [b]) => (a < b ? -1 : 1))); // summaries() fills the map in completion order
    if (now !== previous) {
      previous = now;
      lastChange = Date.now();
      const total = [...got.values()].reduce((a, b) => a + b, 0);
      history.push(`+${Date.now() - started} ms: ${total} (${total - expectedTotal >= 0 ? '+' : ''}${total - expectedTotal})`);
    }
    await sleep(250);
  }
  const ms = Date.now() - started;
  let stable: Map<string, number> | null = null;
  if (matched) {
    await sleep(o.stableMs ?? 1500);
    stable = await summaries(api, client.key, meterId, client.customers, range);
  }
  return { matched, ms, got, stable, expected, history };
}

// ---------------------------------------------------------------------------------------------------------------------
// The shared servers
// ---------------------------------------------------------------------------------------------------------------------

export type DeployService = 'kafka' | 'clickhouse' | 'postgres';

/** Runs deploy/up.sh or deploy/down.sh for one server; resolves with its duration and progress output. */
export function deployCtl(action: 'up' | 'down', service: DeployService): Promise<{ ms: number; output: string }> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    execFile(
      'bash',
      [path.join(ROOT, 'deploy', `${action}.sh`)],
      { cwd: ROOT, env: { ...process.env, DEPLOY_SERVICES: service }, timeout: 240_000, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const output = `${stderr}${stdout}`.trim();
        if (err) reject(new Error(`deploy/${action}.sh (${service}) failed: ${err.message}\n${output.slice(-3000)}`));
        else resolve({ ms: Date.now() - started, output });
      },
    );
  });
}

function ppidOf(pid: number): number | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) state ppid ...: comm may contain spaces and parentheses, so split after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(rest[1]);
  } catch {
    return null;
  }
}

/** tap processes other than this test run (its ancestors and its descendants are ours). */
export function otherTapProcesses(): string[] {
  let out = '';
  try {
    out = execFileSync('pgrep', ['-af', 'tap'], { encoding: 'utf8' });
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
  const ours = new Set<number>();
  for (let p: number | null = process.pid; p && p > 1 && !ours.has(p); p = ppidOf(p)) ours.add(p);
  // Descendants: our servers and whatever they spawn.
  const parents = new Map<number, number>();
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const pp = ppidOf(Number(d));
    if (pp !== null) parents.set(Number(d), pp);
  }
  const isOurs = (pid: number): boolean => {
    for (let p: number | undefined = pid, n = 0; p && n < 64; p = parents.get(p), n++) if (p === process.pid) return true;
    return false;
  };
  return out
    .split('\n')
    .filter(Boolean)
    .filter((line) => {
      const pid = Number(line.split(' ')[0]);
      return !ours.has(pid) && !isOurs(pid);
    });
}

/**
 * Fault tests stop servers that other test runs may be using: wait until no other tap process is running. Throws after
 * `maxWaitMs` rather than pulling a server from under someone else's tests.
 */
export async function waitForExclusiveServers(t: Test, maxWaitMs = 240_000): Promise<void> {
  const started = Date.now();
  let said = false;
  for (;;) {
    const others = otherTapProcesses();
    if (others.length === 0) {
      if (said) t.comment(`no other tap run any more after ${Date.now() - started} ms`);
      return;
    }
    if (!said) {
      t.comment(`waiting for other tap runs to end before stopping a shared server:\n${others.map((l) => l.slice(0, 200)).join('\n')}`);
      said = true;
    }
    if (Date.now() - started > maxWaitMs) {
      throw new Error(`other tap runs are still active after ${maxWaitMs} ms; not stopping a shared server:\n${others.join('\n')}`);
    }
    await sleep(2000);
  }
}

const down = new Set<DeployService>();
let exitHookInstalled = false;

/** If the test process is told to end (tap's timeout) while a server is down, bring it back first. */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  const restore = (signal: NodeJS.Signals) => {
    for (const s of down) {
      try {
        execFileSync('bash', [path.join(ROOT, 'deploy', 'up.sh')], {
          cwd: ROOT,
          env: { ...process.env, DEPLOY_SERVICES: s },
          stdio: 'ignore',
          timeout: 120_000,
        });
      } catch {
        // nothing more to do here
      }
    }
    down.clear();
    process.kill(process.pid, signal);
  };
  process.once('SIGTERM', () => restore('SIGTERM'));
  process.once('SIGINT', () => restore('SIGINT'));
}

/**
 * An outage of one shared server for the duration of a test: down() waits until no other tap run is active and stops
 * it; up() restarts it. A teardown brings it back whatever happened (up.sh is idempotent).
 */
export function outage(t: Test, service: DeployService): { down(): Promise<number>; up(): Promise<number> } {
  installExitHook();
  t.teardown(async () => {
    if (!down.has(service)) return;
    await deployCtl('up', service);
    down.delete(service);
  });
  return {
    async down() {
      await waitForExclusiveServers(t);
      down.add(service);
      const r = await deployCtl('down', service);
      return r.ms;
    },
    async up() {
      const r = await deployCtl('up', service);
      down.delete(service);
      return r.ms;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------------
// A whole scenario: start a cluster, drive it, check the totals
// ---------------------------------------------------------------------------------------------------------------------

/** Settings of every fault-test process: short leases and session timeout so that take-overs happen in seconds. */
export const FAULT_ENV: Record<string, string> = {
  FLUSH_INTERVAL_MS: '100',
  SNAPSHOT_INTERVAL_S: '1',
  AGGREGATOR_LEASE_SECONDS: '5',
  // The broker's group.min.session.timeout.ms is 6 s by default.
  KAFKA_SESSION_TIMEOUT_MS: '6000',
  LOG_LEVEL: 'info',
};

export interface ClusterSpec {
  prefix: string;
  partitions: number;
  gateways: number;
  aggregators: number;
  env?: Record<string, string>;
}

export interface RunningCluster {
  cluster: Cluster;
  api: TestServer;
  meterId: string;
  token: string;
  client: LoadClient;
  range: { start: number; end: number };
  gateways: string[];
  aggregators: string[];
  partitions: number;
}

/**
 * Starts `api` first (it creates the topic, the tables and the schema), creates the meter and a session token there,
 * then the gateways (gw1, gw2, …) and aggregators (agg1, agg2, …) together; waits until every gateway knows the meter
 * and the aggregators have split the partitions between them.
 */
export async function startCluster(t: Test, spec: ClusterSpec): Promise<RunningCluster> {
  const cluster = new Cluster(t, spec.prefix, { ...FAULT_ENV, KAFKA_PARTITIONS: String(spec.partitions), ...(spec.env ?? {}) });
  t.teardown(async () => {
    await cluster.killAll();
    if (t.counts.fail === 0) cluster.cleanup();
    else t.comment(`DATA_DIR kept for inspection: ${cluster.dataDir}`);
  });
  const range = currentRange();
  const started = Date.now();
  const api = await cluster.start('api', 'api');
  const meterId = await createMeter(api);
  const token = await createSession(api, cluster.key);
  const gateways = Array.from({ length: spec.gateways }, (_, i) => `gw${i + 1}`);
  const aggregators = Array.from({ length: spec.aggregators }, (_, i) => `agg${i + 1}`);
  await Promise.all([...gateways.map((g) => cluster.start(g, 'gateway')), ...aggregators.map((a) => cluster.start(a, 'aggregator'))]);
  for (const g of gateways) await waitForMeter(cluster.server(g), cluster.key);
  const split = await cluster.waitForSplit(aggregators, spec.partitions, 60_000);
  if (!split.ok) {
    cluster.dumpLogs();
    throw new Error(`the aggregators did not split the ${spec.partitions} partitions within 60 s: ${JSON.stringify(split.owned)}`);
  }
  t.comment(
    `cluster up in ${Date.now() - started} ms: ${gateways.length} gateways, ${aggregators.length} aggregators, partitions ${JSON.stringify(split.owned)}`,
  );
  const client = new LoadClient(Math.random().toString(36).slice(2, 8), cluster.key);
  return { cluster, api, meterId, token, client, range, gateways, aggregators, partitions: spec.partitions };
}

/** Aggregator health of every live aggregator, for comments. */
export async function aggregatorStats(run: RunningCluster): Promise<string> {
  const parts: string[] = [];
  for (const a of run.aggregators) {
    if (!run.cluster.alive(a)) {
      parts.push(`${a}: dead`);
      continue;
    }
    const h = await run.cluster.health(a).catch((err) => ({ error: String(err) }));
    parts.push(`${a}: ${JSON.stringify(h.aggregator ?? h)}`);
  }
  return parts.join('\n');
}

/**
 * The end of every scenario: stop the load (each sender's last request is retried until acknowledged), retry what is
 * still in doubt and resend some acknowledged batches, then require the summaries to equal the model exactly, and to
 * stay equal.
 */
export async function verifyExact(t: Test, run: RunningCluster, load: Load, o: { convergeDeadlineMs?: number } = {}): Promise<boolean> {
  const { client, cluster } = run;
  await load.stop(90_000);
  await load.finish(20, 60_000);
  t.same(client.unexpected, [], 'every answer was a 200, or a 503 with Stripe-Should-Retry: true (then retried), or none (process killed)');
  t.equal(client.inDoubt().length, 0, 'every request was eventually acknowledged');
  t.same(cluster.exits, [], 'no process exited unless the test killed it');
  const acked: Record<string, number> = Object.fromEntries(client.ackedByTarget);
  t.comment(
    `load: ${client.events.size} distinct events in ${client.requests.length} requests, ${client.cancelled.size} cancelled, ` +
      `${client.retryable503} retryable 503s, ${client.networkErrors} network errors; acknowledged events per gateway ${JSON.stringify(acked)}; ` +
      `expected grand total ${client.total()}`,
  );
  const r = await converge(run.api, client, run.meterId, run.range, {
    deadlineMs: o.convergeDeadlineMs ?? 90_000,
    stop: () => cluster.exits.length > 0,
  });
  t.comment(`summaries ${r.matched ? 'matched' : 'did NOT match'} after ${r.ms} ms; aggregators:\n${await aggregatorStats(run)}`);
  if (!r.matched) t.comment(`grand total read back (vs expected) while waiting:\n${r.history.slice(-20).join('\n')}`);
  t.same(
    diff(r.expected, r.got),
    [],
    'event summaries (read from the api role) equal acknowledged + resent - cancelled, per customer: no loss, no double count',
  );
  if (r.stable) t.same(diff(r.expected, r.stable), [], 'the totals are stable 1.5 s later: nothing is counted late');
  // At the end, the live aggregators must again own every partition between them (nothing left stuck unowned).
  const live = run.aggregators.filter((a) => cluster.alive(a));
  const split = await cluster.waitForSplit(live, run.partitions, 10_000);
  t.ok(split.ok, `at the end, the live aggregators own all ${run.partitions} partitions, each a disjoint non-empty share: ${JSON.stringify(split.owned)}`);
  const ok = r.matched && r.stable !== null && diff(r.expected, r.stable).length === 0 && cluster.exits.length === 0 && split.ok;
  if (!ok || t.counts.fail > 0) cluster.dumpLogs();
  return ok;
}
