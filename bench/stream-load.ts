/**
 * Load generator for the v2 meter event stream (`POST /v2/billing/meter_event_stream`).
 *
 *   node dist/bench/stream-load.js --url http://127.0.0.1:PORT --key sk_test_... [options]
 *
 * Options (CLI flag, or env BENCH_<UPPER_SNAKE>, e.g. BENCH_EVENTS):
 *   --url URL               target, loopback only (default http://127.0.0.1:8080): the stream requests go here
 *   --api-url URL           control plane (meter creation, sessions, summaries), loopback only (default --url); for a
 *                           split deployment: --url = the gateway, --api-url = the api process
 *   --health-url URL        repeatable (or comma-separated): a process running an aggregator; its GET /healthz
 *                           `aggregator.stored` is sampled during the load and the convergence, summed over all the
 *                           URLs, and compared with the events acknowledged so far (consumer lag, see LagSampler)
 *   --health-interval MS    lag sampling period (default 250)
 *   --meter-settle-ms MS    wait this long after creating the meter before the load (default 0); a split deployment's
 *                           aggregator learns new meters by polling the state store, see bench/README.md
 *   --key KEY               secret API key (default: first of $API_KEYS)
 *   --events N              total events to send (default 2,000,000)
 *   --duration S            stop sending after S seconds, whichever comes first (default 30)
 *   --connections N         keep-alive connections, one request in flight each (default 16)
 *   --batch N               events per request, 1..100 (default 100)
 *   --customers N           distinct customers (default 100)
 *   --meter-event-name E    event_name of the meter (default bench_tokens)
 *   --meter-id ID           use this existing meter instead of creating/looking one up
 *   --customer-prefix P     customer id prefix (default cus_<runid>_ so repeated runs never mix)
 *   --timestamps            send an explicit "timestamp" (now, RFC 3339) in every event
 *   --client raw|http       raw = hand-written HTTP/1.1 over net sockets (default), http = node:http keep-alive Agent
 *   --null                  null-server mode: no meter, no freshness/exactness checks
 *   --no-probe              no sampled freshness probes during the run
 *   --freshness-timeout S   deadline for the post-run convergence (default 60)
 *   --poll-interval MS      summary polling period (default 50)
 *   --poll-mode adaptive|all  post-run polling: all = every pending customer every interval (16 connections);
 *                           adaptive (default) = one sentinel query per interval while behind, then a doubling sweep
 *                           (same answer, without loading the server it measures; see Generator.converge)
 *   --rate R                offered load: send batches on a fixed schedule of R events/s (default 0: as fast as the
 *                           connections are answered). Latency is measured from each batch's scheduled send time, so
 *                           a server that falls behind shows its queueing in the p99 instead of slowing the schedule
 *                           (no coordinated omission); use enough --connections to carry the rate
 *   --quiet                 no progress lines
 *
 * Every event has a unique identifier `<runid>-<10 digits>`; bodies are built once per batch size as a template and
 * only digits are patched in place (identifier, customer, value), in a buffer that also holds the request head, so a
 * request costs one write syscall. 401 -> new session and resend; 429/503 -> back off (Retry-After) and resend the
 * same batch; other 5xx / connection errors -> resend up to 10 times (the server dedups by identifier); other 4xx ->
 * the batch is counted as rejected.
 *
 * After the load (unless --null): freshness = time from the last acknowledgement until every customer's summary equals
 * the total acknowledged for it (polled every --poll-interval ms, see --poll-mode); then an exactness pass reading
 * every customer once more. Sampled freshness: once a second a one-event probe for a dedicated customer, polled
 * until visible.
 *
 * Output: human table on stderr, one JSON line on stdout (last line). Exit 0 = OK, 1 = verification failed or the
 * run aborted, 2 = bad usage.
 */
import * as http from 'node:http';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { Args } from './args';
import { RawConnection, type RawResponse, type RawCallback, assertLoopback, buildRequest } from './raw-http';

// ------------------------------------------------------------------------------------------------ options

interface Endpoint {
  url: URL;
  host: string;
  port: number;
  hostHeader: string;
}

function endpoint(raw: string, flag: string): Endpoint {
  const url = new URL(raw);
  if (url.protocol !== 'http:') throw new Error(`${flag}: only http:// is supported (${url.protocol})`);
  return { url, host: assertLoopback(url.hostname), port: Number(url.port || 80), hostHeader: url.host };
}

interface Options {
  url: URL;
  host: string;
  port: number;
  hostHeader: string;
  /** Control plane: meters, sessions, summaries (default: the stream target). */
  api: Endpoint;
  health: Endpoint[];
  healthIntervalMs: number;
  meterSettleMs: number;
  key: string;
  events: number;
  durationS: number;
  connections: number;
  batch: number;
  customers: number;
  eventName: string;
  meterId?: string;
  customerPrefix: string;
  timestamps: boolean;
  client: 'raw' | 'http';
  nullMode: boolean;
  probe: boolean;
  freshnessTimeoutS: number;
  pollIntervalMs: number;
  pollMode: 'adaptive' | 'all';
  quiet: boolean;
  /** Offered events/s; 0 = closed loop (each connection sends its next batch when the last one is answered). */
  rate: number;
  runId: string;
}

const SAFE = /^[A-Za-z0-9_\-.:]+$/;

function parseOptions(argv: string[]): Options {
  const a = new Args(argv, ['null', 'no-probe', 'timestamps', 'quiet']);
  const target = endpoint(a.str('url', 'http://127.0.0.1:8080'), '--url');
  const { url, host, port } = target;
  const api = a.str('api-url') ? endpoint(a.str('api-url')!, '--api-url') : target;
  const health = a.list('health-url').map((u) => endpoint(u, '--health-url'));
  const runId = randomBytes(4).toString('hex');
  const key = a.str('key') ?? (process.env.API_KEYS ?? '').split(',')[0]!.trim();
  const nullMode = a.bool('null');
  if (!nullMode && !key) throw new Error('--key (or $API_KEYS) is required');
  const o: Options = {
    url,
    host,
    port,
    hostHeader: url.host,
    api,
    health: nullMode ? [] : health,
    healthIntervalMs: a.num('health-interval', 250),
    meterSettleMs: a.num('meter-settle-ms', 0),
    key: key || 'sk_test_null',
    events: Math.floor(a.num('events', 2_000_000)),
    durationS: a.num('duration', 30),
    connections: Math.floor(a.num('connections', 16)),
    batch: Math.floor(a.num('batch', 100)),
    customers: Math.floor(a.num('customers', 100)),
    eventName: a.str('meter-event-name', 'bench_tokens'),
    meterId: a.str('meter-id'),
    customerPrefix: a.str('customer-prefix', `cus_${runId}_`),
    timestamps: a.bool('timestamps'),
    client: a.str('client', 'raw') as 'raw' | 'http',
    nullMode,
    probe: !nullMode && !a.bool('no-probe'),
    freshnessTimeoutS: a.num('freshness-timeout', 60),
    pollIntervalMs: a.num('poll-interval', 50),
    pollMode: a.str('poll-mode', 'adaptive') as 'adaptive' | 'all',
    quiet: a.bool('quiet'),
    rate: a.num('rate', 0),
    runId,
  };
  if (o.events < 1 || o.events > 2 ** 31 - 1) throw new Error('--events must be in 1..2^31-1');
  if (!(o.durationS > 0)) throw new Error('--duration must be > 0');
  if (o.connections < 1 || o.connections > 4096) throw new Error('--connections must be in 1..4096');
  if (o.batch < 1 || o.batch > 100) throw new Error('--batch must be in 1..100');
  if (!(o.rate >= 0)) throw new Error('--rate must be >= 0 (events/s; 0 = as fast as answered)');
  if (o.customers < 1 || o.customers > 1_000_000) throw new Error('--customers must be in 1..1,000,000');
  if (o.client !== 'raw' && o.client !== 'http') throw new Error('--client must be raw or http');
  if (o.pollMode !== 'adaptive' && o.pollMode !== 'all') throw new Error('--poll-mode must be adaptive or all');
  if (!(o.healthIntervalMs >= 20)) throw new Error('--health-interval must be >= 20 (ms)');
  if (!(o.meterSettleMs >= 0)) throw new Error('--meter-settle-ms must be >= 0');
  if (!SAFE.test(o.eventName)) throw new Error('--meter-event-name: use [A-Za-z0-9_-.:] only');
  if (!SAFE.test(o.customerPrefix)) throw new Error('--customer-prefix: use [A-Za-z0-9_-.:] only');
  return o;
}

// ------------------------------------------------------------------------------------------------ histogram

/** Log-bucketed latency histogram: 32 buckets per power of two of microseconds (~2.2% resolution), no deps. */
class LogHistogram {
  private static readonly PER_OCTAVE = 32;
  private readonly counts = new Float64Array(40 * LogHistogram.PER_OCTAVE);
  n = 0;
  sum = 0;
  max = 0;
  min = Infinity;

  record(ms: number): void {
    const us = ms * 1000;
    let i = us <= 1 ? 0 : Math.ceil(Math.log2(us) * LogHistogram.PER_OCTAVE);
    if (i >= this.counts.length) i = this.counts.length - 1;
    this.counts[i]!++;
    this.n++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
    if (ms < this.min) this.min = ms;
  }

  /** Upper bound of the bucket holding the q-quantile, in ms (clamped to the observed max). */
  quantile(q: number): number | null {
    if (this.n === 0) return null;
    const target = Math.max(1, Math.ceil(q * this.n));
    let cum = 0;
    for (let i = 0; i < this.counts.length; i++) {
      cum += this.counts[i]!;
      if (cum >= target) return Math.min(this.max, 2 ** (i / LogHistogram.PER_OCTAVE) / 1000);
    }
    return this.max;
  }

  summary(): Record<string, number | null> {
    return {
      count: this.n,
      mean: this.n ? round(this.sum / this.n, 3) : null,
      min: this.n ? round(this.min, 3) : null,
      p50: rnd(this.quantile(0.5)),
      p90: rnd(this.quantile(0.9)),
      p99: rnd(this.quantile(0.99)),
      p999: rnd(this.quantile(0.999)),
      max: this.n ? round(this.max, 3) : null,
    };
  }
}

function round(x: number, d: number): number {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}
function rnd(x: number | null): number | null {
  return x === null ? null : round(x, 3);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------------------------------------ batch templates

const ID_DIGITS = 10;
const VAL_DIGITS = 3; // values 100..999: fixed width without leading zeros
const TS_LEN = 24; // 2025-01-01T00:00:00.000Z

interface Layout {
  n: number;
  body: Buffer;
  idOff: Uint32Array;
  custOff: Uint32Array;
  valOff: Uint32Array;
  tsOff: Uint32Array | null;
}

function buildLayout(n: number, o: Options, custWidth: number): Layout {
  const idOff = new Uint32Array(n);
  const custOff = new Uint32Array(n);
  const valOff = new Uint32Array(n);
  const tsOff = o.timestamps ? new Uint32Array(n) : null;
  // Every piece is ASCII, so string length == byte offset.
  let s = '{"events":[';
  for (let i = 0; i < n; i++) {
    if (i) s += ',';
    s += `{"event_name":"${o.eventName}","identifier":"${o.runId}-`;
    idOff[i] = s.length;
    s += '0'.repeat(ID_DIGITS);
    s += `","payload":{"stripe_customer_id":"${o.customerPrefix}`;
    custOff[i] = s.length;
    s += '0'.repeat(custWidth);
    s += '","value":"';
    valOff[i] = s.length;
    s += '1'.repeat(VAL_DIGITS);
    s += '"}';
    if (tsOff) {
      s += ',"timestamp":"';
      tsOff[i] = s.length;
      s += '2000-01-01T00:00:00.000Z';
      s += '"';
    }
    s += '}';
  }
  s += ']}';
  return { n, body: Buffer.from(s, 'latin1'), idOff, custOff, valOff, tsOff };
}

function writeDigits(buf: Buffer, off: number, width: number, v: number): void {
  for (let p = off + width - 1; p >= off; p--) {
    const q = (v / 10) | 0;
    buf[p] = 48 + v - q * 10;
    v = q;
  }
}

/** Deterministic, well-mixed 32-bit hash of the event sequence number. */
function mix(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

// ------------------------------------------------------------------------------------------------ control client

/** A small pool of raw connections for control-plane requests (sessions, meters, summaries). */
class Control {
  private idle: RawConnection[] = [];
  private all = new Set<RawConnection>();

  constructor(private readonly o: Options) {}

  async request(method: string, path: string, headers: Record<string, string>, body?: string): Promise<RawResponse> {
    const req = buildRequest(method, path, this.o.api.hostHeader, headers, body);
    for (let attempt = 0; ; attempt++) {
      const reused = this.idle.length > 0;
      const conn = this.idle.pop() ?? this.create();
      try {
        const res = await conn.request(req);
        this.idle.push(conn);
        return res;
      } catch (err) {
        this.idle.push(conn); // reconnects on next use
        // A reused keep-alive connection may have been closed by the server's idle timeout: retry once.
        if (!(reused && attempt === 0)) throw err;
      }
    }
  }

  private create(): RawConnection {
    const c = new RawConnection(this.o.api.host, this.o.api.port);
    this.all.add(c);
    return c;
  }

  close(): void {
    for (const c of this.all) c.close();
    this.all.clear();
    this.idle = [];
  }
}

function bodyText(res: RawResponse): string {
  const s = res.body.toString('utf8');
  return s.length > 300 ? `${s.slice(0, 300)}...` : s;
}

// ------------------------------------------------------------------------------------------------ sessions

class Sessions {
  token = '';
  expiresAtMs = 0;
  generation = 0;
  created = 0;
  private inflight: Promise<void> | null = null;

  constructor(
    private readonly o: Options,
    private readonly ctl: Control,
  ) {}

  /** Creates a new session unless `staleGeneration` is given and a newer session already exists. */
  refresh(staleGeneration?: number): Promise<void> {
    if (staleGeneration !== undefined && staleGeneration !== this.generation) return Promise.resolve();
    if (!this.inflight) {
      this.inflight = this.create().finally(() => {
        this.inflight = null;
      });
    }
    return this.inflight;
  }

  get refreshing(): boolean {
    return this.inflight !== null;
  }

  private async create(): Promise<void> {
    let lastErr = '';
    for (let attempt = 0; attempt < 20; attempt++) {
      let res: RawResponse;
      try {
        res = await this.ctl.request(
          'POST',
          '/v2/billing/meter_event_session',
          { Authorization: `Bearer ${this.o.key}`, 'Content-Type': 'application/json' },
          '{}',
        );
      } catch (err) {
        lastErr = String(err);
        await sleep(Math.min(100 * 2 ** attempt, 2000));
        continue;
      }
      if (res.status === 200) {
        const j = JSON.parse(res.body.toString('utf8')) as { authentication_token?: string; expires_at?: string | number };
        if (!j.authentication_token) throw new Error(`session response without authentication_token: ${bodyText(res)}`);
        this.token = j.authentication_token;
        const exp = typeof j.expires_at === 'number' ? j.expires_at * (j.expires_at < 1e12 ? 1000 : 1) : j.expires_at ? Date.parse(j.expires_at) : NaN;
        this.expiresAtMs = Number.isFinite(exp) ? exp : Date.now() + 15 * 60_000;
        this.generation++;
        this.created++;
        return;
      }
      lastErr = `${res.status} ${bodyText(res)}`;
      if (res.status === 429 || res.status >= 500) {
        await sleep(Math.min(100 * 2 ** attempt, 2000));
        continue;
      }
      break;
    }
    throw new Error(`cannot create a meter event session: ${lastErr}`);
  }
}

// ------------------------------------------------------------------------------------------------ transports

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

// ------------------------------------------------------------------------------------------------ the generator

interface Verification {
  ok: boolean;
  checked_customers: number;
  mismatches: { customer: string; expected: number; actual: number | null; error?: string }[];
  mismatch_count: number;
}

class Generator {
  readonly ctl: Control;
  readonly sessions: Sessions;
  readonly hist = new LogHistogram();
  readonly totals: Float64Array;
  readonly custWidth: number;
  private readonly layouts = new Map<number, Layout>();
  readonly slots: Slot[] = [];
  private agent: http.Agent | null = null;

  meterId = '';
  nextSeq = 0;
  stopping = false;
  aborted = false;
  abortReason = '';
  activeSlots = 0;
  acked = 0;
  requests = 0;
  retries = 0;
  rejectedEvents = 0;
  rejectedBatches = 0;
  uncertainEvents = 0;
  uncertainBatches = 0;
  readonly errors = new Map<string, number>();
  readonly firstErrorBody = new Map<string, string>();
  loadStart = 0;
  /** Date.now() when the load started. */
  loadStartEpoch = 0;
  lastAck = 0;
  /** performance.now() of the last HTTP response of any status on a load connection. */
  lastResponse = 0;
  private resolveLoad: (() => void) | null = null;

  // probe state
  probeCustomer: string;
  probeAcked = 0;
  probeUncertain = 0;
  readonly probeHist = new LogHistogram();
  readonly probeAckTimes: number[] = [];
  probeVisible = 0;

  windowStartS = 0;

  constructor(readonly o: Options) {
    this.ctl = new Control(o);
    this.sessions = new Sessions(o, this.ctl);
    this.totals = new Float64Array(o.customers);
    this.custWidth = String(o.customers - 1).length;
    this.probeCustomer = `${o.customerPrefix}probe`;
  }

  customerId(i: number): string {
    return this.o.customerPrefix + String(i).padStart(this.custWidth, '0');
  }

  layoutFor(n: number): Layout {
    let l = this.layouts.get(n);
    if (!l) {
      l = buildLayout(n, this.o, this.custWidth);
      this.layouts.set(n, l);
    }
    return l;
  }

  streamHead(contentLength: number): string {
    return (
      `POST /v2/billing/meter_event_stream HTTP/1.1\r\nHost: ${this.o.hostHeader}\r\n` +
      `Authorization: Bearer ${this.sessions.token}\r\nContent-Type: application/json\r\n` +
      `Content-Length: ${contentLength}\r\n\r\n`
    );
  }

  count(what: string): void {
    this.errors.set(what, (this.errors.get(what) ?? 0) + 1);
  }

  noteError(what: string, detail: string): void {
    this.count(what);
    if (!this.firstErrorBody.has(what)) this.firstErrorBody.set(what, detail);
  }

  abort(reason: string): void {
    if (this.aborted) return;
    this.aborted = true;
    this.stopping = true;
    this.abortReason = reason;
    process.stderr.write(`stream-load: aborting: ${reason}\n`);
    for (const s of this.slots) s.transport.close();
  }

  newTransport(): Transport {
    if (this.o.client === 'raw') return new RawTransport(this.o);
    if (!this.agent) {
      this.agent = new http.Agent({ keepAlive: true, maxSockets: this.o.connections, maxFreeSockets: this.o.connections });
    }
    return new HttpTransport(this.o, this.agent, this.sessions);
  }

  slotDone(): void {
    this.activeSlots--;
    if (this.activeSlots === 0 && this.resolveLoad) {
      const r = this.resolveLoad;
      this.resolveLoad = null;
      r();
    }
  }

  maybeRefreshSession(): void {
    if (!this.sessions.refreshing && Date.now() > this.sessions.expiresAtMs - 60_000) {
      this.sessions.refresh(this.sessions.generation).catch((e) => this.abort(String(e)));
    }
  }

  // ---------------------------------------------------------------- setup

  async setupMeter(): Promise<void> {
    if (this.o.meterId) {
      this.meterId = this.o.meterId;
      return;
    }
    const auth = { Authorization: `Bearer ${this.o.key}` };
    const form = `display_name=Bench&event_name=${encodeURIComponent(this.o.eventName)}&default_aggregation[formula]=sum`;
    const res = await this.ctl.request('POST', '/v1/billing/meters', { ...auth, 'Content-Type': 'application/x-www-form-urlencoded' }, form);
    if (res.status === 200) {
      const j = JSON.parse(res.body.toString('utf8')) as { id?: string };
      if (!j.id) throw new Error(`meter creation answered without id: ${bodyText(res)}`);
      this.meterId = j.id;
      return;
    }
    // Most likely an active meter with this event_name exists already (another run on the same data dir): reuse it.
    const list = await this.ctl.request('GET', '/v1/billing/meters?limit=100', auth);
    if (list.status === 200) {
      const j = JSON.parse(list.body.toString('utf8')) as {
        data?: { id: string; event_name?: string; status?: string; default_aggregation?: { formula?: string } }[];
      };
      const m = (j.data ?? []).find((x) => x.event_name === this.o.eventName && (x.status ?? 'active') === 'active');
      if (m) {
        const f = m.default_aggregation?.formula;
        if (f !== undefined && f !== 'sum') {
          throw new Error(`existing meter ${m.id} for ${this.o.eventName} aggregates with ${f}, not sum`);
        }
        this.meterId = m.id;
        return;
      }
    }
    throw new Error(`cannot create the meter: ${res.status} ${bodyText(res)}`);
  }

  // ---------------------------------------------------------------- load

  runLoad(): Promise<void> {
    return new Promise((resolve) => {
      this.resolveLoad = resolve;
      this.loadStart = performance.now();
      this.loadStartEpoch = Date.now();
      this.lastResponse = this.loadStart;
      const stopTimer = setTimeout(() => {
        this.stopping = true;
      }, this.o.durationS * 1000);
      let drainTimer: NodeJS.Timeout | null = null;
      const watchStop = setInterval(() => {
        if (this.stopping && !drainTimer) {
          drainTimer = setTimeout(() => this.abort('in-flight batches did not finish within 30 s after the stop'), 30_000);
        }
      }, 100);
      const done = this.resolveLoad;
      this.resolveLoad = () => {
        clearTimeout(stopTimer);
        clearInterval(watchStop);
        if (drainTimer) clearTimeout(drainTimer);
        done();
      };
      const n = Math.max(1, Math.min(this.o.connections, Math.ceil(this.o.events / this.o.batch)));
      this.activeSlots = n;
      for (let i = 0; i < n; i++) {
        const s = new Slot(this, this.newTransport());
        this.slots.push(s);
      }
      for (const s of this.slots) s.next();
    });
  }

  closeAll(): void {
    for (const s of this.slots) s.transport.close();
    this.agent?.destroy();
    this.ctl.close();
  }

  // ---------------------------------------------------------------- summaries

  summaryPath(customer: string): string {
    const endS = (Math.floor(Date.now() / 60_000) + 1) * 60;
    return (
      `/v1/billing/meters/${encodeURIComponent(this.meterId)}/event_summaries?customer=${encodeURIComponent(customer)}` +
      `&start_time=${this.windowStartS}&end_time=${endS}`
    );
  }

  /** Returns the summed aggregated_value, or an error string. */
  async fetchSummary(conn: RawConnection, customer: string): Promise<{ value: number } | { error: string; fatal: boolean; status: number }> {
    const req = buildRequest('GET', this.summaryPath(customer), this.o.api.hostHeader, {
      Authorization: `Bearer ${this.o.key}`,
    });
    let res: RawResponse;
    try {
      res = await conn.request(req);
    } catch {
      try {
        res = await conn.request(req); // reconnect once
      } catch (err) {
        return { error: String(err), fatal: false, status: 0 };
      }
    }
    if (res.status !== 200) {
      return {
        error: `${res.status} ${bodyText(res)}`,
        fatal: res.status >= 400 && res.status < 500 && res.status !== 429,
        status: res.status,
      };
    }
    const j = JSON.parse(res.body.toString('utf8')) as { data?: { aggregated_value?: number | string }[] };
    let v = 0;
    for (const d of j.data ?? []) v += Number(d.aggregated_value ?? 0);
    if (customer === this.probeCustomer) this.observeProbe(v, performance.now());
    return { value: v };
  }

  expectations(): { customer: string; expected: number }[] {
    const out: { customer: string; expected: number }[] = [];
    for (let i = 0; i < this.o.customers; i++) out.push({ customer: this.customerId(i), expected: this.totals[i]! });
    if (this.probeAcked > 0 || this.probeUncertain > 0) out.push({ customer: this.probeCustomer, expected: this.probeAcked });
    return out;
  }

  /**
   * Polls the summaries until every customer's equals the total acknowledged for it, or the deadline.
   *
   * `all` mode: every pending customer in every round (16 connections), a round every --poll-interval ms.
   * `adaptive` mode (default): a round polls a group of pending customers, starting with one; when the whole group
   * matches, the next group (twice as large) is polled at once, otherwise the round ends and the group size falls
   * back to 1 (customers that did not match go first next time). While the aggregator lags this costs about one
   * query per interval instead of one per customer, so the measurement does not slow down what it measures; once it
   * has caught up, all customers are swept in a few fast rounds. Events of every customer are spread over the whole
   * run, so customers converge together and the sentinel is representative.
   */
  async converge(): Promise<{
    converged: boolean;
    freshnessMs: number | null;
    pollRounds: number;
    queries: number;
    pendingAtDeadline: number;
    overshoot: number;
    error?: string;
  }> {
    const exp = this.expectations();
    let pending = exp.map((_, i) => i);
    const adaptive = this.o.pollMode === 'adaptive';
    let group = adaptive ? 1 : pending.length;
    const pool = Array.from({ length: Math.min(16, pending.length) }, () => new RawConnection(this.o.api.host, this.o.api.port));
    const deadline = performance.now() + this.o.freshnessTimeoutS * 1000;
    let last = 0;
    let rounds = 0;
    let queries = 0;
    let overshoot = 0;
    let fatal: string | undefined;
    let lastAnswer = performance.now();
    try {
      while (pending.length && performance.now() < deadline && !fatal) {
        const roundStart = performance.now();
        rounds++;
        const take = pending.slice(0, group);
        const rest = pending.slice(group);
        const missed: number[] = [];
        let next = 0;
        const worker = async (conn: RawConnection): Promise<void> => {
          while (next < take.length && !fatal) {
            const idx = take[next++]!;
            queries++;
            const r = await this.fetchSummary(conn, exp[idx]!.customer);
            const t = performance.now();
            if (!('error' in r) || r.status) lastAnswer = t;
            if ('error' in r) {
              this.noteError(r.status ? `summary ${r.status}` : 'summary conn_error', r.error);
              if (r.fatal) fatal = `summaries: ${r.error}`;
              else if (!r.status && t - lastAnswer > 5000) fatal = `summaries: no HTTP response for 5 s: ${r.error}`;
              missed.push(idx);
            } else if (r.value === exp[idx]!.expected) {
              if (t > last) last = t;
            } else if (r.value > exp[idx]!.expected) {
              overshoot++; // more than was acknowledged: will not converge; the exactness pass reports it
            } else {
              missed.push(idx);
            }
          }
        };
        await Promise.all(pool.slice(0, Math.max(1, Math.min(pool.length, take.length))).map(worker));
        pending = missed.concat(rest);
        if (adaptive) {
          if (missed.length === 0) {
            group = Math.min(group * 2, 1024);
            continue; // caught up: sweep on without waiting
          }
          group = 1;
        }
        if (pending.length) {
          const wait = this.o.pollIntervalMs - (performance.now() - roundStart);
          if (wait > 0) await sleep(wait);
        }
      }
    } finally {
      for (const c of pool) c.close();
    }
    const converged = pending.length === 0 && overshoot === 0 && !fatal;
    return {
      converged,
      freshnessMs: converged ? round(Math.max(0, last - this.lastAck), 1) : null,
      pollRounds: rounds,
      queries,
      pendingAtDeadline: pending.length,
      overshoot,
      error: fatal,
    };
  }

  async verify(): Promise<Verification> {
    const exp = this.expectations();
    const mismatches: Verification['mismatches'] = [];
    let mismatchCount = 0;
    const pool = Array.from({ length: Math.min(16, exp.length) }, () => new RawConnection(this.o.api.host, this.o.api.port));
    let next = 0;
    try {
      await Promise.all(
        pool.map(async (conn) => {
          while (next < exp.length) {
            const e = exp[next++]!;
            const r = await this.fetchSummary(conn, e.customer);
            const actual = 'value' in r ? r.value : null;
            if (actual !== e.expected) {
              mismatchCount++;
              if (mismatches.length < 20) {
                mismatches.push({ customer: e.customer, expected: e.expected, actual, ...('error' in r ? { error: r.error } : {}) });
              }
            }
          }
        }),
      );
    } finally {
      for (const c of pool) c.close();
    }
    return { ok: mismatchCount === 0, checked_customers: exp.length, mismatches, mismatch_count: mismatchCount };
  }

  // ---------------------------------------------------------------- probe

  /**
   * Sampled freshness during the load: once a second one event (value 1) for the probe customer; a poller reads the
   * probe customer's summary every --poll-interval ms while probes are outstanding, and the k-th probe counts as
   * visible when the summary reaches k. Probes still invisible when the load stops are resolved by the post-run
   * convergence (observeProbe is fed by every read of the probe customer's summary).
   */
  async probeLoop(): Promise<void> {
    const sendConn = new RawConnection(this.o.host, this.o.port);
    const pollConn = new RawConnection(this.o.api.host, this.o.api.port);
    const poller = (async () => {
      while (!this.stopping) {
        if (this.probeVisible < this.probeAckTimes.length) {
          const r = await this.fetchSummary(pollConn, this.probeCustomer);
          if ('error' in r) {
            this.noteError(r.status ? `probe summary ${r.status}` : 'probe summary conn_error', r.error);
            if (r.fatal) return;
          }
        }
        await sleep(this.o.pollIntervalMs);
      }
    })();
    let k = 0;
    try {
      while (!this.stopping) {
        const tickStart = performance.now();
        k++;
        const body = JSON.stringify({
          events: [
            {
              event_name: this.o.eventName,
              identifier: `${this.o.runId}-p${String(k).padStart(6, '0')}`,
              payload: { stripe_customer_id: this.probeCustomer, value: '1' },
            },
          ],
        });
        const ok = await this.sendOne(sendConn, body);
        if (ok === 'uncertain') this.probeUncertain++;
        if (ok === true) {
          this.probeAcked++;
          this.probeAckTimes.push(performance.now());
        }
        const wait = 1000 - (performance.now() - tickStart);
        if (wait > 0 && !this.stopping) await sleepUnless(wait, () => this.stopping);
      }
      await poller;
    } finally {
      sendConn.close();
      pollConn.close();
    }
  }

  observeProbe(value: number, t: number): void {
    while (this.probeVisible < value && this.probeVisible < this.probeAckTimes.length) {
      this.probeHist.record(t - this.probeAckTimes[this.probeVisible]!);
      this.probeVisible++;
    }
  }

  /** Sends one small stream request with the same retry rules as the load. */
  private async sendOne(conn: RawConnection, body: string): Promise<true | false | 'uncertain'> {
    for (let attempt = 0; attempt < 20; attempt++) {
      const gen = this.sessions.generation;
      const req = buildRequest(
        'POST',
        '/v2/billing/meter_event_stream',
        this.o.hostHeader,
        { Authorization: `Bearer ${this.sessions.token}`, 'Content-Type': 'application/json' },
        body,
      );
      let res: RawResponse;
      try {
        res = await conn.request(req);
      } catch {
        await sleep(50);
        continue;
      }
      if (res.status === 200) return true;
      this.count(`probe ${res.status}`);
      if (res.status === 401) {
        await this.sessions.refresh(gen);
        continue;
      }
      if (res.status === 429 || res.status >= 500) {
        await sleep(retryDelay(attempt, res.headers['retry-after']));
        continue;
      }
      if (!this.firstErrorBody.has(`probe ${res.status}`)) this.firstErrorBody.set(`probe ${res.status}`, bodyText(res));
      return false;
    }
    return 'uncertain';
  }
}

function sleepUnless(ms: number, cond: () => boolean): Promise<void> {
  return new Promise((resolve) => {
    const end = performance.now() + ms;
    const tick = (): void => {
      const left = end - performance.now();
      if (left <= 0 || cond()) resolve();
      else setTimeout(tick, Math.min(left, 100));
    };
    tick();
  });
}

function retryDelay(attempt: number, retryAfter: string | undefined): number {
  const ra = retryAfter !== undefined ? Number(retryAfter) : NaN;
  const base = Number.isFinite(ra) && ra >= 0 ? Math.min(ra * 1000, 5000) : Math.min(25 * 2 ** attempt, 2000);
  return base * (0.75 + Math.random() * 0.5);
}

/** One connection, one batch in flight. */
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

// ------------------------------------------------------------------------------------------------ consumer lag

interface AggregatorHealth {
  events?: number;
  stored?: number;
  duplicates?: number;
  invalid?: number;
  flushes?: number;
  lastFlushMs?: number;
  insertRetries?: number;
  partitions?: Record<string, { next: number; stored: number }>;
}

interface LagSample {
  /** Epoch ms (midpoint of the health round trip). */
  t: number;
  /** Events acknowledged by then (load + probes), midpoint of the round trip. */
  acked: number;
  /** Sum of `aggregator.stored` over the health URLs, minus the baseline. */
  stored: number;
  invalid: number;
  duplicates: number;
}

/**
 * Consumer lag: every --health-interval ms, GET /healthz on every --health-url (in parallel, one connection each) and
 * sum `aggregator.stored` (events whose flush has landed in the analytics store); compare with the events acknowledged
 * so far (load + probes). A sample counts only when every URL answered with an aggregator. The acknowledged count is
 * read when the round starts and when its last answer arrives; the sample uses the midpoint of both (time and count).
 *
 * Seconds behind: the age of the oldest acknowledged event not yet stored, estimated from the acknowledgement
 * timeline as now − (when the acknowledged count first exceeded `stored`). Events are stored in log order per
 * partition, not globally, so this is an estimate. `stored` is per process since its start: the baseline taken before
 * the load is subtracted, so a server that already holds other traffic still works as long as nothing else is
 * ingesting during the run.
 */
class LagSampler {
  readonly samples: LagSample[] = [];
  /** (epoch ms, acknowledged) points, in time order, for the seconds-behind estimate. */
  private readonly ackTimeline: [number, number][] = [];
  private readonly conns: RawConnection[];
  private readonly reqs: Buffer[];
  baseline: number | null = null;
  errors = 0;
  firstError = '';
  lastHealth: { url: string; aggregator: AggregatorHealth | null }[] = [];
  private stopped = false;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly g: Generator,
    private readonly targets: Endpoint[],
    private readonly intervalMs: number,
  ) {
    this.conns = targets.map((e) => new RawConnection(e.host, e.port));
    this.reqs = targets.map((e) => buildRequest('GET', '/healthz', e.hostHeader, {}));
  }

  private ackedNow(): number {
    return this.g.acked + this.g.probeAcked;
  }

  private fetchOne(i: number, timeoutMs: number): Promise<AggregatorHealth | null> {
    const conn = this.conns[i]!;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => conn.close(), timeoutMs); // close() fails the request
      const attempt = (retry: boolean): void => {
        conn.send(this.reqs[i]!, (err, res) => {
          if (err && retry && !String(err).includes('closed by client')) return attempt(false); // stale keep-alive
          clearTimeout(timer);
          if (err || !res) return reject(err ?? new Error('no response'));
          if (res.status !== 200) return reject(new Error(`/healthz answered ${res.status}`));
          try {
            const j = JSON.parse(res.body.toString('utf8')) as { aggregator?: AggregatorHealth | null };
            resolve(j.aggregator ?? null);
          } catch (e) {
            reject(e as Error);
          }
        });
      };
      attempt(true);
    });
  }

  /** One round over every URL; returns the raw stored sum, or null when a URL failed or runs no aggregator. */
  async sample(): Promise<LagSample | null> {
    const t0 = Date.now();
    const a0 = this.ackedNow();
    this.ackTimeline.push([t0, a0]);
    // allSettled: every connection is idle again before the next round, even when one URL failed.
    const settled = await Promise.allSettled(this.targets.map((_, i) => this.fetchOne(i, 2000)));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      this.errors++;
      if (!this.firstError) this.firstError = String(failed.reason);
      return null;
    }
    const healths = settled.map((r) => (r as PromiseFulfilledResult<AggregatorHealth | null>).value);
    const t1 = Date.now();
    const a1 = this.ackedNow();
    this.ackTimeline.push([t1, a1]);
    this.lastHealth = healths.map((h, i) => ({ url: this.targets[i]!.url.origin, aggregator: h }));
    if (healths.some((h) => !h || typeof h.stored !== 'number')) {
      this.errors++;
      if (!this.firstError) this.firstError = 'a health URL shows no aggregator (aggregator: null or no `stored`)';
      return null;
    }
    const sum = (k: keyof AggregatorHealth): number => healths.reduce((acc, h) => acc + Number(h![k] ?? 0), 0);
    const stored = sum('stored');
    if (this.baseline === null) this.baseline = stored;
    const s: LagSample = {
      t: (t0 + t1) / 2,
      acked: Math.round((a0 + a1) / 2),
      stored: stored - this.baseline,
      invalid: sum('invalid'),
      duplicates: sum('duplicates'),
    };
    this.samples.push(s);
    return s;
  }

  start(): void {
    this.loop = (async () => {
      while (!this.stopped) {
        const t = Date.now();
        await this.sample();
        const wait = this.intervalMs - (Date.now() - t);
        if (wait > 0 && !this.stopped) await sleepUnless(wait, () => this.stopped);
      }
    })();
  }

  /** Stops the periodic sampling, then takes one last sample. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.loop) await this.loop;
    await this.sample();
    for (const c of this.conns) c.close();
  }

  /** When the acknowledged count first exceeded `n` (epoch ms), interpolated on the timeline; null if never. */
  private ackedPast(n: number): number | null {
    const tl = this.ackTimeline;
    let prevT = this.g.loadStartEpoch;
    let prevA = 0;
    for (const [t, a] of tl) {
      if (a > n) {
        if (t <= prevT || a <= prevA) return t;
        return prevT + ((n - prevA) / (a - prevA)) * (t - prevT);
      }
      if (t >= prevT) {
        prevT = t;
        prevA = a;
      }
    }
    return null;
  }

  secondsBehind(s: LagSample): number {
    if (s.acked <= s.stored) return 0;
    const since = this.ackedPast(s.stored);
    return since === null ? 0 : Math.max(0, (s.t - since) / 1000);
  }

  report(loadStartEpoch: number, lastAckEpoch: number | null): Record<string, unknown> {
    const rows: number[][] = [];
    let maxEvents = 0;
    let maxEventsAt: number | null = null;
    let maxBehind = 0;
    let maxBehindAt: number | null = null;
    let caughtUp: number | null = null;
    const finalAcked = this.ackedNow();
    for (const s of this.samples) {
      const lag = s.acked - s.stored;
      const behind = this.secondsBehind(s);
      const rel = Math.round(s.t - loadStartEpoch);
      rows.push([rel, s.acked, s.stored, lag, round(behind, 3)]);
      if (lag > maxEvents) {
        maxEvents = lag;
        maxEventsAt = rel;
      }
      if (behind > maxBehind) {
        maxBehind = behind;
        maxBehindAt = rel;
      }
      if (caughtUp === null && lastAckEpoch !== null && s.t >= lastAckEpoch && s.stored >= finalAcked) {
        caughtUp = Math.round(s.t - lastAckEpoch);
      }
    }
    const last = this.samples[this.samples.length - 1];
    const aggSum = (k: keyof AggregatorHealth): number =>
      this.lastHealth.reduce((acc, h) => acc + Number((h.aggregator as AggregatorHealth | null)?.[k] ?? 0), 0);
    return {
      health_urls: this.targets.map((e) => e.url.origin),
      interval_ms: this.intervalMs,
      samples: this.samples.length,
      sample_errors: this.errors,
      ...(this.firstError ? { first_sample_error: this.firstError } : {}),
      baseline_stored: this.baseline,
      max_events: this.samples.length ? maxEvents : null,
      max_events_at_s: maxEventsAt === null ? null : round(maxEventsAt / 1000, 2),
      max_seconds_behind: this.samples.length ? round(maxBehind, 3) : null,
      max_seconds_behind_at_s: maxBehindAt === null ? null : round(maxBehindAt / 1000, 2),
      caught_up_after_last_ack_ms: caughtUp,
      final: {
        acked: finalAcked,
        stored: last ? last.stored : null,
        events: aggSum('events'),
        duplicates: aggSum('duplicates'),
        invalid: aggSum('invalid'),
        flushes: aggSum('flushes'),
        insert_retries: aggSum('insertRetries'),
      },
      processes: this.lastHealth,
      series: { columns: ['t_ms', 'acked', 'stored', 'lag_events', 'seconds_behind'], t0_epoch_ms: loadStartEpoch, rows },
    };
  }
}

// ------------------------------------------------------------------------------------------------ main

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

async function main(): Promise<number> {
  let o: Options;
  try {
    o = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`stream-load: ${(err as Error).message}\n`);
    return 2;
  }
  const g = new Generator(o);
  const log = (s: string): void => {
    process.stderr.write(`${s}\n`);
  };
  log(
    `stream-load: ${o.url.origin} run=${o.runId} events=${fmtInt(o.events)} duration<=${o.durationS}s ` +
      `connections=${o.connections} batch=${o.batch} customers=${o.customers} client=${o.client}${o.nullMode ? ' (null mode)' : ''}`,
  );

  let setupError: string | undefined;
  try {
    if (!o.nullMode) await g.setupMeter();
    await g.sessions.refresh();
  } catch (err) {
    setupError = (err as Error).message;
  }
  if (setupError) {
    log(`stream-load: setup failed: ${setupError}`);
    g.closeAll();
    process.stdout.write(`${JSON.stringify({ ok: false, error: setupError, run_id: o.runId })}\n`);
    return 1;
  }
  g.windowStartS = Math.floor(Date.now() / 60_000) * 60 - 60;
  if (o.meterSettleMs > 0) {
    log(`stream-load: meter ${g.meterId}; waiting ${o.meterSettleMs} ms for every process to see it (--meter-settle-ms)`);
    await sleep(o.meterSettleMs);
  }
  let lag: LagSampler | null = null;
  if (o.health.length > 0) {
    lag = new LagSampler(g, o.health, o.healthIntervalMs);
    if (!(await lag.sample())) log(`stream-load: lag sampling: the first /healthz round failed (${lag.firstError}); will keep trying`);
  }

  // Progress lines.
  let lastAcked = 0;
  let lastT = performance.now();
  const progress = o.quiet
    ? null
    : setInterval(() => {
        const t = performance.now();
        const rate = ((g.acked - lastAcked) / (t - lastT)) * 1000;
        lastAcked = g.acked;
        lastT = t;
        const errs = [...g.errors.values()].reduce((a, b) => a + b, 0);
        const ls = lag?.samples[lag.samples.length - 1];
        log(
          `  [${((t - g.loadStart) / 1000).toFixed(1)}s] acked ${fmtInt(g.acked)} events (${fmtInt(rate)}/s), ` +
            `${fmtInt(g.requests)} requests, ${errs} errors` +
            (ls ? `, stored ${fmtInt(ls.stored)} (lag ${fmtInt(ls.acked - ls.stored)}, ${lag!.secondsBehind(ls).toFixed(1)} s behind)` : ''),
        );
      }, 5000);

  const cpu0 = process.cpuUsage();
  const wall0 = Date.now();
  const probe = o.probe ? g.probeLoop().catch((e) => g.noteError('probe', String(e))) : Promise.resolve();
  lag?.start();
  await g.runLoad();
  g.stopping = true;
  const loadEndPerf = g.lastAck || performance.now();
  const cpu = process.cpuUsage(cpu0);
  const loadElapsedMs = Math.max(1, (g.lastAck || performance.now()) - g.loadStart);
  if (progress) clearInterval(progress);
  await probe;
  for (const s of g.slots) s.transport.close();

  let fresh: Awaited<ReturnType<Generator['converge']>> | null = null;
  let verification: Verification | null = null;
  if (!o.nullMode && !g.aborted) {
    log(`stream-load: load done; waiting for summaries to converge (deadline ${o.freshnessTimeoutS}s)...`);
    fresh = await g.converge();
    verification = await g.verify();
  }
  if (lag) await lag.stop();
  g.closeAll();
  const lagReport = lag ? lag.report(g.loadStartEpoch, g.lastAck ? performance.timeOrigin + g.lastAck : null) : null;

  const eps = (g.acked / loadElapsedMs) * 1000;
  const lat = g.hist.summary();
  const errors: Record<string, number> = {};
  for (const [k, v] of [...g.errors.entries()].sort()) errors[k] = v;
  const firstErrors: Record<string, string> = {};
  for (const [k, v] of g.firstErrorBody) firstErrors[k] = v;
  const ok = !g.aborted && g.acked > 0 && (o.nullMode || (verification?.ok === true && fresh?.converged === true));

  const result = {
    ok,
    mode: o.nullMode ? 'null' : 'verify',
    run_id: o.runId,
    url: o.url.origin,
    api_url: o.api.url.origin,
    client: o.client,
    meter_id: g.meterId || null,
    options: {
      events: o.events,
      duration_s: o.durationS,
      connections: o.connections,
      batch: o.batch,
      rate: o.rate,
      customers: o.customers,
      meter_event_name: o.eventName,
      timestamps: o.timestamps,
    },
    events_acked: g.acked,
    requests: g.requests,
    load_seconds: round(loadElapsedMs / 1000, 3),
    events_per_s: Math.round(eps),
    requests_per_s: Math.round((g.requests / loadElapsedMs) * 1000),
    ack_latency_ms: lat,
    errors,
    first_error_bodies: firstErrors,
    retries: g.retries,
    rejected_events: g.rejectedEvents,
    uncertain_events: g.uncertainEvents,
    sessions_created: g.sessions.created,
    client_cpu: {
      user_s: round(cpu.user / 1e6, 3),
      system_s: round(cpu.system / 1e6, 3),
      pct_of_one_core: round(((cpu.user + cpu.system) / 1000 / loadElapsedMs) * 100, 1),
    },
    load_start_epoch_ms: wall0,
    load_end_epoch_ms: Math.round(performance.timeOrigin + loadEndPerf),
    freshness: fresh
      ? {
          after_last_ack_ms: fresh.freshnessMs,
          converged: fresh.converged,
          poll_rounds: fresh.pollRounds,
          poll_queries: fresh.queries,
          poll_mode: o.pollMode,
          pending_at_deadline: fresh.pendingAtDeadline,
          overshoot_customers: fresh.overshoot,
          deadline_s: o.freshnessTimeoutS,
          ...(fresh.error ? { error: fresh.error } : {}),
        }
      : null,
    probe_freshness_ms: o.probe ? { ...g.probeHist.summary(), probe_events: g.probeAcked, never_seen: g.probeAcked - g.probeVisible } : null,
    verification,
    lag: lagReport,
    aborted: g.aborted ? g.abortReason : null,
  };

  // Human table.
  const rows: [string, string][] = [
    ['target', `${o.url.origin}${o.nullMode ? ' (null mode)' : ''}`],
    ['events acknowledged', `${fmtInt(g.acked)} in ${(loadElapsedMs / 1000).toFixed(2)} s`],
    ['accepted events/s', fmtInt(eps)],
    ['requests (200)', `${fmtInt(g.requests)} (${fmtInt(result.requests_per_s)}/s, batch ${o.batch})`],
    ['offered load', o.rate > 0 ? `${fmtInt(o.rate)} events/s (latency from each batch's scheduled send)` : 'closed loop (as fast as answered)'],
    ['ack latency ms', `p50 ${lat.p50} | p90 ${lat.p90} | p99 ${lat.p99} | p999 ${lat.p999} | max ${lat.max}`],
    ['errors by status', Object.keys(errors).length ? JSON.stringify(errors) : 'none'],
    ['retries / rejected / uncertain', `${g.retries} / ${g.rejectedEvents} / ${g.uncertainEvents} events`],
    ['client CPU (load phase)', `${result.client_cpu.pct_of_one_core}% of one core`],
  ];
  if (fresh) {
    rows.push([
      'freshness after last ack',
      fresh.converged ? `${fresh.freshnessMs} ms` : `NOT converged within ${o.freshnessTimeoutS}s (${fresh.pendingAtDeadline} pending)`,
    ]);
  }
  if (o.probe) {
    const p = g.probeHist.summary();
    rows.push([
      'probe freshness ms (in-run)',
      `n=${p.count} p50 ${p.p50} | p90 ${p.p90} | max ${p.max}` + (g.probeAcked > g.probeVisible ? ` | ${g.probeAcked - g.probeVisible} never seen` : ''),
    ]);
  }
  if (verification) {
    rows.push([
      'exactness',
      verification.ok
        ? `OK (${verification.checked_customers} customers)`
        : `MISMATCH in ${verification.mismatch_count}/${verification.checked_customers} customers, e.g. ${JSON.stringify(verification.mismatches.slice(0, 3))}`,
    ]);
  }
  if (lagReport) {
    const L = lagReport as {
      max_events: number | null;
      max_seconds_behind: number | null;
      caught_up_after_last_ack_ms: number | null;
      samples: number;
      sample_errors: number;
      final: { stored: number | null; invalid: number; duplicates: number };
    };
    rows.push([
      'consumer lag (health)',
      L.max_events === null
        ? `no usable /healthz sample (${L.sample_errors} failed rounds)`
        : `max ${fmtInt(L.max_events)} events, max ${L.max_seconds_behind} s behind; stored ${fmtInt(L.final.stored ?? 0)}` +
          `, caught up ${L.caught_up_after_last_ack_ms === null ? 'never' : `${L.caught_up_after_last_ack_ms} ms after the last ack`}` +
          ` (${L.samples} samples${L.sample_errors ? `, ${L.sample_errors} failed` : ''}; invalid ${L.final.invalid}, duplicates ${L.final.duplicates})`,
    ]);
  }
  if (g.aborted) rows.push(['aborted', g.abortReason]);
  const w = Math.max(...rows.map((r) => r[0].length));
  log('');
  for (const [k, v] of rows) log(`  ${k.padEnd(w)}  ${v}`);
  log('');

  await new Promise<void>((r) => process.stdout.write(`${JSON.stringify(result)}\n`, () => r()));
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`stream-load: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
