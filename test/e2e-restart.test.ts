/**
 * A graceful restart (SIGTERM) keeps everything: the generated API key, meters, event summaries (not counted again by a
 * replay), identifier dedup, session tokens, and the ability to cancel events received before the restart.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import { startServer, tempDir, eventually, currentRange, type TestServer } from './helpers/server';

const SUM_EVENT = 'restart_sum';
const LAST_EVENT = 'restart_last';
const CUSTOMERS = ['cus_restart_a', 'cus_restart_b'];
/** Without API_KEYS the server generates one test key on first start and keeps it in DATA_DIR. */
const ENV = { API_KEYS: '', LOG_LEVEL: 'info', FLUSH_INTERVAL_MS: '50' };
const GENERATED_RE = /generated a test API key[^:]*: (sk_test_[0-9A-Za-z_]+)/;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface Meters {
  sum: string;
  last: string;
}

type Snapshot = Record<string, unknown>;

const range = currentRange();
const nowS = Math.floor(Date.now() / 1000);
/** Hour-aligned range for value_grouping_window=hour. */
const hourRange = { start: Math.floor((nowS - 7200) / 3600) * 3600, end: Math.ceil((nowS + 3600) / 3600) * 3600 };

async function summary(server: TestServer, key: string, meterId: string, customer: string): Promise<number> {
  const q = new URLSearchParams({ customer, start_time: String(range.start), end_time: String(range.end) });
  const res = await server.request('GET', `/v1/billing/meters/${meterId}/event_summaries?${q}`, { key });
  if (res.status !== 200) throw new Error(`event_summaries: ${res.status} ${res.text}`);
  return res.body.data[0].aggregated_value as number;
}

/** Every summary the API can give for both meters and customers, ungrouped and grouped by hour. */
async function snapshot(server: TestServer, key: string, meters: Meters): Promise<Snapshot> {
  const out: Snapshot = {};
  for (const [name, id] of Object.entries(meters)) {
    for (const c of CUSTOMERS) {
      out[`${name}/${c}`] = await summary(server, key, id, c);
      const q = new URLSearchParams({ customer: c, start_time: String(hourRange.start), end_time: String(hourRange.end), value_grouping_window: 'hour' });
      const res = await server.request('GET', `/v1/billing/meters/${id}/event_summaries?${q}`, { key });
      if (res.status !== 200) throw new Error(`event_summaries (hour): ${res.status} ${res.text}`);
      out[`${name}/${c}/hour`] = (res.body.data as Array<{ start_time: number; end_time: number; aggregated_value: number }>).map((s) => [
        s.start_time,
        s.end_time,
        s.aggregated_value,
      ]);
    }
  }
  return out;
}

async function stream(server: TestServer, token: string, events: Array<{ name: string; id: string; customer: string; value: number; ts?: number }>) {
  return server.request('POST', '/v2/billing/meter_event_stream', {
    key: token,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      events: events.map((e) => ({
        event_name: e.name,
        identifier: e.id,
        payload: { stripe_customer_id: e.customer, value: String(e.value) },
        ...(e.ts === undefined ? {} : { timestamp: new Date(e.ts * 1000).toISOString() }),
      })),
    }),
  });
}

async function cancelV2(server: TestServer, key: string, eventName: string, identifier: string) {
  return server.request('POST', '/v2/billing/meter_event_adjustments', {
    key,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ event_name: eventName, type: 'cancel', cancel: { identifier } }),
  });
}

/** The aggregator's recovery lines (LOG_LEVEL=info): where replay starts vs. what the store already has. */
function recoveries(server: TestServer): Array<{ partition: number; snapshotOffset: number; storedOffset: number }> {
  return server.stderr
    .join('')
    .split('\n')
    .filter((l) => l.includes('aggregator partition recovered'))
    .map((l) => JSON.parse(l));
}

async function stopGracefully(t: Test, server: TestServer, label: string) {
  await server.stop();
  t.equal(server.proc.exitCode, 0, `${label}: SIGTERM shuts the server down cleanly (exit code 0)`);
  const errors = server.stderr
    .join('')
    .split('\n')
    .filter((l) => /"level":"(warn|error)"/.test(l));
  t.same(errors, [], `${label}: no warnings or errors logged`);
}

t.test('a graceful restart keeps keys, meters, summaries, dedup and cancellation', async (t) => {
  const dataDir = tempDir('meterd-restart-');
  let server = await startServer({ dataDir, env: ENV });
  t.teardown(async () => {
    await server.kill();
    if (t.counts.fail === 0) fs.rmSync(dataDir, { recursive: true, force: true });
    else t.comment(`DATA_DIR kept for inspection: ${dataDir}`);
  });

  // --- first start: a key is generated and printed.
  await eventually(async () => GENERATED_RE.test(server.stdout.join('')), 10_000);
  const key = GENERATED_RE.exec(server.stdout.join(''))![1];
  t.match(key, /^sk_test_/, 'the first start generates a test key and prints it');
  t.equal((await server.request('GET', '/v1/billing/meters', { key })).status, 200, 'the generated key is accepted');
  t.equal((await server.request('GET', '/v1/billing/meters')).status, 401, 'no other key is accepted (API_KEYS is empty)');

  const stripe = server.stripe(key);
  const sumMeter = await stripe.billing.meters.create({ display_name: 'Restart sum', event_name: SUM_EVENT, default_aggregation: { formula: 'sum' } });
  const lastMeter = await stripe.billing.meters.create({ display_name: 'Restart last', event_name: LAST_EVENT, default_aggregation: { formula: 'last' } });
  const meters: Meters = { sum: sumMeter.id, last: lastMeter.id };
  const session = await server.request('POST', '/v2/billing/meter_event_session', { key, headers: { 'content-type': 'application/json' }, body: '{}' });
  t.equal(session.status, 200, 'a meter event session is created');
  const token = session.body.authentication_token as string;

  // --- events before the restart: v1 (stripe client) and v2 stream, on a sum meter and a `last` meter.
  const [a, b] = CUSTOMERS;
  for (const [id, customer, value] of [
    ['v1-e1', a, 5],
    ['v1-e2', a, 7],
    ['v1-e3', a, 11],
    ['v1-e4', b, 3],
  ] as const) {
    await stripe.billing.meterEvents.create({ event_name: SUM_EVENT, identifier: id, payload: { stripe_customer_id: customer, value: String(value) } });
  }
  const s1 = await stream(server, token, [
    { name: SUM_EVENT, id: 'st-s1', customer: a, value: 2 },
    { name: SUM_EVENT, id: 'st-s2', customer: a, value: 13 },
    { name: SUM_EVENT, id: 'st-s3', customer: b, value: 17 },
    { name: LAST_EVENT, id: 'st-l1', customer: a, value: 4, ts: nowS - 120 },
    { name: LAST_EVENT, id: 'st-l2', customer: a, value: 9, ts: nowS - 60 },
    { name: LAST_EVENT, id: 'st-l3', customer: b, value: 6, ts: nowS - 90 },
  ]);
  t.equal(s1.status, 200, 'stream batch accepted');
  t.equal((await cancelV2(server, key, SUM_EVENT, 'v1-e2')).status, 200, 'cancel of v1-e2 accepted');

  const expectBefore = { [`sum/${a}`]: 5 + 11 + 2 + 13, [`sum/${b}`]: 3 + 17, [`last/${a}`]: 9, [`last/${b}`]: 6 };
  const matches = async (s: TestServer, want: Record<string, number>) => {
    for (const [k, v] of Object.entries(want)) {
      const [name, customer] = k.split('/');
      if ((await summary(s, key, meters[name as keyof Meters], customer)) !== v) return false;
    }
    return true;
  };
  await eventually(() => matches(server, expectBefore), 20_000, 100);
  const before = await snapshot(server, key, meters);
  t.match(before, expectBefore, 'summaries before the restart');
  const meterList = (await stripe.billing.meters.list()).data.map((m) => [m.id, m.event_name, m.status, m.default_aggregation.formula]);

  // --- graceful restart, no API_KEYS: the same key, no new one.
  await stopGracefully(t, server, 'first server');
  server = await startServer({ dataDir, env: ENV });
  await eventually(async () => /API keys: /.test(server.stdout.join('')), 10_000);
  t.notMatch(server.stdout.join(''), /generated a test API key/, 'the restart does not generate a new key');
  t.match(server.stdout.join(''), /API keys: 1 configured/, 'the restart finds the one key kept in DATA_DIR');
  t.ok(server.stdout.join('').includes(`use ${key}`), 'and says which key to use');
  const stripe2 = server.stripe(key);
  t.equal((await server.request('GET', '/v1/billing/meters', { key })).status, 200, 'the key generated before the restart is accepted');
  t.equal((await server.request('GET', '/v1/billing/meters')).status, 401, 'other keys are still refused');
  t.same(
    (await stripe2.billing.meters.list()).data.map((m) => [m.id, m.event_name, m.status, m.default_aggregation.formula]),
    meterList,
    'meters survive the restart',
  );
  t.same(await stripe2.billing.meters.retrieve(meters.sum).then((m) => m.id), meters.sum, 'a meter can be retrieved by id');

  // A clean stop flushed and snapshotted everything: nothing is replayed.
  const rec = recoveries(server);
  t.ok(rec.length > 0, 'the aggregator logged its recovery');
  for (const r of rec) t.equal(r.snapshotOffset, r.storedOffset, `partition ${r.partition}: the dedup snapshot covers everything stored (nothing to replay)`);

  t.same(await snapshot(server, key, meters), before, 'summaries are identical right after the restart');
  await sleep(1000);
  t.same(await snapshot(server, key, meters), before, 'summaries are still identical a second later (no replay counted twice)');

  // --- dedup survives the restart: resend identifiers acknowledged before it, then a sentinel.
  const dupV1 = await stripe2.billing.meterEvents.create({ event_name: SUM_EVENT, identifier: 'v1-e1', payload: { stripe_customer_id: a, value: '5' } });
  t.equal(dupV1.identifier, 'v1-e1', 'resending v1-e1 is accepted (and must be ignored)');
  const dupStream = await stream(server, token, [
    { name: SUM_EVENT, id: 'st-s1', customer: a, value: 2 },
    { name: SUM_EVENT, id: 'st-s3', customer: b, value: 17 },
    { name: LAST_EVENT, id: 'st-l1', customer: a, value: 4, ts: nowS - 120 },
  ]);
  t.equal(dupStream.status, 200, 'the session token issued before the restart still works');
  // The cancelled event resent: still a duplicate, still cancelled.
  t.equal((await stream(server, token, [{ name: SUM_EVENT, id: 'v1-e2', customer: a, value: 7 }])).status, 200, 'resending a cancelled event is accepted');
  // The aggregator works in log order: once the sentinel is visible, the duplicates before it have been processed.
  t.equal((await stream(server, token, [{ name: SUM_EVENT, id: 'st-sentinel-1', customer: a, value: 100 }])).status, 200, 'sentinel accepted');
  const afterDup = { [`sum/${a}`]: 31 + 100, [`sum/${b}`]: 20, [`last/${a}`]: 9, [`last/${b}`]: 6 };
  await eventually(async () => (await summary(server, key, meters.sum, a)) >= 131, 20_000, 100).catch(() => undefined);
  t.match(await snapshot(server, key, meters), afterDup, 'identifiers acknowledged before the restart are still deduplicated');

  // --- cancellations sent after the restart, for events received before it.
  t.equal((await cancelV2(server, key, SUM_EVENT, 'v1-e3')).status, 200, 'cancel of v1-e3 (received before the restart) accepted');
  const v1Cancel = await stripe2.billing.meterEventAdjustments.create({ event_name: LAST_EVENT, type: 'cancel', cancel: { identifier: 'st-l2' } });
  t.equal(v1Cancel.status, 'pending', 'v1 cancel of st-l2 (received before the restart) accepted');
  t.equal((await cancelV2(server, key, SUM_EVENT, 'v1-e2')).status, 200, 'cancelling v1-e2 a second time is accepted (and changes nothing)');
  const afterCancel = { [`sum/${a}`]: 131 - 11, [`sum/${b}`]: 20, [`last/${a}`]: 4, [`last/${b}`]: 6 };
  let cancelled = true;
  await eventually(() => matches(server, afterCancel), 20_000, 100).catch(() => (cancelled = false));
  t.ok(cancelled, 'cancellations sent after the restart apply to events received before it');
  t.match(await snapshot(server, key, meters), afterCancel, 'summaries after the cancellations');
  const beforeSecond = await snapshot(server, key, meters);

  // --- a second graceful restart: everything, including what happened after the first one, is kept.
  await stopGracefully(t, server, 'second server');
  server = await startServer({ dataDir, env: ENV });
  await eventually(async () => /API keys: /.test(server.stdout.join('')), 10_000);
  t.notMatch(server.stdout.join(''), /generated a test API key/, 'the second restart does not generate a new key either');
  t.same(await snapshot(server, key, meters), beforeSecond, 'summaries are identical after the second restart');
  for (const r of recoveries(server)) t.equal(r.snapshotOffset, r.storedOffset, `second restart, partition ${r.partition}: nothing to replay`);
  t.equal(
    (
      await stream(server, token, [
        { name: SUM_EVENT, id: 'st-sentinel-1', customer: a, value: 100 },
        { name: SUM_EVENT, id: 'v1-e3', customer: a, value: 11 },
        { name: SUM_EVENT, id: 'st-sentinel-2', customer: b, value: 1000 },
      ])
    ).status,
    200,
    'duplicates of events from both earlier runs, plus a new sentinel, accepted',
  );
  await eventually(async () => (await summary(server, key, meters.sum, b)) >= 1020, 20_000, 100).catch(() => undefined);
  await sleep(300);
  t.match(
    await snapshot(server, key, meters),
    { ...afterCancel, [`sum/${b}`]: 1020 },
    'only the new sentinel is counted: dedup and cancellations survive two restarts',
  );
  // The new event arrived in the same request as duplicates: its raw row must be stored like any other, so that
  // cancelling it subtracts it.
  t.equal((await cancelV2(server, key, SUM_EVENT, 'st-sentinel-2')).status, 200, 'cancel of st-sentinel-2 accepted');
  let sentinelCancelled = true;
  await eventually(async () => (await summary(server, key, meters.sum, b)) === 20, 20_000, 100).catch(() => (sentinelCancelled = false));
  t.ok(sentinelCancelled, 'an event sent in the same request as duplicates can be cancelled');
  t.match(await snapshot(server, key, meters), afterCancel, 'summaries after cancelling the sentinel');
  await stopGracefully(t, server, 'third server');
});
