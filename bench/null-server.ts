/**
 * The null server: a uWS server that speaks just enough of the meter-event API for the load generator and does no
 * work. It reads every stream body to the end and answers `{}`; it is the baseline that shows the generator is not the
 * ceiling of a benchmark run.
 *
 *   node dist/bench/null-server.js [--port N] [--host 127.0.0.1]      (or env PORT / HOST; port 0 = any free port)
 *
 * Prints `null-server listening on http://HOST:PORT` on stdout once listening; exits on SIGTERM/SIGINT and prints
 * request/byte counters on stderr.
 *
 * --validate (self-test of the generator, not for baselines): the stream handler also parses every body, checks the
 * identifiers are unique (duplicates are counted and ignored, like the real server's dedup) and sums `value` per
 * customer (visible after --lag-ms N, default 0), and event_summaries answers those sums, so the generator's freshness/exactness path can run against it.
 * /healthz then also shows `aggregator: {events, stored, duplicates, invalid}` (stored = visible), for the lag sampling.
 *
 * Routes: GET /healthz; POST /v2/billing/meter_event_session (fake session, 15 min); POST
 * /v2/billing/meter_event_stream (`{}` after the whole body); the WebSocket stream (meterd.stream.v1) on the same path:
 * `ready` on open, and every batch acknowledged at once (its id and event count read from the frame's head, without
 * decoding the events); POST /v1/billing/meters (fake meter); GET /v1/billing/meters/:id/event_summaries (empty
 * list). Anything else: 404.
 */
import * as uWS from '@trufflesuite/uws-js-unofficial';
import { randomBytes } from 'node:crypto';
import { pack, unpack } from 'msgpackr';
import { peekBatch } from './frame-head';

function flag(name: string): string | undefined {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === `--${name}`) return argv[i + 1];
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
  }
  return undefined;
}

// Env forms (NULL_SERVER_VALIDATE=1, NULL_SERVER_LAG_MS, ...) let run.ts use it as a stand-in real server in tests.
const validate = process.argv.includes('--validate') || process.env.NULL_SERVER_VALIDATE === '1';
/** --validate only: summaries show events this many ms after they were acknowledged (simulated aggregation lag). */
const lagMs = Number(flag('lag-ms') ?? process.env.NULL_SERVER_LAG_MS ?? 0);
/**
 * --validate only, fault injection to exercise the generator's retry paths: with probability --fault-rate a stream
 * request gets (equally often) a 503 + Retry-After: 0 before ingesting, a 500 after ingesting (lost ack: the resend
 * must be deduplicated), or a closed connection after ingesting. --session-ttl-ms makes tokens expire (401).
 */
const faultRate = Number(flag('fault-rate') ?? process.env.NULL_SERVER_FAULT_RATE ?? 0);
const sessionTtlMs = Number(flag('session-ttl-ms') ?? process.env.NULL_SERVER_SESSION_TTL_MS ?? 15 * 60_000);
const tokens = new Map<string, number>(); // token -> expiry (ms)
let faults = 0;
let expired = 0;
const host = flag('host') ?? process.env.HOST ?? '127.0.0.1';
const port = Number(flag('port') ?? process.env.PORT ?? 0);
if (!['127.0.0.1', 'localhost', '::1'].includes(host)) {
  console.error(`null-server: refusing to listen on non-loopback host ${host}`);
  process.exit(2);
}

let streamRequests = 0;
let streamBytes = 0;
let sessions = 0;
// --validate state
const seen = new Set<string>();
const sums = new Map<string, number>();
let duplicates = 0;
let invalid = 0;
/** Events visible in the summaries (after --lag-ms): /healthz shows it as `aggregator.stored`, like the real server. */
let stored = 0;

type WireEvent = { event_name?: string; identifier?: string; payload?: Record<string, string> };

function ingest(body: Buffer): boolean {
  let j: { events?: WireEvent[] };
  try {
    j = JSON.parse(body.toString('utf8'));
  } catch {
    invalid++;
    return false;
  }
  return ingestEvents(j.events, 100, null);
}

/** --validate: checks, dedups and sums a batch; a WebSocket batch's events without identifier get `<batch id>:<index>`. */
function ingestEvents(events: WireEvent[] | undefined, max: number, batchId: string | null): boolean {
  if (!Array.isArray(events) || events.length < 1 || events.length > max) {
    invalid++;
    return false;
  }
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const id = e.identifier ?? (batchId === null ? undefined : `${batchId}:${i}`);
    const cus = e.payload?.stripe_customer_id;
    const v = e.payload?.value;
    if (!id || !cus || v === undefined || !/^[0-9]+$/.test(v)) {
      invalid++;
      return false;
    }
    if (seen.has(id)) {
      duplicates++;
      continue;
    }
    seen.add(id);
    const add = (): void => {
      sums.set(cus, (sums.get(cus) ?? 0) + Number(v));
      stored++;
    };
    if (lagMs > 0) setTimeout(add, lagMs);
    else add();
  }
  return true;
}

/**
 * Reads a request body to the end, then calls `done` unless the request was aborted. The body is discarded unless
 * `keep` (then it is copied and handed over).
 */
function drain(res: uWS.HttpResponse, done: (bytes: number, body: Buffer | null) => void, keep = false): void {
  let aborted = false;
  let bytes = 0;
  const parts: Buffer[] = [];
  res.onAborted(() => {
    aborted = true;
  });
  res.onData((chunk, isLast) => {
    bytes += chunk.byteLength;
    if (keep) parts.push(Buffer.from(Buffer.from(chunk))); // copy: uWS neuters the ArrayBuffer on return
    if (isLast && !aborted) res.cork(() => done(bytes, keep ? Buffer.concat(parts) : null));
  });
}

/** --validate: answers 401 (an expired session, as the real server does) unless the token is live. */
function refusedSession(res: uWS.HttpResponse, token: string): boolean {
  if (!validate) return false;
  const exp = tokens.get(token);
  if (exp !== undefined && exp >= Date.now()) return false;
  expired++;
  res.writeStatus('401 Unauthorized').writeHeader('Content-Type', 'application/json');
  res.end('{"error":{"type":"temporary_session_expired","code":"billing_meter_event_session_expired","message":"expired"}}');
  return true;
}

const app = uWS.App();

app.get('/healthz', (res) => {
  const body = validate ? JSON.stringify({ status: 'ok', aggregator: { events: seen.size, stored, duplicates, invalid } }) : '{"status":"ok"}';
  res.writeStatus('200 OK').writeHeader('Content-Type', 'application/json').end(body);
});

app.post('/v2/billing/meter_event_stream', (res, req) => {
  const token = validate ? req.getHeader('authorization').replace(/^Bearer /, '') : '';
  drain(
    res,
    (bytes, body) => {
      streamRequests++;
      streamBytes += bytes;
      if (refusedSession(res, token)) return;
      const fault = faultRate > 0 && Math.random() < faultRate ? Math.floor(Math.random() * 3) : -1;
      if (fault >= 0) faults++;
      if (fault === 0) {
        res.writeStatus('503 Service Unavailable').writeHeader('Retry-After', '0').writeHeader('Content-Type', 'application/json');
        res.end('{"error":{"code":"unavailable","message":"injected"}}');
        return;
      }
      if (body && !ingest(body)) {
        res.writeStatus('400 Bad Request').writeHeader('Content-Type', 'application/json');
        res.end('{"error":{"code":"invalid_request","message":"bad meter event batch"}}');
        return;
      }
      if (fault === 1) {
        res.writeStatus('500 Internal Server Error').writeHeader('Content-Type', 'application/json');
        res.end('{"error":{"type":"api_error","message":"injected after ingest"}}');
        return;
      }
      if (fault === 2) {
        res.close();
        return;
      }
      res.writeStatus('200 OK').writeHeader('Content-Type', 'application/json').end('{}');
    },
    validate,
  );
});

app.post('/v2/billing/meter_event_session', (res) => {
  drain(res, () => {
    sessions++;
    const now = Date.now();
    const token = `mest_null_${randomBytes(12).toString('hex')}`;
    if (validate) tokens.set(token, now + sessionTtlMs);
    const body = JSON.stringify({
      id: `mes_null_${randomBytes(6).toString('hex')}`,
      object: 'v2.billing.meter_event_session',
      authentication_token: token,
      created: new Date(now).toISOString(),
      expires_at: new Date(now + 15 * 60_000).toISOString(),
      livemode: false,
    });
    res.writeStatus('200 OK').writeHeader('Content-Type', 'application/json').end(body);
  });
});

app.post('/v1/billing/meters', (res) => {
  drain(res, () => {
    const body = JSON.stringify({
      id: `mtr_null_${randomBytes(6).toString('hex')}`,
      object: 'billing.meter',
      event_name: 'bench_tokens',
      status: 'active',
    });
    res.writeStatus('200 OK').writeHeader('Content-Type', 'application/json').end(body);
  });
});

app.get('/v1/billing/meters/:id/event_summaries', (res, req) => {
  const customer = req.getQuery('customer');
  const data = validate && customer && sums.has(customer) ? [{ object: 'billing.meter_event_summary', aggregated_value: sums.get(customer) }] : [];
  res.writeStatus('200 OK').writeHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ object: 'list', data, has_more: false }));
});

interface WsData {
  encoding: 'msgpack' | 'json';
}
let wsConnections = 0;
let wsBatches = 0;
let wsEvents = 0;

/** Sends a server message in the frame type the protocol asks for: binary msgpack or text JSON. */
function wsSend(ws: uWS.WebSocket<WsData>, msg: Record<string, unknown>, binary: boolean): void {
  if (binary) ws.send(pack(msg), true);
  else ws.send(JSON.stringify(msg), false);
}

app.ws<WsData>('/v2/billing/meter_event_stream', {
  compression: uWS.DISABLED,
  maxPayloadLength: 1024 * 1024,
  idleTimeout: 120,
  maxBackpressure: 16 * 1024 * 1024,
  upgrade: (res, req, context) => {
    const key = req.getHeader('sec-websocket-key');
    const protocols = req.getHeader('sec-websocket-protocol');
    const extensions = req.getHeader('sec-websocket-extensions');
    const encoding = /(^|&)encoding=json(&|$)/.test(req.getQuery() ?? '') ? 'json' : 'msgpack';
    const token = req.getHeader('authorization').replace(/^Bearer /, '') || (/bearer\.([^,\s]+)/.exec(protocols)?.[1] ?? '');
    if (refusedSession(res, token)) return;
    const selected = protocols.split(',').some((x) => x.trim() === 'meterd.stream.v1') ? 'meterd.stream.v1' : '';
    res.upgrade<WsData>({ encoding }, key, selected, extensions, context);
  },
  open: (ws) => {
    wsConnections++;
    const now = Date.now();
    const ready = {
      type: 'ready',
      session: `mes_null_${randomBytes(6).toString('hex')}`,
      expires_at: new Date(now + 15 * 60_000).toISOString(),
      max_batch_events: 1000,
      max_unacked_batches: 64,
      max_frame_bytes: 1024 * 1024,
    };
    wsSend(ws, ready, ws.getUserData().encoding === 'msgpack');
  },
  message: (ws, message, isBinary) => {
    const buf = Buffer.from(message); // a view: uWS neuters the ArrayBuffer on return, so it is read right away
    let head = isBinary && !validate ? peekBatch(buf) : null;
    if (!head) {
      let m: { id?: unknown; events?: WireEvent[] };
      try {
        m = (isBinary ? unpack(buf) : JSON.parse(buf.toString('utf8'))) as typeof m;
      } catch {
        wsSend(
          ws,
          { type: 'error', id: null, retry: false, error: { type: 'invalid_request_error', code: 'invalid_frame', message: 'unreadable frame' } },
          isBinary,
        );
        return;
      }
      if (typeof m.id !== 'string' || !Array.isArray(m.events)) {
        wsSend(
          ws,
          { type: 'error', id: null, retry: false, error: { type: 'invalid_request_error', code: 'invalid_frame', message: 'no id or events' } },
          isBinary,
        );
        return;
      }
      if (validate && !ingestEvents(m.events, 1000, m.id)) {
        wsSend(ws, { type: 'error', id: m.id, retry: false, error: { type: 'invalid_request_error', message: 'bad meter event batch' } }, isBinary);
        return;
      }
      head = { id: m.id, events: m.events.length };
    }
    wsBatches++;
    wsEvents += head.events;
    wsSend(ws, { type: 'ack', id: head.id, events: head.events }, isBinary);
  },
});

app.any('/*', (res, req) => {
  const url = req.getUrl();
  const method = req.getMethod().toUpperCase();
  const reply = (): void => {
    res
      .writeStatus('404 Not Found')
      .writeHeader('Content-Type', 'application/json')
      .end(JSON.stringify({ error: { type: 'invalid_request_error', message: `Unrecognized request URL (${method}: ${url}).` } }));
  };
  if (method === 'GET' || method === 'HEAD' || method === 'DELETE') reply();
  else drain(res, reply);
});

let listenSocket: uWS.us_listen_socket | null = null;
app.listen(host, port, (ls) => {
  if (!ls) {
    console.error(`null-server: cannot listen on ${host}:${port}`);
    process.exit(1);
  }
  listenSocket = ls;
  const actual = uWS.us_socket_local_port(ls);
  const shown = host.includes(':') ? `[${host}]` : host;
  process.stdout.write(`null-server listening on http://${shown}:${actual}\n`);
});

function stop(): void {
  if (listenSocket) uWS.us_listen_socket_close(listenSocket);
  listenSocket = null;
  process.stderr.write(
    `null-server: stream requests=${streamRequests} body bytes=${streamBytes} sessions=${sessions} ` +
      `ws connections=${wsConnections} batches=${wsBatches} events=${wsEvents}` +
      (validate ? ` unique events=${seen.size} duplicates=${duplicates} invalid=${invalid} faults=${faults} expired=${expired}` : '') +
      '\n',
  );
  // Keep-alive client connections would keep the loop alive: exit explicitly.
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
