/**
 * End to end: the WebSocket meter event stream (protocol meterd.stream.v1, see the README). A real server, the `ws`
 * client, the official `stripe` client for meters, sessions and summaries. Covers the handshake and its Stripe-shaped
 * refusals, msgpack and JSON frames, acks only after durability, error frames for malformed batches that leave the
 * connection and its neighbours working, the per-connection limit of unanswered batches, frames too large, session
 * expiry (4001) and reconnecting with a new session, and kill -9 mid-stream: after a restart on the same DATA_DIR the
 * client resends every unacknowledged batch and every batch is counted exactly once.
 */
import t, { type Test } from 'tap';
import { Packr, Unpackr } from 'msgpackr';
import WebSocket from 'ws';
import type Stripe from 'stripe';
import { currentRange, eventually, startServer, type TestServer } from './helpers/server';
import { uniqueName } from './helpers/assertions';
import { MeterEventStream } from '../client/src';

const STREAM = '/v2/billing/meter_event_stream';
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

type Message = Record<string, any>;

async function sessionToken(server: TestServer): Promise<string> {
  const res = await server.request('POST', '/v2/billing/meter_event_session', { body: '{}', headers: { 'content-type': 'application/json' } });
  if (res.status !== 200) throw new Error(`session: ${res.status} ${res.text}`);
  return res.body.authentication_token;
}

/** A connected stream socket that collects what the server sends. */
class StreamClient {
  readonly messages: Message[] = [];
  closeCode: number | null = null;
  private waiters: Array<() => void> = [];
  readonly opened: Promise<void>;
  readonly closed: Promise<number>;

  constructor(
    readonly ws: WebSocket,
    readonly binary: boolean,
  ) {
    ws.on('message', (data, isBinary) => {
      this.messages.push(isBinary ? unpackr.unpack(data as Buffer) : JSON.parse(String(data)));
      for (const w of this.waiters.splice(0)) w();
    });
    ws.on('error', () => undefined);
    this.opened = new Promise((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    this.closed = new Promise((resolve) =>
      ws.once('close', (code) => {
        this.closeCode = code;
        for (const w of this.waiters.splice(0)) w();
        resolve(code);
      }),
    );
  }

  static async connect(server: TestServer, token: string, opts: { binary?: boolean; subprotocol?: boolean; query?: string } = {}): Promise<StreamClient> {
    const url = `ws://127.0.0.1:${server.port}${STREAM}${opts.query ?? ''}`;
    const ws = opts.subprotocol
      ? new WebSocket(url, ['meterd.stream.v1', `bearer.${token}`])
      : new WebSocket(url, { headers: { authorization: `Bearer ${token}` } });
    const client = new StreamClient(ws, opts.binary ?? true);
    await client.opened;
    await client.until((m) => m.type === 'ready');
    return client;
  }

  send(batch: unknown): void {
    this.ws.send(this.binary ? packr.pack(batch) : JSON.stringify(batch), { binary: this.binary });
  }

  sendRaw(data: Buffer | string): void {
    this.ws.send(data, { binary: typeof data !== 'string' });
  }

  /** The first message (from the start) that matches, waiting for it if needed. */
  async until(match: (m: Message) => boolean, timeoutMs = 10_000): Promise<Message> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.messages.find(match);
      if (found) return found;
      if (this.closeCode !== null) throw new Error(`connection closed (${this.closeCode}) before the message came`);
      if (Date.now() > deadline) throw new Error('message did not come in time');
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 100);
      });
    }
  }

  answer(id: string | null): Promise<Message> {
    return this.until((m) => (m.type === 'ack' || m.type === 'error') && m.id === id);
  }

  close(): Promise<number> {
    this.ws.close(1000);
    return this.closed;
  }
}

/** The answer to an upgrade request the server refuses: status and JSON body. */
function refusedUpgrade(server: TestServer, headers: Record<string, string>, protocols?: string[], query = ''): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}${STREAM}${query}`, protocols, { headers });
    ws.on('open', () => reject(new Error('the upgrade was accepted')));
    ws.on('error', () => undefined);
    ws.on('unexpected-response', (_req, res) => {
      let text = '';
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    });
  });
}

function events(m: Stripe.Billing.Meter, customer: string, values: number[], identifiers?: string[]): Message[] {
  return values.map((v, i) => ({
    event_name: m.event_name,
    payload: { stripe_customer_id: customer, value: String(v) },
    ...(identifiers ? { identifier: identifiers[i] } : {}),
  }));
}

async function total(stripe: Stripe, meter: Stripe.Billing.Meter, customer: string): Promise<number> {
  const range = currentRange();
  const list = await stripe.billing.meters.listEventSummaries(meter.id, { customer, start_time: range.start, end_time: range.end });
  return list.data.reduce((s, x) => s + x.aggregated_value, 0);
}

async function totalBecomes(t: Test, stripe: Stripe, meter: Stripe.Billing.Meter, customer: string, want: number, what: string): Promise<void> {
  let got = Number.NaN;
  try {
    await eventually(async () => (got = await total(stripe, meter, customer)) === want, 20_000, 100);
  } catch {
    // reported below
  }
  t.equal(got, want, what);
}

// The stream on gateway threads (the default on a multi-core machine) and on the main thread.
for (const threads of ['2', '0'])
  t.test(`the WebSocket stream (GATEWAY_THREADS=${threads})`, async (t) => {
    const server = await startServer({ env: { GATEWAY_THREADS: threads } });
    t.teardown(() => server.stop());
    const stripe = server.stripe();
    const meter = await stripe.billing.meters.create({ display_name: 'ws', event_name: uniqueName('ws_calls'), default_aggregation: { formula: 'sum' } });

    await t.test('the handshake is refused with Stripe errors', async (t) => {
      const none = await refusedUpgrade(server, {});
      t.equal(none.status, 401, 'no token: 401');
      t.match(none.body.error.message, /did not provide/);
      const key = await refusedUpgrade(server, { authorization: `Bearer ${server.key}` });
      t.equal(key.status, 401, 'an API key instead of a session token: 401');
      t.match(key.body.error.message, /session token, not an API key/);
      const forged = await refusedUpgrade(server, { authorization: 'Bearer mets_abc.def' });
      t.equal(forged.status, 401, 'a forged token: 401');
      const token = await sessionToken(server);
      const badQuery = await refusedUpgrade(server, { authorization: `Bearer ${token}` }, undefined, '?encoding=xml');
      t.equal(badQuery.status, 400, 'an unknown encoding: 400');
      t.equal(badQuery.body.error.code, 'invalid_request_error');
      const noProtocol = await refusedUpgrade(server, {}, [`bearer.${token}`]);
      t.equal(noProtocol.status, 400, 'a bearer subprotocol without meterd.stream.v1: 400');
      // A plain GET on the stream's path is not an upgrade: Stripe's 404 for an unknown route.
      const plain = await server.request('GET', STREAM, { key: token });
      t.equal(plain.status, 404, 'GET without an upgrade: 404');
    });

    await t.test('msgpack and JSON batches are acknowledged by id and counted', async (t) => {
      const token = await sessionToken(server);
      const bin = await StreamClient.connect(server, token);
      const ready = bin.messages[0];
      t.equal(ready.type, 'ready');
      t.match(ready, { max_batch_events: 1000, max_unacked_batches: 64, max_frame_bytes: 1048576 });
      t.match(ready.session, /^mes_test_/);
      bin.send({ id: 'bin-1', events: events(meter, 'cus_ws_a', [1, 2, 3]) });
      t.same(await bin.answer('bin-1'), { type: 'ack', id: 'bin-1', events: 3 }, 'binary batch acked (in msgpack)');

      const text = await StreamClient.connect(server, token, { binary: false, subprotocol: true, query: '?encoding=json' });
      t.equal(text.ws.protocol, 'meterd.stream.v1', 'the subprotocol form authenticates and is selected');
      text.send({ id: 'txt-1', events: events(meter, 'cus_ws_a', [10]) });
      t.same(await text.answer('txt-1'), { type: 'ack', id: 'txt-1', events: 1 }, 'text batch acked (in JSON)');
      // A text frame of 250 events (records hold its own JSON, cut in three), some with identifiers, then resent.
      const textValues = Array.from({ length: 250 }, (_, i) => i + 1);
      const textIds = textValues.map((_, i) => (i % 3 === 0 ? `txt-big-${i}` : ''));
      const textBig = { id: 'txt-big', events: events(meter, 'cus_ws_t', textValues, textIds) };
      text.send(textBig);
      t.match(await text.answer('txt-big'), { type: 'ack', events: 250 });
      text.send(textBig);
      t.match(await text.until((m) => m.id === 'txt-big' && m !== text.messages.find((x) => x.id === 'txt-big')), { type: 'ack' });
      await totalBecomes(t, stripe, meter, 'cus_ws_t', (250 * 251) / 2, 'a text frame resent is counted once');
      // Integer timestamps (unix seconds) are accepted in frames; RFC 3339 too.
      const nowS = Math.floor(Date.now() / 1000);
      bin.send({
        id: 'bin-2',
        events: [
          { ...events(meter, 'cus_ws_a', [100])[0], timestamp: nowS - 5 },
          { ...events(meter, 'cus_ws_a', [200])[0], timestamp: new Date().toISOString() },
        ],
      });
      t.match(await bin.answer('bin-2'), { type: 'ack', events: 2 });
      // A batch of 1000 events (above the HTTP stream's 100) is one batch.
      bin.send({ id: 'bin-big', events: events(meter, 'cus_ws_b', Array(1000).fill(1)) });
      t.match(await bin.answer('bin-big'), { type: 'ack', events: 1000 });
      // The same batch again (a resend after an uncertain outcome) is counted once: ids derive the identifiers.
      bin.send({ id: 'bin-1', events: events(meter, 'cus_ws_a', [1, 2, 3]) });
      t.match(await bin.until((m) => m.id === 'bin-1' && m !== bin.messages.find((x) => x.id === 'bin-1')), { type: 'ack' });
      await totalBecomes(t, stripe, meter, 'cus_ws_a', 316, 'every batch counted once');
      await totalBecomes(t, stripe, meter, 'cus_ws_b', 1000, 'the 1000-event batch counted');
      await bin.close();
      await text.close();
    });

    await t.test('malformed frames get error frames; the connection and its neighbours go on', async (t) => {
      const token = await sessionToken(server);
      const bad = await StreamClient.connect(server, token);
      const good = await StreamClient.connect(server, token, { binary: false });
      let n = 0;
      const goodSender = setInterval(() => good.send({ id: `good-${n++}`, events: events(meter, 'cus_ws_good', [1]) }), 5);

      bad.sendRaw(Buffer.from([0xc1, 0x00, 0xff]));
      const garbage = await bad.answer(null);
      t.match(garbage, { type: 'error', id: null, retry: false, error: { type: 'invalid_request_error', code: 'invalid_frame' } }, 'not msgpack');
      bad.sendRaw('{"id": "x", "events": [');
      bad.send({ events: [] });
      bad.send({ id: 'e-empty', events: [] });
      bad.send({ id: 'e-unknown', events: events(meter, 'cus_ws_bad', [1]), extra: 1 });
      bad.send({ id: 'e-payload', events: [{ event_name: meter.event_name, payload: { stripe_customer_id: 'cus_ws_bad', value: { x: 1 } } }] });
      bad.send({ id: 'e-ts', events: [{ ...events(meter, 'cus_ws_bad', [1])[0], timestamp: '2026-12-05T13:21' }] });
      bad.send({ id: 'e-many', events: events(meter, 'cus_ws_bad', Array(1001).fill(1)) });
      bad.send({ id: 'x'.repeat(101), events: events(meter, 'cus_ws_bad', [1]) });
      bad.send([1, 2, 3]);
      t.match(await bad.answer('e-empty'), { type: 'error', retry: false, error: { param: 'events' } });
      t.match(await bad.answer('e-unknown'), { type: 'error', error: { code: 'parameter_unknown', param: 'extra' } });
      t.match(await bad.answer('e-payload'), { type: 'error', error: { param: 'events[0][payload][value]' } });
      t.match(await bad.answer('e-ts'), { type: 'error', error: { param: 'events[0][timestamp]' } });
      t.match(await bad.answer('e-many'), { type: 'error', error: { param: 'events' } });
      await bad.until(() => bad.messages.filter((m) => m.type === 'error' && m.id === null).length >= 5);
      t.equal(bad.messages.filter((m) => m.type === 'error' && m.id === null).length, 5, 'frames without a usable id: error with id null');
      bad.send({ id: 'after', events: events(meter, 'cus_ws_bad', [7]) });
      t.match(await bad.answer('after'), { type: 'ack' }, 'the connection still works');

      // A frame above 1 MiB closes that connection with 1009, and only that one.
      const big = await StreamClient.connect(server, token);
      big.sendRaw(Buffer.alloc(1024 * 1024 + 10, 0x61));
      t.equal(await big.closed, 1009, 'frame too large: 1009');
      clearInterval(goodSender);
      const sent = n;
      await good.answer(`good-${sent - 1}`);
      t.equal(good.messages.filter((m) => m.type === 'ack').length, sent, 'the neighbour had every batch acked');
      t.equal(good.closeCode, null, 'the neighbour is still open');
      await totalBecomes(t, stripe, meter, 'cus_ws_bad', 7, 'only the good batch of the bad connection is counted');
      await totalBecomes(t, stripe, meter, 'cus_ws_good', sent, 'the neighbour counted exactly');
      await bad.close();
      await good.close();
    });

    await t.test('no more than 64 batches are unanswered on a connection', async (t) => {
      const token = await sessionToken(server);
      const c = await StreamClient.connect(server, token);
      const N = 3000;
      for (let i = 0; i < N; i++) c.send({ id: `flood-${i}`, events: events(meter, 'cus_ws_flood', [1]) });
      await c.until(() => c.messages.filter((m) => m.type === 'ack').length === N, 30_000);
      const health = (await server.request('GET', '/healthz')).body.stream_sockets;
      t.ok(health.peak_batches_in_flight_per_connection <= 64, `peak in flight ${health.peak_batches_in_flight_per_connection} <= 64`);
      t.ok(health.peak_batches_in_flight_per_connection > 1, 'batches were in flight together');
      t.equal(health.batches_in_flight, 0, 'nothing left in flight');
      await totalBecomes(t, stripe, meter, 'cus_ws_flood', N, 'every flooded batch counted');
      await c.close();
    });
  });

t.test('session expiry closes with 4001; a new session reconnects', async (t) => {
  const server = await startServer({ env: { SESSION_TTL_SECONDS: '2' } });
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const meter = await stripe.billing.meters.create({ display_name: 'ws', event_name: uniqueName('ws_exp'), default_aggregation: { formula: 'sum' } });
  const token = await sessionToken(server);
  const c = await StreamClient.connect(server, token);
  c.send({ id: 'before', events: events(meter, 'cus_exp', [5]) });
  t.match(await c.answer('before'), { type: 'ack' });
  t.equal(await c.closed, 4001, 'closed with 4001 when the token expires');
  const refused = await refusedUpgrade(server, { authorization: `Bearer ${token}` });
  t.equal(refused.status, 401);
  t.equal(refused.body.error.code, 'billing_meter_event_session_expired', 'the expired token is refused with Stripe code');
  const again = await StreamClient.connect(server, await sessionToken(server));
  again.send({ id: 'after', events: events(meter, 'cus_exp', [6]) });
  t.match(await again.answer('after'), { type: 'ack' });
  await totalBecomes(t, stripe, meter, 'cus_exp', 11, 'both sessions counted');
  await again.close();
});

t.test('kill -9 mid-stream: every acknowledged batch is counted exactly once after reconnecting', async (t) => {
  let server = await startServer({ env: { FLUSH_INTERVAL_MS: '50' } });
  const { dataDir, key } = server;
  t.teardown(() => server.stop());
  const meter = await server.stripe().billing.meters.create({ display_name: 'ws', event_name: uniqueName('ws_kill'), default_aggregation: { formula: 'sum' } });
  const BATCHES = 400;
  const unacked = new Map<string, Message>();
  const acked = new Set<string>();
  let next = 0;
  /** Sends batches until `stop` says so; returns when the connection closes. */
  async function stream(client: StreamClient, resend: Message[], stop: () => boolean): Promise<void> {
    client.ws.on('message', (data) => {
      const m = unpackr.unpack(data as Buffer);
      if (m.type === 'ack') {
        unacked.delete(m.id);
        acked.add(m.id);
      }
    });
    for (const b of resend) client.send(b);
    while (!stop() && client.closeCode === null && client.ws.readyState === WebSocket.OPEN) {
      if (unacked.size < 32 && next < BATCHES) {
        const id = `kill-${next}`;
        // Half the batches carry their own identifiers, half rely on ids derived from the batch id.
        const values = [1, 2, 3, 4, 5];
        const batch = { id, events: events(meter, 'cus_kill', values, next % 2 === 0 ? values.map((_, i) => `${id}-e${i}`) : undefined) };
        unacked.set(id, batch);
        next++;
        client.send(batch);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  const first = await StreamClient.connect(server, await sessionToken(server));
  const streaming = stream(first, [], () => false);
  await eventually(async () => acked.size >= 100, 20_000, 5);
  await server.kill();
  await streaming;
  t.ok(acked.size >= 100 && acked.size < BATCHES, `killed mid-stream with ${acked.size} batches acked, ${unacked.size} unanswered`);

  server = await startServer({ dataDir, key, env: { FLUSH_INTERVAL_MS: '50' } });
  const second = await StreamClient.connect(server, await sessionToken(server));
  // Resend what was unanswered, and a few acknowledged batches too (as a client unsure of them would).
  const resend = [...unacked.values(), ...[...acked].slice(0, 10).map((id) => ({ id, events: [] as Message[] }))].filter((b) => b.events.length > 0);
  const again = [...acked].slice(0, 10).map((id) => {
    const n = Number(id.slice(5));
    const values = [1, 2, 3, 4, 5];
    return { id, events: events(meter, 'cus_kill', values, n % 2 === 0 ? values.map((_, i) => `${id}-e${i}`) : undefined) };
  });
  await stream(second, [...resend, ...again], () => next >= BATCHES && unacked.size === 0);
  t.equal(acked.size, BATCHES, 'every batch acknowledged in the end');
  await totalBecomes(t, server.stripe(), meter, 'cus_kill', BATCHES * 15, 'every batch counted exactly once');
  await second.close();
});

t.test('the client package against the server: batching by size and linger, acks', async (t) => {
  const server = await startServer({ env: { GATEWAY_THREADS: '2' } });
  const { key, port } = server;
  t.teardown(() => server.stop());
  const stripe = () => server.stripe();
  const meter = await stripe().billing.meters.create({ display_name: 'ws', event_name: uniqueName('ws_client'), default_aggregation: { formula: 'sum' } });
  const client = new MeterEventStream({
    url: `ws://127.0.0.1:${port}`,
    session: async () => {
      const res = await fetch(`http://127.0.0.1:${port}/v2/billing/meter_event_session`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: '{}',
      });
      const body = (await res.json()) as { authentication_token: string; expires_at: string };
      return { token: body.authentication_token, expiresAt: new Date(body.expires_at) };
    },
    maxBatchEvents: 500,
    reconnect: { initialDelayMs: 50, maxDelayMs: 500 },
  });
  await client.connect();
  const sends: Promise<void>[] = [];
  for (let i = 0; i < 5000; i++) sends.push(client.send({ event_name: meter.event_name, payload: { stripe_customer_id: 'cus_client', value: '2' } }));
  await Promise.all(sends);
  await client.flush();
  t.equal(client.stats().ackedEvents, 5000, 'every event acknowledged');
  await totalBecomes(t, stripe(), meter, 'cus_client', 10_000, 'counted once each');
  // A last partial batch leaves after the linger time.
  await client.send({ event_name: meter.event_name, payload: { stripe_customer_id: 'cus_client', value: '5' } });
  await totalBecomes(t, stripe(), meter, 'cus_client', 10_005, 'the lingering event too');
  await client.close();
});

t.test('multi-threaded gateway: kill -9 and restart on the same DATA_DIR loses and double-counts nothing', async (t) => {
  const env = { GATEWAY_THREADS: '2', FLUSH_INTERVAL_MS: '50' };
  let server = await startServer({ env });
  const { dataDir, key } = server;
  t.teardown(() => server.stop());
  t.equal((await server.request('GET', '/healthz')).body.gateway_threads, 2, 'two gateway threads');
  const meter = await server
    .stripe()
    .billing.meters.create({ display_name: 'ws', event_name: uniqueName('ws_threads'), default_aggregation: { formula: 'sum' } });
  let expected = 0;
  /** Many connections at once, so that both threads take some; every batch resent until acknowledged. */
  async function round(srv: TestServer, tag: string): Promise<void> {
    const token = await sessionToken(srv);
    const clients = await Promise.all(Array.from({ length: 8 }, () => StreamClient.connect(srv, token)));
    await Promise.all(
      clients.map(async (c, ci) => {
        for (let b = 0; b < 20; b++) {
          const id = `${tag}-${ci}-${b}`;
          c.send({ id, events: events(meter, 'cus_threads', [1, 2, 3]) });
          await c.answer(id);
        }
      }),
    );
    // And the HTTP stream, with identifiers, on fresh keep-alive connections.
    for (let i = 0; i < 20; i++) {
      const res = await srv.request('POST', STREAM, {
        key: token,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ events: events(meter, 'cus_threads', [10], [`${tag}-http-${i}`]) }),
      });
      t.equal(res.status, 200);
    }
    expected += 8 * 20 * 6 + 20 * 10;
    await Promise.all(clients.map((c) => c.close()));
  }
  await round(server, 'r1');
  await totalBecomes(t, server.stripe(), meter, 'cus_threads', expected, 'before the kill');
  await server.kill();
  server = await startServer({ dataDir, key, env });
  await totalBecomes(t, server.stripe(), meter, 'cus_threads', expected, 'after the restart: the same');
  await round(server, 'r2');
  await totalBecomes(t, server.stripe(), meter, 'cus_threads', expected, 'after more load on the restarted threads');
});

t.test('a clean restart (SIGTERM, as for an upgrade) acknowledges every batch it stored: resent under new identifiers, none counts twice', async (t) => {
  // An upgrade may derive other identifiers for a resent batch than the version before it did; that is safe only if
  // no batch was stored without being acknowledged. Resending every unanswered batch under a new batch id (so every
  // derived identifier differs) is that situation: a batch stored but unanswered would be counted twice.
  const env = { GATEWAY_THREADS: '2', FLUSH_INTERVAL_MS: '50' };
  let server = await startServer({ env });
  const { dataDir, key } = server;
  t.teardown(() => server.stop());
  const meter = await server
    .stripe()
    .billing.meters.create({ display_name: 'ws', event_name: uniqueName('ws_restart'), default_aggregation: { formula: 'sum' } });
  const BATCHES = 300;
  const unacked = new Map<string, Message>();
  let acked = 0;
  let next = 0;
  async function stream(client: StreamClient, resend: Message[]): Promise<void> {
    client.ws.on('message', (data, isBinary) => {
      const m = isBinary ? unpackr.unpack(data as Buffer) : JSON.parse(String(data));
      if (m.type === 'ack' && unacked.delete(m.id)) acked++;
    });
    for (const b of resend) {
      unacked.set(b.id, b);
      client.send(b);
    }
    while (client.closeCode === null && client.ws.readyState === WebSocket.OPEN && (next < BATCHES || unacked.size > 0)) {
      if (unacked.size < 48 && next < BATCHES) {
        const batch = { id: `restart-${next++}`, events: events(meter, 'cus_restart', [1, 2, 3, 4, 5]) };
        unacked.set(batch.id, batch);
        client.send(batch);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  const token = await sessionToken(server);
  const clients = [await StreamClient.connect(server, token), await StreamClient.connect(server, token, { binary: false })];
  const streaming = clients.map((c) => stream(c, []));
  await eventually(async () => acked >= 60, 20_000, 5);
  await server.stop();
  await Promise.all(streaming);
  t.same(
    clients.map((c) => c.closeCode),
    [1001, 1001],
    `closed with 1001 after ${acked} batches acknowledged, ${unacked.size} unanswered`,
  );
  server = await startServer({ dataDir, key, env });
  const again = [...unacked.values()].map((b) => ({ ...b, id: `${b.id}-again` }));
  unacked.clear();
  const token2 = await sessionToken(server);
  const second = [await StreamClient.connect(server, token2), await StreamClient.connect(server, token2, { binary: false })];
  await Promise.all(
    second.map((c, i) =>
      stream(
        c,
        again.filter((_, j) => j % 2 === i),
      ),
    ),
  );
  t.equal(unacked.size, 0, 'every batch acknowledged in the end');
  await totalBecomes(t, server.stripe(), meter, 'cus_restart', BATCHES * 15, 'every batch counted exactly once');
  await Promise.all(second.map((c) => c.close()));
});
