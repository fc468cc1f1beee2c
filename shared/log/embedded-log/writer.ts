/**
 * The write side of one partition: group commit. "Acknowledged means durable": an append resolves only after its
 * bytes are written and fdatasync'ed.
 *
 * append() assigns the next offset and queues the record. The writer loop takes every queued record (bounded by the
 * segment size), frames them into ONE buffer, does one positional write and one datasync, and only then resolves the
 * whole group. Appends arriving meanwhile form the next group. If the write or the datasync fails, the group is
 * rejected with ServiceUnavailableError, the segment file is reopened and truncated back to its last durable size, and
 * the offsets of the rejected records are given to later appends (the records queued behind the failed group are
 * renumbered), so offsets stay dense and rejected records are never readable. If that recovery itself fails, queued
 * appends are rejected too and recovery is retried on the next append.
 *
 * A group that does not fit in the active segment starts a new one (rotation), named by the next durable offset.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { ServiceUnavailableError } from '../../errors';
import { errMessage, frameRecords, HEADER_BYTES, type PartitionSegments, segmentName, syncDir } from './segment-files';
import type { LogContext } from './types';

const fsp = fs.promises;

/** Upper bound of one group's write (the group is also bounded by the segment size); bounds the copy per group. */
const MAX_GROUP_BYTES = 16 * 1024 * 1024;

interface Pending {
  value: Buffer;
  offset: number;
  resolve(offset: number): void;
  reject(err: Error): void;
}

export class PartitionWriter {
  /** Write handle of the active segment (null while broken). */
  private fh: FileHandle | null = null;
  /** Next offset to assign. */
  private nextOffset: number;
  private queue: Pending[] = [];
  private writing = false;
  private scheduled = false;
  private broken = false;
  /** Resolves when the writer loop goes idle. */
  private idleWaiters: Array<() => void> = [];

  constructor(
    private readonly log: LogContext,
    private readonly id: number,
    private readonly files: PartitionSegments,
  ) {
    this.nextOffset = files.durableNext;
  }

  /** Opens the active segment for writing. */
  async open(): Promise<void> {
    this.fh = await fsp.open(this.files.active.path, 'r+');
  }

  append(value: Buffer): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ value, offset: this.nextOffset++, resolve, reject });
      this.log.counters.appends++;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.writing || this.scheduled) return;
    this.scheduled = true;
    // Start on the next turn so that appends issued in the same turn share the first group too.
    setImmediate(() => {
      this.scheduled = false;
      this.startWriter();
    });
  }

  private startWriter(): void {
    if (this.writing || this.queue.length === 0) {
      this.notifyIdle();
      return;
    }
    this.writing = true;
    this.writeLoop()
      .catch((err: unknown) => this.failQueued(err)) // defensive: writeLoop handles its own errors
      .finally(() => {
        this.writing = false;
        if (this.queue.length > 0) this.schedule();
        else this.notifyIdle();
      });
  }

  private async writeLoop(): Promise<void> {
    while (this.queue.length > 0) {
      if (this.broken && !(await this.recover())) {
        this.failQueued(new Error('segment file could not be reopened'));
        return;
      }
      const group = this.takeGroup();
      try {
        await this.writeGroup(group);
      } catch (err) {
        this.broken = true;
        this.rejectGroup(group, err);
        // Give the failed offsets to the records queued behind the group so offsets stay dense.
        this.renumberQueue();
        if (!(await this.recover())) {
          this.failQueued(err);
          return;
        }
      }
    }
  }

  /** Takes the queued records that fit into one write (at least one). */
  private takeGroup(): Pending[] {
    // Bounded by the segment size so that a group always fits in a fresh segment (writeGroup rotates first when it
    // does not fit in the active one).
    const limit = Math.min(MAX_GROUP_BYTES, this.log.segmentBytes);
    let bytes = 0;
    let n = 0;
    while (n < this.queue.length) {
      const add = HEADER_BYTES + this.queue[n].value.length;
      if (n > 0 && bytes + add > limit) break;
      bytes += add;
      n++;
    }
    return this.queue.splice(0, n);
  }

  private async writeGroup(group: Pending[]): Promise<void> {
    const files = this.files;
    if (group[0].offset !== files.durableNext) {
      throw new Error(`internal error: group starts at ${group[0].offset}, log end is ${files.durableNext}`);
    }
    let total = 0;
    for (const p of group) total += HEADER_BYTES + p.value.length;
    const seg0 = files.active;
    if (seg0.size > 0 && seg0.size + total > this.log.segmentBytes) await this.rotate();
    const seg = files.active;
    const fh = this.fh;
    if (!fh) throw new Error('no writable segment');
    const buf = frameRecords(group, total);
    const faults = this.log.faults;
    if (faults?.beforeWrite) await faults.beforeWrite(this.id);
    this.log.counters.writes++;
    const started = performance.now();
    let written = 0;
    while (written < total) {
      const bytesWritten = this.log.blockingIo
        ? fs.writeSync(fh.fd, buf, written, total - written, seg.size + written)
        : (await fh.write(buf, written, total - written, seg.size + written)).bytesWritten;
      if (bytesWritten <= 0) throw new Error('short write');
      written += bytesWritten;
    }
    if (faults?.beforeSync) await faults.beforeSync(this.id);
    if (this.log.blockingIo) fs.fdatasyncSync(fh.fd);
    else await fh.datasync();
    this.log.onDurableWrite?.(group.length, (performance.now() - started) / 1000);
    this.log.counters.fsyncs++;
    this.log.counters.bytes += total;
    // Durable: publish, then acknowledge.
    seg.size += total;
    files.durableNext += group.length;
    this.log.counters.acknowledged += group.length;
    for (const p of group) p.resolve(p.offset);
    this.log.notifyDurable(this.id);
  }

  /** Starts a new segment named by the next durable offset. The directory is fsynced so the file survives a crash. */
  private async rotate(): Promise<void> {
    const files = this.files;
    const base = files.durableNext;
    const file = path.join(files.dir, segmentName(base));
    const fh = await fsp.open(file, 'w');
    try {
      await syncDir(files.dir);
      this.log.counters.dirSyncs++;
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fsp.unlink(file).catch(() => undefined);
      throw err;
    }
    const old = this.fh;
    const prev = files.active;
    this.fh = fh;
    prev.sealed = true;
    files.segments.push({ base, path: file, size: 0, sealed: false, deleted: false });
    // The old segment's bytes were datasynced with its last group.
    if (old) await old.close().catch(() => undefined);
  }

  /** Reopens the active segment and truncates it back to its durable size. */
  private async recover(): Promise<boolean> {
    const old = this.fh;
    this.fh = null;
    if (old) await old.close().catch(() => undefined);
    let fh: FileHandle | null = null;
    try {
      fh = await fsp.open(this.files.active.path, 'r+');
      await fh.truncate(this.files.active.size);
      await fh.datasync();
      this.fh = fh;
      this.broken = false;
      return true;
    } catch {
      if (fh) await fh.close().catch(() => undefined);
      this.broken = true;
      return false;
    }
  }

  private rejectGroup(group: Pending[], cause: unknown): void {
    const err = new ServiceUnavailableError(`The event log could not persist the record: ${errMessage(cause)}`);
    this.log.counters.rejected += group.length;
    for (const p of group) p.reject(err);
  }

  private renumberQueue(): void {
    let next = this.files.durableNext;
    for (const p of this.queue) p.offset = next++;
    this.nextOffset = next;
  }

  /** Rejects everything queued (the log cannot take writes right now). */
  private failQueued(cause: unknown): void {
    const queued = this.queue;
    this.queue = [];
    this.nextOffset = this.files.durableNext;
    if (queued.length > 0) this.rejectGroup(queued, cause);
  }

  /** Resolves once nothing is queued or being written. */
  idle(): Promise<void> {
    if (!this.writing && !this.scheduled && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    if (this.writing || this.scheduled || this.queue.length > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Waits for the writes in flight, then closes the segment file. */
  async close(): Promise<void> {
    await this.idle();
    const fh = this.fh;
    this.fh = null;
    if (fh) await fh.close().catch(() => undefined);
  }
}
