/**
 * End-to-end, seeded fuzz (fast-check) of the WebSocket stream: sequences of valid batches, batches with one bad
 * event, maps that are not batches, random bytes, random JSON text and mutated msgpack, sent back to back on several
 * connections at once. The oracle for each sequence:
 *  - every frame is answered exactly once: an ack or an error for the frames whose id could be read (by that id), an
 *    error with id null for the others, and the connection stays open;
 *  - an error is a Stripe-shaped object, never an api_error (nothing the client sent makes the server fail);
 *  - valid events are counted exactly: those of acknowledged batches, none of a rejected one.
 * Then the process is still alive.
 */
import t from 'tap';
import fc from 'fast-check';
import { Packr, Unpackr } from 'msgpackr';
import WebSocket from 'ws';
import { currentRange, eventually, startServer } from './helpers/server';
import { uniqueName } from './helpers/assertions';

type Frame =
  | { kind: 'valid'; events: number; binary: boolean }
  | { kind: 'bad-event'; events: number; at: number; binary: boolean; flaw: number }
  | { kind: 'not-a-batch'; data: Buffer | string }
  | { kind: 'no-id'; binary: boolean; id: unknown };

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('valid' as const), events: fc.integer({ min: 1, max: 200 }), binary: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc
      .record({ events: fc.integer({ min: 1, max: 50 }), at: fc.nat(), binary: fc.boolean(), flaw: fc.integer({ min: 0, max: 7 }) })
      .map((r) => ({ kind: 'bad-event' as const, ...r, at: r.at % r.events })),
  },
  {
    weight: 2,
    arbitrary: fc.oneof(
      fc.uint8Array({ minLength: 0, maxLength: 64 }).map((b) => ({ kind: 'not-a-batch' as const, data: Buffer.from(b) })),
      fc.string({ maxLength: 40 }).map((s) => ({ kind: 'not-a-batch' as const, data: s })),
      fc.jsonValue().map((v) => ({ kind: 'not-a-batch' as const, data: Array.isArray(v) || v === null || typeof v !== 'object' ? JSON.stringify(v) : '[]' })),
      fc
        .anything()
        .map((v) => ({ kind: 'not-a-batch' as const, data: Array.isArray(v) || v === null || typeof v !== 'object' ? packr.pack(v) : packr.pack([v]) })),
    ),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('no-id' as const),
      binary: fc.boolean(),
      id: fc.oneof(fc.constant(undefined), fc.constant(''), fc.integer(), fc.constant('x'.repeat(101)), fc.constant(null)),
    }),
  },
);

/** Ways to make an event structurally invalid; each must be refused with an error naming it. */
function flawed(event: Record<string, unknown>, flaw: number): Record<string, unknown> {
  switch (flaw) {
    case 0:
      return { ...event, event_name: undefined };
    case 1:
      return { ...event, payload: 'not a map' };
    case 2:
      return { ...event, payload: {} };
    case 3:
      return { ...event, payload: { ...(event.payload as object), value: { nested: true } } };
    case 4:
      return { ...event, timestamp: '2026-12-05T13:21' };
    case 5:
      return { ...event, identifier: 'i'.repeat(101) };
    case 6:
      return { ...event, surprise: 1 };
    default:
      return { ...event, event_name: 'e'.repeat(101) };
  }
}

t.test('seeded fuzz of the WebSocket stream with an exact-count oracle', async (t) => {
  const server = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const meter = await stripe.billing.meters.create({ display_name: 'fuzz', event_name: uniqueName('ws_fuzz'), default_aggregation: { formula: 'sum' } });
  const res = await server.request('POST', '/v2/billing/meter_event_session', { body: '{}', headers: { 'content-type': 'application/json' } });
  const token = res.body.authentication_token as string;
  let expected = 0;
  let run = 0;
  let violations = 0;

  async function connect(): Promise<{ ws: WebSocket; messages: Record<string, any>[]; wait: (n: number) => Promise<void> }> {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/v2/billing/meter_event_stream`, { headers: { authorization: `Bearer ${token}` } });
    const messages: Record<string, any>[] = [];
    let notify: (() => void) | null = null;
    ws.on('message', (data, isBinary) => {
      messages.push(isBinary ? unpackr.unpack(data as Buffer) : JSON.parse(String(data)));
      notify?.();
    });
    ws.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    const wait = async (n: number) => {
      const deadline = Date.now() + 20_000;
      while (messages.length < n && ws.readyState === WebSocket.OPEN && Date.now() < deadline) {
        await new Promise<void>((resolve) => {
          notify = resolve;
          setTimeout(resolve, 50);
        });
      }
    };
    await wait(1);
    return { ws, messages, wait };
  }

  await fc.assert(
    fc.asyncProperty(fc.array(fc.array(frameArb, { minLength: 1, maxLength: 25 }), { minLength: 1, maxLength: 3 }), async (connections) => {
      run++;
      const outcomes = await Promise.all(
        connections.map(async (frames, ci) => {
          const c = await connect();
          const wanted = new Map<string, { events: number; valid: boolean }>();
          let nullIds = 0;
          frames.forEach((f, fi) => {
            const id = `r${run}-c${ci}-f${fi}`;
            const event = (i: number) => ({ event_name: meter.event_name, payload: { stripe_customer_id: 'cus_fuzz', value: String((i % 5) + 1) } });
            if (f.kind === 'valid' || f.kind === 'bad-event') {
              const evs: Record<string, unknown>[] = Array.from({ length: f.events }, (_, i) => event(i));
              if (f.kind === 'bad-event') evs[f.at] = flawed(evs[f.at], f.flaw);
              const total = f.kind === 'valid' ? evs.reduce((s, _, i) => s + (i % 5) + 1, 0) : 0;
              wanted.set(id, { events: total, valid: f.kind === 'valid' });
              const batch = { id, events: evs };
              c.ws.send(f.binary ? packr.pack(batch) : JSON.stringify(batch), { binary: f.binary });
            } else if (f.kind === 'no-id') {
              nullIds++;
              const batch = { id: f.id, events: [event(0)] };
              c.ws.send(f.binary ? packr.pack(batch) : JSON.stringify(batch), { binary: f.binary });
            } else {
              // A JSON text that happens to be a map with a usable id would be a batch: the generators avoid maps.
              nullIds++;
              c.ws.send(f.data, { binary: typeof f.data !== 'string' });
            }
          });
          await c.wait(1 + frames.length);
          const answers = c.messages.slice(1);
          const open = c.ws.readyState === WebSocket.OPEN;
          c.ws.close(1000);
          return { answers, wanted, nullIds, open };
        }),
      );
      let ok = true;
      for (const o of outcomes) {
        if (!o.open) ok = false;
        const byId = new Map<string, Record<string, any>[]>();
        let nulls = 0;
        for (const a of o.answers) {
          if (a.type !== 'ack' && a.type !== 'error') ok = false;
          if (a.type === 'error' && (a.error?.type !== 'invalid_request_error' || typeof a.error?.message !== 'string')) ok = false;
          if (a.id === null) nulls++;
          else byId.set(a.id, [...(byId.get(a.id) ?? []), a]);
        }
        if (nulls !== o.nullIds) ok = false;
        for (const [id, w] of o.wanted) {
          const got = byId.get(id) ?? [];
          if (got.length !== 1 || got[0].type !== (w.valid ? 'ack' : 'error')) ok = false;
          if (w.valid && got[0]?.type === 'ack') expected += w.events;
        }
        if (byId.size !== o.wanted.size) ok = false;
      }
      if (!ok) violations++;
      return ok;
    }),
    { seed: 20261206, numRuns: 40 },
  );
  t.equal(violations, 0, 'every frame answered once, as its kind calls for, on connections that stay open');
  const range = currentRange();
  let total = -1;
  await eventually(
    async () => {
      const list = await stripe.billing.meters.listEventSummaries(meter.id, { customer: 'cus_fuzz', start_time: range.start, end_time: range.end });
      total = list.data.reduce((s, x) => s + x.aggregated_value, 0);
      return total === expected;
    },
    20_000,
    100,
  ).catch(() => undefined);
  t.equal(total, expected, `valid events counted exactly (${expected})`);
  t.equal((await server.request('GET', '/healthz')).status, 200, 'the server is alive');
});
