/**
 * kill -9 under load: the product's central promise, end to end.
 *
 *  - a 200 from a meter event endpoint means the event is durable: it is counted even if the server is SIGKILLed right
 *    after answering;
 *  - the aggregator never loses nor double-counts an event across crashes, whatever it was doing (flushing, writing a
 *    dedup snapshot, replaying the log after a restart, reclaiming segments);
 *  - identifiers deduplicate across restarts: a client that resends what it is unsure about (and even what was already
 *    acknowledged) is counted once;
 *  - cancellations (adjustments) of acknowledged events survive crashes too.
 *
 * Each scenario runs a real server on a fresh DATA_DIR, drives it from several concurrent senders (stream batches with
 * a session token, v1 single events, v2 cancellations), SIGKILLs it while requests are in flight, restarts it on the
 * same DATA_DIR and key, resends every request whose outcome is unknown (plus a sample of acknowledged ones), and
 * finally polls the event summaries until they equal, per customer, exactly what the client model expects: every
 * event sent once, minus the cancelled ones. Then it checks that the totals do not move any more.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import { startServer, tempDir, currentRange, type TestServer } from './helpers/server';
import { LoadClient, pick, rand, sleep, type Ev, type Req, type Target } from './helpers/load';

const EVENT_NAME = 'crash_api_calls';
const CUSTOMERS = Array.from({ length: 20 }, (_, i) => `cus_crash_${String(i).padStart(2, '0')}`);
const SENDERS = 8;
const CONVERGE_DEADLINE_MS = 30_000;
const STALL_MS = 15_000;

const BASE_ENV: Record<string, string> = {
  SNAPSHOT_INTERVAL_S: '1',
  FLUSH_INTERVAL_MS: '50',
  LOG_SEGMENT_BYTES: String(256 * 1024),
};

interface Cycle {
  /** Run fresh load from the senders during this cycle. */
  load?: boolean;
  /**
   * SIGKILL the server this many ms after the cycle's traffic starts (load cycles also wait for `minAcked` newly
   * acknowledged events first). Absent: the final cycle, which must get every request acknowledged.
   */
  killAfterMs?: number;
  minAcked?: number;
}

interface Scenario {
  name: string;
  env?: Record<string, string>;
  cycles: Cycle[];
}

/** The single server of a scenario, as the load client addresses it. */
function target(srv: TestServer): Target {
  return { name: 'server', port: srv.port };
}

async function createSession(server: TestServer, key: string): Promise<string> {
  const res = await server.request('POST', '/v2/billing/meter_event_session', { key, body: '{}', headers: { 'content-type': 'application/json' } });
  if (res.status !== 200 || typeof res.body?.authentication_token !== 'string') {
    throw new Error(`meter event session: ${res.status} ${res.text}`);
  }
  return res.body.authentication_token as string;
}

async function summaries(server: TestServer, key: string, meterId: string, range: { start: number; end: number }): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  await Promise.all(
    CUSTOMERS.map(async (c) => {
      const q = new URLSearchParams({ customer: c, start_time: String(range.start), end_time: String(range.end) });
      const res = await server.request('GET', `/v1/billing/meters/${meterId}/event_summaries?${q}`, { key });
      if (res.status !== 200) throw new Error(`event_summaries ${c}: ${res.status} ${res.text}`);
      out.set(c, Number(res.body.data[0]?.aggregated_value ?? NaN));
    }),
  );
  return out;
}

function diff(expected: Map<string, number>, got: Map<string, number>): string[] {
  const out: string[] = [];
  for (const c of CUSTOMERS) {
    const e = expected.get(c)!;
    const g = got.get(c);
    if (g !== e) out.push(`${c}: expected ${e}, got ${g} (${g === undefined ? '?' : g - e > 0 ? '+' : ''}${g === undefined ? '' : g - e})`);
  }
  return out;
}

/**
 * Diagnosis aid for a mismatch: is each customer's excess exactly the value of some of the cancellations sent after
 * the last restart (cancels that were recorded but did not subtract)?
 */
function diagnose(expected: Map<string, number>, got: Map<string, number>, lateCancels: Req[]): string {
  const explained: string[] = [];
  const unexplained: string[] = [];
  for (const c of CUSTOMERS) {
    const d = (got.get(c) ?? NaN) - expected.get(c)!;
    if (d === 0) continue;
    const mine = lateCancels.flatMap((r) => r.events).filter((e) => e.customer === c);
    let found: Ev[] | null = null;
    for (let mask = 1; mask < 1 << mine.length && !found; mask++) {
      let sum = 0;
      for (let i = 0; i < mine.length; i++) if (mask & (1 << i)) sum += mine[i].value;
      if (sum === d) found = mine.filter((_, i) => mask & (1 << i));
    }
    if (found) explained.push(`${c} +${d} = cancelled ${found.map((e) => `${e.id}(${e.value})`).join(' + ')}`);
    else unexplained.push(`${c} ${d > 0 ? '+' : ''}${d}`);
  }
  if (unexplained.length === 0) {
    return `DIAGNOSIS: every excess equals cancellations sent after the last restart that were recorded but not subtracted (their raw event rows are missing?): ${explained.join('; ')}`;
  }
  return `mismatches not explained by unapplied late cancellations: ${unexplained.join('; ')}${explained.length ? `; explained: ${explained.join('; ')}` : ''}`;
}

/** Runs `fn` over `items` with at most `width` calls in flight. */
async function pool<T>(items: T[], width: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

async function runScenario(t: Test, sc: Scenario): Promise<void> {
  const dataDir = tempDir('meterd-crash-');
  const key = 'sk_test_crash' + Math.random().toString(36).slice(2, 12);
  const env = { ...BASE_ENV, ...(sc.env ?? {}) };
  const client = new LoadClient(`${Math.random().toString(36).slice(2, 8)}`, key, CUSTOMERS, EVENT_NAME);
  const range = currentRange();
  const servers: TestServer[] = [];
  const meant = new Set<TestServer>();
  const exits: string[] = [];
  let current: TestServer | null = null;
  t.teardown(async () => {
    if (current) {
      meant.add(current);
      await current.kill();
    }
    // Kept for post-mortem when something failed.
    if (t.counts.fail === 0) fs.rmSync(dataDir, { recursive: true, force: true });
    else t.comment(`DATA_DIR kept for inspection: ${dataDir}`);
  });
  const dumpLogs = () => {
    servers.forEach((s, i) => {
      const err = s.stderr.join('').trim();
      if (err) t.comment(`server #${i} stderr (last 4000 chars):\n${err.slice(-4000)}`);
    });
  };
  const start = async () => {
    const s = await startServer({ dataDir, key, env });
    const n = servers.length;
    servers.push(s);
    s.proc.once('exit', (code, signal) => {
      if (!meant.has(s)) exits.push(`server #${n} exited on its own: code ${code}, signal ${signal}`);
    });
    current = s;
    return s;
  };
  try {
    await scenarioBody(t, sc, client, key, range, start, meant, exits);
  } catch (err) {
    exits.length && t.comment(exits.join('\n'));
    dumpLogs();
    throw err;
  }
  t.same(exits, [], 'no server exited unless killed or stopped by the test');
  if (t.counts.fail > 0) dumpLogs();
  current = null;
}

async function scenarioBody(
  t: Test,
  sc: Scenario,
  client: LoadClient,
  key: string,
  range: { start: number; end: number },
  start: () => Promise<TestServer>,
  meant: Set<TestServer>,
  exits: string[],
): Promise<void> {
  let meterId = '';
  let oldToken = '';
  let token = '';
  const started = Date.now();
  let server: TestServer | null = null;
  const finalCancels: Req[] = [];

  for (let ci = 0; ci < sc.cycles.length; ci++) {
    const cycle = sc.cycles[ci];
    const final = cycle.killAfterMs === undefined;
    server = await start();
    const srv = server;
    const agent = new http.Agent({ keepAlive: true, maxSockets: SENDERS * 2 });
    const phase = `cycle ${ci}`;

    if (ci === 0) {
      const meter = await srv.stripe().billing.meters.create({
        display_name: 'Crash test API calls',
        event_name: EVENT_NAME,
        default_aggregation: { formula: 'sum' },
      });
      meterId = meter.id;
      oldToken = await createSession(srv, key);
    } else {
      // The session token issued by the first server still works: the HMAC secret survives restarts.
      const probe = client.newStream(3, false);
      t.equal(
        await client.send(agent, target(srv), oldToken, probe, `${phase} old-token probe`),
        'acked',
        `${phase}: the session token issued before the crash is accepted after restart`,
      );
    }
    token = ci === 0 ? oldToken : await createSession(srv, key);

    let killed = false;
    const inDoubt = client.inDoubt();
    const ackedBefore = client.ackedEvents;
    // Resend a sample of acknowledged stream batches: the latest ones (likely still in the replayed log tail) and
    // random older ones (likely only known to the dedup snapshot). They must not be counted again.
    // (Each at most once: the same Idempotency-Key twice in flight would rightly get a 409.)
    const dupeSet = new Set<Req>();
    if (ci > 0) {
      const acked = client.ackedStreamBatches;
      for (const r of acked.slice(-10)) dupeSet.add(r);
      for (let i = 0; i < 10 && acked.length > 0; i++) dupeSet.add(pick(acked));
    }
    const dupes = [...dupeSet];

    const resend = async () => {
      const work: Array<{ r: Req; dupe: boolean }> = [...inDoubt.map((r) => ({ r, dupe: false })), ...dupes.map((r) => ({ r, dupe: true }))];
      work.sort(() => Math.random() - 0.5);
      await pool(work, SENDERS, async ({ r, dupe }) => {
        if (killed) return;
        await client.send(agent, target(srv), ci === 1 ? oldToken : token, r, `${phase} resend`, dupe);
      });
    };

    const senders = async () => {
      if (!cycle.load) return;
      await Promise.all(
        Array.from({ length: SENDERS }, async () => {
          while (!killed) {
            const x = Math.random();
            let r: Req | null = null;
            if (x < 0.05) r = client.newCancel();
            else if (x < 0.15) r = client.newV1();
            if (!r) r = client.newStream();
            await client.send(agent, target(srv), token, r, phase);
          }
        }),
      );
    };

    if (final) {
      await resend();
      // Whatever is still in doubt (nothing, normally) is retried until acknowledged.
      for (let round = 0; round < 5 && client.inDoubt().length > 0; round++) {
        await sleep(200);
        await pool(client.inDoubt(), SENDERS, async (r) => {
          await client.send(agent, target(srv), token, r, `${phase} retry`);
        });
      }
      // Fresh events interleaved with resends of acknowledged batches (so the aggregator sees new events and
      // duplicates in the same chunks), then cancellations of some of those fresh events and of older ones. A cancel
      // subtracts the cancelled event's raw row, so this also checks that recovery keeps raw events intact.
      const fresh: Req[] = [];
      const mixed: Array<{ r: Req; dupe: boolean }> = [];
      const picked = new Set<Req>();
      for (let i = 0; i < 10; i++) {
        const r = client.newStream(20, false);
        fresh.push(r);
        mixed.push({ r, dupe: false });
        const d = client.ackedStreamBatches.length > 0 ? pick(client.ackedStreamBatches) : null;
        if (d && !picked.has(d)) {
          picked.add(d);
          mixed.push({ r: d, dupe: true });
        }
      }
      await pool(mixed, 4, async ({ r, dupe }) => {
        await client.send(agent, target(srv), token, r, `${phase} fresh`, dupe);
      });
      const cancels: Req[] = [];
      for (const r of fresh) {
        const e = r.events[0];
        if (!r.acked || client.cancelled.has(e.id)) continue;
        const i = client.cancellable.indexOf(e);
        if (i >= 0) client.cancellable.splice(i, 1);
        client.cancelled.add(e.id);
        const body = JSON.stringify({ event_name: EVENT_NAME, type: 'cancel', cancel: { identifier: e.id } });
        const c: Req = { kind: 'cancel', events: [e], body, acked: false, attempts: 0 };
        client.requests.push(c);
        cancels.push(c);
      }
      for (let i = 0; i < 5; i++) {
        const c = client.newCancel();
        if (c) cancels.push(c);
      }
      finalCancels.push(...cancels);
      await pool(cancels, 4, async (c) => {
        await client.send(agent, target(srv), token, c, `${phase} cancel`);
      });
      agent.destroy();
      break;
    }

    const trafficStart = Date.now();
    const traffic = Promise.all([resend(), senders()]);
    const minAcked = cycle.minAcked ?? 0;
    const killAt = trafficStart + cycle.killAfterMs!;
    // Wait for the kill time, and (for load cycles) for enough acknowledged events, bounded by 20 s on a slow machine.
    while (Date.now() < killAt || (cycle.load && client.ackedEvents - ackedBefore < minAcked && Date.now() < trafficStart + 20_000)) {
      await sleep(10);
    }
    killed = true;
    const ackedAtKill = client.ackedEvents;
    meant.add(srv);
    await srv.kill();
    await traffic;
    agent.destroy();
    t.comment(
      `${sc.name} / ${phase}: SIGKILL after ${Date.now() - trafficStart} ms of traffic; acknowledged events ${ackedBefore} -> ${ackedAtKill}` +
        ` (${client.ackedEvents} after in-flight answers); resent ${inDoubt.length} in-doubt + ${dupes.length} acknowledged requests;` +
        ` now in doubt: ${client.inDoubt().length} requests`,
    );
  }

  const srv = server!;
  t.same(client.unexpected, [], 'every request got either a 200 or no answer at all (the server died)');
  t.equal(client.inDoubt().length, 0, 'every request was eventually acknowledged');
  const expected = client.expected();
  const total = [...expected.values()].reduce((a, b) => a + b, 0);
  t.comment(
    `${sc.name}: ${client.events.size} distinct events, ${client.cancelled.size} cancelled, ${client.requests.length} requests, ` +
      `${client.networkErrors} network errors, expected grand total ${total}`,
  );

  const convergeStart = Date.now();
  let got = new Map<string, number>();
  let matched = false;
  let lastChange = Date.now();
  let previous = '';
  // Poll until equal; give up at the deadline, or earlier once the totals have not moved at all for STALL_MS (the
  // aggregator flushes every 50 ms: a long freeze short of the expected totals means it is stuck or done and wrong).
  while (Date.now() - convergeStart < CONVERGE_DEADLINE_MS && Date.now() - lastChange < STALL_MS && exits.length === 0) {
    got = await summaries(srv, key, meterId, range);
    if (diff(expected, got).length === 0) {
      matched = true;
      break;
    }
    const now = JSON.stringify([...got].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    if (now !== previous) {
      previous = now;
      lastChange = Date.now();
    }
    await sleep(250);
  }
  const health = await srv.request('GET', '/healthz', { key: null }).catch((err) => ({ body: String(err) }));
  t.comment(
    `${sc.name}: summaries ${matched ? 'matched' : 'did NOT match'} after ${Date.now() - convergeStart} ms; aggregator stats ${JSON.stringify(health.body?.aggregator ?? health.body)}`,
  );
  t.same(diff(expected, got), [], 'event summaries equal the acknowledged + resent - cancelled totals, per customer (no loss, no double count)');
  if (!matched) t.comment(`${sc.name}: ${diagnose(expected, got, finalCancels)}`);
  if (matched) {
    // No late arrival may push a total past the expected value.
    await sleep(1500);
    const again = await summaries(srv, key, meterId, range);
    t.same(diff(expected, again), [], 'the totals are stable: nothing is counted late');
  }
  if (sc.env?.DEDUP_MEMORY_IDENTIFIERS) {
    const runs = /meterd_dedup_index_runs\{[^}]*\} (\d+)/g;
    const text = (await srv.request('GET', '/metrics', { key: null })).text;
    const held = [...text.matchAll(runs)].reduce((n, m) => n + Number(m[1]), 0);
    t.ok(held > 0, `the scenario ran with identifiers on disk (${held} runs at the end)`);
  }
  t.comment(`${sc.name}: ${sc.cycles.length} server starts, ${Date.now() - started} ms`);
  meant.add(srv);
  await srv.stop();
}

const scenarios: Scenario[] = [
  {
    name: 'one SIGKILL under load',
    cycles: [{ load: true, killAfterMs: rand(1000, 2000), minAcked: 2000 }, {}],
  },
  {
    name: 'SIGKILL under load, then SIGKILL again right after restart while in-doubt requests are resent',
    cycles: [{ load: true, killAfterMs: rand(2000, 3000), minAcked: 3000 }, { load: false, killAfterMs: rand(20, 400) }, {}],
  },
  {
    name: 'two log partitions, two aggregator threads: SIGKILL under load twice, load resuming in between',
    env: { LOG_PARTITIONS: '2', AGGREGATOR_THREADS: '2' },
    cycles: [{ load: true, killAfterMs: rand(1000, 2500), minAcked: 2000 }, { load: true, killAfterMs: rand(800, 1500), minAcked: 1000 }, {}],
  },
  {
    // Almost every identifier leaves memory for a run on disk; kills land while runs are sealed, named by snapshots,
    // retired and reloaded.
    name: 'identifiers sealed to disk every few hundred events: SIGKILL under load twice',
    env: { DEDUP_MEMORY_IDENTIFIERS: '200', AGGREGATOR_THREADS: '2' },
    cycles: [{ load: true, killAfterMs: rand(1000, 2500), minAcked: 2000 }, { load: true, killAfterMs: rand(800, 1500), minAcked: 1000 }, {}],
  },
];

for (const sc of scenarios) {
  t.test(sc.name, { timeout: 120_000 }, (t) => runScenario(t, sc));
}
