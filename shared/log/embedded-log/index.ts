/**
 * The embedded durable event log: the default-mode driver of EventLog (see ../../log.ts). "Acknowledged means
 * durable": an append resolves only after its bytes are written and fdatasync'ed. This module is the entry point (open,
 * producer, consumer, stats); the work is done per partition by the modules beside it:
 *
 *   segment-files.ts   the on-disk format: segment and offset file names, record framing, directory fsyncs
 *   recovery.ts        open(): finds segments and offsets, truncates a torn tail
 *   writer.ts          group commit: one write and one datasync per group of appends; rotation; write failures
 *   offsets.ts         committed offsets of consumer groups, and the segments they allow to be reclaimed
 *   reader.ts          the consumer: cursors reading durable records, woken by the writer
 *   partition.ts       one partition: its segments plus its writer and its offsets
 *
 *   writer-thread.ts   with writerThread: the writers on a thread of their own (writer-host.ts starts it), so that
 *                      acknowledgements never wait for this thread's event loop; the partitions here are then the
 *                      read side's mirror, updated after each durable write
 *
 * Single process only: two processes must not open the same directory (opening it twice in one process throws).
 * Sync fs calls are used only in open().
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MessagePort } from 'node:worker_threads';
import { ServiceUnavailableError } from '../../errors';
import type { DurableWriteObserver, EventLog, LogConsumer, LogProducer } from '../../log';
import { LogPartition } from './partition';
import { type ConsumerHost, EmbeddedConsumer } from './reader';
import { DEFAULT_READ_CHUNK_BYTES, MAX_RECORD_BYTES, mkdirDurableSync, PARTITION_DIR_RE } from './segment-files';
import type { EmbeddedLogFaults, EmbeddedLogOptions, EmbeddedLogStats, LogContext } from './types';
import type { DurableMirror } from './writer-messages';
import { WriterThread } from './writer-host';

export type { EmbeddedLogFaults, EmbeddedLogOptions, EmbeddedLogStats } from './types';
export { MAX_RECORD_BYTES } from './segment-files';

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;

const openDirs = new Set<string>();

class EmbeddedProducer implements LogProducer {
  constructor(private readonly log: EmbeddedLog) {}

  get partitions(): number {
    return this.log.partitions;
  }

  append(partition: number, value: Buffer): Promise<number> {
    return this.log.append(partition, value);
  }

  appendPort(): MessagePort | undefined {
    return this.log.appendPort();
  }

  /** Waits for the appends in flight; the log itself stays open. */
  close(): Promise<void> {
    return this.log.flush();
  }
}

export class EmbeddedLog implements EventLog, LogContext, ConsumerHost {
  readonly partitions: number;
  readonly segmentBytes: number;
  readonly readChunkBytes: number;
  readonly faults: EmbeddedLogFaults | undefined;
  readonly counters: EmbeddedLogStats = {
    appends: 0,
    acknowledged: 0,
    rejected: 0,
    writes: 0,
    fsyncs: 0,
    dirSyncs: 0,
    bytes: 0,
    segmentsDeleted: 0,
  };
  onDurableWrite: DurableWriteObserver | null = null;
  private readonly parts: LogPartition[] = [];
  private readonly consumers = new Set<EmbeddedConsumer>();
  private closing: Promise<void> | null = null;
  /** The writers' thread (writerThread), whose counters stand for the write side's. */
  private thread: WriterThread | null = null;
  private writerCounters: EmbeddedLogStats | null = null;

  private constructor(
    readonly dir: string,
    partitions: number,
    opts: EmbeddedLogOptions,
  ) {
    this.partitions = partitions;
    this.segmentBytes = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.readChunkBytes = opts.readChunkBytes ?? DEFAULT_READ_CHUNK_BYTES;
    this.faults = opts.faults;
  }

  /** Opens (creating if needed) the log in `dir` and recovers every partition. */
  static async open(dir: string, opts: EmbeddedLogOptions = {}): Promise<EmbeddedLog> {
    const root = path.resolve(dir);
    if (opts.segmentBytes !== undefined && !(Number.isSafeInteger(opts.segmentBytes) && opts.segmentBytes > 0)) {
      throw new RangeError(`invalid segmentBytes ${opts.segmentBytes}`);
    }
    if (opts.readChunkBytes !== undefined && !(Number.isSafeInteger(opts.readChunkBytes) && opts.readChunkBytes > 0)) {
      throw new RangeError(`invalid readChunkBytes ${opts.readChunkBytes}`);
    }
    if (openDirs.has(root)) throw new Error(`event log ${root} is already open in this process`);
    mkdirDurableSync(root);
    const existing = fs
      .readdirSync(root)
      .map((n) => PARTITION_DIR_RE.exec(n))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]));
    const onDisk = existing.length > 0 ? Math.max(...existing) + 1 : 0;
    const partitions = opts.partitions ?? (onDisk || 1);
    if (!Number.isSafeInteger(partitions) || partitions < 1) throw new RangeError(`invalid partitions ${partitions}`);
    if (onDisk > 0 && onDisk !== partitions) {
      throw new Error(`event log ${root} has ${onDisk} partitions on disk, ${partitions} requested`);
    }
    const log = new EmbeddedLog(root, partitions, opts);
    for (let i = 0; i < partitions; i++) log.parts.push(new LogPartition(log, i, path.join(root, `p${i}`)));
    if (opts.writerThread && !opts.faults) {
      const init = {
        segmentBytes: log.segmentBytes,
        faultsModule: opts.writerThreadFaults,
        partitions: log.parts.map((p) => ({ id: p.id, dir: p.dir, segments: p.segments.map((s) => ({ ...s })), durableNext: p.durableNext })),
      };
      const onExit = opts.onWriterThreadExit ?? (() => undefined);
      log.thread = await WriterThread.start(
        init,
        (mirror) => log.applyDurable(mirror),
        (counters) => {
          log.writerCounters = counters;
        },
        onExit,
      );
    } else {
      try {
        for (const p of log.parts) await p.writer.open();
      } catch (err) {
        for (const p of log.parts) await p.writer.close();
        throw err;
      }
    }
    openDirs.add(root);
    return log;
  }

  /** A durable write of the writer thread: the partition's mirror moves to the new durable end, then readers wake. */
  private applyDurable(m: DurableMirror): void {
    const p = this.parts[m.partition];
    if (p.active.base !== m.base) {
      // Rotated: the previous segment keeps the size its last write left (nothing is written to it any more).
      p.active.sealed = true;
      p.segments.push({ base: m.base, path: m.path, size: m.size, sealed: false, deleted: false });
    } else p.active.size = m.size;
    p.durableNext = m.durableNext;
    this.writerCounters = m.counters;
    this.onDurableWrite?.(m.records, m.seconds);
    this.notifyDurable(m.partition);
  }

  /** A port another thread can append on without this thread in the path (writerThread only). */
  appendPort(): MessagePort | undefined {
    return this.thread && !this.closing ? this.thread.connect() : undefined;
  }

  producer(): LogProducer {
    return new EmbeddedProducer(this);
  }

  consumer(group: string): LogConsumer {
    if (typeof group !== 'string' || group.length === 0) throw new RangeError('consumer group must be a non-empty string');
    if (this.closing) throw new Error('event log is closed');
    const c = new EmbeddedConsumer(this, group);
    this.consumers.add(c);
    return c;
  }

  append(partition: number, value: Buffer): Promise<number> {
    if (this.closing) return Promise.reject(new ServiceUnavailableError('The event log is closed.'));
    if (!Number.isInteger(partition) || partition < 0 || partition >= this.partitions) {
      return Promise.reject(new RangeError(`invalid partition ${partition}`));
    }
    if (!Buffer.isBuffer(value) || value.length === 0 || value.length > MAX_RECORD_BYTES) {
      return Promise.reject(new RangeError(`a record must be a non-empty Buffer of at most ${MAX_RECORD_BYTES} bytes`));
    }
    if (this.thread) return this.thread.append(partition, value);
    return this.parts[partition].writer.append(value);
  }

  /** Waits until everything appended so far has been written (or rejected). */
  async flush(): Promise<void> {
    if (this.thread) await this.thread.idle();
    await Promise.all(this.parts.map((p) => p.writer.idle()));
  }

  /** The next offset an append to `partition` would get once everything queued is durable (the durable end). */
  endOffset(partition: number): number {
    return this.partition(partition).durableNext;
  }

  observeDurableWrites(observer: DurableWriteObserver): void {
    this.onDurableWrite = observer;
  }

  /** The oldest retained offset of `partition`. */
  startOffset(partition: number): number {
    return this.partition(partition).segments[0].base;
  }

  /** Base offsets of the retained segments of `partition`. */
  segmentBases(partition: number): number[] {
    return this.partition(partition).segments.map((s) => s.base);
  }

  stats(): EmbeddedLogStats {
    const w = this.writerCounters;
    if (!this.thread || !w) return { ...this.counters };
    // The writer thread counts the writes; this thread counts the reclamation and the offset files' directory syncs.
    return { ...w, dirSyncs: w.dirSyncs + this.counters.dirSyncs, segmentsDeleted: this.counters.segmentsDeleted };
  }

  /** @internal */
  partition(partition: number): LogPartition {
    const p = Number.isInteger(partition) ? this.parts[partition] : undefined;
    if (!p) throw new RangeError(`invalid partition ${partition}`);
    return p;
  }

  /** @internal Wakes the consumers waiting for records. */
  notifyDurable(_partition: number): void {
    for (const c of this.consumers) c.onDurable();
  }

  /** @internal */
  removeConsumer(c: EmbeddedConsumer): void {
    this.consumers.delete(c);
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    try {
      await Promise.all([...this.consumers].map((c) => c.close()));
      await this.thread?.close();
      await Promise.all(this.parts.map((p) => p.close()));
    } finally {
      openDirs.delete(this.dir);
    }
  }
}
