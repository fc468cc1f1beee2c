/**
 * The embedded log's on-disk format in one place, so the writer, the reader and recovery agree on it.
 *
 *   <dir>/p<partition>/<20-digit base offset>.seg       segment files; the name is the offset of the first record
 *   <dir>/p<partition>/consumer-<group>.offset          committed offset of a consumer group (decimal text)
 *
 * Record framing (little-endian): u32 payload length, u32 crc32(payload), payload. Empty payloads are not allowed, so a
 * zero-filled region (a typical crash artefact) never parses as records. Offsets are dense record numbers per
 * partition starting at 0; the records of segment S have offsets S.base .. nextSegment.base - 1.
 *
 * Also the partition's list of segments (shared by the writer, which appends and rotates, the offsets, which reclaim,
 * and the readers) and the directory fsyncs that make created and renamed files survive a crash.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

const fsp = fs.promises;

export const HEADER_BYTES = 8;
/** Upper bound of one record's payload; also the sanity bound of a length field when scanning. */
export const MAX_RECORD_BYTES = 256 * 1024 * 1024;
export const DEFAULT_READ_CHUNK_BYTES = 1024 * 1024;
export const SEGMENT_RE = /^(\d{20})\.seg$/;
export const OFFSET_FILE_RE = /^consumer-(.+)\.offset$/;
export const PARTITION_DIR_RE = /^p(\d+)$/;

export interface Segment {
  base: number;
  path: string;
  /** Durable byte length: only bytes below it are readable. Final once sealed. */
  size: number;
  /** A later segment exists; this one will not grow any more. */
  sealed: boolean;
  deleted: boolean;
}

/** The retained segments of one partition and its durable end. */
export class PartitionSegments {
  /** Retained segments, ascending by base; the last one is the active segment. */
  segments: Segment[] = [];
  /** Offsets below this are durable and readable. */
  durableNext = 0;

  constructor(readonly dir: string) {}

  get active(): Segment {
    return this.segments[this.segments.length - 1];
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
}

export function segmentName(base: number): string {
  return `${String(base).padStart(20, '0')}.seg`;
}

export function offsetFileName(group: string): string {
  return `consumer-${encodeURIComponent(group)}.offset`;
}

/** Frames records into one buffer of `total` bytes (the sum of HEADER_BYTES + value length). */
export function frameRecords(values: ReadonlyArray<{ value: Buffer }>, total: number): Buffer {
  const buf = Buffer.allocUnsafe(total);
  let at = 0;
  for (const p of values) {
    buf.writeUInt32LE(p.value.length, at);
    buf.writeUInt32LE(zlib.crc32(p.value), at + 4);
    p.value.copy(buf, at + HEADER_BYTES);
    at += HEADER_BYTES + p.value.length;
  }
  return buf;
}

/** fsync a directory so entries created/renamed in it survive a crash. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export function syncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export function mkdirDurableSync(dir: string): void {
  if (fs.existsSync(dir)) return;
  const parent = path.dirname(dir);
  if (parent !== dir) mkdirDurableSync(parent);
  fs.mkdirSync(dir);
  syncDirSync(parent);
}

export function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
