/**
 * Recovery when the log opens: finds a partition's segments and committed offsets, and cuts a torn or corrupt tail
 * (a crash mid-write) off its last segment so that the next offset is right. Earlier segments are trusted: they were
 * fsynced before the next segment was created, and the directory was fsynced after creating each segment. An offset
 * file left half-written by an interrupted commit (`.tmp`) is removed; the previous offset file is intact.
 *
 * Synchronous: runs only in open(), before anything else can touch the files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import {
  DEFAULT_READ_CHUNK_BYTES,
  HEADER_BYTES,
  MAX_RECORD_BYTES,
  mkdirDurableSync,
  OFFSET_FILE_RE,
  SEGMENT_RE,
  type Segment,
  segmentName,
  syncDirSync,
} from './segment-files';

export interface RecoveredPartition {
  /** Retained segments, ascending by base; the last one (active) is unsealed and its size is its valid prefix. */
  segments: Segment[];
  /** Committed offsets of every group that has committed in the partition. */
  groupOffsets: Map<string, number>;
  /** The next offset: everything below it is durable. */
  end: number;
}

/**
 * Scans a segment file, validating every frame; returns the number of valid records and the byte length of the valid
 * prefix.
 */
export function scanSegmentSync(file: string): { records: number; validBytes: number; fileBytes: number } {
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

/** Opens (creating if needed) the partition directory `dir` and recovers its segments and committed offsets. */
export function recoverPartitionSync(dir: string): RecoveredPartition {
  mkdirDurableSync(dir);
  const segments: Segment[] = [];
  const groupOffsets = new Map<string, number>();
  const names = fs.readdirSync(dir);
  for (const name of names) {
    const seg = SEGMENT_RE.exec(name);
    if (seg) {
      segments.push({ base: Number(seg[1]), path: path.join(dir, name), size: 0, sealed: true, deleted: false });
      continue;
    }
    if (name.startsWith('consumer-') && name.includes('.offset.tmp')) {
      fs.unlinkSync(path.join(dir, name)); // an interrupted commit; the previous offset file is intact
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
      const value = Number(fs.readFileSync(path.join(dir, name), 'utf8').trim());
      if (Number.isSafeInteger(value) && value >= 0) groupOffsets.set(group, value);
    }
  }
  segments.sort((a, b) => a.base - b.base);
  if (segments.length === 0) {
    // A fresh partition. (Never reuse offsets a consumer has already committed past.)
    const base = Math.max(0, ...groupOffsets.values());
    const file = path.join(dir, segmentName(base));
    fs.closeSync(fs.openSync(file, 'w'));
    syncDirSync(dir);
    segments.push({ base, path: file, size: 0, sealed: false, deleted: false });
  }
  for (let i = 0; i < segments.length - 1; i++) segments[i].size = fs.statSync(segments[i].path).size;
  const last = segments[segments.length - 1];
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
  return { segments, groupOffsets, end: last.base + scan.records };
}
