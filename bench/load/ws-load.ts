/**
 * The WebSocket stream load, driven through the client package (@meterd/stream-client in client/), as a user of the
 * WebSocket stream would send: --ws-connections streams, each with --ws-inflight workers that send a batch of
 * --ws-batch events with `sendBatch` and wait for its acknowledgement. The client batches, keeps the window, resends
 * after reconnects (same batch id: the server derives the same identifiers, unless --ws-identifiers sends explicit
 * ones) and refreshes sessions; the bench counts,
 * per acknowledged batch, what it sent per customer (for the exactness check) and the latency from the send (or, with
 * --rate, from the time the batch was due).
 */
import { performance } from 'node:perf_hooks';
import { BatchRejectedError, type MeterEvent, MeterEventStream, SESSION_PATH } from '../../client/src';
import type { Generator, Load } from './generator';
import { mix } from './templates';

/** No acknowledgement for this long while batches are outstanding: the server is gone, abort. */
const STALL_MS = 30_000;

export class WsLoad implements Load {
  private readonly streams: MeterEventStream[] = [];
  private readonly customerIds: string[];
  private workers = 0;
  private watchdog: NodeJS.Timeout | null = null;

  constructor(private readonly g: Generator) {
    this.customerIds = Array.from({ length: g.o.customers }, (_, i) => g.customerId(i));
  }

  /** Opens the connections (sessions, upgrades) before the load's clock starts, as the HTTP load's are by then. */
  async open(): Promise<void> {
    const o = this.g.o;
    const batches = Math.ceil(o.events / o.wsBatch);
    const connections = Math.max(1, Math.min(o.wsConnections, batches));
    for (let i = 0; i < connections; i++) {
      const stream = new MeterEventStream({
        url: `ws://${o.hostHeader}`,
        apiKey: o.key,
        sessionUrl: new URL(SESSION_PATH, o.api.url),
        encoding: o.wsEncoding,
        maxBatchEvents: o.wsBatch,
        maxUnackedBatches: o.wsInflight,
        maxQueuedEvents: Math.max(100_000, 2 * o.wsInflight * o.wsBatch),
        lingerMs: 0,
      });
      // Informational (reconnects, resends): counted; the batch promises carry what matters.
      stream.on('error', (err: Error) => this.g.noteError(`ws ${err.name}`, err.message));
      this.streams.push(stream);
    }
    await Promise.all(this.streams.map((s) => s.connect()));
    this.workers = Math.max(1, Math.min(connections * o.wsInflight, batches));
  }

  prepare(): number {
    return this.workers;
  }

  go(): void {
    const g = this.g;
    this.watchdog = setInterval(() => {
      if (!g.aborted && performance.now() - g.lastResponse > STALL_MS) g.abort(`no WebSocket acknowledgement for ${STALL_MS / 1000} s (server down?)`);
    }, 1000);
    for (let i = 0; i < this.workers; i++) {
      this.worker(this.streams[i % this.streams.length]!)
        .catch((err: unknown) => g.abort(`WebSocket load worker failed: ${String(err)}`))
        .finally(() => g.slotDone());
    }
  }

  /** Builds the events of one batch: the same customers and values per sequence number as the HTTP load. */
  private batch(seq0: number, n: number): { events: MeterEvent[]; cust: Uint32Array; val: Uint32Array } {
    const o = this.g.o;
    const events: MeterEvent[] = new Array(n);
    const cust = new Uint32Array(n);
    const val = new Uint32Array(n);
    const timestamp = o.timestamps ? new Date().toISOString() : undefined;
    for (let i = 0; i < n; i++) {
      const h = mix(seq0 + i);
      const c = h % o.customers;
      const v = 100 + ((h >>> 7) % 900);
      cust[i] = c;
      val[i] = v;
      events[i] = {
        event_name: o.eventName,
        ...(o.wsIdentifiers ? { identifier: `${o.runId}-${seq0 + i}` } : {}),
        payload: { stripe_customer_id: this.customerIds[c]!, value: String(v) },
        ...(timestamp ? { timestamp } : {}),
      };
    }
    return { events, cust, val };
  }

  private async worker(stream: MeterEventStream): Promise<void> {
    const g = this.g;
    const o = g.o;
    while (!g.stopping && g.nextSeq < o.events) {
      const n = Math.min(o.wsBatch, o.events - g.nextSeq);
      const seq0 = g.nextSeq;
      g.nextSeq += n;
      let due = 0;
      if (o.rate > 0) {
        due = g.loadStart + (seq0 / o.rate) * 1000;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        if (g.aborted) {
          g.uncertainEvents += n;
          g.uncertainBatches++;
          return;
        }
      }
      const { events, cust, val } = this.batch(seq0, n);
      // A batch sent up to 1 ms early (timers are that coarse) counts from its send.
      const t0 = o.rate > 0 ? Math.min(due, performance.now()) : performance.now();
      try {
        await stream.sendBatch(events);
      } catch (err) {
        g.lastResponse = performance.now();
        if (err instanceof BatchRejectedError) {
          g.noteError(`ws ${err.error.code ?? err.error.type}`, err.message);
          g.rejectedEvents += n;
          g.rejectedBatches++;
          if (g.requests === 0 && g.rejectedBatches >= 10) g.abort(`every WebSocket batch is rejected: ${err.message}`);
        } else {
          g.noteError(`ws ${(err as Error).name}`, (err as Error).message);
          g.uncertainEvents += n;
          g.uncertainBatches++;
        }
        continue;
      }
      const t = performance.now();
      g.hist.record(t - t0);
      g.requests++;
      g.acked += n;
      g.lastAck = t;
      g.lastResponse = t;
      const totals = g.totals;
      for (let i = 0; i < n; i++) totals[cust[i]!]! += val[i]!;
    }
  }

  /** Resends and reconnects of the client package, summed over the connections. */
  stats(): { reconnects: number; resentBatches: number } {
    let reconnects = 0;
    let resentBatches = 0;
    for (const s of this.streams) {
      const st = s.stats();
      reconnects += st.reconnects;
      resentBatches += st.resentBatches;
    }
    return { reconnects, resentBatches };
  }

  close(): void {
    if (this.watchdog) clearInterval(this.watchdog);
    this.watchdog = null;
    // Everything acknowledged has been counted; whatever is still in flight (an abort) is rejected as uncertain.
    for (const s of this.streams) void s.close({ timeoutMs: 0 });
  }
}
