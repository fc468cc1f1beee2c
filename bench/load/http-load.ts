/** The HTTP stream load: one keep-alive connection per slot, one batch in flight each (raw sockets or node:http). */
import * as http from 'node:http';
import { performance } from 'node:perf_hooks';
import { RawConnection, type RawCallback, type RawResponse } from '../raw-http';
import { bodyText, retryDelay, type Sessions } from './control';
import type { Generator, Load } from './generator';
import type { Options } from './options';
import { ID_DIGITS, type Layout, TS_LEN, VAL_DIGITS, mix, writeDigits } from './templates';

interface Transport {
  send(req: Buffer, bodyOff: number, cb: RawCallback): void;
  /** True when the previous request buffer may be patched in place (fully handed to the kernel). */
  reusable(): boolean;
  close(): void;
}

class RawTransport implements Transport {
  private readonly conn: RawConnection;
  constructor(o: Options) {
    this.conn = new RawConnection(o.host, o.port);
  }
  send(req: Buffer, _bodyOff: number, cb: RawCallback): void {
    this.conn.send(req, cb);
  }
  reusable(): boolean {
    return this.conn.pendingWrite === 0;
  }
  close(): void {
    this.conn.close();
  }
}

/** node:http keep-alive Agent, for comparing client CPU cost with the raw client. */
class HttpTransport implements Transport {
  private reqs = new Set<http.ClientRequest>();
  constructor(
    private readonly o: Options,
    private readonly agent: http.Agent,
    private readonly sessions: Sessions,
  ) {}
  send(req: Buffer, bodyOff: number, cb: RawCallback): void {
    let called = false;
    const once: RawCallback = (e, r) => {
      if (called) return;
      called = true;
      this.reqs.delete(r2);
      cb(e, r);
    };
    const body = req.subarray(bodyOff);
    const r2 = http.request(
      {
        agent: this.agent,
        host: this.o.host,
        port: this.o.port,
        method: 'POST',
        path: '/v2/billing/meter_event_stream',
        headers: {
          Host: this.o.hostHeader,
          Authorization: `Bearer ${this.sessions.token}`,
          'Content-Type': 'application/json',
          'Content-Length': body.length,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          once(null, {
            status: res.statusCode ?? 0,
            headers: res.headers as Record<string, string>,
            body: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks),
          }),
        );
        res.on('error', (e) => once(e, null));
      },
    );
    this.reqs.add(r2);
    r2.on('error', (e) => once(e, null));
    r2.end(body);
  }
  reusable(): boolean {
    return true; // the response has been read in full, so the request body was written in full
  }
  close(): void {
    for (const r of this.reqs) r.destroy();
  }
}

class Slot {
  private req: Buffer = Buffer.alloc(0);
  private bodyOff = 0;
  private layout: Layout | null = null;
  private gen = -1;
  private seq0 = 0;
  private n = 0;
  private readonly cust: Uint32Array;
  private readonly val: Uint32Array;
  private attempts = 0;
  private auth401 = 0;
  private t0 = 0;
  /** --rate: when this batch was due to be sent; its latency counts from then. */
  private due = 0;
  private firstSend = false;
  private readonly onResp: RawCallback;

  constructor(
    private readonly g: Generator,
    readonly transport: Transport,
  ) {
    this.cust = new Uint32Array(g.o.batch);
    this.val = new Uint32Array(g.o.batch);
    this.onResp = (err, res) => this.handle(err, res);
  }

  next(): void {
    const g = this.g;
    if (g.stopping || g.nextSeq >= g.o.events) {
      g.slotDone();
      return;
    }
    const n = Math.min(g.o.batch, g.o.events - g.nextSeq);
    this.seq0 = g.nextSeq;
    g.nextSeq += n;
    this.n = n;
    this.attempts = 0;
    this.firstSend = true;
    g.maybeRefreshSession();
    if (g.o.rate > 0) {
      this.due = g.loadStart + (this.seq0 / g.o.rate) * 1000;
      const wait = this.due - performance.now();
      if (wait > 1) {
        setTimeout(() => {
          this.prepare();
          this.fire();
        }, wait);
        return;
      }
    }
    this.prepare();
    this.fire();
  }

  /** Patches the next batch into the request buffer (in place when possible). */
  private prepare(): void {
    const g = this.g;
    const L = g.layoutFor(this.n);
    if (this.layout !== L || this.gen !== g.sessions.generation || !this.transport.reusable()) {
      const head = g.streamHead(L.body.length);
      const hl = Buffer.byteLength(head, 'latin1');
      const buf = Buffer.allocUnsafe(hl + L.body.length);
      buf.write(head, 0, 'latin1');
      L.body.copy(buf, hl);
      this.req = buf;
      this.bodyOff = hl;
      this.layout = L;
      this.gen = g.sessions.generation;
    }
    const buf = this.req;
    const base = this.bodyOff;
    const customers = g.o.customers;
    const cw = g.custWidth;
    for (let i = 0; i < this.n; i++) {
      const seq = this.seq0 + i;
      const h = mix(seq);
      const c = h % customers;
      const v = 100 + ((h >>> 7) % 900);
      writeDigits(buf, base + L.idOff[i]!, ID_DIGITS, seq);
      writeDigits(buf, base + L.custOff[i]!, cw, c);
      writeDigits(buf, base + L.valOff[i]!, VAL_DIGITS, v);
      this.cust[i] = c;
      this.val[i] = v;
    }
    if (L.tsOff) {
      const iso = new Date().toISOString();
      if (iso.length === TS_LEN) for (let i = 0; i < this.n; i++) buf.write(iso, base + L.tsOff[i]!, 'latin1');
    }
  }

  /** New session token: rebuild the head, keep the body (same identifiers). */
  private rehead(): void {
    const g = this.g;
    const body = this.req.subarray(this.bodyOff);
    const head = g.streamHead(body.length);
    const hl = Buffer.byteLength(head, 'latin1');
    const buf = Buffer.allocUnsafe(hl + body.length);
    buf.write(head, 0, 'latin1');
    body.copy(buf, hl);
    this.req = buf;
    this.bodyOff = hl;
    this.gen = g.sessions.generation;
  }

  private fire(): void {
    if (this.g.aborted) {
      this.g.uncertainEvents += this.n;
      this.g.uncertainBatches++;
      this.g.slotDone();
      return;
    }
    if (this.gen !== this.g.sessions.generation) this.rehead();
    // A resend keeps the first send's start: the latency of a batch is until its acknowledgement, however many tries.
    // A batch sent up to 1 ms early (timers are that coarse) counts from its send.
    if (this.firstSend) this.t0 = this.g.o.rate > 0 ? Math.min(this.due, performance.now()) : performance.now();
    this.firstSend = false;
    this.transport.send(this.req, this.bodyOff, this.onResp);
  }

  private handle(err: Error | null, res: RawResponse | null): void {
    const g = this.g;
    const t = performance.now();
    if (err || !res) {
      g.noteError('conn_error', String(err));
      if (!g.aborted && t - g.lastResponse > 10_000) {
        g.abort(`no HTTP response for 10 s (server down?): ${String(err)}`);
      }
      this.retry(false, undefined);
      return;
    }
    g.lastResponse = t;
    const st = res.status;
    if (st === 200) {
      g.hist.record(t - this.t0);
      g.requests++;
      g.acked += this.n;
      g.lastAck = t;
      const totals = g.totals;
      for (let i = 0; i < this.n; i++) totals[this.cust[i]!]! += this.val[i]!;
      this.auth401 = 0;
      this.next();
      return;
    }
    const key = String(st);
    g.noteError(key, bodyText(res));
    if (st === 401) {
      if (++this.auth401 > 5) {
        g.abort(`stream keeps answering 401 after new sessions: ${bodyText(res)}`);
        this.fire(); // sees `aborted`, counts the batch as uncertain
        return;
      }
      g.sessions.refresh(this.gen).then(
        () => this.fire(),
        (e) => {
          g.abort(String(e));
          this.fire();
        },
      );
      return;
    }
    if (st === 429 || st === 503) {
      this.retry(true, res.headers['retry-after']);
      return;
    }
    if (st >= 500) {
      this.retry(false, res.headers['retry-after']);
      return;
    }
    // Any other 4xx: the batch was refused.
    g.rejectedEvents += this.n;
    g.rejectedBatches++;
    if (g.requests === 0 && g.rejectedBatches >= 10) {
      g.abort(`every stream request is refused: ${st} ${bodyText(res)}`);
    }
    this.next();
  }

  private retry(unbounded: boolean, retryAfter: string | undefined): void {
    const g = this.g;
    this.attempts++;
    if (g.aborted || (!unbounded && this.attempts > 10)) {
      g.uncertainEvents += this.n;
      g.uncertainBatches++;
      if (g.aborted) g.slotDone();
      else this.next();
      return;
    }
    g.retries++;
    setTimeout(() => this.fire(), retryDelay(this.attempts, retryAfter));
  }
}

/** The HTTP stream load: --connections slots, each a connection with one batch in flight. */
export class HttpLoad implements Load {
  private readonly slots: Slot[] = [];
  private agent: http.Agent | null = null;

  constructor(private readonly g: Generator) {}

  private newTransport(): Transport {
    const o = this.g.o;
    if (o.client === 'raw') return new RawTransport(o);
    if (!this.agent) this.agent = new http.Agent({ keepAlive: true, maxSockets: o.connections, maxFreeSockets: o.connections });
    return new HttpTransport(o, this.agent, this.g.sessions);
  }

  prepare(): number {
    const o = this.g.o;
    const n = Math.max(1, Math.min(o.connections, Math.ceil(o.events / o.batch)));
    for (let i = 0; i < n; i++) this.slots.push(new Slot(this.g, this.newTransport()));
    return n;
  }

  go(): void {
    for (const s of this.slots) s.next();
  }

  close(): void {
    for (const s of this.slots) s.transport.close();
    this.agent?.destroy();
  }
}
