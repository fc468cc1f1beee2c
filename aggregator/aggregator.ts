/**
 * The aggregator: consumes the event log, deduplicates by identifier, applies adjustments and writes raw events,
 * per-minute rollups and cancellations to the analytics store.
 *
 * Exactly-once without distributed transactions (invariants 2, 3, 5, 6):
 *  - Each flush does one INSERT per table: raw events, then cancellations, then rollups. Every rollup row carries its
 *    log partition and the offset the flush reached (a marker row per partition is always written), and an INSERT is
 *    atomic, so "counted in the rollups" and "watermark advanced" are one event.
 *  - Raw events and cancellations may be written twice by a crash between inserts; every read of them collapses
 *    duplicates by seq (see api/summaries.ts), so that is harmless.
 *  - The dedup index is snapshotted with the offset it covers (a copy taken when a flush's buffer is sealed, written
 *    once that flush has landed, so a snapshot never covers events the store does not have); the log is committed
 *    (and reclaimed) only below min(watermark, snapshot).
 *  - One flush is in flight while the next batch is decoded and deduplicated; flushes land strictly in order.
 *  - Several aggregators (distributed mode) split the partitions through the log's consumer group; a partition lease in
 *    the shared state store fences a previous owner that is still flushing (see leases.ts). Leases are renewed on a
 *    timer (so a flush stuck on a store outage keeps them) and checked again right before the rollup insert. Any
 *    change of assignment, and any lease found lost, resets this aggregator to a fresh recovery of the partitions the
 *    log assigned to it: recovery is correct from any point, so it is also the simplest correct answer to a
 *    rebalance. A partition whose lease another owner still holds waits, unprocessed, until it can be taken. On start, the index is loaded, the watermark read back from the store, and the log
 *    replayed from the snapshot: records below the watermark only rebuild the index, later ones are processed anew.
 */
import path from 'node:path';
import Piscina from 'piscina';
import type { EventLog, LogConsumer, LogRecord } from '../shared/log';
import type { AnalyticsStore } from '../shared/analytics-store';
import { tsvField } from '../shared/analytics-store';
import type { StateStore } from '../shared/state-store';
import type { MeterInfo, MeterRegistry } from '../shared/meters';
import { CANCEL_COLUMNS, RAW_COLUMNS, ROLLUP_COLUMNS } from '../shared/analytics/schema';
import { fingerprintKey } from './dedup-index';
import { CorruptSnapshotError, PartitionIndex, type WorkerTask } from './partition-index';
import type { SnapshotStore } from './snapshots';
import type { PartitionLeases } from './leases';
import { EMIT, rawRowValue, VALID, type CancelItem, type ChunkResult, type ChunkTask } from './worker';
import { ErrorReports } from './error-reports';
import { recordCoreEvent } from '../shared/core-events';
import { formatScaled } from '../shared/decimal';
import { log } from '../shared/logger';
import { metrics } from '../shared/metrics';

export interface AggregatorOptions {
  log: EventLog;
  analytics: AnalyticsStore;
  state: StateStore;
  meters: MeterRegistry;
  /** Where dedup snapshots are kept. */
  snapshots: SnapshotStore;
  /** Who may write which partition (fencing between aggregators of one consumer group). */
  leases: PartitionLeases;
  threads: number;
  /** Nice value of the worker threads (see shared/thread-priority.ts); 0 or absent: the process's own. */
  threadNice?: number;
  flushEvents: number;
  flushIntervalMs: number;
  dedupWindowMs: number;
  /** Identifiers kept in memory (split among the partitions held); the rest are in runs on disk. */
  dedupMemoryIdentifiers: number;
  snapshotIntervalMs: number;
  consumerGroup?: string;
  /** How often leases are renewed while idle. */
  leaseRenewMs?: number;
}

interface PartitionState {
  index: PartitionIndex;
  /** Log offset the last dedup snapshot covers. */
  snapshotOffset: number;
  /** Log offset below which everything is in the store (the rollup watermark). */
  storedOffset: number;
  /** Next offset to process. */
  nextOffset: number;
  lastSnapshotMs: number;
}

interface RollupAcc {
  account: string;
  meterId: string;
  customer: string;
  minute: number;
  partition: number;
  sum: bigint;
  count: number;
}

class FlushBuffer {
  rawParts: Uint8Array[] = [];
  events = 0;
  rollups = new Map<string, RollupAcc>();
  cancelLines: string[] = [];
  /** Partitions with records to be written, and the offset their records reached. */
  reached = new Map<number, number>();
  errors = new ErrorReports();
  firstAtMs = 0;
  /** When the oldest event to be written was received (the flush's freshness is measured from it). */
  oldestReceivedMs = Infinity;

  get hasWork(): boolean {
    return this.reached.size > 0;
  }
}

/** Bounded so one iteration never holds the event loop (shared with the gateway in embedded mode) for long. */
const POLL_RECORDS = 1000;
const CHUNK_RECORDS = 100;
/** A poll with fewer records than this lingers (see lingered()). */
const LINGER_BELOW_RECORDS = CHUNK_RECORDS;
const LINGER_MS = 20;

const DEDUP_HITS = metrics.dedupHits.child();
const EVENTS_STORED = metrics.eventsStored.child();
const CANCELLATIONS = metrics.cancellations.child();
const FLUSH_SECONDS = metrics.flushSeconds.child();
const FRESHNESS = metrics.freshness.child();
const ROWS = {
  raw: metrics.flushRows.child('meter_events'),
  cancellations: metrics.flushRows.child('meter_cancellations'),
  rollups: metrics.flushRows.child('meter_rollups_1m'),
};

export class Aggregator {
  private readonly consumer: LogConsumer;
  private readonly pool: Piscina;
  private readonly partitions = new Map<number, PartitionState>();
  private buffer = new FlushBuffer();
  private meterList: MeterInfo[] = [];
  private stopping = false;
  private loop: Promise<void> | null = null;
  /** The flush in flight, if any. */
  private inflight: Promise<void> | null = null;
  /** A flush gave up (only while stopping): nothing after it may be written, or its events would be skipped. */
  private abandoned = false;
  /** Serializes the processing loop with assignment changes (they arrive from the log client at any time). */
  private lock: Promise<void> = Promise.resolve();
  /** Partitions the log assigned to this aggregator; those in `partitions` are the ones it holds the lease of. */
  private owned: number[] = [];
  private lastAcquireMs = 0;
  /** A lease was found lost: the loop resets at its next turn. */
  private leaseLost = false;
  private renewTimer: NodeJS.Timeout | null = null;
  /** Runs a seal or filter task of the identifier index on the pool (see partition-index.ts). */
  private readonly runTask: WorkerTask = (task, transfer) => this.pool.run(task, { transferList: transfer });
  /** Counters for health and benchmarks. */
  readonly stats = { events: 0, stored: 0, duplicates: 0, invalid: 0, flushes: 0, lastFlushMs: 0, insertRetries: 0 };

  constructor(private readonly o: AggregatorOptions) {
    this.consumer = o.log.consumer(o.consumerGroup ?? 'aggregator');
    this.pool = new Piscina({
      filename: path.join(__dirname, 'worker.js'),
      minThreads: o.threads,
      maxThreads: o.threads,
      idleTimeout: 60_000,
      workerData: { threadNice: o.threadNice ?? 0 },
    });
    this.meterList = o.meters.all();
    o.meters.onChange(() => {
      this.meterList = o.meters.all();
    });
  }

  async start(): Promise<void> {
    await this.consumer.subscribe({
      assigned: (partitions) =>
        this.exclusive(async () => {
          this.owned = [...new Set([...this.owned, ...partitions])].sort((a, b) => a - b);
          await this.reset();
        }),
      revoked: (partitions) =>
        this.exclusive(async () => {
          this.owned = this.owned.filter((p) => !partitions.includes(p));
          await this.reset();
          await this.o.leases.release(partitions);
        }),
    });
    this.loop = this.run();
  }

  /** Runs `fn` while no other loop iteration or assignment change runs. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn);
    this.lock = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /**
   * Forgets everything not yet stored (it stays in the log) and recovers the owned partitions afresh: waits for the
   * flush in flight, takes the leases, loads snapshots, reads the watermarks and positions the log.
   */
  private async reset(): Promise<void> {
    if (this.inflight) await this.inflight;
    this.abandoned = false;
    this.leaseLost = false;
    this.buffer = new FlushBuffer();
    this.partitions.clear();
    await this.acquireWaiting();
  }

  /** Takes the leases it can of the assigned partitions not yet held, and recovers those partitions. */
  private async acquireWaiting(): Promise<void> {
    this.lastAcquireMs = Date.now();
    const waiting = this.owned.filter((p) => !this.partitions.has(p));
    const taken: number[] = [];
    for (const p of waiting) if (await this.o.leases.tryAcquire(p)) taken.push(p);
    if (taken.length === 0) return;
    const marks = await this.o.analytics.query<{ partition: number; wm: string | number }>(
      `SELECT partition, max(wm_offset) AS wm FROM meter_rollups_1m GROUP BY partition`,
    );
    const stored = new Map(marks.map((m) => [Number(m.partition), Number(m.wm)]));
    for (const p of taken) {
      let snap: { index: PartitionIndex; offset: number };
      try {
        snap = await this.recoverIndex(p);
      } catch (err) {
        // The snapshot or a run it names cannot be read for now (a store outage): the partition waits, unprocessed,
        // and the loop tries again; starting without them would count again what they deduplicate.
        log.warn('could not read the dedup snapshot or its runs; retrying', { partition: p, err: String(err) });
        continue;
      }
      const storedOffset = stored.get(p) ?? 0;
      const snapshotOffset = snap.offset;
      const st: PartitionState = {
        index: snap.index,
        snapshotOffset,
        storedOffset,
        nextOffset: snapshotOffset,
        lastSnapshotMs: Date.now(),
      };
      this.partitions.set(p, st);
      this.consumer.seek(p, snapshotOffset);
      log.info('aggregator partition recovered', { partition: p, snapshotOffset, storedOffset, identifiers: st.index.size, runs: st.index.runCount });
    }
  }

  /** A partition's dedup index from its last snapshot; rejects while the snapshot store cannot be read. */
  private async recoverIndex(p: number): Promise<{ index: PartitionIndex; offset: number }> {
    const bytes = await this.o.snapshots.load(p);
    if (!bytes && (await this.consumer.committed(p)) > 0) {
      log.warn('dedup snapshot missing; identifiers received before the retained log are no longer deduplicated', { partition: p });
    }
    try {
      return await PartitionIndex.load(p, this.o.dedupWindowMs, this.o.snapshots, bytes, this.runTask);
    } catch (err) {
      if (!(err instanceof CorruptSnapshotError)) throw err;
      log.error('dedup snapshot unreadable; rebuilding the index from the retained log', { partition: p, err: err.message });
      return PartitionIndex.load(p, this.o.dedupWindowMs, this.o.snapshots, null, this.runTask);
    }
  }

  /** Keeps the held leases alive, outside the processing lock: a flush stuck on a store outage must not lose them. */
  private async renewLeases(): Promise<void> {
    const held = [...this.partitions.keys()];
    if (held.length === 0) return;
    try {
      const lost = await this.o.leases.renew(held);
      if (lost.length > 0) {
        log.warn('partition lease lost; recovering', { lost });
        this.leaseLost = true;
      }
    } catch (err) {
      log.warn('could not renew partition leases; retrying', { err: String(err) });
    }
  }

  private async run(): Promise<void> {
    const renewEvery = this.o.leaseRenewMs ?? 3000;
    this.renewTimer = setInterval(() => void this.renewLeases(), renewEvery);
    while (!this.stopping) {
      try {
        await this.exclusive(async () => {
          // A flush lost its lease, or a renewal found one lost: what was read since must not be written.
          if (this.abandoned || this.leaseLost) await this.reset();
          else if (this.partitions.size < this.owned.length && Date.now() - this.lastAcquireMs >= 500) await this.acquireWaiting();
          let records = await this.consumer.poll(POLL_RECORDS, Math.max(0, this.msUntilFlushDue()));
          records = await this.lingered(records);
          if (records.length > 0) await this.process(records);
          this.maintainIndexes();
          if (this.buffer.hasWork && (this.buffer.events >= this.o.flushEvents || Date.now() >= this.buffer.firstAtMs + this.o.flushIntervalMs)) {
            await this.startFlush();
          }
        });
      } catch (err) {
        if (this.stopping) break;
        log.error('aggregator loop failed; recovering', { err: String((err as Error)?.stack ?? err) });
        await sleep(500);
        try {
          await this.exclusive(() => this.reset());
        } catch (e) {
          log.error('aggregator recovery failed; retrying', { err: String(e) });
        }
      }
    }
    if (this.renewTimer) clearInterval(this.renewTimer);
  }

  /** Between two batches: installs sealed runs and starts seals of full hot tables (see partition-index.ts). */
  private maintainIndexes(): void {
    const hotLimit = Math.max(100, Math.floor(this.o.dedupMemoryIdentifiers / Math.max(1, this.partitions.size)));
    const nowMs = Date.now();
    for (const st of this.partitions.values()) st.index.maintain(hotLimit, this.runTask, nowMs);
  }

  /** How long until the buffer must be flushed (negative: overdue); a flush interval when it is empty. */
  private msUntilFlushDue(): number {
    return this.buffer.hasWork ? this.buffer.firstAtMs + this.o.flushIntervalMs - Date.now() : this.o.flushIntervalMs;
  }

  /**
   * A poll that found only a few records (a light load) waits briefly for more before they go to a worker: each
   * chunk costs a round trip to the worker whatever its size, and at light load records arrive one request at a time.
   * The wait is bounded by LINGER_MS and by the flush deadline, so freshness moves by at most LINGER_MS.
   */
  private async lingered(records: LogRecord[]): Promise<LogRecord[]> {
    if (records.length === 0 || records.length >= LINGER_BELOW_RECORDS || this.stopping) return records;
    const linger = Math.min(LINGER_MS, this.msUntilFlushDue());
    if (linger <= 0) return records;
    await sleep(linger);
    const more = await this.consumer.poll(POLL_RECORDS - records.length, 0);
    return more.length > 0 ? records.concat(more) : records;
  }

  private async process(records: LogRecord[]): Promise<void> {
    const slices: LogRecord[][] = [];
    let i = 0;
    while (i < records.length) {
      const partition = records[i].partition;
      let j = i;
      while (j < records.length && j - i < CHUNK_RECORDS && records[j].partition === partition) j++;
      if (this.partitions.has(partition)) slices.push(records.slice(i, j));
      i = j;
    }
    // Decoding runs in parallel; dedup decisions are applied strictly in log order.
    const results = await Promise.all(slices.map((slice) => this.decode(slice)));
    // Another process may have created (or reactivated) a meter a moment ago: check before reporting its events.
    if (this.o.meters.shared && results.some(namesUnknownMeter) && (await this.o.meters.reload())) {
      for (let k = 0; k < results.length; k++) if (namesUnknownMeter(results[k])) results[k] = await this.decode(slices[k]);
    }
    for (const r of results) this.apply(r);
  }

  private decode(slice: LogRecord[]): Promise<ChunkResult> {
    const ends = new Uint32Array(slice.length);
    let size = 0;
    for (let k = 0; k < slice.length; k++) {
      size += slice[k].value.length;
      ends[k] = size;
    }
    const data = new Uint8Array(size);
    let at = 0;
    for (const r of slice) {
      data.set(r.value, at);
      at += r.value.length;
    }
    const st = this.partitions.get(slice[0].partition);
    const task: ChunkTask = {
      partition: slice[0].partition,
      firstOffset: slice[0].offset,
      data,
      ends,
      meters: this.meterList,
      emitFromOffset: st?.storedOffset ?? 0,
      runs: st?.index.runSet(),
      legacy: st?.index.legacyActive(),
    };
    return this.pool.run(task, { transferList: [data.buffer as ArrayBuffer, ends.buffer as ArrayBuffer] }) as Promise<ChunkResult>;
  }

  private apply(r: ChunkResult): void {
    const st = this.partitions.get(r.partition);
    if (!st) return; // revoked while the chunk was decoded: its new owner processes it
    const b = this.buffer;
    const windowMs = this.o.dedupWindowMs;
    const nowMs = Date.now();
    let ci = 0;
    let dropped: number[] | null = null;
    let emitted = false;
    let emittedEvents = 0;
    let oldestReceivedMs = Infinity;
    for (let i = 0; i < r.n; i++) {
      while (ci < r.cancels.length && r.cancels[ci].position === i) this.applyCancel(st, r.cancels[ci++], r.partition);
      const f = r.flags[i];
      if ((f & EMIT) !== 0) {
        // EMIT is only ever set together with VALID.
        emitted = true;
        emittedEvents++;
        if (r.receivedMs[i] < oldestReceivedMs) oldestReceivedMs = r.receivedMs[i];
      }
      if ((f & VALID) === 0) continue;
      const hi = r.hi[i];
      const lo = r.lo[i];
      const recv = r.receivedMs[i];
      let prior = st.index.receivedAt(hi, lo);
      if (prior === 0 && r.legacyHi.length > 0) prior = st.index.receivedAt(r.legacyHi[i], r.legacyLo[i]);
      if (prior === 0 && r.runRecv.length > 0) prior = r.runRecv[i];
      if (prior !== 0 && recv - prior < windowMs) {
        if ((f & EMIT) !== 0) {
          (dropped ??= []).push(i);
          this.stats.duplicates++;
          DEDUP_HITS.value++;
        }
        continue;
      }
      st.index.set(hi, lo, recv, r.seq[i]);
      if (st.index.pending.size > 0) {
        const key = fingerprintKey(hi, lo);
        const pending = st.index.pending.get(key);
        if (pending && recv - pending.receivedMs <= windowMs) {
          st.index.pending.delete(key);
          if ((f & EMIT) !== 0) this.addCancellation(pending.account, pending.eventName, pending.identifier, r.seq[i], pending.receivedMs, r.partition);
        }
      }
    }
    while (ci < r.cancels.length) {
      const c = r.cancels[ci++];
      if (c.emit) emitted = true;
      this.applyCancel(st, c, r.partition);
    }
    st.nextOffset = r.nextOffset;
    if (!emitted && r.nextOffset <= st.storedOffset) return;

    if (!b.hasWork) b.firstAtMs = nowMs;
    b.reached.set(r.partition, r.nextOffset);
    if (oldestReceivedMs < b.oldestReceivedMs) b.oldestReceivedMs = oldestReceivedMs;
    for (const e of r.errors) {
      b.errors.add(e, nowMs);
      metrics.validationErrors.child(e.code).inc();
    }
    this.stats.invalid += r.errors.length;

    // Raw rows: the whole chunk, minus the rows of dropped duplicates.
    const rows = r.rows;
    if (!dropped) {
      if (rows.length) b.rawParts.push(rows);
    } else {
      let from = 0;
      const keep = (start: number, end: number) => {
        if (end <= start) return;
        b.rawParts.push(rows.subarray(start, end));
      };
      for (const i of dropped) {
        keep(from, r.rowStart[i]);
        from = r.rowStart[i + 1];
      }
      keep(from, rows.length);
    }

    // Rollups: merge the chunk's partial sums, then take the dropped duplicates back out.
    const accs: RollupAcc[] = new Array(r.slots.length);
    for (let k = 0; k < r.slots.length; k++) {
      const sp = r.slots[k];
      const key = r.partition + '\u0000' + sp.key;
      let acc = b.rollups.get(key);
      if (!acc) {
        acc = { account: sp.account, meterId: sp.meterId, customer: sp.customer, minute: sp.minute, partition: r.partition, sum: 0n, count: 0 };
        b.rollups.set(key, acc);
      }
      acc.sum += BigInt(sp.sum);
      acc.count += sp.count;
      accs[k] = acc;
    }
    let kept = emittedEvents;
    if (dropped) {
      kept -= dropped.length;
      for (const i of dropped) {
        const slot = r.slot[i];
        if (slot < 0) continue;
        const acc = accs[slot];
        acc.count--;
        acc.sum -= rawRowValue(rows, r.rowStart[i]);
      }
    }
    b.events += kept;
    this.stats.events += kept;
  }

  private applyCancel(st: PartitionState, c: CancelItem, partition: number): void {
    // In memory (the newest), else on disk: the worker looked the identifier up there.
    const prior =
      st.index.get(c.hi, c.lo) ??
      (c.legacy ? st.index.get(c.legacy[0], c.legacy[1]) : null) ??
      (c.runRecv !== 0 ? { receivedMs: c.runRecv, seq: c.runSeq } : null);
    if (prior) {
      // Stripe: an event can be cancelled within 24 hours of its receipt.
      if (c.receivedMs - prior.receivedMs <= this.o.dedupWindowMs) {
        if (c.emit) this.addCancellation(c.account, c.eventName, c.identifier, prior.seq, c.receivedMs, partition);
      }
      return;
    }
    // The event has not arrived yet: the cancellation waits for it (for as long as the window lasts).
    st.index.pending.set(fingerprintKey(c.hi, c.lo), {
      hi: c.hi,
      lo: c.lo,
      receivedMs: c.receivedMs,
      account: c.account,
      eventName: c.eventName,
      identifier: c.identifier,
    });
  }

  private addCancellation(account: string, eventName: string, identifier: string, seq: number, cancelReceivedMs: number, partition: number): void {
    const meter = this.o.meters.byEventName(account, eventName);
    if (!meter) return;
    this.buffer.cancelLines.push(`${tsvField(account)}\t${meter.id}\t${tsvField(identifier)}\t${seq}\t${cancelReceivedMs}\t${partition}\n`);
  }

  /** Seals the buffer and starts writing it once the previous flush has landed. */
  private async startFlush(): Promise<void> {
    if (this.inflight) await this.inflight;
    if (this.abandoned) return;
    const b = this.buffer;
    this.buffer = new FlushBuffer();
    const nowMs = Date.now();
    // The dedup index now covers exactly the records of the sealed buffer: serialize it if a snapshot is due (the bytes
    // are the frozen copy, so the index is copied once, not cloned and then serialized, while requests wait).
    const snapshots = new Map<number, Snapshot>();
    for (const p of b.reached.keys()) {
      const st = this.partitions.get(p);
      if (!st) continue;
      if (nowMs - st.lastSnapshotMs >= this.o.snapshotIntervalMs) {
        snapshots.set(p, { ...st.index.serialize(st.nextOffset), offset: st.nextOffset });
        st.lastSnapshotMs = nowMs;
      }
    }
    // flush() only rejects while stopping (an insert is retried until it lands otherwise); stop() reports that.
    this.inflight = this.flush(b, snapshots)
      .catch((err) => {
        this.abandoned = true;
        if (err instanceof LeaseLost) log.warn('flush abandoned: partition lease lost', { partitions: err.partitions });
        else log.warn('flush abandoned while stopping; the log still holds its events', { err: String(err) });
      })
      .finally(() => {
        this.inflight = null;
      });
  }

  private async flush(b: FlushBuffer, snapshots: Map<number, Snapshot>): Promise<void> {
    const started = Date.now();
    const rollupLines: string[] = [];
    for (const acc of b.rollups.values()) {
      if (acc.count === 0 && acc.sum === 0n) continue;
      rollupLines.push(
        `${tsvField(acc.account)}\t${acc.meterId}\t${tsvField(acc.customer)}\t${acc.minute}\t${formatScaled(acc.sum)}\t${acc.count}\t${acc.partition}\t${b.reached.get(acc.partition)}\n`,
      );
    }
    // The marker rows: the watermark advances even when a flush has nothing to roll up.
    for (const [p, offset] of b.reached) rollupLines.push(`\t\t\t0\t0\t0\t${p}\t${offset}\n`);

    await this.retrying('raw events', () => this.o.analytics.insertRowBinary('meter_events', RAW_COLUMNS, b.rawParts));
    if (b.cancelLines.length) {
      await this.retrying('cancellations', () => this.o.analytics.insertTsv('meter_cancellations', CANCEL_COLUMNS, Buffer.from(b.cancelLines.join(''))));
    }
    let failedBefore = false;
    await this.retrying('rollups', async () => {
      // The insert that counts: only while every partition in it is still ours (see leases.ts).
      const lost = await this.o.leases.renew([...b.reached.keys()]);
      if (lost.length) throw new LeaseLost(lost);
      // After a failure the insert may have landed all the same (a timeout): the watermark says whether it did.
      if (failedBefore && (await this.rollupsLanded(b.reached))) return;
      failedBefore = true;
      await this.o.analytics.insertTsv('meter_rollups_1m', ROLLUP_COLUMNS, Buffer.from(rollupLines.join('')));
    });

    this.stats.stored += b.events;
    const nowMs = Date.now();
    EVENTS_STORED.inc(b.events);
    CANCELLATIONS.inc(b.cancelLines.length);
    ROWS.raw.inc(b.events);
    ROWS.cancellations.inc(b.cancelLines.length);
    ROWS.rollups.inc(rollupLines.length);
    FLUSH_SECONDS.observe((nowMs - started) / 1000);
    if (b.oldestReceivedMs !== Infinity) FRESHNESS.observe(Math.max(0, nowMs - b.oldestReceivedMs) / 1000);
    for (const [p, offset] of b.reached) {
      const st = this.partitions.get(p);
      if (!st) continue;
      st.storedOffset = offset;
      // The events are stored; what follows only bounds replay and reclaims the log, so a failure is not fatal.
      try {
        const snap = snapshots.get(p);
        if (snap) {
          await this.o.snapshots.save(p, snap.bytes);
          st.snapshotOffset = snap.offset;
          await st.index.snapshotSaved(snap.serial);
        }
        await this.consumer.commit(p, Math.min(st.storedOffset, st.snapshotOffset));
      } catch (err) {
        log.warn('could not snapshot or commit the log offset; will retry on the next flush', { partition: p, err: String(err) });
      }
    }
    if (!b.errors.empty) {
      for (const { account, event } of b.errors.drain(nowMs)) {
        try {
          await recordCoreEvent(this.o.state, account, event, nowMs);
        } catch (err) {
          log.warn('could not record a meter error report', { err: String(err) });
        }
      }
    }
    this.stats.flushes++;
    this.stats.lastFlushMs = Date.now() - started;
    log.debug('aggregator flush', { events: b.events, rollups: rollupLines.length, ms: this.stats.lastFlushMs });
  }

  private async snapshot(p: number, st: PartitionState): Promise<void> {
    const { bytes, serial } = st.index.serialize(st.nextOffset);
    await this.o.snapshots.save(p, bytes);
    st.snapshotOffset = st.nextOffset;
    await st.index.snapshotSaved(serial);
    st.lastSnapshotMs = Date.now();
  }

  private async rollupsLanded(reached: Map<number, number>): Promise<boolean> {
    const rows = await this.o.analytics.query<{ partition: number; wm: string | number }>(
      `SELECT partition, max(wm_offset) AS wm FROM meter_rollups_1m GROUP BY partition`,
    );
    const stored = new Map(rows.map((r) => [Number(r.partition), Number(r.wm)]));
    for (const [p, offset] of reached) if ((stored.get(p) ?? 0) < offset) return false;
    return true;
  }

  /** Invariant 8: a store outage pauses the aggregator (the log keeps the events); it never drops a flush. */
  private async retrying(what: string, fn: () => Promise<void>): Promise<void> {
    let delay = 100;
    for (;;) {
      try {
        await fn();
        return;
      } catch (err) {
        if (this.stopping || err instanceof LeaseLost) throw err;
        this.stats.insertRetries++;
        log.warn(`analytics store insert failed (${what}); retrying`, { err: String(err), delayMs: delay });
        await sleep(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  /** What /healthz shows: counters, and per owned partition the next offset to read and the stored watermark. */
  health(): Record<string, unknown> {
    const partitions: Record<string, { next: number; stored: number }> = {};
    for (const [p, st] of this.partitions) partitions[p] = { next: st.nextOffset, stored: st.storedOffset };
    return { ...this.stats, partitions };
  }

  /** Publishes, at each scrape, the owned partitions' offsets and lag (log end − stored watermark, where the log tells its end). */
  trackMetrics(): void {
    metrics.consumerLag.collector = async () => {
      const lag = metrics.consumerLag;
      lag.clear();
      metrics.consumerOffset.clear();
      metrics.storedOffset.clear();
      metrics.dedupIdentifiers.clear();
      metrics.dedupBytes.clear();
      metrics.dedupRuns.clear();
      for (const [p, st] of this.partitions) {
        metrics.consumerOffset.child(String(p)).set(st.nextOffset);
        metrics.storedOffset.child(String(p)).set(st.storedOffset);
        metrics.dedupIdentifiers.child(String(p)).set(st.index.size);
        metrics.dedupBytes.child(String(p)).set(st.index.bytes);
        metrics.dedupRuns.child(String(p)).set(st.index.runCount);
        if (!this.o.log.endOffset) continue;
        try {
          lag.child(String(p)).set(Math.max(0, (await this.o.log.endOffset(p)) - st.storedOffset));
        } catch (err) {
          log.debug('log end offset unavailable', { partition: p, err: String(err) });
        }
      }
    };
  }

  /** Flushes what is buffered and snapshots the dedup index, so a clean restart replays nothing. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.loop;
    try {
      // While stopping, a failed insert is not retried: the events stay in the log and are replayed on the next start.
      if (this.inflight) await this.inflight;
      if (this.abandoned) return;
      if (this.buffer.hasWork) await this.flush(this.buffer, new Map());
      for (const [p, st] of this.partitions) {
        if (st.nextOffset !== st.storedOffset) continue;
        await this.snapshot(p, st);
        await this.consumer.commit(p, Math.min(st.storedOffset, st.snapshotOffset));
      }
    } catch (err) {
      log.warn('aggregator stopped with unflushed events; they will be replayed from the log', { err: String(err) });
    } finally {
      await this.consumer.close();
      await this.pool.destroy();
      await this.o.snapshots.close().catch((err: unknown) => log.warn('could not clear the dedup run cache', { err: String(err) }));
      // A clean hand-over: the next owner need not wait for the leases to expire.
      if (!this.abandoned) await this.o.leases.release([...this.partitions.keys()]).catch(() => undefined);
    }
  }
}

function namesUnknownMeter(r: ChunkResult): boolean {
  return r.errors.some((e) => e.code === 'no_meter' || e.code === 'archived_meter');
}

/** A dedup snapshot taken when a flush's buffer was sealed, saved once the flush has landed. */
interface Snapshot {
  bytes: Buffer;
  offset: number;
  /** See PartitionIndex.snapshotSaved. */
  serial: number;
}

class LeaseLost extends Error {
  constructor(readonly partitions: number[]) {
    super(`partition lease lost: ${partitions.join(', ')}`);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
