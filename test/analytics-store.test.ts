/**
 * The analytics store's RowBinary insert, through both drivers: rows written by the aggregator's worker and rows with
 * every edge the encoder has (non-ASCII, strings of 128 bytes and more, negative and 38-digit decimals, large
 * integers) read back from the engine exactly. The embedded engine always; a ClickHouse server when CLICKHOUSE_URL is
 * set (deploy/up.sh prints one), in a database of its own, dropped at the end.
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { sqlString, type AnalyticsStore } from '../shared/analytics-store';
import { formatScaled, parseMeterValue } from '../shared/decimal';
import { ChdbStore } from '../shared/analytics/chdb-store';
import { ClickHouseServerStore, dropClickHouseDatabase } from '../shared/analytics/server-store';
import { RAW_COLUMNS } from '../shared/analytics/schema';
import { putInt64, putString, putUInt16 } from '../shared/analytics/row-binary';
import { putInt128 } from './helpers/raw-rows';
import { processChunk } from '../aggregator/worker';
import { encodeRecord, eventSeq, RecordKind, type MeterRecord } from '../shared/event-record';
import type { MeterInfo } from '../shared/meters';
import { tempDir } from './helpers/server';

const NOW = Date.UTC(2026, 11, 7, 12, 0, 30);

interface EdgeRow {
  customer: string;
  identifier: string;
  timestampMs: number;
  scaled: bigint;
  value: string;
  payload: string;
  seq: number;
}

const long = 'x'.repeat(127) + 'é'.repeat(100);
const EDGES: EdgeRow[] = [
  { customer: 'cus_1', identifier: 'plain', timestampMs: NOW, scaled: 10n ** 15n, value: '1', payload: '', seq: 1 },
  { customer: 'cüs_ß', identifier: 'é-🙂', timestampMs: NOW - 1, scaled: -35n * 10n ** 14n, value: '-3.5', payload: '{"k":"ü"}', seq: 2 },
  { customer: 'c'.repeat(128), identifier: long, timestampMs: 0, scaled: 1n, value: '0.000000000000001', payload: 'tab\there\nnewline\\', seq: 3 },
  {
    customer: 'big',
    identifier: 'max',
    timestampMs: 2 ** 53 - 1,
    scaled: 10n ** 38n - 1n,
    value: '99999999999999999999999.999999999999999',
    payload: '',
    seq: 2 ** 53 - 1,
  },
  {
    customer: 'neg',
    identifier: 'min',
    timestampMs: -86_400_000,
    scaled: -(10n ** 38n - 1n),
    value: '-99999999999999999999999.999999999999999',
    payload: '',
    seq: 0,
  },
];

function edgeRows(): Buffer {
  const buf = Buffer.alloc(64 * 1024);
  let o = 0;
  for (const e of EDGES) {
    o = putString(buf, o, 'acct_edge');
    buf[o++] = 1;
    o = putString(buf, o, 'mtr_edge');
    o = putString(buf, o, 'edge_event');
    o = putString(buf, o, e.customer);
    o = putString(buf, o, e.identifier);
    o = putInt64(buf, o, e.timestampMs);
    o = putInt128(buf, o, e.scaled);
    o = putString(buf, o, e.payload);
    o = putInt64(buf, o, NOW);
    o = putUInt16(buf, o, 65535);
    o = putInt64(buf, o, e.seq);
  }
  return buf.subarray(0, o);
}

const meters: MeterInfo[] = [
  { account: 'acct_w', id: 'mtr_w', eventName: 'tokens', active: true, customerKey: 'stripe_customer_id', valueKey: 'value', formula: 'sum', window: null },
];

function workerRows(): { rows: Buffer; want: string[][] } {
  const values = ['1', '0.1', '-2.25', '999999999999999', '0.000000000000001', '-0', '123456.789'];
  const events: Array<[string, string, number, Record<string, string>]> = values.map((v, i) => [
    'tokens',
    `id-${i}-${'é'.repeat(i * 20)}`,
    NOW - i * 1000,
    (i % 2 ? { stripe_customer_id: `cus_${i}`, value: v } : { stripe_customer_id: `cus_${i}`, value: v, region: 'eu' }) as Record<string, string>,
  ]);
  const record: MeterRecord = { kind: RecordKind.Events, account: 'acct_w', livemode: false, receivedMs: NOW, validated: false, events };
  const data = encodeRecord(record);
  const r = processChunk({ partition: 3, firstOffset: 5, data, ends: Uint32Array.of(data.length), meters, emitFromOffset: 0 });
  const want = values.map((v, i) => [
    `cus_${i}`,
    events[i][1],
    String(NOW - i * 1000),
    v === '-0' ? '0' : v,
    i % 2 ? '' : JSON.stringify(events[i][3]),
    String(eventSeq(3, 5, i)),
  ]);
  return { rows: Buffer.from(r.rows), want };
}

async function conformance(t: Test, store: AnalyticsStore): Promise<void> {
  await store.insertRowBinary('meter_events', RAW_COLUMNS, [edgeRows()]);
  const edges = await store.query<Record<string, string | number>>(
    `SELECT customer, identifier, toString(timestamp_ms) AS ts, payload, toString(seq) AS seq, livemode, partition, toString(received_ms) AS received
     FROM meter_events WHERE account = 'acct_edge' ORDER BY customer`,
  );
  const expected = [...EDGES].sort((a, b) => (a.customer < b.customer ? -1 : a.customer > b.customer ? 1 : 0));
  t.same(
    edges.map((r) => [r.customer, r.identifier, r.ts, r.payload, r.seq, Number(r.livemode), Number(r.partition), r.received]),
    expected.map((e) => [e.customer, e.identifier, String(e.timestampMs), e.payload, String(e.seq), 1, 65535, String(NOW)]),
    'edge rows read back exactly',
  );
  // Compared in the engine: ClickHouse 18.16 prints a Decimal128 with trailing zeros, and mangles 38-digit ones.
  for (const e of EDGES) {
    const match = await store.query<{ n: string }>(
      `SELECT toString(count()) AS n FROM meter_events WHERE account = 'acct_edge' AND identifier = ${sqlString(e.identifier)} AND value = CAST(${sqlString(e.value)} AS Decimal(38, 15))`,
    );
    t.equal(match[0].n, '1', `the value ${e.value} reads back exactly`);
  }

  const { rows, want } = workerRows();
  // In three parts cut mid-row: the insert is their concatenation, as a flush's pieces from several chunks are.
  const cuts = [Math.floor(rows.length / 3) + 1, Math.floor((2 * rows.length) / 3) + 5];
  await store.insertRowBinary('meter_events', RAW_COLUMNS, [rows.subarray(0, cuts[0]), rows.subarray(cuts[0], cuts[1]), rows.subarray(cuts[1])]);
  const got = await store.query<Record<string, string>>(
    `SELECT customer, identifier, toString(timestamp_ms) AS ts, toString(value) AS value, payload, toString(seq) AS seq
     FROM meter_events WHERE account = 'acct_w' ORDER BY customer`,
  );
  t.same(
    got.map((r) => [r.customer, r.identifier, r.ts, formatScaled(parseMeterValue(r.value)!), r.payload, r.seq]),
    want,
    "the worker's rows read back exactly",
  );
  const sum = await store.query<{ s: string }>(`SELECT toString(sum(value)) AS s FROM meter_events WHERE account = 'acct_w'`);
  t.equal(formatScaled(parseMeterValue(sum[0].s)!), '1000000000123454.639000000000001', 'and sum exactly');

  await t.resolves(store.insertRowBinary('meter_events', RAW_COLUMNS, [Buffer.alloc(0)]), 'an empty insert is nothing');
  await t.rejects(store.insertRowBinary('meter_events', RAW_COLUMNS, [rows.subarray(0, rows.length - 3)]), 'a truncated row is refused');
  const count = await store.query<{ n: string }>(`SELECT toString(count()) AS n FROM meter_events WHERE account = 'acct_w'`);
  t.equal(count[0].n, String(want.length), 'and nothing of it is stored');
}

/** An embedded store in a directory of its own under `prefix`, closed and removed when the test ends. */
function embeddedStore(t: Test, prefix: string): { dir: string; store: ChdbStore } {
  const dir = tempDir(prefix);
  const store = new ChdbStore(path.join(dir, 'clickhouse'));
  t.teardown(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { dir, store };
}

t.test('embedded engine (chdb)', async (t) => {
  const { dir, store } = embeddedStore(t, 'meterd-analytics-');
  fs.mkdirSync(path.join(dir, 'clickhouse-inserts'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'clickhouse-inserts', 'meter_events-7.bin'), 'left by a crash');
  await store.init();
  t.same(fs.readdirSync(path.join(dir, 'clickhouse-inserts')), [], 'files left by a crashed insert are removed at start');
  await conformance(t, store);
  t.same(fs.readdirSync(path.join(dir, 'clickhouse-inserts')), [], 'no staged file outlives its insert');
  await store.close();
  t.notOk(fs.existsSync(path.join(dir, 'clickhouse-inserts')), 'and the staging directory goes with the store');
});

t.test('embedded engine in a directory whose name file() would read as a glob', async (t) => {
  const { dir, store } = embeddedStore(t, 'meterd-analytics-{glob}-');
  await store.init();
  t.notOk(fs.existsSync(path.join(dir, 'clickhouse-inserts')), 'the inserts are staged elsewhere');
  await conformance(t, store);
});

const url = process.env.CLICKHOUSE_URL;
t.test('ClickHouse server', { skip: url ? false : 'CLICKHOUSE_URL is not set: no server to test against' }, async (t) => {
  const database = `test_rowbinary_${process.pid}_${crypto.randomBytes(3).toString('hex')}`;
  const store = new ClickHouseServerStore({ url: url!, database });
  t.teardown(async () => {
    await store.close();
    await dropClickHouseDatabase(url!, database);
  });
  await store.init();
  await conformance(t, store);
});
