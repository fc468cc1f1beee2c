/**
 * The WebSocket meter event stream client (client/), against a fake server in this file: a node:http server with the
 * session endpoint and a `ws` WebSocketServer speaking protocol v1 (ready, ack, error, close codes).
 */
import t, { type Test } from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { EventEmitter, once } from 'node:events';
import { pack, unpack } from 'msgpackr';
import { type WebSocket, WebSocketServer } from 'ws';
import {
  BatchRejectedError,
  FrameTooLargeError,
  type MeterEvent,
  MeterEventStream,
  type MeterEventStreamOptions,
  QueueFullError,
  type ReconnectInfo,
  SessionError,
  StreamClosedError,
} from '../client/src/index';

interface FakeConn {
  n: number;
  ws: WebSocket;
  token: string;
  url: URL;
  authHeader?: string;
  protocolHeader?: string;
  protocol: string;
  unacked: Set<string>;
  maxUnacked: number;
  closeCode?: number;
  closeReason?: string;
  ready: () => void;
}

interface RecvBatch {
  id: string;
  events: any[];
  binary: boolean;
  conn: FakeConn;
}

class FakeServer extends EventEmitter {
  readonly http = http.createServer((req, res) => this.onRequest(req, res));
  readonly wss = new WebSocketServer({ noServer: true, handleProtocols: (protocols) => (protocols.has('meterd.stream.v1') ? 'meterd.stream.v1' : false) });
  readonly apiKey = 'sk_test_fake';
  /** token → expiry (ms). */
  readonly tokens = new Map<string, number>();
  readonly sessionRequests: { auth?: string; contentType?: string; body: string }[] = [];
  readonly conns: FakeConn[] = [];
  readonly batches: RecvBatch[] = [];
  refusedUpgrades: { status: number; code: string }[] = [];
  readyOverrides: Record<string, unknown> = {};
  holdReady = false;
  sessionLifetimeMs = 15 * 60 * 1000;
  onBatch: (b: RecvBatch) => void = (b) => this.ack(b);
  private tokenCounter = 0;
  port = 0;

  async start(): Promise<this> {
    this.http.on('upgrade', (req, socket, head) => {
      const url = new URL(req.url ?? '/', 'http://127.0.0.1');
      let token: string | undefined;
      const auth = req.headers.authorization;
      if (auth?.startsWith('Bearer ')) token = auth.slice(7);
      const protos = req.headers['sec-websocket-protocol'];
      if (!token && protos) {
        const list = protos.split(',').map((s) => s.trim());
        const b = list.find((p) => p.startsWith('bearer.'));
        if (b && list.includes('meterd.stream.v1')) token = b.slice('bearer.'.length);
      }
      const exp = token === undefined ? undefined : this.tokens.get(token);
      const refuse = url.pathname !== '/v2/billing/meter_event_stream' ? 404 : exp === undefined || exp <= Date.now() ? 401 : 0;
      if (refuse) {
        const code = refuse === 404 ? 'not_found' : exp !== undefined ? 'billing_meter_event_session_expired' : 'invalid_token';
        this.refusedUpgrades.push({ status: refuse, code });
        const body = JSON.stringify({ error: { type: 'invalid_request_error', code, message: code } });
        socket.end(
          `HTTP/1.1 ${refuse} ${refuse === 404 ? 'Not Found' : 'Unauthorized'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
        );
        this.emit('change');
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onConn(ws, req, token as string, url));
    });
    this.http.listen(0, '127.0.0.1');
    await once(this.http, 'listening');
    this.port = (this.http.address() as { port: number }).port;
    return this;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}`;
  }

  issueToken(lifetimeMs = this.sessionLifetimeMs): { token: string; expiresAt: Date } {
    const token = `mets_tok${++this.tokenCounter}`;
    const expiresAt = new Date(Date.now() + lifetimeMs);
    this.tokens.set(token, expiresAt.getTime());
    return { token, expiresAt };
  }

  /** A `session` callback for the client that issues tokens of this server, counting calls. */
  sessionFn(lifetimeMs?: number): (() => Promise<{ token: string; expiresAt: Date }>) & { calls: number } {
    const fn = Object.assign(
      async () => {
        fn.calls++;
        return this.issueToken(lifetimeMs);
      },
      { calls: 0 },
    );
    return fn;
  }

  private onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      if (req.method !== 'POST' || req.url !== '/v2/billing/meter_event_session') {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { type: 'invalid_request_error', code: 'not_found' } }));
        return;
      }
      this.sessionRequests.push({ auth: req.headers.authorization, contentType: req.headers['content-type'], body });
      this.emit('change');
      if (req.headers.authorization !== `Bearer ${this.apiKey}`) {
        res
          .writeHead(401, { 'content-type': 'application/json' })
          .end(JSON.stringify({ error: { type: 'invalid_request_error', code: 'api_key_invalid', message: 'Invalid API Key provided' } }));
        return;
      }
      const { token, expiresAt } = this.issueToken();
      res.writeHead(200, { 'content-type': 'application/json' }).end(
        JSON.stringify({
          id: `mes_${token}`,
          object: 'v2.billing.meter_event_session',
          authentication_token: token,
          created: new Date().toISOString(),
          expires_at: expiresAt.toISOString(),
          livemode: false,
        }),
      );
    });
  }

  private onConn(ws: WebSocket, req: http.IncomingMessage, token: string, url: URL): void {
    const binary = url.searchParams.get('encoding') !== 'json';
    const conn: FakeConn = {
      n: this.conns.length + 1,
      ws,
      token,
      url,
      authHeader: req.headers.authorization,
      protocolHeader: req.headers['sec-websocket-protocol'],
      protocol: ws.protocol,
      unacked: new Set(),
      maxUnacked: 0,
      ready: () => {
        const msg = {
          type: 'ready',
          session: `mes_${token}`,
          expires_at: new Date(this.tokens.get(token) ?? 0).toISOString(),
          max_batch_events: 1000,
          max_unacked_batches: 64,
          max_frame_bytes: 1048576,
          ...this.readyOverrides,
        };
        ws.send(binary ? pack(msg) : JSON.stringify(msg));
      },
    };
    this.conns.push(conn);
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      const m = isBinary ? unpack(data) : JSON.parse(data.toString('utf8'));
      const b: RecvBatch = { id: m.id, events: m.events, binary: isBinary, conn };
      conn.unacked.add(b.id);
      conn.maxUnacked = Math.max(conn.maxUnacked, conn.unacked.size);
      this.batches.push(b);
      this.onBatch(b);
      this.emit('change');
    });
    ws.on('close', (code: number, reason: Buffer) => {
      conn.closeCode = code;
      conn.closeReason = reason.toString();
      this.emit('change');
    });
    if (!this.holdReady) conn.ready();
    this.emit('change');
  }

  private reply(b: RecvBatch, msg: Record<string, unknown>): void {
    b.conn.unacked.delete(b.id);
    if (b.conn.ws.readyState === b.conn.ws.OPEN) b.conn.ws.send(b.binary ? pack(msg) : JSON.stringify(msg));
  }

  ack(b: RecvBatch): void {
    this.reply(b, { type: 'ack', id: b.id, events: b.events.length });
  }

  reject(b: RecvBatch, retry: boolean, error: Record<string, unknown>): void {
    this.reply(b, { type: 'error', id: b.id, retry, error });
  }

  /** Resolves once cond() holds, re-checked at every server event (connection, batch, close, session request). */
  waitFor(cond: () => boolean): Promise<void> {
    if (cond()) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (!cond()) return;
        this.off('change', check);
        resolve();
      };
      this.on('change', check);
    });
  }

  batchesOn(n: number): RecvBatch[] {
    return this.batches.filter((b) => b.conn.n === n);
  }

  async close(): Promise<void> {
    for (const c of this.conns) c.ws.terminate();
    this.wss.close();
    this.http.closeAllConnections();
    await new Promise<void>((resolve) => this.http.close(() => resolve()));
  }
}

const ev = (i: number, extra: Partial<MeterEvent> = {}): MeterEvent => ({
  event_name: 'api_call',
  payload: { stripe_customer_id: `cus_${i % 7}`, value: String(i) },
  ...extra,
});

/** A fake server torn down with the subtest, and a factory of clients on it, closed with the subtest first. */
async function fakeServer(t: Test, prep?: (s: FakeServer) => void) {
  const server = await new FakeServer().start();
  prep?.(server);
  const clients: MeterEventStream[] = [];
  t.teardown(async () => {
    await Promise.all(clients.map((c) => c.close({ timeoutMs: 1000 })));
    await server.close();
  });
  const makeClient = (opts: Partial<MeterEventStreamOptions> = {}) => {
    const session = server.sessionFn();
    const base: MeterEventStreamOptions = opts.apiKey ? { url: server.url } : { url: server.url, session };
    const client = new MeterEventStream({ ...base, reconnect: { initialDelayMs: 10, maxDelayMs: 50 }, ...opts });
    clients.push(client);
    return { client, session };
  };
  return { server, makeClient };
}

/** A fake server and one client on it. */
async function setup(t: Test, opts: Partial<MeterEventStreamOptions> = {}, prep?: (s: FakeServer) => void) {
  const { server, makeClient } = await fakeServer(t, prep);
  return { server, ...makeClient(opts) };
}

t.test('batches by size and by linger; acks resolve; msgpack frames; Date timestamps; header auth', async (t) => {
  const { server, client, session } = await setup(t, { maxBatchEvents: 10, lingerMs: 40, batchIdPrefix: 'tp' });
  await client.connect();
  t.equal(session.calls, 1, 'one session');
  const conn = server.conns[0];
  t.equal(conn.url.pathname, '/v2/billing/meter_event_stream', 'the stream path is appended to a bare url');
  t.equal(conn.url.searchParams.get('encoding'), 'msgpack');
  t.equal(conn.authHeader, `Bearer ${conn.token}`, 'Authorization: Bearer <token>');
  t.equal(conn.protocolHeader, undefined, 'no subprotocol in header mode');

  const resolved: number[] = new Array(25).fill(0);
  const sentAt = Date.now();
  const promises = Array.from({ length: 25 }, (_, i) => {
    const extra: Partial<MeterEvent> = i === 0 ? { timestamp: new Date(1733450000999) } : i === 1 ? { identifier: 'idem-1', timestamp: 1733450001 } : {};
    return client.send(ev(i, extra)).then(() => resolved[i]++);
  });
  await server.waitFor(() => server.batches.length >= 2);
  t.same(
    server.batches.map((b) => b.events.length),
    [10, 10],
    'two full batches go out at once',
  );
  await server.waitFor(() => server.batches.length >= 3);
  t.ok(Date.now() - sentAt >= 38, 'the partial batch waits for the linger time');
  await Promise.all(promises);
  t.same(resolved, new Array(25).fill(1), 'every promise resolved once');
  t.same(
    server.batches.map((b) => [b.id, b.events.length, b.binary]),
    [
      ['tp-1', 10, true],
      ['tp-2', 10, true],
      ['tp-3', 5, true],
    ],
  );
  t.same(
    server.batches[0].events[0],
    { event_name: 'api_call', payload: { stripe_customer_id: 'cus_0', value: '0' }, timestamp: 1733450000 },
    'Date → unix seconds',
  );
  t.same(server.batches[0].events[1], {
    event_name: 'api_call',
    payload: { stripe_customer_id: 'cus_1', value: '1' },
    identifier: 'idem-1',
    timestamp: 1733450001,
  });
  t.same(client.stats(), { queuedEvents: 0, inFlightBatches: 0, ackedBatches: 3, ackedEvents: 25, rejectedBatches: 0, reconnects: 0, resentBatches: 0 });
});

t.test('ready handshake: connect resolves at ready; json encoding and subprotocol auth', async (t) => {
  const { server, makeClient } = await fakeServer(t, (s) => {
    s.holdReady = true;
    s.readyOverrides = { max_unacked_batches: 7 };
  });
  const { client: c2 } = makeClient({ url: `http://127.0.0.1:${server.port}/`, encoding: 'json', authMode: 'subprotocol' });
  const readyEvents: unknown[] = [];
  c2.on('ready', (r) => readyEvents.push(r));
  let connected = false;
  const connecting = c2.connect().then(() => (connected = true));
  await server.waitFor(() => server.conns.length === 1);
  const conn = server.conns[0];
  t.equal(connected, false, 'connect() waits for ready after the upgrade');
  t.same(
    conn.protocolHeader?.split(',').map((p) => p.trim()),
    ['meterd.stream.v1', `bearer.${conn.token}`],
    'Sec-WebSocket-Protocol: meterd.stream.v1, bearer.<token>',
  );
  t.equal(conn.authHeader, undefined, 'no Authorization header in subprotocol mode');
  t.equal(conn.protocol, 'meterd.stream.v1', 'the server selected meterd.stream.v1');
  t.equal(conn.url.searchParams.get('encoding'), 'json');
  t.equal(conn.url.pathname, '/v2/billing/meter_event_stream');
  conn.ready();
  await connecting;
  t.equal(readyEvents.length, 1);
  t.match(readyEvents[0], { type: 'ready', max_unacked_batches: 7, max_batch_events: 1000, max_frame_bytes: 1048576 });
  await c2.sendBatch([ev(1), ev(2), ev(3)]);
  t.equal(server.batches.length, 1);
  t.equal(server.batches[0].binary, false, 'text JSON frames');
  t.equal(server.batches[0].events.length, 3, 'sendBatch is one batch of its own');
});

t.test('apiKey mode: session request shape; a bad key is fatal', async (t) => {
  const { server, client } = await setup(t, { apiKey: 'sk_test_fake' });
  await client.connect();
  t.same(server.sessionRequests, [{ auth: 'Bearer sk_test_fake', contentType: 'application/json', body: '{}' }]);
  t.equal(server.conns[0].authHeader, `Bearer ${server.conns[0].token}`, 'the session token, not the API key, authenticates the stream');
  await client.send(ev(1));

  const bad = new MeterEventStream({ url: server.url, apiKey: 'sk_test_wrong' });
  const err = await bad.connect().catch((e) => e);
  t.type(err, SessionError);
  t.equal(err.status, 401);
  t.equal(err.error?.code, 'api_key_invalid');
  await t.rejects(bad.send(ev(1)), SessionError, 'sends after a fatal session error reject');
  await bad.close();
});

t.test('a rejected batch rejects its promises only; retry:true is resent after backoff', async (t) => {
  let flakyAnswers = 0;
  const { server, client } = await setup(t, {}, (s) => {
    s.onBatch = (b) => {
      if (b.events.some((e) => e.event_name === 'bad'))
        s.reject(b, false, { type: 'invalid_request_error', code: 'parameter_missing', message: 'no value', param: 'events[1][payload]' });
      else if (b.events.some((e) => e.event_name === 'flaky') && flakyAnswers++ === 0)
        s.reject(b, true, { type: 'api_error', code: 'log_unavailable', message: 'try later' });
      else s.ack(b);
    };
  });
  const errors: Error[] = [];
  client.on('error', (e) => errors.push(e));
  await client.connect();
  const good1 = client.sendBatch([ev(1)]);
  const badBatch = client.sendBatch([ev(2), { event_name: 'bad', payload: {} }]);
  const good2 = client.sendBatch([ev(3), ev(4)]);
  const flaky = client.sendBatch([{ event_name: 'flaky', payload: { value: '1' } }]);
  const err = await badBatch.catch((e) => e);
  t.type(err, BatchRejectedError);
  const rejectedId = server.batches.find((b) => b.events.some((e) => e.event_name === 'bad'))?.id;
  t.equal(err.batchId, rejectedId, '.batchId names the batch');
  t.same(
    err.error,
    { type: 'invalid_request_error', code: 'parameter_missing', message: 'no value', param: 'events[1][payload]' },
    '.error is the server error object',
  );
  await Promise.all([good1, good2, flaky]);
  const flakyIds = server.batches.filter((b) => b.events[0].event_name === 'flaky').map((b) => b.id);
  t.equal(flakyIds.length, 2, 'the retry:true batch was sent twice');
  t.equal(flakyIds[0], flakyIds[1], 'with the same id');
  t.match(client.stats(), { ackedBatches: 3, ackedEvents: 4, rejectedBatches: 1, resentBatches: 1, inFlightBatches: 0, queuedEvents: 0 });
  t.ok(
    errors.some((e) => e instanceof BatchRejectedError),
    'error listeners hear of the rejection',
  );
});

t.test('a dropped connection: unacked batches are resent with their ids, none lost, each promise resolves once', async (t) => {
  const { server, client } = await setup(t, { maxBatchEvents: 5 }, (s) => {
    s.onBatch = (b) => {
      // the first connection acks every other batch and holds the rest; later connections ack everything
      if (b.conn.n > 1 || s.batchesOn(1).indexOf(b) % 2 === 0) s.ack(b);
    };
  });
  const reconnects: ReconnectInfo[] = [];
  client.on('reconnect', (r) => reconnects.push(r));
  await client.connect();
  const resolved: number[] = new Array(30).fill(0);
  const promises = Array.from({ length: 30 }, (_, i) => client.send(ev(i)).then(() => resolved[i]++));
  await server.waitFor(() => server.batchesOn(1).length === 6);
  // the acked batches hold events 0-4, 10-14 and 20-24: wait until the client has their acks, then drop the connection
  await Promise.all([0, 10, 20].flatMap((s) => promises.slice(s, s + 5)));
  t.equal(client.stats().inFlightBatches, 3);
  const first = server.batchesOn(1);
  server.conns[0].ws.terminate();
  await Promise.all(promises);
  t.same(resolved, new Array(30).fill(1), 'every promise resolved exactly once');
  t.equal(server.conns.length, 2, 'one reconnect');
  const held = first.filter((_, i) => i % 2 === 1);
  t.same(
    server.batchesOn(2).map((b) => b.id),
    held.map((b) => b.id),
    'exactly the unacked batches were resent, first, in order, with their ids',
  );
  t.same(
    server.batchesOn(2).map((b) => b.events),
    held.map((b) => b.events),
    'with the same events',
  );
  t.equal(new Set(server.batches.map((b) => b.id)).size, 6, 'six batch ids in all');
  t.same(client.stats(), { queuedEvents: 0, inFlightBatches: 0, ackedBatches: 6, ackedEvents: 30, rejectedBatches: 0, reconnects: 1, resentBatches: 3 });
  t.same(reconnects, [{ cause: 'closed', code: 1006, reason: '', resendBatches: 3 }]);
});

t.test('4001: a new session is created (apiKey mode) and unacked batches are resent', async (t) => {
  const { server, client } = await setup(t, { apiKey: 'sk_test_fake' }, (s) => {
    s.onBatch = (b) => {
      if (b.conn.n > 1) return s.ack(b);
      if (s.batchesOn(1).length === 2) {
        s.tokens.set(b.conn.token, 0); // expired: the old token cannot be reused
        b.conn.ws.close(4001, 'session expired');
      }
    };
  });
  await client.connect();
  const a = client.sendBatch([ev(1), ev(2)]);
  const b = client.sendBatch([ev(3)]);
  await Promise.all([a, b]);
  t.equal(server.sessionRequests.length, 2, 'the session endpoint was hit again');
  t.equal(server.refusedUpgrades.length, 0, 'the expired token was not tried again');
  t.equal(server.conns.length, 2);
  t.not(server.conns[1].token, server.conns[0].token, 'the new connection uses the new token');
  t.equal(server.conns[0].closeCode, 4001);
  t.same(
    server.batchesOn(2).map((x) => x.id),
    server.batchesOn(1).map((x) => x.id),
    'both batches resent with their ids',
  );
  t.match(client.stats(), { ackedBatches: 2, reconnects: 1, resentBatches: 2 });
});

t.test('1001 / 1011 close: reconnect with backoff and resend', async (t) => {
  for (const code of [1001, 1011]) {
    await t.test(`close ${code}`, async (t) => {
      const { server, client } = await setup(t, {}, (s) => {
        s.onBatch = (b) => {
          if (b.conn.n === 1) b.conn.ws.close(code, 'bye');
          else s.ack(b);
        };
      });
      const disconnects: unknown[] = [];
      client.on('disconnect', (d) => disconnects.push(d));
      await client.connect();
      await client.sendBatch([ev(1), ev(2)]);
      t.same(disconnects, [{ code, reason: 'bye' }]);
      t.equal(server.batchesOn(2)[0].id, server.batchesOn(1)[0].id, 'resent with its id');
      t.match(client.stats(), { ackedBatches: 1, resentBatches: 1, reconnects: 1, rejectedBatches: 0 });
    });
  }
});

t.test('401 on the upgrade (expired token) → the session callback is called again', async (t) => {
  const { server, client, session } = await setup(t);
  await client.connect();
  const conn = server.conns[0];
  server.onBatch = () => {};
  const p = client.send(ev(1));
  await server.waitFor(() => server.batches.length === 1);
  server.onBatch = (b) => server.ack(b);
  server.tokens.set(conn.token, 0);
  conn.ws.terminate();
  await p;
  t.same(server.refusedUpgrades, [{ status: 401, code: 'billing_meter_event_session_expired' }], 'the reconnect with the old token was refused');
  t.equal(session.calls, 2, 'then a new session was created');
  t.equal(server.conns.length, 2);
  t.equal(server.batches[1].id, server.batches[0].id);
});

t.test('backpressure: at most min(maxUnackedBatches, ready.max_unacked_batches) batches in flight', async (t) => {
  for (const [clientMax, serverMax, expected] of [
    [8, 3, 3],
    [2, 64, 2],
  ]) {
    await t.test(`client ${clientMax}, server ${serverMax}`, async (t) => {
      let overLimit = 0;
      const { server, client } = await setup(t, { maxUnackedBatches: clientMax, maxBatchEvents: 1 }, (s) => {
        s.readyOverrides = { max_unacked_batches: serverMax };
        s.onBatch = (b) => {
          if (client.stats().inFlightBatches > expected) overLimit++;
          setTimeout(() => s.ack(b), 2); // slow acks
        };
      });
      await client.connect();
      const promises = Array.from({ length: 24 }, (_, i) => client.send(ev(i)));
      t.ok(client.stats().inFlightBatches <= expected);
      await Promise.all(promises);
      t.equal(server.batches.length, 24);
      t.equal(server.conns[0].maxUnacked, expected, `the server saw at most ${expected} unanswered batches (and reached it)`);
      t.equal(overLimit, 0, 'the client never had more in flight');
    });
  }
});

t.test('QueueFullError when queued + in-flight events would exceed maxQueuedEvents', async (t) => {
  const held: RecvBatch[] = [];
  const { server, client } = await setup(t, { maxQueuedEvents: 5, maxBatchEvents: 2, lingerMs: 1 }, (s) => {
    s.onBatch = (b) => held.push(b);
  });
  await client.connect();
  const accepted = [0, 1, 2, 3, 4].map((i) => client.send(ev(i)));
  await t.rejects(client.send(ev(5)), QueueFullError, 'the sixth event is refused');
  await t.rejects(client.sendBatch([ev(6)]), QueueFullError, 'so is a batch');
  const flushed = client.flush();
  await server.waitFor(() => held.reduce((n, b) => n + b.events.length, 0) === 5);
  t.match(client.stats(), { queuedEvents: 0, inFlightBatches: 3 }, 'five events in three batches in flight');
  await t.rejects(client.send(ev(7)), QueueFullError, 'in-flight events count too');
  for (const b of held) server.ack(b);
  await Promise.all(accepted);
  await flushed;
  server.onBatch = (b) => server.ack(b);
  await client.send(ev(8));
  t.equal(client.stats().ackedEvents, 6, 'room again once acked');
});

t.test('close() flushes the partial batch, waits for its ack, closes with 1000', async (t) => {
  const { server, client } = await setup(t, { lingerMs: 60000 });
  const resolved: number[] = new Array(7).fill(0);
  const promises = Array.from({ length: 7 }, (_, i) => client.send(ev(i)).then(() => resolved[i]++));
  await client.close();
  t.same(resolved, new Array(7).fill(1), 'every event was acked before close() resolved');
  await Promise.all(promises);
  t.same(
    server.batches.map((b) => b.events.length),
    [7],
    'one partial batch, sent without waiting for the linger time',
  );
  await server.waitFor(() => server.conns[0].closeCode !== undefined);
  t.equal(server.conns[0].closeCode, 1000);
  await t.rejects(client.send(ev(9)), StreamClosedError, 'send after close rejects');
  await t.rejects(client.connect(), StreamClosedError, 'connect after close rejects');
});

t.test('frames over 1 MiB: a batch is split, a single oversize event is rejected before sending', async (t) => {
  const { server, client } = await setup(t, { maxBatchEvents: 100 });
  await client.connect();
  const big = 'x'.repeat(20000);
  const many = Array.from({ length: 100 }, (_, i) => ({ event_name: 'blob', payload: { stripe_customer_id: `cus_${i}`, value: big } }));
  await client.sendBatch(many);
  t.same(
    server.batches.map((b) => b.events.length),
    [50, 50],
    '2 MB of events went as two batches under 1 MiB',
  );
  const err = await client.send({ event_name: 'blob', payload: { value: 'y'.repeat(1100000) } }).catch((e) => e);
  t.type(err, FrameTooLargeError);
  t.ok(err.bytes > 1048576);
  t.equal(server.batches.length, 2, 'nothing was sent for it');
  await client.send(ev(1));
  t.equal(server.batches.length, 3, 'the stream goes on');
});

t.test('1008 close: the in-flight batches are rejected, the client reconnects', async (t) => {
  const { server, client } = await setup(t, {}, (s) => {
    s.onBatch = (b) => {
      if (b.conn.n === 1) b.conn.ws.close(1008, 'not a map');
      else s.ack(b);
    };
  });
  await client.connect();
  const err = await client.sendBatch([ev(1)]).catch((e) => e);
  t.type(err, StreamClosedError);
  t.equal(err.code, 1008);
  await client.send(ev(2));
  t.equal(server.conns.length, 2);
  t.equal(server.batchesOn(2).length, 1, 'the rejected batch was not resent');
  t.match(client.stats(), { rejectedBatches: 1, ackedBatches: 1, reconnects: 1 });
});

t.test('proactive session refresh: a new connection takes over, the old one drains and closes with 1000', async (t) => {
  const { server, makeClient } = await fakeServer(t, (s) => {
    s.onBatch = (b) => {
      if (b.conn.n > 1) s.ack(b);
    };
  });
  // lifetime 600 ms, refresh 450 ms before expiry → refresh at max(150, 300) = 300 ms
  const session = server.sessionFn(600);
  const { client } = makeClient({ session, refreshBeforeMs: 450 });
  await client.connect();
  const old = client.send(ev(1));
  await server.waitFor(() => server.batches.length === 1);
  const [info] = (await once(client, 'reconnect')) as [ReconnectInfo];
  t.same(info, { cause: 'refresh', resendBatches: 0 });
  t.equal(session.calls, 2, 'a new session was created');
  t.equal(server.conns[0].closeCode, undefined, 'the old connection stays open while a batch is in flight on it');
  await client.send(ev(2));
  t.equal(server.batches[1].conn.n, 2, 'new batches go to the new connection');
  server.ack(server.batches[0]);
  await old;
  await server.waitFor(() => server.conns[0].closeCode !== undefined);
  t.equal(server.conns[0].closeCode, 1000, 'the drained connection was closed');
  t.equal(client.stats().reconnects, 1);
});

t.test('client/src imports only node:*, ws, msgpackr and its own files', async (t) => {
  const root = path.resolve(__dirname, '../client/src');
  const files = fs.readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
  t.ok(files.includes('index.ts'));
  const IMPORT =
    /(?:^|[^\w.])(?:import|export)\s[^'"`;]*?from\s*['"]([^'"]+)['"]|(?:^|[^\w.])(?:import|require)\s*\(\s*['"]([^'"]+)['"]\s*\)|^\s*import\s*['"]([^'"]+)['"]/gm;
  const bad: string[] = [];
  for (const f of files) {
    const code = fs
      .readFileSync(path.join(root, f), 'utf8')
      .replace(/\/\*[\s\S]*?\*\//g, '')
      .replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
    for (const m of code.matchAll(IMPORT)) {
      const spec = m[1] ?? m[2] ?? m[3];
      if (spec.startsWith('.')) {
        const target = path.resolve(path.dirname(path.join(root, f)), spec);
        if (!target.startsWith(root + path.sep)) bad.push(`${f}: ${spec}`);
      } else if (!spec.startsWith('node:') && spec !== 'ws' && spec !== 'msgpackr') bad.push(`${f}: ${spec}`);
    }
  }
  t.same(bad, []);
});
