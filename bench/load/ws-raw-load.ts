/**
 * The WebSocket stream load without the client package (`--ws-client raw`): `ws` sockets sending msgpack frames built
 * once per batch size as a template in which only fixed-width digits are patched (batch id, customer, value), like the
 * HTTP load's bodies (with --ws-identifiers, each event's identifier `<runid>-<10 digits>` too). It measures what the server takes when the client costs next to nothing, so a run can show
 * whether the client package is the generator's ceiling. Kept minimal: no reconnect (a lost connection aborts the
 * run; what was in flight is counted as uncertain), `retry: true` errors resent after a pause.
 */
import { performance } from 'node:perf_hooks';
import { unpack } from 'msgpackr';
import { type RawData, WebSocket } from 'ws';
import { STREAM_PATH } from '../../client/src';
import type { Generator, Load } from './generator';
import { VAL_DIGITS, mix, writeDigits } from './templates';

const ID_DIGITS = 10;

/** A msgpack frame `{id, events: [{event_name, payload: {stripe_customer_id, value}, timestamp?}]}` and where its digits are. */
export interface FrameTemplate {
  frame: Buffer;
  idOff: number;
  custOff: Uint32Array;
  valOff: Uint32Array;
  tsOff: Uint32Array | null;
  /** With identifiers: where each event's `<runid>-<10 digits>` digits are. */
  identOff: Uint32Array | null;
}

/** Encodes the template by hand (msgpack: fixmap/fixstr/str8 and array16 suffice for these fixed shapes). */
export function buildFrameTemplate(
  n: number,
  o: { runId: string; eventName: string; customerPrefix: string; timestamps: boolean; wsIdentifiers: boolean },
  custWidth: number,
): FrameTemplate {
  const bytes: number[] = [];
  const str = (s: string): number => {
    const b = Buffer.from(s, 'utf8');
    if (b.length < 32) bytes.push(0xa0 | b.length);
    else if (b.length < 256) bytes.push(0xd9, b.length);
    else bytes.push(0xda, b.length >> 8, b.length & 0xff);
    const off = bytes.length;
    for (const x of b) bytes.push(x);
    return off;
  };
  const custOff = new Uint32Array(n);
  const valOff = new Uint32Array(n);
  const tsOff = o.timestamps ? new Uint32Array(n) : null;
  const identOff = o.wsIdentifiers ? new Uint32Array(n) : null;
  bytes.push(0x82);
  str('id');
  const idOff = str(`${o.runId}-${'0'.repeat(ID_DIGITS)}`) + o.runId.length + 1;
  str('events');
  if (n < 16) bytes.push(0x90 | n);
  else bytes.push(0xdc, n >> 8, n & 0xff);
  for (let i = 0; i < n; i++) {
    bytes.push(0x82 + (tsOff ? 1 : 0) + (identOff ? 1 : 0));
    str('event_name');
    str(o.eventName);
    if (identOff) {
      str('identifier');
      identOff[i] = str(`${o.runId}-${'0'.repeat(ID_DIGITS)}`) + o.runId.length + 1;
    }
    str('payload');
    bytes.push(0x82);
    str('stripe_customer_id');
    custOff[i] = str(`${o.customerPrefix}${'0'.repeat(custWidth)}`) + Buffer.byteLength(o.customerPrefix);
    str('value');
    valOff[i] = str('1'.repeat(VAL_DIGITS));
    if (tsOff) {
      str('timestamp');
      tsOff[i] = str('2000-01-01T00:00:00.000Z');
    }
  }
  return { frame: Buffer.from(bytes), idOff, custOff, valOff, tsOff, identOff };
}

interface Slot {
  conn: RawWsConn;
  t0: number;
  n: number;
  cust: Uint32Array;
  val: Uint32Array;
  frame: Buffer;
  attempts: number;
  done: () => void;
}

class RawWsConn {
  readonly ws: WebSocket;
  readonly ready: Promise<void>;
  readonly inFlight = new Map<string, Slot>();

  constructor(url: string, token: string, onAnswer: (conn: RawWsConn, msg: Record<string, unknown>) => void, onClose: (conn: RawWsConn, code: number) => void) {
    this.ws = new WebSocket(url, { headers: { Authorization: `Bearer ${token}` }, perMessageDeflate: false });
    this.ready = new Promise((resolve, reject) => {
      // Before ready the error fails the opening; after it, the close that follows is what counts.
      this.ws.on('error', reject);
      this.ws.on('message', (data: RawData, isBinary: boolean) => {
        const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
        let msg: Record<string, unknown>;
        try {
          msg = (isBinary ? unpack(buf) : JSON.parse(buf.toString('utf8'))) as Record<string, unknown>;
        } catch {
          msg = { type: 'unreadable' };
        }
        if (msg.type === 'ready') resolve();
        else onAnswer(this, msg);
      });
      this.ws.on('close', (code: number) => {
        reject(new Error(`closed before ready (${code})`));
        onClose(this, code);
      });
    });
  }
}

export class WsRawLoad implements Load {
  private readonly conns: RawWsConn[] = [];
  private readonly templates = new Map<number, FrameTemplate>();
  private workers = 0;
  private closing = false;

  constructor(private readonly g: Generator) {}

  private template(n: number): FrameTemplate {
    let t = this.templates.get(n);
    if (!t) {
      t = buildFrameTemplate(n, this.g.o, this.g.custWidth);
      this.templates.set(n, t);
    }
    return t;
  }

  /** Opens the connections (the load's setup, before its clock starts). */
  async open(): Promise<void> {
    const g = this.g;
    const o = g.o;
    const batches = Math.ceil(o.events / o.wsBatch);
    const url = `ws://${o.hostHeader}${STREAM_PATH}?encoding=msgpack`;
    const n = Math.max(1, Math.min(o.wsConnections, batches));
    for (let i = 0; i < n; i++) {
      this.conns.push(
        new RawWsConn(
          url,
          g.sessions.token,
          (c, m) => this.answer(c, m),
          (c, code) => this.closed(c, code),
        ),
      );
    }
    await Promise.all(this.conns.map((c) => c.ready));
    this.workers = Math.max(1, Math.min(n * o.wsInflight, batches));
  }

  prepare(): number {
    return this.workers;
  }

  go(): void {
    for (let i = 0; i < this.workers; i++) this.next(this.conns[i % this.conns.length]!);
  }

  /** The next batch of a worker (one batch in flight per worker), or the worker's end. */
  private next(conn: RawWsConn): void {
    const g = this.g;
    const o = g.o;
    if (g.stopping || g.nextSeq >= o.events) {
      g.slotDone();
      return;
    }
    const n = Math.min(o.wsBatch, o.events - g.nextSeq);
    const seq0 = g.nextSeq;
    g.nextSeq += n;
    if (o.rate > 0) {
      const due = g.loadStart + (seq0 / o.rate) * 1000;
      const wait = due - performance.now();
      if (wait > 1) {
        setTimeout(() => this.send(conn, seq0, n, due), wait);
        return;
      }
      this.send(conn, seq0, n, due);
      return;
    }
    this.send(conn, seq0, n, 0);
  }

  private send(conn: RawWsConn, seq0: number, n: number, due: number): void {
    const g = this.g;
    const o = g.o;
    if (g.aborted) {
      g.uncertainEvents += n;
      g.uncertainBatches++;
      g.slotDone();
      return;
    }
    const t = this.template(n);
    // A copy per batch: ws masks a copy of what it is given, but a batch may have to be resent as it was.
    const frame = Buffer.from(t.frame);
    writeDigits(frame, t.idOff, ID_DIGITS, seq0);
    const cust = new Uint32Array(n);
    const val = new Uint32Array(n);
    for (let i = 0; i < n; i++) {
      const h = mix(seq0 + i);
      cust[i] = h % o.customers;
      val[i] = 100 + ((h >>> 7) % 900);
      writeDigits(frame, t.custOff[i]!, g.custWidth, cust[i]!);
      writeDigits(frame, t.valOff[i]!, VAL_DIGITS, val[i]!);
      if (t.identOff) writeDigits(frame, t.identOff[i]!, ID_DIGITS, seq0 + i);
    }
    if (t.tsOff) {
      const iso = new Date().toISOString();
      for (let i = 0; i < n; i++) frame.write(iso, t.tsOff[i]!, 'latin1');
    }
    const id = `${o.runId}-${String(seq0).padStart(ID_DIGITS, '0')}`;
    const now = performance.now();
    const slot: Slot = { conn, t0: due > 0 ? Math.min(due, now) : now, n, cust, val, frame, attempts: 0, done: () => this.next(conn) };
    conn.inFlight.set(id, slot);
    conn.ws.send(frame, { binary: true });
  }

  private answer(conn: RawWsConn, msg: Record<string, unknown>): void {
    const g = this.g;
    const id = typeof msg.id === 'string' ? msg.id : '';
    const slot = conn.inFlight.get(id);
    const t = performance.now();
    g.lastResponse = t;
    if (!slot) {
      g.noteError('ws answer for no batch', JSON.stringify(msg).slice(0, 300));
      return;
    }
    conn.inFlight.delete(id);
    if (msg.type === 'ack') {
      g.hist.record(t - slot.t0);
      g.requests++;
      g.acked += slot.n;
      g.lastAck = t;
      const totals = g.totals;
      for (let i = 0; i < slot.n; i++) totals[slot.cust[i]!]! += slot.val[i]!;
      slot.done();
      return;
    }
    const error = (msg.error ?? {}) as { code?: string; type?: string; message?: string };
    g.noteError(`ws ${error.code ?? error.type ?? 'error'}`, error.message ?? '');
    if (msg.retry === true && slot.attempts < 10 && !g.aborted) {
      slot.attempts++;
      g.retries++;
      setTimeout(
        () => {
          conn.inFlight.set(id, slot);
          conn.ws.send(slot.frame, { binary: true });
        },
        Math.min(25 * 2 ** slot.attempts, 2000),
      );
      return;
    }
    if (msg.retry === true) {
      g.uncertainEvents += slot.n;
      g.uncertainBatches++;
    } else {
      g.rejectedEvents += slot.n;
      g.rejectedBatches++;
    }
    slot.done();
  }

  private closed(conn: RawWsConn, code: number): void {
    const g = this.g;
    if (!this.closing) g.abort(`a WebSocket connection closed during the load (${code}); --ws-client raw does not reconnect`);
    for (const slot of conn.inFlight.values()) {
      g.uncertainEvents += slot.n;
      g.uncertainBatches++;
      g.slotDone();
    }
    conn.inFlight.clear();
  }

  close(): void {
    const wasClosing = this.closing;
    this.closing = true;
    if (!wasClosing) for (const c of this.conns) c.ws.close(1000);
  }
}
