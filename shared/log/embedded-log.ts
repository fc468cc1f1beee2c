/**
 * The embedded durable event log: the default-mode driver of EventLog (see ../log.ts). "Acknowledged means durable":
 * an append resolves only after its bytes are written and fdatasync'ed.
 *
 * Layout
 *   <dir>/p<partition>/<20-digit base offset>.seg       segment files; the name is the offset of the first record
 *   <dir>/p<partition>/consumer-<group>.offset          committed offset of a consumer group (decimal text)
 *
 * Record framing (little-endian): u32 payload length, u32 crc32(payload), payload. Empty payloads are not allowed, so a
 * zero-filled region (a typical crash artefact) never parses as records. Offsets are dense record numbers per
 * partition starting at 0; the records of segment S have offsets S.base .. nextSegment.base - 1.
 *
 * Writing (one writer loop per partition, group commit): append() assigns the next offset and queues the record. The
 * writer loop takes every queued record (bounded by the segment size), frames them into ONE buffer, does one positional
 * write and one datasync, and only then resolves the whole group. Appends arriving meanwhile form the next group. If
 * the write or the datasync fails, the group is rejected with ServiceUnavailableError, the segment file is reopened and
 * truncated back to its last durable size, and the offsets of the rejected records are given to later appends (the
 * records queued behind the failed group are renumbered), so offsets stay dense and rejected records are never
 * readable. If that recovery itself fails, queued appends are rejected too and recovery is retried on the next append.
 *
 * Reading: consumers read only up to the durable size of each segment (advanced after datasync), with async chunked
 * reads; returned values are subarray views of the read chunk. Waiting polls are woken by the writer loop.
 *
 * Recovery (open): the last segment of each partition is scanned and a torn or corrupt tail is truncated; earlier
 * segments are trusted (they were fsynced before the next segment was created, and the directory was fsynced after
 * creating each segment).
 *
 * Retention: commit() persists the group's offset atomically (tmp file, fsync, rename, fsync dir) and then deletes
 * segments whose records are all below the LOWEST committed offset among all groups that have ever committed in that
 * partition (so one group cannot reclaim records another group still needs). The active segment is never deleted.
 * A group that never committed does not hold back reclamation; a cursor positioned below the oldest retained segment
 * moves to the oldest retained record.
 *
 * Single process only: two processes must not open the same directory (opening it twice in one process throws).
 * Sync fs calls are used only in open().
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import type { FileHandle } from 'node:fs/promises';
import { ServiceUnavailableError } from '../errors';
import type { AssignmentListener, EventLog, LogConsumer, LogProducer, LogRecord } from '../log';

const fsp = fs.promises;

const HEADER_BYTES = 8;
const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const DEFAULT_READ_CHUNK_BYTES = 1024 * 1024;
/** Upper bound of one record's payload; also the sanity bound of a length field when scanning. */
export const MAX_RECORD_BYTES = 256 * 1024 * 1024;
/** Upper bound of one group's write (the group is also bounded by the segment size); bounds the copy per group. */
const MAX_GROUP_BYTES = 16 * 1024 * 1024;
const SEGMENT_RE = /^(\d{20})\.seg$/;
const OFFSET_FILE_RE = /^consumer-(.+)\.offset$/;
const PARTITION_DIR_RE = /^p(\d+)$/;

export interface EmbeddedLogFaults {
  /** Awaited before each group write; throwing (or rejecting) makes the write fail. Test-only. */
  beforeWrite?(partition: number): void | Promise<void>;
  /** Awaited after the write and before the datasync; throwing (or rejecting) makes the datasync fail. Test-only. */
  beforeSync?(partition: number): void | Promise<void>;
}

export interface EmbeddedLogOptions {
  /** Number of partitions (default: the number already on disk, else 1). Must match what is on disk. */
  partitions?: number;
  /** Segment rotation threshold in bytes (default 64 MiB). */
  segmentBytes?: number;
  /** Size of consumer reads (default 1 MiB). */
  readChunkBytes?: number;
  /** Fault injection for tests. */
  faults?: EmbeddedLogFaults;
}

export interface EmbeddedLogStats {
  /** Appends accepted into a queue. */
  appends: number;
  /** Appends resolved (durable). */
  acknowledged: number;
  /** Appends rejected. */
  rejected: number;
  /** Group writes issued (one per group). */
  writes: number;
  /** Data syncs of segment files (one per successful group write). */
  fsyncs: number;
  /** Fsyncs of directories (segment creation, offset commits). */
  dirSyncs: number;
  /** Bytes written durably, framing included. */
  bytes: number;
  /** Segment files deleted by reclamation. */
  segmentsDeleted: number;
}

interface Segment {
  base: number;
  path: string;
  /** Durable byte length: only bytes below it are readable. Final once sealed. */
  size: number;
  /** A later segment exists; this one will not grow any more. */
  sealed: boolean;
  deleted: boolean;
}

interface Pending {
  value: Buffer;
  offset: number;
  resolve(offset: number): void;
  reject(err: Error): void;
}

function segmentName(base: number): string {
  return `${String(base).padStart(20, '0')}.seg`;
}

function offsetFileName(group: string): string {
  return `consumer-${encodeURIComponent(group)}.offset`;
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const openDirs = new Set<string>();

/** fsync a directory so entries created/renamed in it survive a crash. */
async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function syncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function mkdirDurableSync(dir: string): void {
  if (fs.existsSync(dir)) return;
  const parent = path.dirname(dir);
  if (parent !== dir) mkdirDurableSync(parent);
  fs.mkdirSync(dir);
  syncDirSync(parent);
}

/**
 * Scans a segment file, validating every frame; returns the number of valid records and the byte length of the valid
 * prefix. Synchronous: used only in open().
 */
function scanSegmentSync(file: string): { records: number; validBytes: number; fileBytes: number } {
  const fd = fs.openSync(file, 'r');
  try {
    const fileBytes = fs.fstatSync(fd).size;
    let pos = 0;
    let records = 0;
    let buf = Buffer.allocUnsafe(DEFAULT_READ_CHUNK_BYTES);
    let bufStart = 0; // file position of buf[0]
    let bufLen = 0;
    const ensure = (from: number, n: number): boolean => {
      if (from + n > fileBytes) return false;
      if (from >= bufStart && from + n <= bufStart + bufLen) return true;
      if (buf.length < n) buf = Buffer.allocUnsafe(n);
      const want = Math.min(buf.length, fileBytes - from);
      let got = 0;
      while (got < want) {
        const r = fs.readSync(fd, buf, got, want - got, from + got);
        if (r === 0) break;
        got += r;
      }
      bufStart = from;
      bufLen = got;
      return got >= n;
    };
    for (;;) {
      if (!ensure(pos, HEADER_BYTES)) break;
      const len = buf.readUInt32LE(pos - bufStart);
      const crc = buf.readUInt32LE(pos - bufStart + 4);
      if (len === 0 || len > MAX_RECORD_BYTES) break;
      if (!ensure(pos, HEADER_BYTES + len)) break;
      const at = pos - bufStart + HEADER_BYTES;
      if (zlib.crc32(buf.subarray(at, at + len)) !== crc) break;
      pos += HEADER_BYTES + len;
      records++;
    }
    return { records, validBytes: pos, fileBytes };
  } finally {
    fs.closeSync(fd);
  }
}

class LogPartition {
  readonly dir: string;
  /** Retained segments, ascending by base; the last one is the active segment. */
  segments: Segment[] = [];
  /** Write handle of the active segment (null while broken). */
  fh: FileHandle | null = null;
  /** Next offset to assign. */
  nextOffset = 0;
  /** Offsets below this are durable and readable. */
  durableNext = 0;
  queue: Pending[] = [];
  writing = false;
  scheduled = false;
  broken = false;
  /** Resolves when the writer loop goes idle. */
  private idleWaiters: Array<() => void> = [];
  /** Committed offsets of every group that has committed here. */
  readonly groupOffsets = new Map<string, number>();
  /** Serializes offset commits per group. */
  readonly commitChains = new Map<string, Promise<void>>();

  constructor(
    readonly log: EmbeddedLog,
    readonly id: number,
    dir: string,
  ) {
    this.dir = dir;
  }

  get active(): Segment {
    return this.segments[this.segments.length - 1];
  }

  /** Synchronous recovery at open(). */
  openSync(): void {
    mkdirDurableSync(this.dir);
    const names = fs.readdirSync(this.dir);
    for (const name of names) {
      const seg = SEGMENT_RE.exec(name);
      if (seg) {
        this.segments.push({ base: Number(seg[1]), path: path.join(this.dir, name), size: 0, sealed: true, deleted: false });
        continue;
      }
      if (name.startsWith('consumer-') && name.includes('.offset.tmp')) {
        fs.unlinkSync(path.join(this.dir, name)); // an interrupted commit; the previous offset file is intact
        continue;
      }
      const off = OFFSET_FILE_RE.exec(name);
      if (off) {
        let group: string;
        try {
          group = decodeURIComponent(off[1]);
        } catch {
          continue; // not a file this driver wrote
        }
        const value = Number(fs.readFileSync(path.join(this.dir, name), 'utf8').trim());
        if (Number.isSafeInteger(value) && value >= 0) this.groupOffsets.set(group, value);
      }
    }
    this.segments.sort((a, b) => a.base - b.base);
    if (this.segments.length === 0) {
      // A fresh partition. (Never reuse offsets a consumer has already committed past.)
      const base = Math.max(0, ...this.groupOffsets.values());
      const file = path.join(this.dir, segmentName(base));
      fs.closeSync(fs.openSync(file, 'w'));
      syncDirSync(this.dir);
      this.segments.push({ base, path: file, size: 0, sealed: false, deleted: false });
    }
    for (let i = 0; i < this.segments.length - 1; i++) this.segments[i].size = fs.statSync(this.segments[i].path).size;
    const last = this.active;
    last.sealed = false;
    const scan = scanSegmentSync(last.path);
    if (scan.validBytes < scan.fileBytes) {
      // Torn or corrupt tail (crash mid-write): drop it so the next offset is right.
      const fd = fs.openSync(last.path, 'r+');
      try {
        fs.ftruncateSync(fd, scan.validBytes);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    last.size = scan.validBytes;
    this.nextOffset = this.durableNext = last.base + scan.records;
  }

  async openWriter(): Promise<void> {
    this.fh = await fsp.open(this.active.path, 'r+');
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
    if (group[0].offset !== this.durableNext) {
      throw new Error(`internal error: group starts at ${group[0].offset}, log end is ${this.durableNext}`);
    }
    let total = 0;
    for (const p of group) total += HEADER_BYTES + p.value.length;
    const seg0 = this.active;
    if (seg0.size > 0 && seg0.size + total > this.log.segmentBytes) await this.rotate();
    const seg = this.active;
    const fh = this.fh;
    if (!fh) throw new Error('no writable segment');
    const buf = Buffer.allocUnsafe(total);
    let at = 0;
    for (const p of group) {
      buf.writeUInt32LE(p.value.length, at);
      buf.writeUInt32LE(zlib.crc32(p.value), at + 4);
      p.value.copy(buf, at + HEADER_BYTES);
      at += HEADER_BYTES + p.value.length;
    }
    const faults = this.log.faults;
    if (faults?.beforeWrite) await faults.beforeWrite(this.id);
    this.log.counters.writes++;
    let written = 0;
    while (written < total) {
      const { bytesWritten } = await fh.write(buf, written, total - written, seg.size + written);
      if (bytesWritten <= 0) throw new Error('short write');
      written += bytesWritten;
    }
    if (faults?.beforeSync) await faults.beforeSync(this.id);
    await fh.datasync();
    this.log.counters.fsyncs++;
    this.log.counters.bytes += total;
    // Durable: publish, then acknowledge.
    seg.size += total;
    this.durableNext += group.length;
    this.log.counters.acknowledged += group.length;
    for (const p of group) p.resolve(p.offset);
    this.log.notifyDurable(this.id);
  }

  /** Starts a new segment named by the next durable offset. The directory is fsynced so the file survives a crash. */
  private async rotate(): Promise<void> {
    const base = this.durableNext;
    const file = path.join(this.dir, segmentName(base));
    const fh = await fsp.open(file, 'w');
    try {
      await syncDir(this.dir);
      this.log.counters.dirSyncs++;
    } catch (err) {
      await fh.close().catch(() => undefined);
      await fsp.unlink(file).catch(() => undefined);
      throw err;
    }
    const old = this.fh;
    const prev = this.active;
    this.fh = fh;
    prev.sealed = true;
    this.segments.push({ base, path: file, size: 0, sealed: false, deleted: false });
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
      fh = await fsp.open(this.active.path, 'r+');
      await fh.truncate(this.active.size);
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
    let next = this.durableNext;
    for (const p of this.queue) p.offset = next++;
    this.nextOffset = next;
  }

  /** Rejects everything queued (the log cannot take writes right now). */
  failQueued(cause: unknown): void {
    const queued = this.queue;
    this.queue = [];
    this.nextOffset = this.durableNext;
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

  /** The retained segment that holds `offset` (greatest base <= offset), or the oldest one if offset is below it. */
  segmentFor(offset: number): Segment {
    const segs = this.segments;
    let lo = 0;
    let hi = segs.length - 1;
    if (offset <= segs[0].base) return segs[0];
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (segs[mid].base <= offset) lo = mid;
      else hi = mid - 1;
    }
    return segs[lo];
  }

  async commitOffset(group: string, offset: number): Promise<void> {
    const prev = this.commitChains.get(group) ?? Promise.resolve();
    const next = prev.then(() => this.writeOffsetFile(group, offset));
    const tail = next.catch(() => undefined);
    this.commitChains.set(group, tail);
    void tail.then(() => {
      if (this.commitChains.get(group) === tail) this.commitChains.delete(group);
    });
    await next;
  }

  private async writeOffsetFile(group: string, offset: number): Promise<void> {
    const file = path.join(this.dir, offsetFileName(group));
    const tmp = `${file}.tmp`;
    const fh = await fsp.open(tmp, 'w');
    try {
      await fh.writeFile(`${offset}\n`, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    await syncDir(this.dir);
    this.log.counters.dirSyncs++;
    this.groupOffsets.set(group, offset);
    await this.reclaim();
  }

  async readOffsetFile(group: string): Promise<number> {
    try {
      const text = await fsp.readFile(path.join(this.dir, offsetFileName(group)), 'utf8');
      const value = Number(text.trim());
      if (!Number.isSafeInteger(value) || value < 0) throw new Error(`corrupt offset file for group ${group}`);
      return value;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
  }

  /** Deletes segments whose records are all below the lowest committed offset. Never the active segment. */
  private async reclaim(): Promise<void> {
    if (this.groupOffsets.size === 0) return;
    const floor = Math.min(...this.groupOffsets.values());
    const doomed: Segment[] = [];
    while (this.segments.length > 1 && this.segments[1].base <= floor) {
      const seg = this.segments.shift() as Segment;
      seg.deleted = true;
      doomed.push(seg);
    }
    for (const seg of doomed) {
      // Readers holding the file open keep reading it; new readers move to the oldest retained segment.
      await fsp.unlink(seg.path).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
      this.log.counters.segmentsDeleted++;
    }
  }

  async close(): Promise<void> {
    await this.idle();
    const fh = this.fh;
    this.fh = null;
    if (fh) await fh.close().catch(() => undefined);
    await Promise.all(this.commitChains.values());
  }
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

class EmbeddedConsumer implements LogConsumer {
  private readonly cursors: Cursor[];
  private closed = false;
  private dirty = false;
  private wake: (() => void) | null = null;
  private pollChain: Promise<unknown> = Promise.resolve();
  private nextStart = 0;

  constructor(
    private readonly log: EmbeddedLog,
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
    return this.log.partition(partition).readOffsetFile(this.group);
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
    await p.commitOffset(this.group, offset);
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
      const committed = await part.readOffsetFile(this.group);
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

class EmbeddedProducer implements LogProducer {
  constructor(private readonly log: EmbeddedLog) {}

  get partitions(): number {
    return this.log.partitions;
  }

  append(partition: number, value: Buffer): Promise<number> {
    return this.log.append(partition, value);
  }

  /** Waits for the appends in flight; the log itself stays open. */
  close(): Promise<void> {
    return this.log.flush();
  }
}

export class EmbeddedLog implements EventLog {
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
  private readonly parts: LogPartition[];
  private readonly consumers = new Set<EmbeddedConsumer>();
  private closing: Promise<void> | null = null;

  private constructor(
    readonly dir: string,
    partitions: number,
    opts: EmbeddedLogOptions,
  ) {
    this.partitions = partitions;
    this.segmentBytes = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.readChunkBytes = opts.readChunkBytes ?? DEFAULT_READ_CHUNK_BYTES;
    this.faults = opts.faults;
    this.parts = Array.from({ length: partitions }, (_, i) => new LogPartition(this, i, path.join(dir, `p${i}`)));
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
    for (const p of log.parts) p.openSync();
    try {
      for (const p of log.parts) await p.openWriter();
    } catch (err) {
      for (const p of log.parts) await p.fh?.close().catch(() => undefined);
      throw err;
    }
    openDirs.add(root);
    return log;
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
    return this.parts[partition].append(value);
  }

  /** Waits until everything appended so far has been written (or rejected). */
  async flush(): Promise<void> {
    await Promise.all(this.parts.map((p) => p.idle()));
  }

  /** The next offset an append to `partition` would get once everything queued is durable (the durable end). */
  endOffset(partition: number): number {
    return this.partition(partition).durableNext;
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
    return { ...this.counters };
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
      await Promise.all(this.parts.map((p) => p.close()));
    } finally {
      openDirs.delete(this.dir);
    }
  }
}
