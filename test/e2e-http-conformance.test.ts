/**
 * End-to-end: the HTTP/1.1 layer against RFC 9112, with a raw socket client. Every request read is answered, in
 * order, or rejected with a Stripe-shaped error object (and the connection then closed); nothing is stored for a
 * request that gets no answer; limits and timeouts answer with their own status codes.
 */
import t, { type Test } from 'tap';
import { startServer, eventually, currentRange, type TestServer } from './helpers/server';
import { uniqueName } from './helpers/assertions';
import { rawExchange, rawRequest, type RawResponse } from './helpers/raw-http';

const REQUEST_ID = /^req_[0-9A-Za-z]+$/;

function expectErrorObject(t: Test, r: RawResponse | undefined, status: number, what: string): void {
  t.ok(r, `${what}: answered`);
  if (!r) return;
  t.equal(r.status, status, `${what}: ${status} (${r.body.slice(0, 160)})`);
  t.match(r.headers['content-type'] ?? '', /^application\/json/, `${what}: JSON`);
  t.match(r.headers['request-id'] ?? '', REQUEST_ID, `${what}: Request-Id`);
  t.ok(r.json && typeof r.json.error === 'object' && typeof r.json.error.message === 'string', `${what}: a Stripe error object`);
}

t.test('HTTP/1.1 conformance', async (t) => {
  const server: TestServer = await startServer({ env: { HTTP_IDLE_TIMEOUT_SECONDS: '4', HTTP_REQUEST_TIMEOUT_SECONDS: '2' } });
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const auth = { Authorization: `Bearer ${server.key}` };
  const meter = await stripe.billing.meters.create({ display_name: 'http', event_name: uniqueName('http'), default_aggregation: { formula: 'sum' } });
  const session = await stripe.v2.billing.meterEventSession.create();
  const streamAuth = { Authorization: `Bearer ${session.authentication_token}`, 'Content-Type': 'application/json' };
  const form = { ...auth, 'Content-Type': 'application/x-www-form-urlencoded' };
  const v1Event = (customer: string, id: string, value = 1) =>
    rawRequest(
      'POST',
      '/v1/billing/meter_events',
      form,
      `event_name=${meter.event_name}&identifier=${id}&payload[stripe_customer_id]=${customer}&payload[value]=${value}`,
    );
  const streamBatch = (customer: string, ids: string[]) =>
    rawRequest(
      'POST',
      '/v2/billing/meter_event_stream',
      streamAuth,
      JSON.stringify({
        events: ids.map((identifier) => ({ event_name: meter.event_name, identifier, payload: { stripe_customer_id: customer, value: '1' } })),
      }),
    );
  const health = rawRequest('GET', '/healthz', {});

  async function total(customer: string): Promise<number> {
    const { start, end } = currentRange();
    const list = await stripe.billing.meters.listEventSummaries(meter.id, { customer, start_time: start, end_time: end });
    return list.data[0]?.aggregated_value ?? 0;
  }

  await t.test('pipelined requests behind meter events are all answered, in order, and counted once', async (t) => {
    const customer = uniqueName('cus_pipe');
    const parts: string[] = [];
    const expected: number[] = [];
    const heads = new Set<number>();
    for (let i = 0; i < 20; i++) {
      parts.push(v1Event(customer, `${customer}-v1-${i}`));
      expected.push(200);
      if (i % 5 === 0) {
        parts.push(health);
        expected.push(200);
        heads.add(expected.length);
        parts.push(rawRequest('HEAD', '/healthz', {}));
        expected.push(200);
        parts.push(streamBatch(customer, [`${customer}-s-${i}-a`, `${customer}-s-${i}-b`]));
        expected.push(200);
      }
    }
    parts.push(rawRequest('GET', '/v1/billing/meters/' + meter.id, auth));
    expected.push(200);
    const ex = await rawExchange(server.port, parts.join(''), { headIndexes: heads, quietMs: 1500 });
    t.same(
      ex.responses.map((r) => r.status),
      expected,
      'every request answered with its own status, in order',
    );
    t.equal(ex.trailing, '', 'nothing but whole responses');
    t.equal(ex.responses[ex.responses.length - 1].json?.id, meter.id, 'the last answer is the last request');
    const ids = new Set(ex.responses.map((r) => r.headers['request-id']));
    t.equal(ids.size, ex.responses.length, 'one Request-Id per response');
    t.equal(ex.responses[2].body, '', 'HEAD: no body');
    t.equal(Number(ex.responses[2].headers['content-length']), Buffer.byteLength(ex.responses[1].body), 'HEAD: the GET body length');
    await eventually(async () => (await total(customer)) === 28, 10_000, 100);
    t.equal(await total(customer), 28, '20 v1 events and 8 streamed, each counted once');
  });

  await t.test('the same pipeline split into 1..7-byte pieces', async (t) => {
    const customer = uniqueName('cus_split');
    const data = v1Event(customer, `${customer}-1`) + health + streamBatch(customer, [`${customer}-2`]) + v1Event(customer, `${customer}-3`, 5);
    const splits: number[] = [];
    for (let at = 0, step = 1; at < data.length; at += step, step = (step % 7) + 1) splits.push(at);
    const ex = await rawExchange(server.port, data, { splits, quietMs: 1000 });
    t.same(
      ex.responses.map((r) => r.status),
      [200, 200, 200, 200],
    );
    await eventually(async () => (await total(customer)) === 7, 10_000, 100);
    t.pass('7 counted');
  });

  await t.test('a protocol error answers the requests before it, then itself, then closes; later ones are not stored', async (t) => {
    const customer = uniqueName('cus_err');
    const data =
      v1Event(customer, `${customer}-1`) +
      'GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nContent-Length: 60\r\n\r\n' +
      v1Event(customer, `${customer}-2`, 100);
    const ex = await rawExchange(server.port, data, { quietMs: 1000 });
    t.equal(ex.responses.length, 2, 'two answers');
    t.equal(ex.responses[0].status, 200, 'the event before is answered');
    expectErrorObject(t, ex.responses[1], 400, 'conflicting Content-Length');
    t.equal(ex.responses[1].headers.connection, 'close', 'Connection: close');
    t.ok(ex.closed, 'closed');
    // A sentinel after everything: once it is counted, the unanswered event would have been too.
    await stripe.billing.meterEvents.create({
      event_name: meter.event_name,
      identifier: `${customer}-sentinel`,
      payload: { stripe_customer_id: customer, value: '1000' },
    });
    await eventually(async () => (await total(customer)) >= 1000, 10_000, 100);
    t.equal(await total(customer), 1001, 'the request after the error was never read, so never stored');
  });

  await t.test('framing', async (t) => {
    let ex = await rawExchange(server.port, 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nContent-Length: 6, 6\r\n\r\nabcdef' + health, {});
    t.same(
      ex.responses.map((r) => r.status),
      [401, 200],
      'identical Content-Length values are one length',
    );
    ex = await rawExchange(server.port, 'POST /v2/billing/meter_event_stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n');
    expectErrorObject(t, ex.responses[0], 501, 'Transfer-Encoding: gzip, chunked');
    t.equal(ex.responses[0].json?.error?.code, 'invalid_request_error', 'v2 path: v2 error shape');
    t.ok(ex.closed, 'closed after 501');
    ex = await rawExchange(server.port, 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n');
    expectErrorObject(t, ex.responses[0], 400, 'Transfer-Encoding with Content-Length');
    ex = await rawExchange(server.port, 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n');
    expectErrorObject(t, ex.responses[0], 400, 'chunked twice');
    ex = await rawExchange(server.port, 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n');
    expectErrorObject(t, ex.responses[0], 400, 'negative Content-Length');

    // Chunk extensions are ignored (RFC 9112 §7.1.1), trailers read and ignored.
    const customer = uniqueName('cus_chunk');
    const body = `event_name=${meter.event_name}&payload[stripe_customer_id]=${customer}&payload[value]=4`;
    const chunked =
      `POST /v1/billing/meter_events HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer ${server.key}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n` +
      `6;ext=1\r\n${body.slice(0, 6)}\r\n${(body.length - 6).toString(16)} ; name="v"\r\n${body.slice(6)}\r\n0\r\nX-Trailer: yes\r\n\r\n` +
      health;
    ex = await rawExchange(server.port, chunked, { splits: [40, 150, 170, 171] });
    t.same(
      ex.responses.map((r) => r.status),
      [200, 200],
      'chunked body with extensions and a trailer, then the next request',
    );
    t.equal(ex.responses[0].json?.payload?.value, '4', 'the body was read whole');
    ex = await rawExchange(server.port, 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n');
    expectErrorObject(t, ex.responses[0], 400, 'bad chunk size');
    ex = await rawExchange(server.port, 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n');
    expectErrorObject(t, ex.responses[0], 400, 'chunk without its CRLF');
  });

  await t.test('methods, versions, lines and limits', async (t) => {
    const cases: [string, string, number][] = [
      ['unknown method', 'FOO /v1/billing/meters HTTP/1.1\r\nHost: a\r\n\r\n', 405],
      ['lower-case method', 'get /healthz HTTP/1.1\r\nHost: a\r\n\r\n', 405],
      ['HTTP/2.0', 'GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n', 505],
      ['garbage request line', 'GET\r\nHost: a\r\n\r\n', 400],
      ['bare LF line endings', 'GET /healthz HTTP/1.1\nHost: a\n\n', 400],
      ['a bare LF in one header line', 'GET /healthz HTTP/1.1\r\nHost: a\nX: b\r\n\r\n', 400],
      ['missing Host', 'GET /healthz HTTP/1.1\r\n\r\n', 400],
      ['two Hosts', 'GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 400],
      ['obs-fold', 'GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  2\r\n\r\n', 400],
      ['space before the colon', 'GET /healthz HTTP/1.1\r\nHost : a\r\n\r\n', 400],
      ['NUL in a header value', 'GET /healthz HTTP/1.1\r\nHost: a\r\nX: a\u0000b\r\n\r\n', 400],
      ['a target that is not a path', 'GET healthz HTTP/1.1\r\nHost: a\r\n\r\n', 400],
      ['Expect other than 100-continue', 'GET /healthz HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n', 417],
      ['200 KB URL', `GET /v1/billing/meters?${'a'.repeat(200_000)} HTTP/1.1\r\nHost: a\r\n\r\n`, 414],
      ['500 headers', 'GET /healthz HTTP/1.1\r\nHost: a\r\n' + Array.from({ length: 500 }, (_, i) => `X-${i}: ${i}\r\n`).join('') + '\r\n', 431],
      ['a 20 KB header', `GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: ${'b'.repeat(20_000)}\r\n\r\n`, 431],
      ['body over MAX_BODY_BYTES', `POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nContent-Length: ${2 * 1024 * 1024}\r\n\r\n`, 413],
    ];
    for (const [what, bytes, status] of cases) {
      const ex = await rawExchange(server.port, bytes);
      expectErrorObject(t, ex.responses[0], status, what);
      t.equal(ex.responses.length, 1, `${what}: one answer`);
      if (status === 405) t.equal(ex.responses[0]?.headers.allow, 'GET, HEAD, POST, DELETE', `${what}: Allow`);
      else t.ok(ex.closed, `${what}: connection closed`);
    }
    const put = await rawExchange(server.port, rawRequest('PUT', '/v1/billing/meters', auth) + health);
    t.same(
      put.responses.map((r) => r.status),
      [404, 200],
      "PUT (a known method without a route): Stripe's 404, and the connection goes on",
    );
    const leading = await rawExchange(server.port, '\r\n\r\n' + health);
    t.same(
      leading.responses.map((r) => r.status),
      [200],
      'empty lines before a request line are ignored',
    );
    const absolute = await rawExchange(server.port, `GET http://127.0.0.1:${server.port}/healthz HTTP/1.1\r\nHost: a\r\n\r\n`);
    t.same(
      absolute.responses.map((r) => r.status),
      [200],
      'absolute-form target',
    );
  });

  await t.test('HTTP/1.0, Connection: close, Expect: 100-continue, half-close', async (t) => {
    let ex = await rawExchange(server.port, 'GET /healthz HTTP/1.0\r\n\r\n');
    t.equal(ex.responses[0]?.status, 200, 'HTTP/1.0 is answered');
    t.equal(ex.responses[0]?.headers.connection, 'close', 'and closed');
    t.ok(ex.closed);
    ex = await rawExchange(server.port, 'GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n');
    t.same(
      ex.responses.map((r) => r.status),
      [200, 200],
      'HTTP/1.0 keep-alive',
    );
    ex = await rawExchange(server.port, 'GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n' + health);
    t.equal(ex.responses.length, 1, 'nothing after Connection: close is answered (or acted on)');
    t.ok(ex.closed);
    const body = 'display_name=x';
    const head = `POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer bad\r\nContent-Type: application/x-www-form-urlencoded\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`;
    ex = await rawExchange(server.port, head + body, { splits: [head.length], pieceDelayMs: 300 });
    t.same(ex.interim, [100], '100 Continue before the body');
    t.equal(ex.responses[0]?.status, 401, 'then the final answer');
    ex = await rawExchange(server.port, health + health, { halfClose: true });
    t.same(
      ex.responses.map((r) => r.status),
      [200, 200],
      'a client that shuts its side after sending still gets every answer',
    );
    t.ok(ex.closed);
  });

  await t.test('keep-alive: the idle timeout is announced, kept, and load elsewhere does not close idle sockets early', async (t) => {
    const net = await import('node:net');
    const socket = net.connect(server.port, '127.0.0.1');
    let received = '';
    let closedAt = 0;
    socket.on('data', (d) => (received += d.toString('latin1')));
    socket.on('close', () => (closedAt = Date.now()));
    await new Promise((r) => socket.once('connect', r));
    socket.write(health);
    await eventually(async () => received.includes('"status":"ok"'), 5000, 20);
    t.match(received, /\r\nKeep-Alive: timeout=3\r\n/, 'Keep-Alive: timeout=N, one second less than the server keeps it');
    const openedAt = Date.now();
    // Load on other connections while this one sits idle for less than the announced timeout.
    const until = Date.now() + 2500;
    while (Date.now() < until) await rawExchange(server.port, (health + health + health).repeat(5), { quietMs: 50 });
    t.equal(closedAt, 0, 'still open after load on other connections');
    received = '';
    socket.write(health);
    await eventually(async () => received.includes('"status":"ok"'), 5000, 20);
    t.pass('the idle socket serves its next request');
    const idleFrom = Date.now();
    await eventually(async () => closedAt > 0, 10_000, 50);
    const idleFor = closedAt - idleFrom;
    t.ok(idleFor >= 3000 && idleFor < 7000, `closed by the server after ~4 s idle (${idleFor} ms; opened ${closedAt - openedAt} ms before)`);
  });

  await t.test('a request that stalls half-sent gets 408 and the connection closes', async (t) => {
    const started = Date.now();
    const ex = await rawExchange(server.port, 'POST /v1/billing/meters HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc', { quietMs: 6000 });
    expectErrorObject(t, ex.responses[0], 408, 'slow body');
    t.ok(ex.closed, 'closed');
    t.ok(Date.now() - started < 6000, 'within the request timeout (2 s) plus the sweep');
    const slowHead = await rawExchange(server.port, 'GET /healthz HTTP/1.1\r\nHost: a\r\n', { quietMs: 6000 });
    expectErrorObject(t, slowHead.responses[0], 408, 'slow head');
  });

  await t.test('the server is alive and exact after all of it', async (t) => {
    const r = await server.request('GET', '/healthz');
    t.equal(r.status, 200);
  });
});
