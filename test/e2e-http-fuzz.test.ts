/**
 * End-to-end, seeded fuzz (fast-check) of the running server through raw sockets: sequences of valid meter event
 * batches, reads and bad requests, pipelined and split at random points. The oracle for each sequence:
 *  - every request before the first framing error is answered, in order, with the status its kind calls for;
 *  - the framing error itself gets one Stripe-shaped 4xx (or 501/505) error, then the connection closes;
 *  - no 500, a Request-Id on every answer, an error object on every error;
 *  - valid events are counted exactly: those answered 200, and none of those sent after a framing error.
 * Then: payload keys named like Object.prototype members, and the process still alive.
 */
import t from 'tap';
import fc from 'fast-check';
import { startServer, eventually, currentRange, type TestServer } from './helpers/server';
import { uniqueName } from './helpers/assertions';
import { rawExchange, rawRequest } from './helpers/raw-http';

type Item =
  | { kind: 'batch'; events: number }
  | { kind: 'health' }
  | { kind: 'head' }
  | { kind: 'bad-param' }
  | { kind: 'unknown-method'; method: string }
  | { kind: 'fatal'; bytes: string; status: number[] };

const fatalArb: fc.Arbitrary<Item> = fc.oneof(
  fc.constant({ kind: 'fatal', bytes: 'GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nContent-Length: 60\r\n\r\n', status: [400] } as Item),
  fc.constant({
    kind: 'fatal',
    bytes: 'POST /v2/billing/meter_event_stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n',
    status: [501],
  } as Item),
  fc.constant({ kind: 'fatal', bytes: 'GET /healthz HTTP/1.1\nHost: a\n\n', status: [400] } as Item),
  fc.constant({ kind: 'fatal', bytes: 'GET /healthz HTTP/1.1\r\n\r\n', status: [400] } as Item),
  fc.constant({ kind: 'fatal', bytes: 'GET /healthz HTTP/9.9\r\nHost: a\r\n\r\n', status: [505] } as Item),
  fc.constant({
    kind: 'fatal',
    bytes: 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdefg\r\n',
    status: [400],
  } as Item),
  fc.constant({ kind: 'fatal', bytes: `GET /${'x'.repeat(9000)} HTTP/1.1\r\nHost: a\r\n\r\n`, status: [414] } as Item),
  fc
    .string({ minLength: 1, maxLength: 40 })
    .map((s) => ({ kind: 'fatal', bytes: `GET /healthz HTTP/1.1\r\nHost: a\r\nX-Bad: ${s}\u0000\r\n\r\n`, status: [400] }) as Item),
  // Random bytes behind a control character: never a method token.
  fc
    .uint8Array({ minLength: 1, maxLength: 60 })
    .map((a) => ({ kind: 'fatal', bytes: '\u0001' + Buffer.from(a).toString('latin1') + '\r\n\r\n', status: [400, 414, 431] }) as Item),
);

const itemArb: fc.Arbitrary<Item> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: 1, max: 5 }).map((events) => ({ kind: 'batch', events }) as Item) },
  { weight: 2, arbitrary: fc.constant({ kind: 'health' } as Item) },
  { weight: 1, arbitrary: fc.constant({ kind: 'head' } as Item) },
  { weight: 1, arbitrary: fc.constant({ kind: 'bad-param' } as Item) },
  { weight: 1, arbitrary: fc.constantFrom('FOO', 'get', 'Post', 'BREW').map((method) => ({ kind: 'unknown-method', method }) as Item) },
  { weight: 2, arbitrary: fatalArb },
);

t.test('seeded fuzz of the HTTP layer with an exact-count oracle', async (t) => {
  const server: TestServer = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const meter = await stripe.billing.meters.create({ display_name: 'fuzz', event_name: uniqueName('fuzz'), default_aggregation: { formula: 'sum' } });
  const session = await stripe.v2.billing.meterEventSession.create();
  const customer = uniqueName('cus_fuzz');
  let nextId = 0;
  let expectedTotal = 0;
  let sequences = 0;
  let requests = 0;

  const encode = (item: Item): string => {
    switch (item.kind) {
      case 'batch': {
        const events = Array.from({ length: item.events }, () => ({
          event_name: meter.event_name,
          identifier: `${customer}-${nextId++}`,
          payload: { stripe_customer_id: customer, value: '1' },
        }));
        return rawRequest(
          'POST',
          '/v2/billing/meter_event_stream',
          { Authorization: `Bearer ${session.authentication_token}`, 'Content-Type': 'application/json' },
          JSON.stringify({ events }),
        );
      }
      case 'health':
        return rawRequest('GET', '/healthz', {});
      case 'head':
        return rawRequest('HEAD', '/healthz', {});
      case 'bad-param':
        return rawRequest(
          'POST',
          '/v1/billing/meters',
          { Authorization: `Bearer ${server.key}`, 'Content-Type': 'application/x-www-form-urlencoded' },
          'nonsense=1',
        );
      case 'unknown-method':
        return rawRequest(item.method, '/v1/billing/meters', {});
      case 'fatal':
        return item.bytes;
    }
  };
  const expectedStatus = (item: Item): number[] =>
    item.kind === 'fatal' ? item.status : item.kind === 'bad-param' ? [400] : item.kind === 'unknown-method' ? [405] : [200];

  await fc.assert(
    fc.asyncProperty(fc.array(itemArb, { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 6 }), async (items, cuts) => {
      sequences++;
      const fatalAt = items.findIndex((i) => i.kind === 'fatal');
      const answered = fatalAt < 0 ? items.length : fatalAt + 1;
      const wire = items.map(encode);
      // Without a framing error, end the sequence with Connection: close so that the server closes when done.
      if (fatalAt < 0) wire.push('GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
      const bytes = wire.join('');
      const heads = new Set<number>();
      items.forEach((i, k) => {
        if (i.kind === 'head') heads.add(k);
      });
      const ex = await rawExchange(server.port, bytes, { splits: cuts.map((c) => c % bytes.length), headIndexes: heads, quietMs: 3000 });
      requests += ex.responses.length;
      const want = fatalAt < 0 ? answered + 1 : answered;
      if (ex.responses.length !== want) throw new Error(`expected ${want} answers, got ${ex.responses.length}: ${ex.responses.map((r) => r.status).join(',')}`);
      if (!ex.closed) throw new Error('the connection was not closed');
      for (let k = 0; k < answered; k++) {
        const r = ex.responses[k];
        if (!expectedStatus(items[k]).includes(r.status)) throw new Error(`item ${k} (${items[k].kind}): status ${r.status} ${r.body.slice(0, 200)}`);
        if (!/^req_/.test(r.headers['request-id'] ?? '')) throw new Error(`item ${k}: no Request-Id`);
        if (r.status >= 400 && !(r.json && typeof r.json.error?.message === 'string')) throw new Error(`item ${k}: no error object`);
        if (items[k].kind === 'batch' && r.status === 200) expectedTotal += (items[k] as { events: number }).events;
      }
      return true;
    }),
    { seed: 424242, numRuns: 300 },
  );
  t.ok(requests > 200, `${sequences} sequences, ${requests} answers checked`);

  const { start, end } = currentRange();
  const total = async () =>
    (await stripe.billing.meters.listEventSummaries(meter.id, { customer, start_time: start, end_time: end })).data[0]?.aggregated_value ?? 0;
  await eventually(async () => (await total()) >= expectedTotal, 15_000, 100).catch(() => undefined);
  // One flush interval more, so that an event counted wrongly (sent after an error) would show.
  await new Promise((r) => setTimeout(r, 600));
  t.equal(await total(), expectedTotal, `exactly the ${expectedTotal} events answered 200 are counted`);
  const health = await server.request('GET', '/healthz');
  t.equal(health.status, 200, 'the process is alive');
});

t.test('payload keys named like Object.prototype members are ordinary keys', async (t) => {
  const server: TestServer = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const session = await stripe.v2.billing.meterEventSession.create();
  const { start, end } = currentRange();
  for (const key of ['__proto__', 'constructor', 'valueOf', 'hasOwnProperty']) {
    const m = await stripe.billing.meters.create({
      display_name: key,
      event_name: uniqueName('proto'),
      default_aggregation: { formula: 'sum' },
      customer_mapping: { type: 'by_id', event_payload_key: key },
    });
    const post = (payload: string) =>
      server.request('POST', '/v2/billing/meter_events', {
        body: `{"event_name":"${m.event_name}","payload":${payload}}`,
        headers: { 'content-type': 'application/json' },
      });
    const missing = await post('{"value":"1"}');
    t.equal(missing.status, 400, `${key}: an event without the key is refused`);
    t.equal(missing.body?.error?.code, 'payload_no_customer_defined', `${key}: payload_no_customer_defined (${missing.text.slice(0, 160)})`);
    const customer = uniqueName('cus_p');
    const ok = await post(`{"${key}":"${customer}","value":"2"}`);
    t.equal(ok.status, 200, `${key}: an event with the key is accepted (${ok.text.slice(0, 160)})`);
    t.equal(ok.body?.payload?.[key], customer, `${key}: echoed as sent`);
    const streamed = await fetch(`${server.url}/v2/billing/meter_event_stream`, {
      method: 'POST',
      headers: { authorization: `Bearer ${session.authentication_token}`, 'content-type': 'application/json' },
      body: `{"events":[{"event_name":"${m.event_name}","payload":{"${key}":"${customer}","value":"3"}},{"event_name":"${m.event_name}","payload":{"value":"1000"}}]}`,
    });
    t.equal(streamed.status, 200, `${key}: streamed`);
    await eventually(
      async () => ((await stripe.billing.meters.listEventSummaries(m.id, { customer, start_time: start, end_time: end })).data[0]?.aggregated_value ?? 0) >= 5,
      10_000,
      100,
    ).catch(() => undefined);
    const summary = await stripe.billing.meters.listEventSummaries(m.id, { customer, start_time: start, end_time: end });
    t.equal(summary.data[0]?.aggregated_value, 5, `${key}: counted for the customer named under the key (2 + 3), the keyless stream event not at all`);
    const wrong = await stripe.billing.meters.listEventSummaries(m.id, { customer: '[object Object]', start_time: start, end_time: end });
    t.equal(wrong.data[0]?.aggregated_value ?? 0, 0, `${key}: nothing under "[object Object]"`);
  }
});
