/** The load generator's shared state and its run: setup of the meter, the load's timing, errors and aborts. */
import { performance } from 'node:perf_hooks';
import { LogHistogram } from '../stats';
import { Control, Sessions, bodyText } from './control';
import type { Options } from './options';
import { type Layout, buildLayout } from './templates';

/** A load that the generator runs: workers (connection slots) that call `slotDone()` when they stop. */
export interface Load {
  /** Creates the workers; returns how many. */
  prepare(): number;
  /** Starts them. */
  go(): void;
  /** Closes every load connection (an abort, or the end of the run). */
  close(): void;
}

/**
 * The generator's state shared by both transports: what was sent and acknowledged (per customer, for the
 * verification), the latency histogram, errors, the control plane (meter, sessions) and the probe's state.
 */
export class Generator {
  readonly ctl: Control;
  readonly sessions: Sessions;
  readonly hist = new LogHistogram();
  readonly totals: Float64Array;
  readonly custWidth: number;
  private readonly layouts = new Map<number, Layout>();
  private load: Load | null = null;

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
    this.load?.close();
  }

  /** A load worker (connection slot) has stopped; the load ends when all have. */
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

  runLoad(load: Load): Promise<void> {
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
      this.load = load;
      this.activeSlots = load.prepare();
      load.go();
    });
  }

  /** Closes the load's connections (the control plane stays open for the verification). */
  closeLoad(): void {
    this.load?.close();
  }

  closeAll(): void {
    this.load?.close();
    this.ctl.close();
  }

  observeProbe(value: number, t: number): void {
    while (this.probeVisible < value && this.probeVisible < this.probeAckTimes.length) {
      this.probeHist.record(t - this.probeAckTimes[this.probeVisible]!);
      this.probeVisible++;
    }
  }
}
