import t from 'tap';
import { processChunk, VALID, EMIT, type ChunkTask } from '../aggregator/worker';
import { fingerprint } from '../aggregator/fingerprint';
import { encodeRecord, decodeRecord, eventSeq, partitionFor, RecordKind, type MeterRecord } from '../shared/event-record';
import type { MeterInfo } from '../shared/meters';
import { rawRowValue } from '../aggregator/worker';
import { readRawRows } from './helpers/raw-rows';

const NOW = Date.UTC(2026, 10, 27, 12, 0, 30);
const meters: MeterInfo[] = [
  { account: 'acct_a', id: 'mtr_sum', eventName: 'tokens', active: true, customerKey: 'stripe_customer_id', valueKey: 'value', formula: 'sum', window: null },
  { account: 'acct_a', id: 'mtr_last', eventName: 'gauge', active: true, customerKey: 'cust', valueKey: 'v', formula: 'last', window: null },
  { account: 'acct_a', id: 'mtr_off', eventName: 'old', active: false, customerKey: 'stripe_customer_id', valueKey: 'value', formula: 'sum', window: null },
];

function task(records: MeterRecord[], opts: Partial<ChunkTask> = {}): ChunkTask {
  const bufs = records.map(encodeRecord);
  const ends = new Uint32Array(bufs.length);
  let n = 0;
  bufs.forEach((b, i) => {
    n += b.length;
    ends[i] = n;
  });
  return { partition: 0, firstOffset: 10, data: Buffer.concat(bufs), ends, meters, emitFromOffset: 0, ...opts };
}

function events(evs: Array<[string, string, number, Record<string, string>]>, validated = false): MeterRecord {
  return { kind: RecordKind.Events, account: 'acct_a', livemode: false, receivedMs: NOW, validated, events: evs };
}

t.test('records round-trip through msgpackr', async (t) => {
  const r = events([['tokens', 'id1', NOW, { stripe_customer_id: 'cus_1', value: '2.5' }]], true);
  t.same(decodeRecord(encodeRecord(r)), r);
  const c: MeterRecord = { kind: RecordKind.Adjustments, account: 'acct_a', livemode: true, receivedMs: NOW, cancels: [['tokens', 'id1']] };
  t.same(decodeRecord(encodeRecord(c)), c);
  t.throws(() => decodeRecord(Buffer.from([0x93, 0x09, 0x01, 0x02])), /version/);
});

t.test('seq numbers are unique and partitioning is stable', async (t) => {
  const seen = new Set<number>();
  for (let p = 0; p < 4; p++) for (let o = 0; o < 50; o++) for (let i = 0; i < 100; i++) seen.add(eventSeq(p, o, i));
  t.equal(seen.size, 4 * 50 * 100);
  t.equal(partitionFor('acct', 'id-42', 8), partitionFor('acct', 'id-42', 8));
  const counts = new Array(8).fill(0);
  for (let i = 0; i < 8000; i++) counts[partitionFor('acct', `id-${i}`, 8)]++;
  t.ok(Math.min(...counts) > 800, `spread over partitions: ${counts}`);
});

t.test('valid events get rows, fingerprints and per-minute partial sums', async (t) => {
  const r = processChunk(
    task([
      events([
        ['tokens', 'a', NOW, { stripe_customer_id: 'cus_1', value: '0.1' }],
        ['tokens', 'b', NOW + 1000, { stripe_customer_id: 'cus_1', value: '0.2' }],
        ['tokens', 'c', NOW - 60_000, { stripe_customer_id: 'cus_1', value: '5' }],
        ['gauge', 'd', NOW, { cust: 'cus_2', v: '9' }],
      ]),
    ]),
  );
  t.equal(r.n, 4);
  t.equal(r.nextOffset, 11);
  t.same([...r.flags], [VALID | EMIT, VALID | EMIT, VALID | EMIT, VALID | EMIT]);
  t.same([r.hi[0], r.lo[0]], fingerprint('acct_a', 'a'));
  t.equal(r.seq[1], eventSeq(0, 10, 1));
  const rows = readRawRows(r.rows, r.rowStart, r.n);
  t.equal(rows.length, 4);
  t.same(
    { ...rows[0], bytes: undefined },
    {
      account: 'acct_a',
      livemode: 0,
      meter_id: 'mtr_sum',
      event_name: 'tokens',
      customer: 'cus_1',
      identifier: 'a',
      timestamp_ms: NOW,
      value: '0.1',
      payload: '',
      received_ms: NOW,
      partition: 0,
      seq: eventSeq(0, 10, 0),
      bytes: undefined,
    },
    'the payload column is empty when customer and value say it all',
  );
  t.same(
    rows.map((x) => [x.meter_id, x.identifier, x.timestamp_ms, x.value]),
    [
      ['mtr_sum', 'a', NOW, '0.1'],
      ['mtr_sum', 'b', NOW + 1000, '0.2'],
      ['mtr_sum', 'c', NOW - 60_000, '5'],
      ['mtr_last', 'd', NOW, '9'],
    ],
  );
  t.equal(r.rowStart[4], r.rows.length, 'the rows end where the last one does');
  t.equal(rawRowValue(r.rows, r.rowStart[1]), 2n * 10n ** 14n, "a row's value read back for a dropped duplicate");
  t.equal(r.slots.length, 2, 'two minutes for the sum meter; the last meter is not rolled up');
  const thisMinute = r.slots.find((s) => s.minute === Math.floor(NOW / 60000) * 60)!;
  t.equal(thisMinute.sum, String(3n * 10n ** 14n), '0.1 + 0.2 is exactly 0.3');
  t.equal(thisMinute.count, 2);
  t.equal(r.slot[3], -1);
});

t.test('rollup slots are shared across the records of a chunk, per customer and minute, with exact sums', async (t) => {
  const M0 = NOW;
  const M1 = NOW + 60_000;
  const r = processChunk(
    task([
      events([
        ['tokens', 'r1', M0, { stripe_customer_id: 'cus_1', value: '1' }],
        ['tokens', 'r2', M0, { stripe_customer_id: 'cus_2', value: '0.25' }],
      ]),
      events([
        ['tokens', 'r3', M0, { stripe_customer_id: 'cus_1', value: '-3.5' }],
        ['tokens', 'r4', M1, { stripe_customer_id: 'cus_1', value: '4' }],
        ['gauge', 'r5', M0, { cust: 'cus_1', v: '9' }],
        ['tokens', 'r6', M0, { stripe_customer_id: 'cus_2', value: '999999999999999' }],
        ['tokens', 'r7', M0, { stripe_customer_id: 'cus_1', value: 'x' }],
        ['tokens', 'r8', M0, { stripe_customer_id: 'cus_1', value: '0.000000000000001' }],
      ]),
    ]),
  );
  const minute = (ms: number) => Math.floor(ms / 60000) * 60;
  const sums = Object.fromEntries(r.slots.map((s) => [`${s.customer}@${s.minute - minute(M0)}`, [s.sum, s.count]]));
  const scaled = (v: string) => {
    const [i, f = ''] = v.replace('-', '').split('.');
    const x = BigInt(i) * 10n ** 15n + BigInt(f.padEnd(15, '0'));
    return v.startsWith('-') ? -x : x;
  };
  t.same(sums, {
    'cus_1@0': [String(scaled('1') + scaled('-3.5') + scaled('0.000000000000001')), 3],
    'cus_2@0': [String(scaled('0.25') + scaled('999999999999999')), 2],
    'cus_1@60': [String(scaled('4')), 1],
  });
  t.equal(r.slots.length, 3, 'one slot per meter, customer and minute, whatever the record');
  t.equal(r.errors.length, 1, 'the invalid value is reported, not summed');
  t.equal(r.errors[0].code, 'meter_event_invalid_value');
});

t.test('extra payload keys are kept, and row offsets are bytes even for non-ASCII rows', async (t) => {
  const r = processChunk(
    task([
      events([
        ['tokens', 'é-1', NOW, { stripe_customer_id: 'cüs', value: '1', region: 'eu' }],
        ['tokens', 'plain', NOW, { stripe_customer_id: 'cus_2', value: '2' }],
      ]),
    ]),
  );
  const [first, second] = readRawRows(r.rows, r.rowStart, r.n);
  t.match(first, { customer: 'cüs', identifier: 'é-1', value: '1', payload: '{"stripe_customer_id":"cüs","value":"1","region":"eu"}' });
  t.equal(r.rowStart[1] - r.rowStart[0], first.bytes);
  t.match(second, { account: 'acct_a', meter_id: 'mtr_sum', event_name: 'tokens', customer: 'cus_2', identifier: 'plain', payload: '' });
  t.equal(r.rowStart[2], r.rows.length);
});

t.test('stream events are validated asynchronously and reported', async (t) => {
  const r = processChunk(
    task([
      events([
        ['nope', 'e1', NOW, { stripe_customer_id: 'cus_1', value: '1' }],
        ['tokens', 'e2', NOW, { value: '1' }],
        ['tokens', 'e3', NOW, { stripe_customer_id: 'cus_1', value: 'abc' }],
        ['tokens', 'e4', NOW - 36 * 24 * 3600_000, { stripe_customer_id: 'cus_1', value: '1' }],
        ['tokens', 'e5', NOW + 6 * 60_000, { stripe_customer_id: 'cus_1', value: '1' }],
        ['old', 'e6', NOW, { stripe_customer_id: 'cus_1', value: '1' }],
        ['tokens', 'e7', NOW, { stripe_customer_id: 'cus_1', value: '1234567890123456' }],
      ]),
    ]),
  );
  t.same(
    r.errors.map((e) => [e.identifier, e.code]),
    [
      ['e1', 'no_meter'],
      ['e2', 'meter_event_no_customer_defined'],
      ['e3', 'meter_event_invalid_value'],
      ['e4', 'timestamp_too_far_in_past'],
      ['e5', 'timestamp_in_future'],
      ['e6', 'archived_meter'],
      ['e7', 'meter_event_value_too_many_digits'],
    ],
  );
  t.same([...r.flags], [0, 0, 0, 0, 0, 0, 0]);
  t.equal(r.rows.length, 0);
  t.equal(r.errors[0].meterId, null);
  t.equal(r.errors[1].meterId, 'mtr_sum');
});

t.test('events validated by the gateway count even if the meter was deactivated since', async (t) => {
  const r = processChunk(task([events([['old', 'x', NOW, { stripe_customer_id: 'cus_1', value: '1' }]], true)]));
  t.equal(r.flags[0], VALID | EMIT);
  t.equal(r.errors.length, 0);
});

t.test('replayed records only yield fingerprints; adjustments keep their log position', async (t) => {
  const r = processChunk(
    task(
      [
        events([['tokens', 'r1', NOW, { stripe_customer_id: 'cus_1', value: '1' }]]),
        { kind: RecordKind.Adjustments, account: 'acct_a', livemode: false, receivedMs: NOW, cancels: [['tokens', 'r1']] },
        events([['tokens', 'r2', NOW, { stripe_customer_id: 'cus_1', value: '2' }]]),
      ],
      { emitFromOffset: 11 },
    ),
  );
  t.same([...r.flags], [VALID, VALID | EMIT]);
  t.equal(r.cancels.length, 1);
  t.equal(r.cancels[0].position, 1, 'the cancel comes after event 0 and before event 1');
  t.equal(r.cancels[0].emit, true);
  t.equal(readRawRows(r.rows, r.rowStart, r.n).length, 1);
  t.equal(r.slots.length, 1);
  t.equal(r.slots[0].sum, String(2n * 10n ** 15n));
});
