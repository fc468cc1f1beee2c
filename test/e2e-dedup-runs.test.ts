/**
 * Identifiers the dedup index has sealed into runs on disk (DEDUP_MEMORY_IDENTIFIERS kept small here, so that almost
 * every identifier leaves memory) still deduplicate and can still be cancelled, across a graceful restart and a kill -9,
 * through the public endpoints.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, tempDir, eventually, currentRange, DISTRIBUTED, type TestServer } from './helpers/server';
import { parseExposition } from './helpers/prometheus';
import { uniqueName } from './helpers/assertions';
import { createMeter } from './helpers/cluster';
import { accountForKey } from '../shared/http/auth';
import { FileSnapshots } from '../aggregator/snapshots';
import { PartitionIndex, type WorkerTask } from '../aggregator/partition-index';
import { fingerprint, legacyFingerprint } from '../aggregator/fingerprint';
import run from '../aggregator/worker';

const HOUR = 3600_000;
const inThread: WorkerTask = async (task) => run(task as never);

const ENV = { DEDUP_MEMORY_IDENTIFIERS: '100', SNAPSHOT_INTERVAL_S: '1', FLUSH_INTERVAL_MS: '50' };
const CUSTOMER = 'cus_runs';
const EVENTS = 3000;
const range = currentRange();

async function session(server: TestServer): Promise<string> {
  const res = await server.request('POST', '/v2/billing/meter_event_session', { body: '{}', headers: { 'content-type': 'application/json' } });
  if (res.status !== 200) throw new Error(`meter event session: ${res.status} ${res.text}`);
  return res.body.authentication_token as string;
}

/** Sends identifiers `ids` in batches of 100 (value 1 each); every batch must be acknowledged. */
async function send(server: TestServer, eventName: string, ids: string[]): Promise<void> {
  const token = await session(server);
  for (let i = 0; i < ids.length; i += 100) {
    const body = JSON.stringify({
      events: ids.slice(i, i + 100).map((id) => ({ event_name: eventName, identifier: id, payload: { stripe_customer_id: CUSTOMER, value: '1' } })),
    });
    const res = await server.request('POST', '/v2/billing/meter_event_stream', { key: token, body, headers: { 'content-type': 'application/json' } });
    if (res.status !== 200) throw new Error(`meter_event_stream: ${res.status} ${res.text}`);
  }
}

async function total(server: TestServer, meterId: string): Promise<number> {
  const q = new URLSearchParams({ customer: CUSTOMER, start_time: String(range.start), end_time: String(range.end) });
  const res = await server.request('GET', `/v1/billing/meters/${meterId}/event_summaries?${q}`);
  if (res.status !== 200) throw new Error(`event_summaries: ${res.status} ${res.text}`);
  return Number(res.body.data[0]?.aggregated_value ?? 0);
}

/** Waits for the total to reach `want`, then checks that it stays there (nothing counted twice, late). */
async function settlesAt(t: Test, server: TestServer, meterId: string, want: number, what: string): Promise<void> {
  await eventually(async () => (await total(server, meterId)) >= want, 30_000).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 500));
  t.equal(await total(server, meterId), want, what);
}

async function metric(server: TestServer, name: string): Promise<number> {
  const res = await server.request('GET', '/metrics');
  return parseExposition(res.text).sum(name);
}

const ids = (from: number, to: number, prefix = 'run-ev-') => Array.from({ length: to - from }, (_, i) => `${prefix}${from + i}`);

t.test('identifiers sealed into runs on disk deduplicate and cancel, across restarts', { timeout: 240_000 }, async (t) => {
  const dataDir = tempDir();
  let server = await startServer({ dataDir, env: ENV });
  const key = server.key;
  t.teardown(() => server.kill());
  const eventName = uniqueName('runs');
  const meter = await server.stripe().billing.meters.create({
    display_name: 'Runs',
    event_name: eventName,
    default_aggregation: { formula: 'sum' },
    customer_mapping: { type: 'by_id', event_payload_key: 'stripe_customer_id' },
    value_settings: { event_payload_key: 'value' },
  });

  await send(server, eventName, ids(0, EVENTS));
  await settlesAt(t, server, meter.id, EVENTS, 'every event counted once');
  // Seals run between batches, so a burst makes few, larger runs: at least two here.
  await eventually(async () => (await metric(server, 'meterd_dedup_index_runs')) >= 2, 20_000).catch(() => undefined);
  t.ok((await metric(server, 'meterd_dedup_index_runs')) >= 2, 'most identifiers have left memory for runs on disk');
  t.equal(await metric(server, 'meterd_dedup_index_identifiers'), EVENTS, 'the index still holds every identifier');
  if (!DISTRIBUTED) {
    const runs = fs.readdirSync(path.join(dataDir, 'aggregator')).filter((f) => f.endsWith('.run'));
    t.ok(runs.length >= 2, `run files in DATA_DIR (${runs.length})`);
  }

  // Every identifier again, and one new: only the new one counts.
  await send(server, eventName, [...ids(0, EVENTS), 'run-new-1']);
  await settlesAt(t, server, meter.id, EVENTS + 1, 'identifiers found on disk are not counted again');
  t.ok((await metric(server, 'meterd_aggregator_dedup_hits_total')) >= EVENTS, 'they were dropped as duplicates');

  // Cancelling the first events, long sealed away.
  for (const id of ids(0, 5)) {
    const res = await server.request('POST', '/v2/billing/meter_event_adjustments', {
      key,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ event_name: eventName, type: 'cancel', cancel: { identifier: id } }),
    });
    t.equal(res.status, 200, `cancel ${id}`);
  }
  await settlesAt(t, server, meter.id, EVENTS + 1 - 5, 'events whose identifiers are on disk can be cancelled');

  // A graceful restart, then a kill -9: the snapshot names the runs, and the runs are found again.
  await server.stop();
  server = await startServer({ dataDir, key, env: ENV });
  await send(server, eventName, [...ids(1000, 2000), 'run-new-2']);
  await settlesAt(t, server, meter.id, EVENTS + 2 - 5, 'after a restart, identifiers on disk still deduplicate');

  await send(server, eventName, ids(3000, 3500, 'run-ev-'));
  await server.kill();
  server = await startServer({ dataDir, key, env: ENV });
  await send(server, eventName, [...ids(0, 3500), 'run-new-3']);
  await settlesAt(t, server, meter.id, 3500 + 3 - 5, 'after a kill -9, too (and cancelled events stay cancelled)');
  t.equal(await metric(server, 'meterd_dedup_index_identifiers'), 3500 + 3, 'no identifier was lost or held twice');
  await server.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

t.test('two identifiers whose legacy fingerprints collide are two events', async (t) => {
  // The account of this key confuses these two under the legacy FNV-1a fingerprint (test/fingerprint.test.ts): a bench
  // soak lost 80 of 30M events that way.
  const server = await startServer({ key: 'sk_test_fingerprint_regression_0' });
  t.teardown(() => server.kill());
  const eventName = uniqueName('collide');
  // A sum meter with Stripe's default mapping: stripe_customer_id and value.
  const meterId = await createMeter(server, eventName);
  await send(server, eventName, ['evt-0003118395', 'evt-0005040089', 'evt-0003118395']);
  await settlesAt(t, server, meterId, 2, 'both counted, and the retry of the first once');
});

t.test(
  "upgrading from a build with the legacy fingerprints: the aggregator drops the retries and applies the adjustments of the earlier build's events",
  { skip: DISTRIBUTED && 'the embedded snapshot files are rewritten here' },
  async (t) => {
    // A data directory as the previous build (dedup snapshot version 3, FNV fingerprints) would have left it: this build
    // writes it, then its snapshot is rewritten with the same entries under their legacy fingerprints.
    const dataDir = tempDir();
    const env = { SNAPSHOT_INTERVAL_S: '1', FLUSH_INTERVAL_MS: '50' };
    let server = await startServer({ dataDir, env });
    const key = server.key;
    t.teardown(() => server.kill());
    const eventName = uniqueName('upgrade');
    const meterId = await createMeter(server, eventName);
    const earlier = ids(0, 200, 'up-');
    await send(server, eventName, earlier);
    await settlesAt(t, server, meterId, 200, 'the earlier events, counted');
    await server.stop();

    const snapshots = new FileSnapshots(path.join(dataDir, 'aggregator'));
    const { index, offset } = await PartitionIndex.load(0, 24 * HOUR, snapshots, await snapshots.load(0), inThread);
    t.equal(index.runCount, 0, 'every identifier in memory');
    const account = accountForKey(key);
    const legacy = new PartitionIndex(0, 24 * HOUR, snapshots);
    for (const id of earlier) {
      const [hi, lo] = fingerprint(account, id);
      const entry = index.get(hi, lo);
      if (!entry) throw new Error(`${id} is not in the snapshot`);
      const [legacyHi, legacyLo] = legacyFingerprint(account, id);
      legacy.set(legacyHi, legacyLo, entry.receivedMs, entry.seq);
    }
    const bytes = legacy.serialize(offset).bytes;
    const at = bytes.indexOf('"version":4');
    t.ok(at > 0, 'the snapshot header names its version');
    bytes.write('"version":3', at);
    await snapshots.save(0, bytes);

    server = await startServer({ dataDir, key, env });
    // Retries of the earlier events are found only by their legacy fingerprints, in the aggregator's own tables (no run
    // on disk): none counts again. An adjustment of one of them finds it the same way.
    await send(server, eventName, [...earlier.slice(0, 100), 'up-new']);
    const res = await server.request('POST', '/v2/billing/meter_event_adjustments', {
      key,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ event_name: eventName, type: 'cancel', cancel: { identifier: 'up-150' } }),
    });
    t.equal(res.status, 200, 'the adjustment is accepted');
    await settlesAt(t, server, meterId, 200 + 1 - 1, 'the retries counted nothing, the new event and the cancellation did');
    t.equal(await metric(server, 'meterd_aggregator_dedup_hits_total'), 100, 'each retry was a duplicate');
    await server.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
  },
);
