/**
 * The producer (group commit): append() only queues the record. One send loop takes everything queued (across
 * partitions, bounded by the topic's batch limit per partition and by maxSendBytes/maxSendRecords) and issues ONE
 * produce request through an idempotent kafkajs producer (acks = all, one request in flight). Appends arriving
 * meanwhile form the next send. Each append resolves with baseOffset(partition) + its index among that partition's
 * records of the send, and only after Kafka acknowledged.
 *
 * A send is bounded by sendTimeoutMs (connect + produce + kafkajs retries): if it fails or times out, every append of
 * the send AND everything queued behind it is rejected with ServiceUnavailableError, and the kafkajs producer is thrown
 * away; the next send connects a new one (new producer id). The new id matters: kafkajs rolls a failed request's
 * sequence numbers back, so a request that was in fact written before it "failed" would make the NEXT send reuse its
 * sequence numbers, and the broker would acknowledge the new records as duplicates of the old ones (dropping them). A
 * rejected append may have been written all the same (ambiguous); clients retry with the same identifiers and the
 * aggregator deduplicates. Pending bytes/records (queued + in flight) are bounded: beyond the bound append() rejects
 * at once with ServiceUnavailableError (back-pressure, no unbounded buffering).
 */
import type { MessagePort } from 'node:worker_threads';
import { CompressionTypes, type Producer, type RecordMetadata } from 'kafkajs';
import { ServiceUnavailableError } from '../../errors';
import type { LogProducer } from '../../log';
import { log } from '../../logger';
import { errMessage, type ProducerContext, RECORD_OVERHEAD, withTimeout } from './common';

const UNAVAILABLE = 'The event log is unavailable; retry the request.';
const OVERLOADED = 'The event log is overloaded; retry the request.';

interface PendingAppend {
  partition: number;
  value: Buffer;
  resolve(offset: number): void;
  reject(err: Error): void;
}

export class KafkaProducer implements LogProducer {
  private queue: PendingAppend[] = [];
  /** Values pending, queued or in flight. */
  private pendingBytes = 0;
  private pendingRecords = 0;
  private running: Promise<void> | null = null;
  private scheduled = false;
  private closed = false;
  private kp: Producer | null = null;
  private connecting: Promise<Producer> | null = null;
  /** Bumped when the kafkajs producer is thrown away, so a connect that finishes late is discarded. */
  private generation = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly log: ProducerContext) {}

  /**
   * A port on the log's producer thread, where another thread's appends go straight to a producer of their own
   * (producer-thread.ts) rather than through this one's event loop; undefined without that thread.
   */
  appendPort(): MessagePort | undefined {
    return this.log.appendPort?.();
  }

  get partitions(): number {
    return this.log.partitions;
  }

  append(partition: number, value: Buffer): Promise<number> {
    const refused = this.closedError() ?? this.invalid(partition, value) ?? this.overloaded(1, value.length);
    if (refused) return Promise.reject(refused);
    return this.enqueue(partition, value);
  }

  /**
   * Appends the records of one request or batch: all of them, or, if one is invalid or the pending bound cannot take
   * them all, none (a refusal never leaves part of a request queued to become durable). Resolves once every one is
   * durable; rejects with the first failure once every one has settled.
   */
  async appendAll(records: Array<[partition: number, value: Buffer]>): Promise<void> {
    const closed = this.closedError();
    if (closed) throw closed;
    let bytes = 0;
    for (const [partition, value] of records) {
      const invalid = this.invalid(partition, value);
      if (invalid) throw invalid;
      bytes += value.length;
    }
    const overloaded = this.overloaded(records.length, bytes);
    if (overloaded) throw overloaded;
    const settled = await Promise.allSettled(records.map(([partition, value]) => this.enqueue(partition, value)));
    for (const r of settled) if (r.status === 'rejected') throw r.reason;
  }

  private invalid(partition: number, value: Buffer): RangeError | null {
    if (!Number.isInteger(partition) || partition < 0 || partition >= this.log.partitions) return new RangeError(`invalid partition ${partition}`);
    if (!Buffer.isBuffer(value) || value.length === 0 || value.length > this.log.maxRecordBytes) {
      return new RangeError(`a record must be a non-empty Buffer of at most ${this.log.maxRecordBytes} bytes`);
    }
    return null;
  }

  private closedError(): ServiceUnavailableError | null {
    return this.closed ? new ServiceUnavailableError('The event log is closed.') : null;
  }

  /** The refusal of `records` more records of `bytes` beyond the pending bound, or null if they fit. */
  private overloaded(records: number, bytes: number): ServiceUnavailableError | null {
    if (this.pendingRecords + records > this.log.opts.maxPendingRecords || this.pendingBytes + bytes > this.log.opts.maxPendingBytes) {
      this.log.counters.overloaded += records;
      return new ServiceUnavailableError(OVERLOADED);
    }
    return null;
  }

  private enqueue(partition: number, value: Buffer): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ partition, value, resolve, reject });
      this.pendingBytes += value.length;
      this.pendingRecords++;
      this.log.counters.appends++;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.running || this.scheduled) return;
    this.scheduled = true;
    // Start on the next turn so that appends issued in the same turn share the first send.
    setImmediate(() => {
      this.scheduled = false;
      if (this.running || this.queue.length === 0) {
        this.notifyIdle();
        return;
      }
      this.running = this.sendLoop()
        .catch((err: unknown) => this.failQueued(err)) // defensive: sendLoop handles its own errors
        .finally(() => {
          this.running = null;
          if (this.queue.length > 0) this.schedule();
          else this.notifyIdle();
        });
    });
  }

  private async sendLoop(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.takeBatch();
      await this.send(batch);
    }
  }

  /**
   * Takes what goes into one send, in queue order: everything, bounded per partition by the topic's batch limit (one
   * record batch per partition per request) and overall by maxSendBytes/maxSendRecords. Per-partition order is kept:
   * once a partition is full, its later records wait for the next send.
   */
  private takeBatch(): PendingAppend[] {
    const perPartitionLimit = this.log.maxBatchBytes;
    const { maxSendBytes, maxSendRecords } = this.log.opts;
    const taken: PendingAppend[] = [];
    const rest: PendingAppend[] = [];
    const used = new Map<number, number>();
    const full = new Set<number>();
    let total = 0;
    let stopped = false;
    for (const a of this.queue) {
      if (stopped || full.has(a.partition)) {
        rest.push(a);
        continue;
      }
      const size = a.value.length + RECORD_OVERHEAD;
      const mine = used.get(a.partition) ?? 0;
      if (taken.length > 0 && (taken.length >= maxSendRecords || total + size > maxSendBytes)) {
        stopped = true;
        rest.push(a);
        continue;
      }
      if (mine > 0 && mine + size > perPartitionLimit) {
        full.add(a.partition);
        rest.push(a);
        continue;
      }
      used.set(a.partition, mine + size);
      total += size;
      taken.push(a);
    }
    this.queue = rest;
    return taken;
  }

  private async send(batch: PendingAppend[]): Promise<void> {
    const c = this.log.counters;
    c.sends++;
    if (batch.length > c.maxSendRecords) c.maxSendRecords = batch.length;
    let offsets: number[];
    let seconds: number;
    const started = performance.now();
    try {
      const res = await withTimeout(this.produce(batch), this.log.opts.sendTimeoutMs, 'kafka send');
      offsets = this.offsetsOf(batch, res);
      seconds = (performance.now() - started) / 1000;
    } catch (err) {
      c.sendFailures++;
      log.warn('kafka: send failed; rejecting its appends and those queued behind it', {
        records: batch.length,
        queued: this.queue.length,
        err: errMessage(err),
      });
      // Throw the producer away: see the header (sequence numbers of a possibly written request).
      this.resetProducer();
      this.rejectAll(batch, err);
      this.failQueued(err);
      return;
    }
    let bytes = 0;
    for (let i = 0; i < batch.length; i++) bytes += batch[i].value.length;
    this.pendingBytes -= bytes;
    this.pendingRecords -= batch.length;
    c.acknowledged += batch.length;
    c.bytes += bytes;
    // The observer sees the counters with this write in them (the producer thread sends both together).
    this.log.onDurableWrite?.(batch.length, seconds);
    for (let i = 0; i < batch.length; i++) batch[i].resolve(offsets[i]);
  }

  private async produce(batch: PendingAppend[]): Promise<RecordMetadata[]> {
    const kp = await this.connected();
    return kp.send({
      topic: this.log.topic,
      acks: -1,
      timeout: this.log.opts.ackTimeoutMs,
      compression: CompressionTypes.None,
      messages: batch.map((a) => ({ partition: a.partition, value: a.value })),
    });
  }

  /** Offset of each record: its partition's base offset plus its index among that partition's records. */
  private offsetsOf(batch: PendingAppend[], res: RecordMetadata[]): number[] {
    const base = new Map<number, number>();
    for (const r of res) {
      if (r.topicName !== this.log.topic) continue;
      if (r.errorCode) throw new Error(`produce to partition ${r.partition} failed with error code ${r.errorCode}`);
      const b = Number(r.baseOffset);
      if (!Number.isSafeInteger(b) || b < 0) throw new Error(`produce response without a base offset for partition ${r.partition}`);
      base.set(r.partition, b);
    }
    const next = new Map<number, number>();
    return batch.map((a) => {
      const b = base.get(a.partition);
      if (b === undefined) throw new Error(`produce response lacks partition ${a.partition}`);
      const i = next.get(a.partition) ?? 0;
      next.set(a.partition, i + 1);
      return b + i;
    });
  }

  private connected(): Promise<Producer> {
    if (this.kp) return Promise.resolve(this.kp);
    if (this.connecting) return this.connecting;
    const gen = this.generation;
    const kp = this.log.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      // Explicit partitions only.
      createPartitioner:
        () =>
        ({ message }) =>
          message.partition as number,
      retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000, factor: 0.2, multiplier: 2 },
    });
    const p = (async () => {
      try {
        await kp.connect();
      } catch (err) {
        void kp.disconnect().catch(() => undefined);
        throw err;
      }
      if (gen !== this.generation || this.closed) {
        void kp.disconnect().catch(() => undefined);
        throw new Error('producer was reset while connecting');
      }
      this.log.counters.producerConnects++;
      this.kp = kp;
      return kp;
    })();
    this.connecting = p;
    void p.then(
      () => {
        if (this.connecting === p) this.connecting = null;
      },
      () => {
        if (this.connecting === p) this.connecting = null;
      },
    );
    return p;
  }

  private resetProducer(): void {
    this.generation++;
    this.connecting = null;
    const old = this.kp;
    this.kp = null;
    if (old) void old.disconnect().catch(() => undefined);
  }

  private rejectAll(list: PendingAppend[], cause: unknown): void {
    if (list.length === 0) return;
    const err = new ServiceUnavailableError(UNAVAILABLE);
    (err as Error & { cause?: unknown }).cause = cause;
    let bytes = 0;
    for (const a of list) {
      bytes += a.value.length;
      a.reject(err);
    }
    this.pendingBytes -= bytes;
    this.pendingRecords -= list.length;
    this.log.counters.rejected += list.length;
  }

  private failQueued(cause: unknown): void {
    const queued = this.queue;
    this.queue = [];
    this.rejectAll(queued, cause);
  }

  private idle(): Promise<void> {
    if (!this.running && !this.scheduled && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    if (this.running || this.scheduled || this.queue.length > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Waits for the appends in flight (they resolve or reject), then disconnects. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.idle();
      this.generation++;
      const kp = this.kp;
      this.kp = null;
      if (kp) await withTimeout(kp.disconnect(), 10_000, 'kafka producer disconnect').catch(() => undefined);
    }
    this.log.removeProducer(this);
  }
}
