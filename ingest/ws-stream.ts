/**
 * The WebSocket meter event stream (protocol meterd.stream.v1, documented in the README): one long-lived connection per
 * meter event session carries batches of events as msgpack (binary) or JSON (text) frames. Each batch is read with
 * the HTTP stream's rules, appended to the log like an HTTP stream request, and acknowledged by its id only once it is
 * durable. Events without an identifier get one derived from the batch id (SocketBatchIdentifiers), so a client that
 * resends its unacknowledged batches after a reconnect has every event counted once.
 *
 * The handshake is checked here before `ws` sees it, so that every refusal is a Stripe error object with its status.
 */
import type net from 'node:net';
import { Packr, Unpackr } from 'msgpackr';
import { WebSocketServer, type WebSocket } from 'ws';
import { ApiError, InvalidRequestError, ServiceUnavailableError, StripeError } from '../shared/errors';
import type { Authenticator, Principal, SessionClaims } from '../shared/http/auth';
import type { UpgradeTakeover } from '../shared/http/connection';
import type { RequestHead } from '../shared/http/parser';
import type { HttpRequest } from '../shared/http/server';
import { log } from '../shared/logger';
import type { StreamSocketStats } from './gateway-messages';
import type { SocketBatch } from './records';
import { readStreamEvents, SocketBatchIdentifiers, type StreamBatchRules } from './stream-events';
import { countAccepted, countRejected, ingestSeries } from '../shared/metrics';

export const STREAM_SUBPROTOCOL = 'meterd.stream.v1';
const BEARER_SUBPROTOCOL = 'bearer.';

/** The limits a client is told in the `ready` message. */
export const STREAM_LIMITS = {
  maxBatchEvents: 1000,
  maxUnackedBatches: 64,
  maxFrameBytes: 1024 * 1024,
};

export const CloseCode = {
  normal: 1000,
  shutdown: 1001,
  tooBig: 1009,
  internal: 1011,
  sessionExpired: 4001,
} as const;

const WS_SERIES = ingestSeries('v2_meter_event_stream_ws');
const WS_RULES: StreamBatchRules = { maxEvents: STREAM_LIMITS.maxBatchEvents, integerSeconds: true };
/** Answers waiting in the socket's send buffer above which reading pauses until the client reads. */
const MAX_BUFFERED_OUTPUT = 1024 * 1024;
const WEBSOCKET_KEY = /^[+/0-9A-Za-z]{22}==$/;

type Encoding = 'msgpack' | 'json';

/** Appends one batch's records (ingest/records.ts encodeSocketBatchRecords), durable when it resolves. */
export type AppendBatch = (principal: Principal, receivedMs: number, batch: SocketBatch) => Promise<void>;

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

function isPlainMap(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array);
}

/** The error object of an `error` message: the v1 fields, with the param that points at the bad value. */
function errorObject(err: StripeError): Record<string, unknown> {
  const error: Record<string, unknown> = { type: err.type, message: err.message };
  if (err.code) error.code = err.code;
  if (err.param) error.param = err.param;
  return error;
}

export class MeterEventSocketServer {
  private readonly wss = new WebSocketServer({
    noServer: true,
    clientTracking: false,
    perMessageDeflate: false,
    maxPayload: STREAM_LIMITS.maxFrameBytes,
    handleProtocols: (offered) => (offered.has(STREAM_SUBPROTOCOL) ? STREAM_SUBPROTOCOL : false),
  });
  private readonly streams = new Set<StreamConnection>();
  private closing = false;
  /** Batches being appended, over all connections, and the most there have been at once on one connection. */
  readonly stats = { batchesInFlight: 0, peakBatchesInFlightPerConnection: 0 };

  constructor(
    private readonly auth: Pick<Authenticator, 'session'>,
    private readonly append: AppendBatch,
  ) {}

  get connections(): number {
    return this.streams.size;
  }

  snapshot(): StreamSocketStats {
    return { connections: this.streams.size, ...this.stats };
  }

  /** The upgrade handler of `GET /v2/billing/meter_event_stream`. */
  readonly handshake = (req: HttpRequest, head: RequestHead): UpgradeTakeover => {
    const h = head.headers;
    if ((h.upgrade ?? '').toLowerCase() !== 'websocket') {
      throw new InvalidRequestError('Invalid upgrade: this endpoint upgrades to WebSocket only (Upgrade: websocket).', { param: 'Upgrade' });
    }
    const key = h['sec-websocket-key'];
    if (key === undefined || !WEBSOCKET_KEY.test(key)) {
      throw new InvalidRequestError('Invalid upgrade: a WebSocket handshake needs a Sec-WebSocket-Key of 16 base64-encoded bytes.', {
        param: 'Sec-WebSocket-Key',
      });
    }
    if (h['sec-websocket-version'] !== '13') {
      throw new InvalidRequestError('Invalid upgrade: only WebSocket version 13 is supported.', {
        param: 'Sec-WebSocket-Version',
        headers: { 'Sec-WebSocket-Version': '13' },
      });
    }
    const offered = (h['sec-websocket-protocol'] ?? '')
      .split(',')
      .map((p) => p.trim())
      .filter((p) => p !== '');
    let authorization = req.authorization;
    const bearer = offered.find((p) => p.startsWith(BEARER_SUBPROTOCOL));
    if (bearer !== undefined) {
      if (!offered.includes(STREAM_SUBPROTOCOL)) {
        throw new InvalidRequestError(`Invalid upgrade: a token in Sec-WebSocket-Protocol must come with the ${STREAM_SUBPROTOCOL} subprotocol.`, {
          param: 'Sec-WebSocket-Protocol',
        });
      }
      if (!authorization) authorization = `Bearer ${bearer.slice(BEARER_SUBPROTOCOL.length)}`;
    }
    const encoding = readEncoding(req.query);
    if (this.closing) throw new ServiceUnavailableError('The server is shutting down; reconnect shortly.');
    const claims = this.auth.session({ authorization }, Date.now());
    return (socket, rest) => {
      const upgradeRequest = { method: 'GET', url: `${head.path}?${head.query}`, headers: head.headers, socket };
      this.wss.handleUpgrade(upgradeRequest as never, socket, rest, (ws) => {
        const stream = new StreamConnection(ws, socket, claims, encoding, this.append, this.stats, () => this.streams.delete(stream));
        this.streams.add(stream);
        if (this.closing) stream.finish(CloseCode.shutdown, 'server shutting down');
      });
    };
  };

  /** Answers every batch already read, then closes each connection with 1001 (bounded by `timeoutMs`). */
  async close(timeoutMs = 10_000): Promise<void> {
    this.closing = true;
    const all = [...this.streams].map((st) => st.finish(CloseCode.shutdown, 'server shutting down'));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(all), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    for (const st of this.streams) st.terminate();
  }
}

function readEncoding(query: string): Encoding {
  let encoding: Encoding = 'msgpack';
  if (query === '') return encoding;
  for (const pair of query.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const name = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? '' : pair.slice(eq + 1);
    if (name !== 'encoding') {
      throw new InvalidRequestError(`Received unknown parameter: ${name.slice(0, 100)}`, { code: 'parameter_unknown', param: name.slice(0, 100) });
    }
    if (value !== 'msgpack' && value !== 'json') throw new InvalidRequestError('Invalid encoding: must be one of msgpack, json.', { param: 'encoding' });
    encoding = value;
  }
  return encoding;
}

/** One client connection: reads batches, appends them, answers each by id, pauses when too many are unanswered. */
class StreamConnection {
  private unanswered = 0;
  private readPaused = false;
  /** No more batches are read (the session expired or the server is closing); close once all are answered. */
  private finishing: { code: number; reason: string; done: Promise<void>; resolve: () => void } | null = null;
  private closed = false;
  /** Frames read while the limit of unanswered batches was reached. */
  private readonly held: Array<[Buffer, boolean]> = [];
  /** The close frame went out: a frame read after it is dropped unanswered and unstored (the client resends it). */
  private closeSent = false;
  private readonly expiryTimer: NodeJS.Timeout;
  private readonly closedPromise: Promise<void>;

  constructor(
    private readonly ws: WebSocket,
    private readonly socket: net.Socket,
    private readonly claims: SessionClaims,
    encoding: Encoding,
    private readonly append: AppendBatch,
    private readonly stats: MeterEventSocketServer['stats'],
    onClosed: () => void,
  ) {
    let resolveClosed!: () => void;
    this.closedPromise = new Promise((resolve) => (resolveClosed = resolve));
    ws.on('message', (data, isBinary) => this.onFrame(data as Buffer, isBinary));
    // `ws` closes the connection itself on a protocol error (1002), bad UTF-8 (1007) or a frame too large (1009).
    ws.on('error', (err) => log.debug('websocket error', { err: String(err) }));
    ws.on('close', () => {
      this.closed = true;
      clearTimeout(this.expiryTimer);
      onClosed();
      this.finishing?.resolve();
      resolveClosed();
    });
    socket.on('drain', () => this.updateFlow());
    const ttl = Math.max(0, claims.expiresMs - Date.now());
    this.expiryTimer = setTimeout(() => this.finish(CloseCode.sessionExpired, 'meter event session expired'), Math.min(ttl, 2 ** 31 - 1));
    this.expiryTimer.unref();
    this.send(
      {
        type: 'ready',
        session: claims.sessionId,
        expires_at: new Date(claims.expiresMs).toISOString(),
        max_batch_events: STREAM_LIMITS.maxBatchEvents,
        max_unacked_batches: STREAM_LIMITS.maxUnackedBatches,
        max_frame_bytes: STREAM_LIMITS.maxFrameBytes,
      },
      encoding === 'msgpack',
    );
  }

  private onFrame(data: Buffer, binary: boolean): void {
    if (this.closeSent) return;
    // `ws` hands over every frame of a chunk it has read, even after reading stopped: the frames beyond the limit
    // wait here (at most one read's worth) until answers free a place, so no more than the limit are in flight.
    if (this.unanswered >= STREAM_LIMITS.maxUnackedBatches || this.held.length > 0) {
      this.held.push([data, binary]);
      return;
    }
    this.handle(data, binary);
  }

  private handle(data: Buffer, binary: boolean): void {
    const started = performance.now();
    const receivedMs = Date.now();
    let body: unknown;
    try {
      body = binary ? unpackr.unpack(data) : JSON.parse(data.toString('utf8'));
    } catch {
      body = undefined;
    }
    if (!isPlainMap(body)) {
      this.reject(
        null,
        binary,
        new InvalidRequestError(
          binary
            ? 'Malformed frame: a binary frame must hold one msgpack map {id, events}.'
            : 'Malformed frame: a text frame must hold one JSON object {id, events}.',
          { code: 'invalid_frame' },
        ),
      );
      return;
    }
    const id = body.id;
    if (typeof id !== 'string' || id.length === 0 || id.length > 100) {
      this.reject(null, binary, new InvalidRequestError('Invalid string: id must be a batch id of 1 to 100 characters.', { param: 'id' }));
      return;
    }
    let batch: SocketBatch;
    try {
      for (const k in body) {
        if (k !== 'id' && k !== 'events')
          throw new InvalidRequestError(`Received unknown parameter: ${k.slice(0, 100)}`, { code: 'parameter_unknown', param: k.slice(0, 100) });
      }
      const identifiers = new SocketBatchIdentifiers(this.claims.principal.account, id);
      const events = readStreamEvents(body.events, identifiers.derive, receivedMs, WS_RULES);
      batch = { events, raw: body.events as unknown[], text: binary ? null : data, derivedPrefix: identifiers.derivedPrefix };
    } catch (err) {
      this.reject(id, binary, err);
      return;
    }
    this.unanswered++;
    this.stats.batchesInFlight++;
    if (this.unanswered > this.stats.peakBatchesInFlightPerConnection) this.stats.peakBatchesInFlightPerConnection = this.unanswered;
    this.updateFlow();
    const count = batch.events.length;
    this.append(this.claims.principal, receivedMs, batch).then(
      () => {
        countAccepted(WS_SERIES, this.claims.principal.livemode, count, started);
        this.answered({ type: 'ack', id, events: count }, binary);
      },
      (err) => this.answered(this.errorMessage(id, err), binary),
    );
  }

  private errorMessage(id: string | null, err: unknown): Record<string, unknown> {
    let stripeErr: StripeError;
    if (err instanceof StripeError) stripeErr = err;
    else {
      log.error('websocket batch failed', { err: String((err as Error)?.stack ?? err) });
      stripeErr = new ApiError();
    }
    countRejected(WS_SERIES.endpoint, stripeErr);
    const retry = stripeErr.status >= 500 || stripeErr.status === 429 || stripeErr.status === 409;
    return { type: 'error', id, retry, error: errorObject(stripeErr) };
  }

  private reject(id: string | null, binary: boolean, err: unknown): void {
    this.send(this.errorMessage(id, err), binary);
  }

  private answered(message: Record<string, unknown>, binary: boolean): void {
    this.unanswered--;
    this.stats.batchesInFlight--;
    this.send(message, binary);
    while (this.held.length > 0 && this.unanswered < STREAM_LIMITS.maxUnackedBatches && !this.closeSent) {
      const [data, isBinary] = this.held.shift()!;
      this.handle(data, isBinary);
    }
    if (this.finishing && this.unanswered === 0) this.closeNow();
    else this.updateFlow();
  }

  private send(message: Record<string, unknown>, binary: boolean): void {
    if (this.closed || this.ws.readyState !== this.ws.OPEN) return;
    this.ws.send(binary ? packr.pack(message) : JSON.stringify(message), { binary });
  }

  private updateFlow(): void {
    if (this.closed) return;
    const pause = this.finishing !== null || this.unanswered >= STREAM_LIMITS.maxUnackedBatches || this.socket.writableLength > MAX_BUFFERED_OUTPUT;
    if (pause && !this.readPaused) {
      this.readPaused = true;
      this.ws.pause();
    } else if (!pause && this.readPaused) {
      this.readPaused = false;
      this.ws.resume();
    }
  }

  /** Stops reading, answers the batches already read, then closes with `code`. */
  finish(code: number, reason: string): Promise<void> {
    if (this.closed) return Promise.resolve();
    if (!this.finishing) {
      let resolve!: () => void;
      const done = new Promise<void>((r) => (resolve = r));
      this.finishing = { code, reason, done, resolve };
      this.updateFlow();
      if (this.unanswered === 0) this.closeNow();
    }
    return this.finishing.done;
  }

  private closeNow(): void {
    const f = this.finishing!;
    this.closeSent = true;
    this.ws.close(f.code, f.reason);
    // A client that does not answer the close frame is dropped (ws's own close timeout is 30 s).
    setTimeout(() => this.terminate(), 5000).unref();
    this.closedPromise.then(f.resolve);
  }

  terminate(): void {
    if (!this.closed) this.ws.terminate();
  }
}
