import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { pack, unpack } from 'msgpackr';
import { WebSocket, type RawData } from 'ws';
import {
  BatchRejectedError,
  FrameTooLargeError,
  QueueFullError,
  SessionError,
  StreamClosedError,
  StreamConnectionError,
  type StreamErrorObject,
  StreamServerError,
} from './errors';
import { Fifo } from './queue';

export const STREAM_PATH = '/v2/billing/meter_event_stream';
export const SESSION_PATH = '/v2/billing/meter_event_session';
export const SUBPROTOCOL = 'meterd.stream.v1';
/** The protocol's frame limit (1 MiB); a smaller `max_frame_bytes` from the server's `ready` wins. */
export const MAX_FRAME_BYTES = 1024 * 1024;
/** The protocol's limit of events per batch. */
export const MAX_BATCH_EVENTS = 1000;

/** One meter event, as given to `send` / `sendBatch`. */
export interface MeterEvent {
  event_name: string;
  payload: Record<string, string>;
  /** Optional idempotency key (≤ 100 chars). Without it the server derives one from the batch id and the index. */
  identifier?: string;
  /** RFC 3339 string, integer unix seconds, or a Date (sent as integer unix seconds). */
  timestamp?: Date | string | number;
}

/** A meter event session: the token to authenticate the WebSocket with, and when it expires. */
export interface StreamSession {
  token: string;
  expiresAt: Date;
}

export type StreamEncoding = 'msgpack' | 'json';
export type StreamAuthMode = 'header' | 'subprotocol';

export interface MeterEventStreamOptions {
  /** Gateway URL, e.g. `ws://127.0.0.1:8080` (http/https are accepted too). An empty or `/` path gets `/v2/billing/meter_event_stream`. */
  url: string | URL;
  /** A secret API key: the client creates sessions itself with `POST /v2/billing/meter_event_session`. */
  apiKey?: string;
  /** Or: a callback that creates a session (e.g. on your backend). Exactly one of `apiKey` / `session`. */
  session?: () => Promise<StreamSession>;
  /** Where sessions are created in `apiKey` mode; default: the gateway's `/v2/billing/meter_event_session`. */
  sessionUrl?: string | URL;
  /** Frame encoding: binary msgpack (default) or text JSON. */
  encoding?: StreamEncoding;
  /** Events per batch, 1–1000 (default 100); the server's `ready.max_batch_events` caps it. */
  maxBatchEvents?: number;
  /** A partial batch is sent this long after its first event was queued (default 5 ms). */
  lingerMs?: number;
  /** `send` rejects with `QueueFullError` when queued plus in-flight events would exceed this (default 100000). */
  maxQueuedEvents?: number;
  /** Batches in flight (sent, unanswered) per connection (default 64); the server's `ready.max_unacked_batches` caps it. */
  maxUnackedBatches?: number;
  /** Open a new session and connection this long before the token expires (default 60000 ms). */
  refreshBeforeMs?: number;
  /** Reconnect backoff: exponential from `initialDelayMs` (default 100) to `maxDelayMs` (default 5000), with jitter. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
  /** Batch ids are `${batchIdPrefix}-${counter}`; default 12 random hex characters. */
  batchIdPrefix?: string;
  /** `header` (default): `Authorization: Bearer <token>`; `subprotocol`: `Sec-WebSocket-Protocol: meterd.stream.v1, bearer.<token>`. */
  authMode?: StreamAuthMode;
  /** Timeout of the WebSocket opening handshake and of session creation (default 10000 ms). */
  handshakeTimeoutMs?: number;
  /** How long to wait for the server's `ready` after the upgrade (default 10000 ms). */
  readyTimeoutMs?: number;
  /** Ping the server this often and drop the connection if no pong came since the last ping (default 30000 ms, 0: off). */
  pingIntervalMs?: number;
}

/** The server's first message on a connection. */
export interface ReadyMessage {
  type: 'ready';
  session: string;
  expires_at: string;
  max_batch_events: number;
  max_unacked_batches: number;
  max_frame_bytes: number;
}

/** Payload of the `reconnect` event: a replacement connection is ready. */
export interface ReconnectInfo {
  /** `closed`: the previous connection was lost or closed by the server; `refresh`: proactive session refresh. */
  cause: 'closed' | 'refresh';
  /** Close code and reason of the previous connection (for `closed`). */
  code?: number;
  reason?: string;
  /** Batches that were sent before and are resent first on this connection. */
  resendBatches: number;
}

/** Payload of the `disconnect` event. */
export interface DisconnectInfo {
  code: number;
  reason: string;
}

export interface StreamStats {
  /** Events accepted by `send`/`sendBatch` and not in flight: waiting for a batch, for the window, or for a retry. */
  queuedEvents: number;
  /** Batches sent and not yet answered, over all open connections. */
  inFlightBatches: number;
  ackedBatches: number;
  ackedEvents: number;
  /** Batches rejected for good: `retry: false` errors and batches lost to a 1008/1009 close. */
  rejectedBatches: number;
  /** Replacement connections that became ready (after a lost connection or a session refresh). */
  reconnects: number;
  /** Frames sent again for a batch that had been sent before (after a reconnect or a `retry: true` error). */
  resentBatches: number;
}

interface WireEvent {
  event_name: string;
  payload: Record<string, unknown>;
  identifier?: string;
  timestamp?: string | number;
}

/** The caller-visible promise of one `send` (one event) or one `sendBatch` (many events). */
interface Group {
  seq: number;
  remaining: number;
  failed: boolean;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Entry {
  event: WireEvent;
  group: Group;
}

interface Batch {
  id: string;
  entries: Entry[];
  frame: Buffer | string;
  bytes: number;
  /** Times the frame was sent. */
  sends: number;
  /** `retry: true` answers so far (drives the retry backoff). */
  retries: number;
  timer: NodeJS.Timeout | null;
}

interface SessionState {
  token: string;
  expiresAt: number;
  /** Reuse the session for new connections before this time; proactively refresh at it. */
  refreshAt: number;
}

interface Conn {
  ws: WebSocket;
  session: SessionState;
  ready: ReadyMessage | null;
  inFlight: Map<string, Batch>;
  draining: boolean;
  closed: boolean;
  alive: boolean;
  readyTimer: NodeJS.Timeout | null;
  pingTimer: NodeJS.Timeout | null;
  /** Why the connection failed before `ready`, when known (HTTP status of a refused upgrade, socket error). */
  failure: Error | null;
  httpStatus?: number;
}

interface Resolved {
  encoding: StreamEncoding;
  maxBatchEvents: number;
  lingerMs: number;
  maxQueuedEvents: number;
  maxUnackedBatches: number;
  refreshBeforeMs: number;
  initialDelayMs: number;
  maxDelayMs: number;
  authMode: StreamAuthMode;
  handshakeTimeoutMs: number;
  readyTimeoutMs: number;
  pingIntervalMs: number;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function positiveInt(v: unknown, fallback: number): number {
  return typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : fallback;
}

function option(name: string, v: number | undefined, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number' || Number.isNaN(v) || v < min || v > max) throw new RangeError(`${name} must be a number from ${min} to ${max}, got ${v}`);
  return v;
}

function toWire(event: MeterEvent): WireEvent {
  if (!isObject(event)) throw new TypeError('a meter event must be an object');
  if (typeof event.event_name !== 'string' || event.event_name === '') throw new TypeError('event_name must be a non-empty string');
  if (!isObject(event.payload)) throw new TypeError('payload must be an object of string values');
  const wire: WireEvent = { event_name: event.event_name, payload: { ...event.payload } };
  if (event.identifier !== undefined) wire.identifier = event.identifier;
  const ts = event.timestamp;
  if (ts !== undefined) {
    if (ts instanceof Date) {
      const ms = ts.getTime();
      if (Number.isNaN(ms)) throw new TypeError('timestamp is an invalid Date');
      wire.timestamp = Math.floor(ms / 1000);
    } else if (typeof ts === 'string' || typeof ts === 'number') {
      wire.timestamp = ts;
    } else {
      throw new TypeError('timestamp must be a Date, an RFC 3339 string or integer unix seconds');
    }
  }
  return wire;
}

function streamUrlOf(url: string | URL, encoding: StreamEncoding): URL {
  const u = new URL(String(url));
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new TypeError(`url must be a ws:, wss:, http: or https: URL, got ${u.protocol}`);
  if (u.pathname === '' || u.pathname === '/') u.pathname = STREAM_PATH;
  u.searchParams.set('encoding', encoding);
  u.hash = '';
  return u;
}

function sessionUrlOf(stream: URL): URL {
  const u = new URL(stream.href);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  u.pathname = u.pathname.endsWith('/meter_event_stream') ? u.pathname.replace(/\/meter_event_stream$/, '/meter_event_session') : SESSION_PATH;
  u.search = '';
  return u;
}

function parseExpiry(v: unknown): number {
  const ms = typeof v === 'number' ? v * 1000 : typeof v === 'string' ? Date.parse(v) : Number.NaN;
  if (Number.isNaN(ms)) throw new SessionError(`the session response has no valid expires_at (${String(v)})`);
  return ms;
}

/** A session error that no retry will fix: the API key or the endpoint is wrong (HTTP 4xx other than 408/429). */
function isFatal(err: unknown): boolean {
  return err instanceof SessionError && err.status !== undefined && err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429;
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

const noop = () => {};

/**
 * A client of the meterd WebSocket meter event stream. Events given to `send` are batched (by size and linger time),
 * sent with at most `maxUnackedBatches` batches in flight, and their promises settle when the server answers the
 * batch. Lost connections are re-established with backoff and every unanswered batch is resent with its id.
 *
 * Events: `ready` (ReadyMessage, every connection), `reconnect` (ReconnectInfo), `disconnect` (DisconnectInfo),
 * `error` (Error; emitted only when there are listeners, so an unhandled `error` never throws).
 */
export class MeterEventStream extends EventEmitter {
  private readonly opts: Resolved;
  private readonly streamUrl: URL;
  private readonly sessionUrl: URL;
  private readonly apiKey: string | undefined;
  private readonly sessionFn: (() => Promise<StreamSession>) | undefined;
  private readonly prefix: string;
  private counter = 0;
  private groupSeq = 0;

  private readonly pending = new Fifo<Entry>();
  private readonly outbox = new Fifo<Batch>();
  private readonly retrying = new Set<Batch>();
  /** Every group not yet known to be settled, in creation (seq) order; settled ones are dropped from the front. */
  private readonly groups = new Fifo<Group>();
  private unsettledGroups = 0;
  private flushWaiters: { upTo: number; resolve: () => void }[] = [];
  private totalEvents = 0;
  private inFlightEvents = 0;
  private lingerTimer: NodeJS.Timeout | null = null;
  private lingerDue = false;

  private readonly conns = new Set<Conn>();
  private active: Conn | null = null;
  private attempting = false;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private refreshTimer: NodeJS.Timeout | null = null;
  private failures = 0;
  private everReady = false;
  private lastClose: DisconnectInfo | null = null;
  private session: SessionState | null = null;
  private lastReady: ReadyMessage | null = null;
  private connectWaiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  private closeWaiters: (() => void)[] = [];
  private closing = false;
  private closed = false;
  private fatal: Error | null = null;
  private closePromise: Promise<void> | null = null;
  private readonly counters = { ackedBatches: 0, ackedEvents: 0, rejectedBatches: 0, reconnects: 0, resentBatches: 0 };

  constructor(options: MeterEventStreamOptions) {
    super();
    if (!isObject(options)) throw new TypeError('options are required');
    if ((options.apiKey === undefined) === (options.session === undefined)) throw new TypeError('give exactly one of apiKey and session');
    if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || options.apiKey === '')) throw new TypeError('apiKey must be a non-empty string');
    if (options.session !== undefined && typeof options.session !== 'function') throw new TypeError('session must be a function');
    const encoding = options.encoding ?? 'msgpack';
    if (encoding !== 'msgpack' && encoding !== 'json') throw new TypeError(`encoding must be msgpack or json, got ${String(encoding)}`);
    const authMode = options.authMode ?? 'header';
    if (authMode !== 'header' && authMode !== 'subprotocol') throw new TypeError(`authMode must be header or subprotocol, got ${String(authMode)}`);
    const initialDelayMs = option('reconnect.initialDelayMs', options.reconnect?.initialDelayMs, 100, 0);
    this.opts = {
      encoding,
      authMode,
      maxBatchEvents: Math.floor(option('maxBatchEvents', options.maxBatchEvents, 100, 1, MAX_BATCH_EVENTS)),
      lingerMs: option('lingerMs', options.lingerMs, 5, 0),
      maxQueuedEvents: option('maxQueuedEvents', options.maxQueuedEvents, 100000, 1),
      maxUnackedBatches: Math.floor(option('maxUnackedBatches', options.maxUnackedBatches, 64, 1)),
      refreshBeforeMs: option('refreshBeforeMs', options.refreshBeforeMs, 60000, 0),
      initialDelayMs,
      maxDelayMs: option('reconnect.maxDelayMs', options.reconnect?.maxDelayMs, Math.max(5000, initialDelayMs), initialDelayMs),
      handshakeTimeoutMs: option('handshakeTimeoutMs', options.handshakeTimeoutMs, 10000, 1),
      readyTimeoutMs: option('readyTimeoutMs', options.readyTimeoutMs, 10000, 1),
      pingIntervalMs: option('pingIntervalMs', options.pingIntervalMs, 30000, 0),
    };
    const prefix = options.batchIdPrefix ?? randomBytes(6).toString('hex');
    if (typeof prefix !== 'string' || prefix === '' || prefix.length > 80) throw new TypeError('batchIdPrefix must be a string of 1 to 80 characters');
    this.prefix = prefix;
    this.apiKey = options.apiKey;
    this.sessionFn = options.session;
    this.streamUrl = streamUrlOf(options.url, encoding);
    this.sessionUrl = options.sessionUrl !== undefined ? new URL(String(options.sessionUrl)) : sessionUrlOf(this.streamUrl);
  }

  /** Opens the connection (if not yet open) and resolves at its `ready`; rejects if that attempt fails (retries go on). */
  connect(): Promise<void> {
    if (this.fatal) return Promise.reject(this.fatal);
    if (this.closing) return Promise.reject(new StreamClosedError('the stream is closed'));
    if (this.active?.ready) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    this.ensureConnection(true);
    this.reconnectTimer?.ref(); // someone waits for the connection: keep the process alive through the backoff
    return p;
  }

  /**
   * Queues one event. Resolves when the batch holding it is acknowledged; rejects with `BatchRejectedError` if the
   * server rejects that batch for good, `QueueFullError` if the queue is full, `FrameTooLargeError` if the event alone
   * exceeds the frame limit. Connects if not connected. (The promise is marked handled: ignoring it never crashes.)
   */
  send(event: MeterEvent): Promise<void> {
    const refused = this.refuse(1);
    if (refused) return Promise.reject(refused);
    let wire: WireEvent;
    try {
      wire = toWire(event);
    } catch (err) {
      return Promise.reject(err);
    }
    const { group, promise } = this.newGroup(1);
    this.totalEvents++;
    this.pending.push({ event: wire, group });
    if (this.pending.length === 1 && !this.lingerDue && !this.lingerTimer) {
      this.lingerTimer = setTimeout(() => {
        this.lingerTimer = null;
        this.lingerDue = true;
        this.pump();
      }, this.opts.lingerMs);
    }
    this.wake();
    return promise;
  }

  /** Sends the events as one batch of their own (split if over `maxBatchEvents` or the frame limit); resolves when all are acknowledged. */
  sendBatch(events: MeterEvent[]): Promise<void> {
    if (!Array.isArray(events)) return Promise.reject(new TypeError('sendBatch takes an array of events'));
    if (events.length === 0) return Promise.resolve();
    const refused = this.refuse(events.length);
    if (refused) return Promise.reject(refused);
    let wires: WireEvent[];
    try {
      wires = events.map(toWire);
    } catch (err) {
      return Promise.reject(err);
    }
    const { group, promise } = this.newGroup(wires.length);
    this.totalEvents += wires.length;
    const entries = wires.map((event) => ({ event, group }));
    const limit = this.batchLimit();
    const batches: Batch[] = [];
    for (let i = 0; i < entries.length; i += limit) this.formInto(entries.slice(i, i + limit), batches);
    for (const b of batches) this.outbox.push(b);
    this.wake();
    return promise;
  }

  /** Sends the pending partial batch now; resolves when everything queued so far is acknowledged or rejected. Never rejects. */
  flush(): Promise<void> {
    if (this.unsettledGroups === 0) return Promise.resolve();
    this.lingerDue = true;
    this.clearLinger();
    const p = new Promise<void>((resolve) => this.flushWaiters.push({ upTo: this.groupSeq, resolve }));
    this.wake();
    return p;
  }

  /**
   * Flushes, then closes the connection with 1000 and stops every timer. With `timeoutMs`, events still unanswered
   * after that long are rejected with `StreamClosedError` instead of waited for.
   */
  close(options: { timeoutMs?: number } = {}): Promise<void> {
    if (!this.closePromise) this.closePromise = this.doClose(options.timeoutMs);
    return this.closePromise;
  }

  stats(): StreamStats {
    let inFlightBatches = 0;
    for (const c of this.conns) inFlightBatches += c.inFlight.size;
    return { queuedEvents: this.totalEvents - this.inFlightEvents, inFlightBatches, ...this.counters };
  }

  // ---- queueing and batching ----

  private refuse(n: number): Error | null {
    if (this.fatal) return this.fatal;
    if (this.closing) return new StreamClosedError('the stream is closed');
    if (this.totalEvents + n > this.opts.maxQueuedEvents) return new QueueFullError(this.totalEvents, this.opts.maxQueuedEvents);
    return null;
  }

  private newGroup(n: number): { group: Group; promise: Promise<void> } {
    let resolve = noop;
    let reject: (err: Error) => void = noop;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(noop);
    const group: Group = { seq: ++this.groupSeq, remaining: n, failed: false, resolve, reject };
    this.groups.push(group);
    this.unsettledGroups++;
    return { group, promise };
  }

  private settleEntry(entry: Entry, err: Error | null): void {
    const g = entry.group;
    this.totalEvents--;
    if (err && !g.failed) {
      g.failed = true;
      g.reject(err);
    }
    if (--g.remaining === 0) {
      if (!g.failed) g.resolve();
      this.unsettledGroups--;
      this.checkFlush();
    }
  }

  private settleBatch(batch: Batch, err: Error | null): void {
    for (const e of batch.entries) this.settleEntry(e, err);
  }

  private checkFlush(): void {
    for (let g = this.groups.peek(); g && g.remaining === 0; g = this.groups.peek()) this.groups.shift();
    if (this.flushWaiters.length === 0) return;
    const minSeq = this.groups.peek()?.seq ?? Number.POSITIVE_INFINITY;
    let i = 0;
    while (i < this.flushWaiters.length && this.flushWaiters[i].upTo < minSeq) this.flushWaiters[i++].resolve();
    if (i > 0) this.flushWaiters = this.flushWaiters.slice(i);
  }

  private batchLimit(): number {
    return Math.min(this.opts.maxBatchEvents, this.lastReady?.max_batch_events ?? MAX_BATCH_EVENTS);
  }

  private frameLimit(): number {
    return Math.min(MAX_FRAME_BYTES, this.lastReady?.max_frame_bytes ?? MAX_FRAME_BYTES);
  }

  private encode(id: string, events: WireEvent[]): Buffer | string {
    const body = { id, events };
    return this.opts.encoding === 'json' ? JSON.stringify(body) : pack(body);
  }

  /** Gives the entries batch ids and frames, halving them until each frame fits; an event that cannot fit alone is rejected. */
  private formInto(entries: Entry[], out: Batch[]): void {
    if (entries.length === 0) return;
    const id = `${this.prefix}-${this.counter + 1}`;
    let frame: Buffer | string;
    try {
      frame = this.encode(
        id,
        entries.map((e) => e.event),
      );
    } catch (err) {
      if (entries.length === 1) this.settleEntry(entries[0], asError(err));
      else this.split(entries, out);
      return;
    }
    const bytes = typeof frame === 'string' ? Buffer.byteLength(frame) : frame.length;
    const limit = this.frameLimit();
    if (bytes > limit) {
      if (entries.length === 1) this.settleEntry(entries[0], new FrameTooLargeError(bytes, limit));
      else this.split(entries, out);
      return;
    }
    this.counter++;
    out.push({ id, entries, frame, bytes, sends: 0, retries: 0, timer: null });
  }

  private split(entries: Entry[], out: Batch[]): void {
    const mid = Math.ceil(entries.length / 2);
    this.formInto(entries.slice(0, mid), out);
    this.formInto(entries.slice(mid), out);
  }

  private clearLinger(): void {
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    this.lingerTimer = null;
  }

  /** Makes sure a connection exists or is coming, and sends what the window allows. */
  private wake(): void {
    this.ensureConnection(true);
    if (this.reconnectTimer && this.totalEvents > 0) this.reconnectTimer.ref();
    this.pump();
  }

  /** Sends batches on the active connection while its window has room: resends and formed batches first, then new ones. */
  private pump(): void {
    const conn = this.active;
    if (conn?.ready && !conn.draining && conn.ws.readyState === WebSocket.OPEN) {
      const window = Math.min(this.opts.maxUnackedBatches, conn.ready.max_unacked_batches);
      while (conn.inFlight.size < window) {
        const batch = this.outbox.shift();
        if (batch) {
          this.transmit(conn, batch);
          continue;
        }
        const max = this.batchLimit();
        if (this.pending.length >= max || (this.pending.length > 0 && this.lingerDue)) {
          const formed: Batch[] = [];
          this.formInto(this.pending.take(max), formed);
          for (const b of formed) this.outbox.push(b);
          continue;
        }
        break;
      }
    }
    if (this.pending.length === 0) {
      this.lingerDue = false;
      this.clearLinger();
    }
  }

  private transmit(conn: Conn, batch: Batch): void {
    if (batch.sends > 0) this.counters.resentBatches++;
    batch.sends++;
    conn.inFlight.set(batch.id, batch);
    this.inFlightEvents += batch.entries.length;
    if (typeof batch.frame === 'string') conn.ws.send(batch.frame, noop);
    else conn.ws.send(batch.frame, { binary: true }, noop);
  }

  private takeInFlight(conn: Conn, id: string): Batch | undefined {
    const batch = conn.inFlight.get(id);
    if (!batch) return undefined;
    conn.inFlight.delete(id);
    this.inFlightEvents -= batch.entries.length;
    return batch;
  }

  // ---- connections ----

  private backoff(attempt: number): number {
    const base = Math.min(this.opts.maxDelayMs, this.opts.initialDelayMs * 2 ** Math.min(attempt, 30));
    return base / 2 + (Math.random() * base) / 2;
  }

  private ensureConnection(immediate: boolean): void {
    if (this.closed || this.attempting || this.reconnectTimer || this.active) return;
    const delay = immediate && this.failures <= 1 ? 0 : this.backoff(this.failures);
    if (delay === 0) {
      void this.attempt(false);
      return;
    }
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.closed && !this.attempting && !this.active) void this.attempt(false);
    }, delay);
    if (this.totalEvents === 0) this.reconnectTimer.unref();
  }

  private scheduleRefresh(delay: number): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = null;
      if (this.closed || !this.active || this.attempting || this.reconnectTimer) return;
      void this.attempt(true);
    }, delay);
    this.refreshTimer.unref();
  }

  private async obtainSession(force: boolean): Promise<SessionState> {
    const s = this.session;
    if (!force && s && Date.now() < s.refreshAt) return s;
    let info: StreamSession;
    if (this.sessionFn) {
      try {
        info = await this.sessionFn();
      } catch (err) {
        throw new SessionError(`the session callback failed: ${asError(err).message}`, undefined, undefined, { cause: err });
      }
      if (!isObject(info) || typeof info.token !== 'string' || info.token === '') throw new SessionError('the session callback returned no token');
      if (!(info.expiresAt instanceof Date) || Number.isNaN(info.expiresAt.getTime()))
        throw new SessionError('the session callback returned no valid expiresAt');
    } else {
      info = await this.createSession();
    }
    const now = Date.now();
    const expiresAt = info.expiresAt.getTime();
    const lifetime = expiresAt - now;
    const state: SessionState = { token: info.token, expiresAt, refreshAt: now + Math.max(lifetime - this.opts.refreshBeforeMs, lifetime / 2) };
    this.session = state;
    return state;
  }

  private async createSession(): Promise<StreamSession> {
    let res: Response;
    try {
      res = await fetch(this.sessionUrl, {
        method: 'POST',
        headers: { Authorization: `Bearer ${this.apiKey}`, 'Content-Type': 'application/json' },
        body: '{}',
        signal: AbortSignal.timeout(this.opts.handshakeTimeoutMs),
      });
    } catch (err) {
      throw new SessionError(`creating a meter event session failed: ${asError(err).message}`, undefined, undefined, { cause: err });
    }
    const text = await res.text().catch(() => '');
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (!res.ok) {
      const error = isObject(body) && isObject(body.error) ? (body.error as StreamErrorObject) : undefined;
      throw new SessionError(`creating a meter event session failed: HTTP ${res.status}${error?.message ? `: ${error.message}` : ''}`, res.status, error);
    }
    if (!isObject(body) || typeof body.authentication_token !== 'string' || body.authentication_token === '') {
      throw new SessionError('the meter event session response has no authentication_token', res.status);
    }
    return { token: body.authentication_token, expiresAt: new Date(parseExpiry(body.expires_at)) };
  }

  private invalidateSession(token: string): void {
    if (this.session?.token === token) this.session = null;
  }

  /** One connection attempt: a session (reused while fresh, or new), then the upgrade; `ready` or a close ends it. */
  private async attempt(forceNewSession: boolean): Promise<void> {
    this.attempting = true;
    let session: SessionState;
    try {
      session = await this.obtainSession(forceNewSession);
    } catch (err) {
      this.attempting = false;
      if (this.closed) return;
      if (isFatal(err)) {
        this.fail(asError(err));
        return;
      }
      this.attemptFailed(asError(err));
      return;
    }
    if (this.closed) {
      this.attempting = false;
      return;
    }
    let ws: WebSocket;
    try {
      const protocols = this.opts.authMode === 'subprotocol' ? [SUBPROTOCOL, `bearer.${session.token}`] : undefined;
      const headers: Record<string, string> = this.opts.authMode === 'header' ? { Authorization: `Bearer ${session.token}` } : {};
      ws = new WebSocket(this.streamUrl, protocols, { headers, handshakeTimeout: this.opts.handshakeTimeoutMs });
    } catch (err) {
      this.attempting = false;
      this.invalidateSession(session.token);
      this.attemptFailed(new StreamConnectionError(`cannot open the WebSocket: ${asError(err).message}`, undefined, undefined, { cause: err }));
      return;
    }
    const conn: Conn = {
      ws,
      session,
      ready: null,
      inFlight: new Map(),
      draining: false,
      closed: false,
      alive: true,
      readyTimer: null,
      pingTimer: null,
      failure: null,
    };
    this.conns.add(conn);
    ws.on('unexpected-response', (_req, res) => {
      conn.httpStatus = res.statusCode;
      const chunks: Buffer[] = [];
      let size = 0;
      const done = () => {
        let error: StreamErrorObject | undefined;
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          if (isObject(body) && isObject(body.error)) error = body.error as StreamErrorObject;
        } catch {
          // not a JSON error body
        }
        const detail = error?.code ?? error?.message;
        conn.failure = new StreamConnectionError(`the upgrade was refused: HTTP ${res.statusCode}${detail ? ` (${detail})` : ''}`, res.statusCode, error);
        ws.terminate();
      };
      res.on('data', (chunk: Buffer) => {
        if ((size += chunk.length) <= 65536) chunks.push(chunk);
      });
      res.once('end', done);
      res.once('error', done);
    });
    ws.on('open', () => {
      conn.readyTimer = setTimeout(() => {
        conn.failure = new StreamConnectionError(`no ready message within ${this.opts.readyTimeoutMs} ms`);
        ws.terminate();
      }, this.opts.readyTimeoutMs);
      conn.readyTimer.unref();
    });
    ws.on('message', (data: RawData, isBinary: boolean) => this.onMessage(conn, data, isBinary));
    ws.on('pong', () => {
      conn.alive = true;
    });
    ws.on('error', (err: Error) => {
      if (conn.ready) this.emitError(new StreamConnectionError(`connection error: ${err.message}`, undefined, undefined, { cause: err }));
      else conn.failure ??= new StreamConnectionError(`cannot connect: ${err.message}`, undefined, undefined, { cause: err });
    });
    ws.on('close', (code: number, reason: Buffer) => this.onClose(conn, code, reason.toString('utf8')));
  }

  /** A connection attempt failed before `ready`: report it and try again with backoff. */
  private attemptFailed(err: Error): void {
    this.failures++;
    this.emitError(err);
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(err);
    if (this.active) this.scheduleRefresh(this.backoff(this.failures));
    else this.ensureConnection(true);
  }

  private onMessage(conn: Conn, data: RawData, isBinary: boolean): void {
    conn.alive = true;
    let msg: unknown;
    try {
      const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
      msg = isBinary ? unpack(buf) : JSON.parse(buf.toString('utf8'));
    } catch (err) {
      this.emitError(new StreamServerError(`unreadable server message: ${asError(err).message}`));
      return;
    }
    if (!isObject(msg)) {
      this.emitError(new StreamServerError('a server message is not a map'));
      return;
    }
    if (msg.type === 'ready') this.onReady(conn, msg);
    else if (msg.type === 'ack') this.onAck(conn, msg);
    else if (msg.type === 'error') this.onServerError(conn, msg);
  }

  private onReady(conn: Conn, msg: Record<string, unknown>): void {
    if (conn.ready || conn.closed || this.closed) return;
    if (conn.readyTimer) clearTimeout(conn.readyTimer);
    conn.readyTimer = null;
    conn.ready = {
      type: 'ready',
      session: typeof msg.session === 'string' ? msg.session : '',
      expires_at: typeof msg.expires_at === 'string' ? msg.expires_at : '',
      max_batch_events: Math.min(positiveInt(msg.max_batch_events, MAX_BATCH_EVENTS), MAX_BATCH_EVENTS),
      max_unacked_batches: positiveInt(msg.max_unacked_batches, 64),
      max_frame_bytes: positiveInt(msg.max_frame_bytes, MAX_FRAME_BYTES),
    };
    this.lastReady = conn.ready;
    this.attempting = false;
    this.failures = 0;
    const previous = this.active;
    this.active = conn;
    if (previous) {
      previous.draining = true;
      this.finishDraining(previous);
    }
    if (this.opts.pingIntervalMs > 0) {
      conn.pingTimer = setInterval(() => {
        if (!conn.alive) {
          conn.failure = new StreamConnectionError('no pong from the server');
          conn.ws.terminate();
          return;
        }
        conn.alive = false;
        conn.ws.ping();
      }, this.opts.pingIntervalMs);
      conn.pingTimer.unref();
    }
    this.scheduleRefresh(Math.max(0, conn.session.refreshAt - Date.now()));
    const isReconnect = this.everReady;
    this.everReady = true;
    let resendBatches = 0;
    for (const b of this.outbox) if (b.sends > 0) resendBatches++;
    this.pump();
    this.emit('ready', conn.ready);
    if (isReconnect) {
      this.counters.reconnects++;
      const info: ReconnectInfo = previous
        ? { cause: 'refresh', resendBatches }
        : { cause: 'closed', code: this.lastClose?.code, reason: this.lastClose?.reason, resendBatches };
      this.emit('reconnect', info);
    }
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private onAck(conn: Conn, msg: Record<string, unknown>): void {
    const batch = typeof msg.id === 'string' ? this.takeInFlight(conn, msg.id) : undefined;
    if (!batch) return; // an answer to a batch this connection no longer holds
    this.counters.ackedBatches++;
    this.counters.ackedEvents += batch.entries.length;
    this.settleBatch(batch, null);
    this.finishDraining(conn);
    this.pump();
  }

  private onServerError(conn: Conn, msg: Record<string, unknown>): void {
    const error: StreamErrorObject = isObject(msg.error) ? (msg.error as StreamErrorObject) : { type: 'api_error', message: 'no error object' };
    const batch = typeof msg.id === 'string' ? this.takeInFlight(conn, msg.id) : undefined;
    if (!batch) {
      this.emitError(
        new StreamServerError(`server error${msg.id ? ` for unknown batch ${String(msg.id)}` : ''}: ${error.message ?? error.code ?? error.type}`, error),
      );
      return;
    }
    if (msg.retry === true) {
      batch.retries++;
      this.retrying.add(batch);
      batch.timer = setTimeout(
        () => {
          batch.timer = null;
          this.retrying.delete(batch);
          this.outbox.pushFront([batch]);
          this.pump();
        },
        this.backoff(batch.retries - 1),
      );
    } else {
      this.counters.rejectedBatches++;
      const err = new BatchRejectedError(batch.id, error);
      this.settleBatch(batch, err);
      this.emitError(err);
    }
    this.finishDraining(conn);
    this.pump();
  }

  /** A connection replaced after a session refresh is closed once its in-flight batches are answered. */
  private finishDraining(conn: Conn): void {
    if (conn.draining && conn.inFlight.size === 0 && conn.ws.readyState === WebSocket.OPEN) conn.ws.close(1000, 'session refreshed');
  }

  private onClose(conn: Conn, code: number, reason: string): void {
    if (conn.closed) return;
    conn.closed = true;
    if (conn.readyTimer) clearTimeout(conn.readyTimer);
    if (conn.pingTimer) clearInterval(conn.pingTimer);
    conn.readyTimer = conn.pingTimer = null;
    this.conns.delete(conn);
    const unacked = [...conn.inFlight.values()];
    conn.inFlight.clear();
    for (const b of unacked) this.inFlightEvents -= b.entries.length;
    const wasActive = this.active === conn;
    if (wasActive) this.active = null;

    if (this.closed) {
      const err = this.fatal ?? new StreamClosedError('the stream was closed before this event was acknowledged', code, reason);
      for (const b of unacked) this.settleBatch(b, err);
      if (this.conns.size === 0) {
        const waiters = this.closeWaiters;
        this.closeWaiters = [];
        for (const w of waiters) w();
      }
      return;
    }

    if (code === 1008 || code === 1009) {
      const what = code === 1008 ? 'a protocol violation (1008)' : 'a frame too large (1009)';
      for (const b of unacked) {
        this.counters.rejectedBatches++;
        this.settleBatch(b, new StreamClosedError(`the server closed the connection for ${what} while batch ${b.id} was in flight: ${reason}`, code, reason));
      }
    } else {
      this.outbox.pushFront(unacked);
    }

    if (!conn.ready) {
      this.attempting = false;
      if (conn.httpStatus === 401 || conn.httpStatus === 403) this.invalidateSession(conn.session.token);
      this.attemptFailed(conn.failure ?? new StreamConnectionError(`the connection closed before ready (${code}${reason ? ` ${reason}` : ''})`));
      this.pump();
      return;
    }
    if (wasActive) {
      this.lastClose = { code, reason };
      if (code === 4001) this.invalidateSession(conn.session.token);
      this.emit('disconnect', { code, reason } satisfies DisconnectInfo);
      if (code === 1008 || code === 1009) this.emitError(new StreamClosedError(`the server closed the connection: ${code} ${reason}`, code, reason));
      this.ensureConnection(code === 4001);
    }
    this.pump();
  }

  // ---- shutdown ----

  private fail(err: Error): void {
    if (this.closed) return;
    this.fatal = err;
    this.emitError(err);
    this.shutdown(err);
  }

  /** Final: stops timers, rejects whatever is still unanswered with err, closes every connection. */
  private shutdown(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.clearLinger();
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.reconnectTimer = this.refreshTimer = null;
    for (const b of this.retrying) {
      if (b.timer) clearTimeout(b.timer);
      this.settleBatch(b, err);
    }
    this.retrying.clear();
    for (const b of this.outbox.drain()) this.settleBatch(b, err);
    for (const e of this.pending.drain()) this.settleEntry(e, err);
    for (const c of this.conns) {
      for (const b of c.inFlight.values()) {
        this.inFlightEvents -= b.entries.length;
        this.settleBatch(b, err);
      }
      c.inFlight.clear();
      if (c.ready && c.ws.readyState === WebSocket.OPEN) c.ws.close(1000, 'client closing');
      else c.ws.terminate();
    }
    this.active = null;
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(err);
    this.checkFlush();
  }

  private async doClose(timeoutMs: number | undefined): Promise<void> {
    this.closing = true;
    if (!this.closed) {
      const flushed = this.flush();
      if (timeoutMs === undefined) await flushed;
      else {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([flushed, new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
        clearTimeout(timer);
      }
    }
    this.shutdown(new StreamClosedError('the stream was closed before this event was acknowledged'));
    if (this.conns.size > 0) await new Promise<void>((resolve) => this.closeWaiters.push(resolve));
  }

  private emitError(err: Error): void {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }
}
