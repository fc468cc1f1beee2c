import t from 'tap';
import { chunk, decodeAll } from './helpers/records';
import { processChunk } from '../aggregator/worker';
import { decodeRecord } from '../shared/event-record';
import type { Principal } from '../shared/http/auth';
import type { MeterInfo } from '../shared/meters';
import { encodeEventRecords, encodeSocketBatchRecords, eventRanges, type SocketBatch } from '../ingest/records';
import { generatedIdentifier, readStreamEvents, SOCKET_IDENTIFIER_TAG, SocketBatchIdentifiers } from '../ingest/stream-events';

const NOW = Date.UTC(2026, 10, 27, 12, 0, 30);
const RULES = { maxEvents: 1000, integerSeconds: true };
const principal = { account: 'acct_ä', livemode: true } as Principal;
const meters: MeterInfo[] = [
  { account: 'acct_ä', id: 'mtr_n', eventName: 'n', active: true, customerKey: 'customer', valueKey: 'value', formula: 'sum', window: null },
];

t.test('derived identifiers: one hash per batch, the index appended', async (t) => {
  const a = new SocketBatchIdentifiers('acct_1', 'batch-1');
  t.equal(a.derivedPrefix, null, 'nothing is hashed until an event needs an identifier');
  const first = a.derive(0);
  t.match(first, /^ws1-[0-9a-f]{32}-0$/);
  t.equal(a.derivedPrefix, first.slice(0, -1));
  t.equal(first.slice(0, SOCKET_IDENTIFIER_TAG.length), SOCKET_IDENTIFIER_TAG);
  t.equal(new SocketBatchIdentifiers('acct_1', 'batch-1').derive(999), a.derive(999), 'the same batch resent gets the same identifiers');
  const seen = new Set<string>();
  for (const account of ['acct_1', 'acct_2', 'acct_1\u0000ws:x']) {
    for (const id of ['batch-1', 'batch-2', 'x', 'batch-1 ']) {
      const ids = new SocketBatchIdentifiers(account, id);
      for (let i = 0; i < 1000; i++) seen.add(ids.derive(i));
    }
  }
  t.equal(seen.size, 3 * 4 * 1000, 'no two batches, accounts or indexes share an identifier');
  const longest = new SocketBatchIdentifiers('acct_'.padEnd(255, 'a'), 'i'.repeat(100)).derive(999);
  t.ok(longest.length <= 100, `at most 100 characters (${longest.length})`);
  t.not(a.derive(0), generatedIdentifier('acct_1', 'ws:batch-1', 0), 'a shape of its own, apart from the per-event hash of earlier versions');
  t.match(generatedIdentifier('acct_1', 'key', 3), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}$/, 'the HTTP derivation is unchanged');
  t.equal(generatedIdentifier('acct_1', 'key', 3), generatedIdentifier('acct_1', 'key', 3));
});

t.test('readStreamEvents gives derived identifiers only to events without one', async (t) => {
  const ids = new SocketBatchIdentifiers('acct_1', 'b');
  const events = readStreamEvents(
    [
      { event_name: 'n', payload: { a: '1' } },
      { event_name: 'n', identifier: 'mine', payload: { a: '1' } },
      { event_name: 'n', identifier: '', payload: { a: '1' } },
    ],
    ids.derive,
    NOW,
    RULES,
  );
  t.same(
    events.map((e) => e[1]),
    [`${ids.derivedPrefix}0`, 'mine', `${ids.derivedPrefix}2`],
  );
  const withIds = new SocketBatchIdentifiers('acct_1', 'c');
  readStreamEvents([{ event_name: 'n', identifier: 'x', payload: { a: '1' } }], withIds.derive, NOW, RULES);
  t.equal(withIds.derivedPrefix, null, 'a batch whose events all have identifiers costs no hash');
});

t.test('eventRanges finds each event of a text frame, strings and nesting included', async (t) => {
  const events = [
    { event_name: 'n"]}{[,', payload: { customer: 'c\\"}', value: '1' } },
    { event_name: 'n', identifier: 'i', payload: { 'k]': '[{', value: 2 } },
  ];
  const frames = [
    JSON.stringify({ id: 'x', events }),
    JSON.stringify({ events, id: '{"events":[]}' }),
    ` { "id" : "x" ,\n "events" : [ ${JSON.stringify(events[0])} ,\t${JSON.stringify(events[1])} ] } `,
    JSON.stringify({ events: [{ event_name: 'decoy', payload: {} }], id: 'x' }).replace('"id"', `"events":${JSON.stringify(events)},"id"`),
  ];
  for (const frame of frames) {
    const text = Buffer.from(frame);
    const ranges = eventRanges(text, 2);
    t.ok(ranges, frame);
    if (!ranges) continue;
    const parsed = JSON.parse(frame).events;
    for (let i = 0; i < 2; i++) t.same(JSON.parse(text.toString('utf8', ranges[2 * i], ranges[2 * i + 1])), parsed[i]);
  }
  t.equal(eventRanges(Buffer.from('{"ev\\u0065nts":[{"a":1}]}'), 1), null, 'an escaped top-level key: re-encoded instead');
  t.equal(eventRanges(Buffer.from('{"events":[{"a":1}]}'), 2), null, 'a count that differs');
});

t.test('eventRanges agrees with JSON.parse on random frames', async (t) => {
  let seed = 7;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const alphabet = ['a', '"', '\\', '{', '}', '[', ']', ',', ':', ' ', 'é', '😀', '\u0000', '\n', 'events'];
  const text = () => Array.from({ length: Math.floor(random() * 8) }, () => alphabet[Math.floor(random() * alphabet.length)]).join('');
  let checked = 0;
  for (let round = 0; round < 300; round++) {
    const events = Array.from({ length: 1 + Math.floor(random() * 5) }, () => {
      const payload: Record<string, unknown> = {};
      for (let k = 0; k < 3; k++) payload[text()] = random() < 0.5 ? text() : { nested: [text(), { [text()]: text() }] };
      return { event_name: text(), payload, ...(random() < 0.5 ? { identifier: text() } : {}) };
    });
    const frame: Record<string, unknown> = random() < 0.5 ? { id: text(), events } : { events, id: text() };
    // A top-level key with an escape makes eventRanges give up (tested above): the decoy's key has none.
    if (random() < 0.3) frame[`x${text().replace(/["\\\u0000\n]/g, '')}`] = { events: [{ decoy: text() }] };
    const json = JSON.stringify(frame, null, Math.floor(random() * 3));
    const ranges = eventRanges(Buffer.from(json), events.length);
    const parsed = JSON.parse(json).events as unknown[];
    if (!ranges) {
      t.fail(`no ranges for ${json}`);
      continue;
    }
    const bytes = Buffer.from(json);
    const got = parsed.map((_, i) => JSON.parse(bytes.toString('utf8', ranges[2 * i], ranges[2 * i + 1])));
    if (JSON.stringify(got) !== JSON.stringify(parsed)) t.fail(json);
    else checked++;
  }
  t.equal(checked, 300, 'every frame cut into exactly its events');
});

function frameEvents(n: number, withIdentifiers: boolean): unknown[] {
  return Array.from({ length: n }, (_, i) => {
    const e: Record<string, unknown> = { event_name: 'n', payload: { customer: `cus_${i % 7}`, value: i % 3 === 0 ? i : String(i) } };
    if (withIdentifiers || i % 5 === 0) e.identifier = i % 10 === 0 ? '' : `id-${i}`;
    if (i % 4 === 0) e.timestamp = Math.floor(NOW / 1000) - i;
    if (i % 4 === 1) e.timestamp = '2026-11-27T12:00:00.5Z';
    return e;
  });
}

for (const partitions of [1, 4]) {
  for (const n of [1, 100, 250, 1000]) {
    for (const withIdentifiers of [false, true]) {
      t.test(
        `a text frame's records hold its own JSON and decode as msgpack records do (${partitions} partitions, ${n} events${withIdentifiers ? ', identifiers' : ''})`,
        async (t) => {
          const raw = frameEvents(n, withIdentifiers);
          const text = Buffer.from(JSON.stringify({ id: `batch-${n}`, events: raw }));
          const ids = new SocketBatchIdentifiers(principal.account, `batch-${n}`);
          const events = readStreamEvents(JSON.parse(text.toString()).events, ids.derive, NOW, RULES);
          const batch: SocketBatch = { events, raw, text, derivedPrefix: ids.derivedPrefix };
          const json = encodeSocketBatchRecords(principal, NOW, batch, partitions);
          const packed = encodeEventRecords(principal, NOW, false, events, partitions);
          t.same(decodeAll(json), decodeAll(packed));
          t.ok(
            json.every(([, b]) => b[0] === 0xc1 && b[1] === 3),
            'JSON records of format 3',
          );
          t.equal(
            json.reduce((s, [, r]) => s + (decodeRecord(r).kind === 1 ? (decodeRecord(r) as { events: unknown[] }).events.length : 0), 0),
            n,
          );
          if (!withIdentifiers) {
            const bytes = json.reduce((s, [, b]) => s + b.length, 0);
            t.ok(bytes < text.length + json.length * 64 + n * 3, `derived identifiers cost 3 bytes per event (${bytes} bytes for a ${text.length}-byte frame)`);
          }
          for (let p = 0; p < partitions; p++)
            t.same(processChunk(chunk(json, p, meters)), processChunk(chunk(packed, p, meters)), `the worker's result, partition ${p}`);
        },
      );
    }
  }
}

t.test('binary frames, and text frames the scanner cannot follow, still become msgpack records', async (t) => {
  const raw = frameEvents(3, false);
  const ids = new SocketBatchIdentifiers(principal.account, 'b');
  const events = readStreamEvents(raw, ids.derive, NOW, RULES);
  const expected = decodeAll(encodeEventRecords(principal, NOW, false, events, 1));
  const binary = encodeSocketBatchRecords(principal, NOW, { events, raw, text: null, derivedPrefix: ids.derivedPrefix }, 1);
  t.not(binary[0][1][0], 0xc1);
  t.same(decodeAll(binary), expected);
  const escaped = Buffer.from(JSON.stringify({ id: 'b', events: raw }).replace('"events"', '"\\u0065vents"'));
  const fallback = encodeSocketBatchRecords(principal, NOW, { events, raw, text: escaped, derivedPrefix: ids.derivedPrefix }, 1);
  t.not(fallback[0][1][0], 0xc1);
  t.same(decodeAll(fallback), expected);
});
