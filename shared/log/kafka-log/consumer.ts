/**
 * The consumer: a kafkajs consumer group (autoCommit off, fromBeginning for a new group) adapted from push to pull.
 * eachBatch (eachBatchAutoResolve off) copies records into a bounded queue, awaiting (and heartbeating) while the
 * queue is full or while the partition's assigned() has not resolved, and resolves offsets as it goes (that is what
 * advances kafkajs's fetch position); poll() takes from the queue. The assignment is learnt from GROUP_JOIN; the
 * listener is told revoked(partitions lost) then assigned(partitions gained), serially, in the order of the joins.
 * Records of a partition are queued only after its assigned() resolved; queued records of revoked partitions are
 * dropped before revoked() is called; a seek drops the partition's queued records and anything below the seek that
 * an in-flight batch still carries. Each rejoin makes kafkajs restart retained partitions at their COMMITTED offset;
 * the driver re-seeks them to where it was, so a rebalance neither replays nor skips records of a kept partition.
 *
 * Rebalance caveat (eager protocol, as kafkajs implements it): kafkajs does not let the application act between
 * "a rebalance started" and "rejoined", so revoked() runs AFTER the rejoin completed, i.e. when the partition may already
 * belong to another member. Records handed out by poll() before the rebalance may still be in processing by the old
 * owner while the new owner reads from the committed offset. poll() hands out nothing while a rebalance detected by
 * kafkajs is in progress (or after a kafkajs crash, which leaves the group, until it has rejoined): that narrows the
 * window but does not close it. Downstream writes must tolerate it.
 */
import { type Consumer, type EachBatchPayload, Kafka } from 'kafkajs';
import { ServiceUnavailableError } from '../../errors';
import type { AssignmentListener, LogConsumer, LogRecord } from '../../log';
import { log } from '../../logger';
import { checkOffset, errMessage, type KafkaLogContext, sleep, withTimeout } from './common';
import { kafkaConfig } from './settings';

/** How often a waiting eachBatch wakes up to heartbeat (kafkajs only sends one per heartbeatInterval). */
const WAIT_SLICE_MS = 500;

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
  settled: boolean;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const d: Deferred = {
    promise,
    settled: false,
    resolve: () => {
      if (d.settled) return;
      d.settled = true;
      resolve();
    },
    reject: (err) => {
      if (d.settled) return;
      d.settled = true;
      reject(err);
    },
  };
  promise.catch(() => undefined);
  return d;
}

export class KafkaLogConsumer implements LogConsumer {
  private readonly kafka: Kafka;
  private readonly kc: Consumer;
  private listener: AssignmentListener | null = null;
  /** The assignment of the latest group join. */
  private readonly target = new Set<number>();
  /** Partitions whose assigned() has resolved: their records may be queued and polled. */
  private readonly ready = new Set<number>();
  /** Per partition: the next offset to accept into the queue (after a seek, or after the last record queued). */
  private readonly next = new Map<number, number>();
  private queue: LogRecord[] = [];
  private head = 0;
  private queuedBytes = 0;
  private pollWaiters = new Set<() => void>();
  private batchWaiters = new Set<() => void>();
  /** Assignment changes are handed to the listener one at a time, in order. */
  private changes: Promise<void> = Promise.resolve();
  private firstAssignment: Deferred = deferred();
  private firstSeen = false;
  /** subscribe() has returned: a failing assigned() has nobody to report to any more, so it is retried. */
  private subscribeReturned = false;
  /**
   * kafkajs reported a rebalance, or crashed (it leaves the group when it does), and has not rejoined yet: the
   * partitions may be someone else's by now, so hand nothing out until the next join says which are still ours.
   */
  private suspended = false;
  /** kafkajs is a running member of the group (a join completed and it has not crashed or stopped since). */
  private inGroup = false;
  private closed = false;
  private closing: Promise<void> | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  private readonly removers: Array<() => void> = [];

  constructor(
    private readonly log: KafkaLogContext,
    readonly group: string,
  ) {
    const o = log.opts;
    // A client of its own: kafkajs caches committed offsets per client and group, which must not be shared between
    // two members of one group in the same process.
    this.kafka = new Kafka(kafkaConfig(o, '-consumer'));
    this.kc = this.kafka.consumer({
      groupId: group,
      sessionTimeout: o.sessionTimeoutMs,
      rebalanceTimeout: 60_000,
      heartbeatInterval: o.heartbeatIntervalMs,
      // Bounds how long a fetch waits for data, hence how soon an idle member notices a rebalance.
      maxWaitTimeInMs: 1000,
      maxBytesPerPartition: 4 * 1024 * 1024,
      maxBytes: 16 * 1024 * 1024,
      allowAutoTopicCreation: false,
      retry: { retries: 5, initialRetryTime: 300, maxRetryTime: 5000 },
    });
  }

  assignment(): number[] {
    return [...this.target].sort((a, b) => a - b);
  }

  async subscribe(listener: AssignmentListener): Promise<void> {
    if (this.listener) throw new Error('subscribe() may be called once');
    if (this.closed) throw new Error('consumer is closed');
    this.listener = listener;
    const ev = this.kc.events;
    this.removers.push(
      this.kc.on(ev.GROUP_JOIN, (e) => this.onGroupJoin(e.payload.memberAssignment)),
      this.kc.on(ev.REBALANCING, () => {
        this.suspended = true;
      }),
      this.kc.on(ev.CRASH, (e) => this.onCrash(e.payload.error, e.payload.restart)),
      this.kc.on(ev.STOP, () => {
        this.inGroup = false;
      }),
    );
    try {
      await this.kc.connect();
      await this.kc.subscribe({ topics: [this.log.topic], fromBeginning: true });
      await this.start();
    } catch (err) {
      await this.close();
      throw err;
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.log.opts.subscribeTimeoutMs);
    });
    try {
      const r = await Promise.race([this.firstAssignment.promise.then(() => 'ok' as const), timedOut]);
      if (r === 'timeout') {
        log.warn('kafka: no group assignment yet; the consumer keeps trying in the background', {
          group: this.group,
          waitedMs: this.log.opts.subscribeTimeoutMs,
        });
      }
    } catch (err) {
      // The listener failed on the first assignment: leave the group so the partitions go elsewhere.
      await this.close();
      throw err;
    } finally {
      this.subscribeReturned = true;
      if (timer) clearTimeout(timer);
    }
  }

  private start(): Promise<void> {
    return this.kc.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 1,
      eachBatch: (payload) => this.eachBatch(payload),
    });
  }

  private onCrash(error: Error, restart: boolean): void {
    this.inGroup = false;
    this.suspended = true;
    if (this.closed) return;
    log.warn('kafka: consumer crashed', { group: this.group, err: errMessage(error), restart });
    if (restart || this.restartTimer) return;
    // kafkajs gives up on errors it deems non-retriable; a long-running aggregator must not, so start it again.
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.closed) return;
      this.start().catch((err: unknown) => log.error('kafka: consumer restart failed', { group: this.group, err: errMessage(err) }));
    }, 5000);
  }

  /** GROUP_JOIN: kafkajs does not await listeners, so everything that must precede fetching happens synchronously. */
  private onGroupJoin(memberAssignment: Record<string, number[]>): void {
    try {
      if (this.closed) return;
      this.log.counters.groupJoins++;
      this.inGroup = true;
      this.suspended = false;
      const now = new Set(memberAssignment[this.log.topic] ?? []);
      const revoked = [...this.target].filter((p) => !now.has(p)).sort((a, b) => a - b);
      const added = [...now].filter((p) => !this.target.has(p)).sort((a, b) => a - b);
      for (const p of revoked) {
        this.target.delete(p);
        this.ready.delete(p);
        this.next.delete(p);
      }
      if (revoked.length > 0) this.dropQueued(new Set(revoked));
      for (const p of added) this.target.add(p);
      // kafkajs restarts every partition at its committed offset after a join; kept partitions continue where they were.
      for (const p of this.target) {
        const n = this.next.get(p);
        if (n !== undefined && !added.includes(p)) this.kafkaSeek(p, n);
      }
      const first = !this.firstSeen;
      this.firstSeen = true;
      this.changes = this.changes.then(() => this.applyChange(revoked, added, first));
      this.wakeAll();
    } catch (err) {
      log.error('kafka: cannot handle a group assignment', { group: this.group, err: errMessage(err) });
    }
  }

  private async applyChange(revoked: number[], added: number[], first: boolean): Promise<void> {
    const listener = this.listener;
    if (this.closed || !listener) return;
    if (revoked.length > 0) {
      try {
        await listener.revoked(revoked);
      } catch (err) {
        log.error('kafka: revoked() failed', { group: this.group, partitions: revoked, err: errMessage(err) });
      }
    }
    if (added.length > 0) {
      let partitions = added;
      for (let attempt = 0; ; attempt++) {
        try {
          await listener.assigned(partitions);
          for (const p of partitions) if (this.target.has(p)) this.ready.add(p);
          break;
        } catch (err) {
          if (first && !this.subscribeReturned) {
            this.firstAssignment.reject(err);
            return;
          }
          // Nobody to report to: keep the partitions undeliverable and try again.
          const delay = Math.min(10_000, 500 * 2 ** attempt);
          log.error('kafka: assigned() failed; retrying', { group: this.group, partitions, err: errMessage(err), delayMs: delay });
          await sleep(delay);
          if (this.closed) return;
          partitions = partitions.filter((p) => this.target.has(p));
          if (partitions.length === 0) break;
        }
      }
    }
    if (first) this.firstAssignment.resolve();
    this.wakeAll();
  }

  private kafkaSeek(partition: number, offset: number): void {
    try {
      this.kc.seek({ topic: this.log.topic, partition, offset: String(offset) });
    } catch {
      // kafkajs is not running (between a crash and its restart): the next join re-seeks kept partitions to next[p].
    }
  }

  private async eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale } = payload;
    const p = batch.partition;
    if (batch.topic !== this.log.topic) return;
    const msgs = batch.messages;
    let i = 0;
    while (i < msgs.length) {
      for (;;) {
        // Not ours any more, or fetched before a seek (kafkajs re-fetches from the seek offset): drop the rest.
        if (this.closed || !isRunning() || !this.target.has(p) || isStale()) return;
        if (this.ready.has(p) && !this.suspended && this.hasRoom()) break;
        await this.waitBatch(WAIT_SLICE_MS);
        if (this.closed || !isRunning()) return;
        await heartbeat(); // throws when the group rebalances; kafkajs then rejoins
      }
      let lastOffset: string | null = null;
      let pushed = 0;
      while (i < msgs.length && (pushed === 0 || this.hasRoom())) {
        const m = msgs[i++];
        lastOffset = m.offset;
        const offset = Number(m.offset);
        const expected = this.next.get(p);
        if (expected !== undefined && offset < expected) {
          this.log.counters.skipped++; // below a seek, or already queued
          continue;
        }
        this.next.set(p, offset + 1);
        if (!m.value) continue; // never written by this driver
        this.queue.push({ partition: p, offset, value: m.value });
        this.queuedBytes += m.value.length;
        pushed++;
      }
      if (lastOffset !== null) resolveOffset(lastOffset);
      if (pushed > 0) this.wakePollers();
    }
  }

  private hasRoom(): boolean {
    const o = this.log.opts;
    return this.queue.length - this.head < o.consumerQueueRecords && this.queuedBytes < o.consumerQueueBytes;
  }

  private waitBatch(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.batchWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.batchWaiters.add(done);
    });
  }

  private wakePollers(): void {
    for (const w of [...this.pollWaiters]) w();
  }

  private wakeAll(): void {
    this.wakePollers();
    for (const w of [...this.batchWaiters]) w();
  }

  private dropQueued(partitions: Set<number>): void {
    const kept: LogRecord[] = [];
    let bytes = 0;
    for (let i = this.head; i < this.queue.length; i++) {
      const r = this.queue[i];
      if (partitions.has(r.partition)) continue;
      kept.push(r);
      bytes += r.value.length;
    }
    this.queue = kept;
    this.head = 0;
    this.queuedBytes = bytes;
    for (const w of [...this.batchWaiters]) w();
  }

  async committed(partition: number): Promise<number> {
    this.checkPartition(partition);
    const res = await this.log.admin.fetchOffsets({ groupId: this.group, topics: [this.log.topic] });
    const entry = res.find((t) => t.topic === this.log.topic)?.partitions.find((x) => x.partition === partition);
    const offset = entry ? Number(entry.offset) : -1;
    return Number.isSafeInteger(offset) && offset > 0 ? offset : 0;
  }

  seek(partition: number, offset: number): void {
    checkOffset(offset);
    this.checkPartition(partition);
    if (this.closed || !this.target.has(partition)) return; // not ours: its owner positions it
    this.next.set(partition, offset);
    this.dropQueued(new Set([partition]));
    this.kafkaSeek(partition, offset);
    this.wakeAll();
  }

  poll(maxRecords: number, maxWaitMs: number): Promise<LogRecord[]> {
    const max = Math.max(1, Math.floor(maxRecords));
    const deadline = Date.now() + Math.max(0, maxWaitMs);
    return (async () => {
      for (;;) {
        if (this.closed) return [];
        if (!this.suspended && this.queue.length > this.head) return this.take(max);
        const remaining = deadline - Date.now();
        if (remaining <= 0) return [];
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            this.pollWaiters.delete(done);
            resolve();
          };
          const timer = setTimeout(done, remaining);
          this.pollWaiters.add(done);
        });
      }
    })();
  }

  private take(max: number): LogRecord[] {
    const end = Math.min(this.queue.length, this.head + max);
    const out: LogRecord[] = [];
    for (let i = this.head; i < end; i++) {
      const r = this.queue[i];
      this.queuedBytes -= r.value.length;
      if (this.ready.has(r.partition)) out.push(r);
    }
    this.head = end;
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    this.log.counters.polled += out.length;
    for (const w of [...this.batchWaiters]) w();
    return out;
  }

  async commit(partition: number, offset: number): Promise<void> {
    checkOffset(offset);
    this.checkPartition(partition);
    if (this.closed) throw new Error('consumer is closed');
    if (!this.target.has(partition)) throw new Error(`partition ${partition} is not assigned to this consumer`);
    // kafkajs silently skips a commit while its runner is down; say so instead.
    if (!this.inGroup) throw new ServiceUnavailableError('The consumer is not in its group right now; retry the commit.');
    await this.kc.commitOffsets([{ topic: this.log.topic, partition, offset: String(offset) }]);
  }

  private checkPartition(partition: number): void {
    if (!Number.isInteger(partition) || partition < 0 || partition >= this.log.partitions) throw new RangeError(`invalid partition ${partition}`);
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    this.firstAssignment.resolve();
    this.wakeAll();
    try {
      // Leaves the group, so the other members take the partitions over without waiting for the session timeout.
      await withTimeout(this.kc.disconnect(), 15_000, 'kafka consumer disconnect');
    } catch (err) {
      log.warn('kafka: consumer did not disconnect cleanly', { group: this.group, err: errMessage(err) });
    }
    for (const remove of this.removers) remove();
    this.inGroup = false;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    this.target.clear();
    this.ready.clear();
    this.log.removeConsumer(this);
  }
}
