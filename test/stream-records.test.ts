import t from 'tap';
import { chunk, decodeAll } from './helpers/records';
import { processChunk } from '../aggregator/worker';
import { decodeRecord, encodeJsonRecord } from '../shared/event-record';
import type { Principal } from '../shared/http/auth';
import type { MeterInfo } from '../shared/meters';
import { encodeEventRecords, encodeStreamRecords } from '../ingest/records';
import { readStreamRequest } from '../ingest/stream-events';

const NOW = Date.UTC(2026, 10, 27, 12, 0, 30);
const principal = { account: 'acct_ä', livemode: false } as Principal;
const meters: MeterInfo[] = [
  { account: 'acct_ä', id: 'mtr_sum', eventName: 'tokens', active: true, customerKey: '__proto__', valueKey: '\u0000v', formula: 'sum', window: null },
  { account: 'acct_ä', id: 'mtr_n', eventName: 'n', active: true, customerKey: 'customer', valueKey: 'value', formula: 'sum', window: null },
];

const body = Buffer.from(
  JSON.stringify({
    events: [
      { event_name: 'tokens', identifier: 'id-1', payload: JSON.parse('{"__proto__":"cus_proto","\\u0000v":"1.5","constructor":"c"}') },
      { event_name: 'n', payload: { customer: 'cus_é', value: 7 }, timestamp: '2026-11-27T13:00:00.123+01:00' },
      { event_name: 'n', identifier: '', payload: { customer: 'cus_2', value: '2' }, timestamp: String(Math.floor(NOW / 1000) - 60) },
      { event_name: 'n', identifier: 'id-4', payload: { customer: 'cus_2', value: 1e-7, extra: 'x\ty' } },
      ...Array.from({ length: 40 }, (_, i) => ({ event_name: 'n', identifier: `bulk-${i}`, payload: { customer: `cus_${i % 3}`, value: String(i) } })),
    ],
  }),
);

for (const partitions of [1, 4]) {
  for (const idempotencyKey of ['', 'key-1']) {
    t.test(`JSON records decode to the events msgpack records hold (${partitions} partitions, key '${idempotencyKey}')`, async (t) => {
      const { events, raw } = readStreamRequest(body, principal.account, idempotencyKey, NOW);
      const json = encodeStreamRecords(principal, NOW, events, raw, body, partitions);
      const packed = encodeEventRecords(principal, NOW, false, events, partitions);
      t.same(decodeAll(json), decodeAll(packed));
      if (partitions === 1) t.equal(json.length, 1, 'one record whose JSON is the body');
      else t.ok(json.length > 1, 'split by partition');
      const first = decodeAll(json).flatMap(([, r]) => (r.kind === 1 ? r.events : []));
      const proto = first.find((e) => e[1] === 'id-1')!;
      t.equal((proto[3] as { toString?: unknown }).toString, undefined, 'payload maps have no inherited members');
      t.same(Object.keys(proto[3]), ['__proto__', '\u0000v', 'constructor'], '__proto__ and NUL-prefixed keys round-trip');
      t.equal(Object.getOwnPropertyDescriptor(proto[3], '__proto__')?.value, 'cus_proto');
      t.equal(first.find((e) => e[3].customer === 'cus_é')![2], Date.UTC(2026, 10, 27, 12, 0, 0, 123));
      t.equal(first.find((e) => e[1] === 'id-4')![3].value, '1e-7', 'numbers become their decimal text');
      for (let p = 0; p < partitions; p++) {
        const a = processChunk(chunk(json, p, meters));
        const b = processChunk(chunk(packed, p, meters));
        t.same(a, b, `the worker's result is the same for partition ${p}`);
      }
    });
  }
}

t.test('generated identifiers are kept in the record, not derived again', async (t) => {
  const { events, raw } = readStreamRequest(body, principal.account, '', NOW);
  const [[, bytes]] = encodeStreamRecords(principal, NOW, events, raw, body, 1);
  const decoded = decodeRecord(bytes);
  t.equal(decoded.kind, 1);
  if (decoded.kind !== 1) return;
  t.equal(decoded.events[1][1], events[1][1]);
  t.match(decoded.events[1][1], /^[0-9a-f-]{36}$/);
  t.equal(decoded.events[2][1], events[2][1], 'an empty identifier is replaced too');
  t.same(readStreamRequest(body, principal.account, '', NOW).events[1][1] === events[1][1], false, 'random without a key');
});

t.test('a JSON record that is damaged is refused, not misread', async (t) => {
  const good = encodeJsonRecord(
    { account: 'a', livemode: true, receivedMs: NOW, validated: false, generated: [] },
    Buffer.from('[{"event_name":"n","identifier":"x","payload":{"a":"1"}}]'),
  );
  const d = decodeRecord(good);
  t.same(d, {
    kind: 1,
    account: 'a',
    livemode: true,
    receivedMs: NOW,
    validated: false,
    events: [['n', 'x', NOW, Object.assign(Object.create(null), { a: '1' })]],
  });
  const badFormat = Buffer.from(good);
  badFormat[1] = 9;
  t.throws(() => decodeRecord(badFormat), /format/);
  t.throws(() => decodeRecord(good.subarray(0, good.length - 3)));
  const noName = encodeJsonRecord(
    { account: 'a', livemode: true, receivedMs: NOW, validated: false, generated: [] },
    Buffer.from('[{"identifier":"x","payload":{}}]'),
  );
  t.throws(() => decodeRecord(noName), /malformed/);
});

t.test('records split across partitions carry their events as the body spelled them, or serialized again', async (t) => {
  const spaced = Buffer.from(
    '{ "events" : [ ' +
      Array.from({ length: 12 }, (_, i) => `{ "event_name" : "n" , "identifier" : "sp-${i}" , "payload" : { "customer" : "cus_${i}" , "value" : 1.50 } }`).join(
        ' , ',
      ) +
      ' ] }',
  );
  const { events, raw } = readStreamRequest(spaced, principal.account, '', NOW);
  const records = encodeStreamRecords(principal, NOW, events, raw, spaced, 4);
  t.ok(records.length > 1, 'split by partition');
  for (const [, bytes] of records) t.match(bytes.toString('utf8'), /\{ "event_name" : "n" , "identifier" : "sp-\d+"/, "the body's own bytes");
  t.same(decodeAll(records), decodeAll(encodeEventRecords(principal, NOW, false, events, 4)));
  // A top-level key with an escape could spell "events": the bytes are not trusted, the events are serialized again.
  const escaped = Buffer.from(`{"\\u0065vents":${JSON.stringify(JSON.parse(spaced.toString()).events)}}`);
  const again = readStreamRequest(escaped, principal.account, '', NOW);
  const reencoded = encodeStreamRecords(principal, NOW, again.events, again.raw, escaped, 4);
  for (const [, bytes] of reencoded) t.notMatch(bytes.toString('utf8'), /\{ "event_name"/, 'serialized again');
  t.same(decodeAll(reencoded), decodeAll(encodeEventRecords(principal, NOW, false, again.events, 4)));
});
