/**
 * The read side: a consumer group's cursors over the partitions. Consumers read only up to the durable size of each
 * segment (advanced after datasync), with async chunked reads; returned values are subarray views of the read chunk.
 * Waiting polls are woken by the writer (through the log's notifyDurable). A cursor follows rotations to the next
 * segment and, when its segment was reclaimed under it, moves to the oldest retained one. One process owns the
 * embedded log, so a consumer is assigned every partition, once, and never loses one.
 */
import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import type { FileHandle } from 'node:fs/promises';
import type { AssignmentListener, LogConsumer, LogRecord } from '../../log';
import type { LogPartition } from './partition';
import { HEADER_BYTES, MAX_RECORD_BYTES, type Segment } from './segment-files';

const fsp = fs.promises;

/** What a consumer needs from the log. */
export interface ConsumerHost {
  readonly partitions: number;
  readonly readChunkBytes: number;
  partition(partition: number): LogPartition;
  removeConsumer(c: EmbeddedConsumer): void;
}

class Cursor {
  /** A seek (or the initial position) not yet applied. */
  target: number | null = null;
  initialized = false;
  gen = 0;
  seg: Segment | null = null;
  fh: FileHandle | null = null;
  /** File position of the next byte to read. */
  filePos = 0;
  buf: Buffer = Buffer.alloc(0);
  bufPos = 0;
  /** Offset of the frame at bufPos. */
  offset = 0;
  /** Records below this offset are skipped (scan-forward after a seek). */
  skipBelow = 0;

  async closeFile(): Promise<void> {
    const fh = this.fh;
    this.fh = null;
    if (fh) await fh.close().catch(() => undefined);
  }
}

class CorruptLogError extends Error {}

export class EmbeddedConsumer implements LogConsumer {
  private readonly cursors: Cursor[];
  private closed = false;
  private dirty = false;
  private wake: (() => void) | null = null;
  private pollChain: Promise<unknown> = Promise.resolve();
  private nextStart = 0;

  constructor(
    private readonly log: ConsumerHost,
    readonly group: string,
  ) {
    this.cursors = Array.from({ length: log.partitions }, () => new Cursor());
  }

  assignment(): number[] {
    return Array.from({ length: this.log.partitions }, (_, i) => i);
  }

  /** One process owns the embedded log: every partition is assigned once, and never revoked. */
  async subscribe(listener: AssignmentListener): Promise<void> {
    await listener.assigned(this.assignment());
  }

  committed(partition: number): Promise<number> {
    return this.log.partition(partition).offsets.read(this.group);
  }

  seek(partition: number, offset: number): void {
    checkOffset(offset);
    const cur = this.cursors[this.log.partition(partition).id];
    cur.target = offset;
    cur.initialized = true;
    cur.gen++;
    this.onDurable();
  }

  async commit(partition: number, offset: number): Promise<void> {
    checkOffset(offset);
    if (this.closed) throw new Error('consumer is closed');
    const p = this.log.partition(partition);
    if (offset > p.durableNext) {
      throw new RangeError(`cannot commit offset ${offset} of partition ${partition}: log end is ${p.durableNext}`);
    }
    await p.offsets.commit(this.group, offset);
  }

  poll(maxRecords: number, maxWaitMs: number): Promise<LogRecord[]> {
    const run = this.pollChain.then(() => this.pollOnce(maxRecords, maxWaitMs));
    this.pollChain = run.catch(() => undefined);
    return run;
  }

  /** Called by the log when a partition's durable end advances (and on seek/close). */
  onDurable(): void {
    this.dirty = true;
    const wake = this.wake;
    if (wake) {
      this.wake = null;
      wake();
    }
  }

  private async pollOnce(maxRecords: number, maxWaitMs: number): Promise<LogRecord[]> {
    const max = Math.max(1, Math.floor(maxRecords));
    const deadline = Date.now() + Math.max(0, maxWaitMs);
    const n = this.log.partitions;
    for (;;) {
      if (this.closed) return [];
      this.dirty = false;
      const out: LogRecord[] = [];
      const start = this.nextStart;
      this.nextStart = (start + 1) % n;
      for (let i = 0; i < n && out.length < max; i++) {
        const p = (start + i) % n;
        const recs = await this.readPartition(p, max - out.length);
        if (this.closed) return [];
        for (const r of recs) out.push(r);
      }
      if (out.length > 0) return out;
      if (this.dirty) continue; // something became durable (or a seek happened) during the pass
      const remaining = deadline - Date.now();
      if (remaining <= 0) return [];
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          this.wake = null;
          resolve();
        }, remaining);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Reads up to `max` durable records of one partition from its cursor. */
  private async readPartition(partition: number, max: number): Promise<LogRecord[]> {
    const cur = this.cursors[partition];
    const part = this.log.partition(partition);
    const gen = cur.gen;
    const stale = () => this.closed || cur.gen !== gen;
    if (!cur.initialized) {
      const committed = await part.offsets.read(this.group);
      if (stale()) return [];
      if (!cur.initialized) {
        cur.target = committed;
        cur.initialized = true;
      }
    }
    if (cur.target !== null) {
      const target = cur.target;
      await this.position(cur, part, target);
      if (stale()) return [];
      cur.target = null;
    }
    const out: LogRecord[] = [];
    const chunk = this.log.readChunkBytes;
    for (;;) {
      // Parse complete frames from the buffer.
      let buf = cur.buf;
      let pos = cur.bufPos;
      while (out.length < max && buf.length - pos >= HEADER_BYTES) {
        const len = buf.readUInt32LE(pos);
        if (len === 0 || len > MAX_RECORD_BYTES) {
          throw new CorruptLogError(`corrupt frame at offset ${cur.offset} in ${cur.seg?.path}`);
        }
        const end = pos + HEADER_BYTES + len;
        if (end > buf.length) break;
        if (cur.offset >= cur.skipBelow) {
          const value = buf.subarray(pos + HEADER_BYTES, end);
          if (zlib.crc32(value) !== buf.readUInt32LE(pos + 4)) {
            throw new CorruptLogError(`checksum mismatch at offset ${cur.offset} in ${cur.seg?.path}`);
          }
          out.push({ partition, offset: cur.offset, value });
        }
        pos = end;
        cur.offset++;
      }
      cur.bufPos = pos;
      if (out.length >= max) return out;
      const seg = cur.seg as Segment;
      const leftover = buf.length - pos;
      const available = seg.size - cur.filePos;
      if (available > 0) {
        const needed = leftover >= HEADER_BYTES ? HEADER_BYTES + buf.readUInt32LE(pos) - leftover : HEADER_BYTES;
        const toRead = Math.min(available, Math.max(chunk, needed));
        const next = Buffer.allocUnsafe(leftover + toRead);
        buf.copy(next, 0, pos);
        const fh = cur.fh as FileHandle;
        let got = 0;
        while (got < toRead) {
          const { bytesRead } = await fh.read(next, leftover + got, toRead - got, cur.filePos + got);
          if (stale()) return [];
          if (bytesRead === 0) throw new CorruptLogError(`unexpected end of ${seg.path}`);
          got += bytesRead;
        }
        cur.filePos += got;
        cur.buf = buf = next;
        cur.bufPos = 0;
        continue;
      }
      if (!seg.sealed) return out; // at the durable end
      if (leftover > 0) throw new CorruptLogError(`truncated frame at the end of ${seg.path}`);
      // Follow the rotation to the next segment.
      await this.position(cur, part, Math.max(cur.offset, cur.skipBelow));
      if (stale()) return [];
    }
  }

  /** Points the cursor at the segment holding `offset`, scanning forward from its base to reach `offset`. */
  private async position(cur: Cursor, part: LogPartition, offset: number): Promise<void> {
    await cur.closeFile();
    for (;;) {
      const seg = part.segmentFor(offset);
      const target = Math.max(offset, seg.base); // below the oldest retained segment: its first record
      try {
        cur.fh = await fsp.open(seg.path, 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT' && seg.deleted) continue; // reclaimed meanwhile
        throw err;
      }
      cur.seg = seg;
      cur.filePos = 0;
      cur.buf = Buffer.alloc(0);
      cur.bufPos = 0;
      cur.offset = seg.base;
      cur.skipBelow = target;
      return;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.onDurable();
    await this.pollChain;
    await Promise.all(this.cursors.map((c) => c.closeFile()));
    this.log.removeConsumer(this);
  }
}

function checkOffset(offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset ${offset}`);
}
