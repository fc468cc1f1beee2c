/**
 * The identifier index's sealed runs: identifiers moved out of memory to files on disk, so that the index's memory
 * stays bounded whatever the rate and the window (24 hours of identifiers at a sustained rate do not fit in memory).
 *
 * A run is a sorted file of the entries (fingerprint, received time, log seq) of one partition, written once. What
 * stays in memory is the run filter: one 32-bit word per identifier of every run (16 bits of the fingerprint and the
 * run's 16-bit tag), in an open-addressing table on a SharedArrayBuffer. The aggregator's workers read it while
 * decoding a chunk: an identifier that matches no word is new (the common case, no I/O); one that matches is looked up
 * in the run its tag names (one block read) and confirmed on its full 64-bit fingerprint, so the filter's false matches
 * cost a read, never a wrong answer.
 *
 * The filter is only ever changed by a seal task in a worker, in ways a concurrent reader tolerates: a word is
 * written into an empty slot (a reader sees it or not; the entries stay readable in memory until the seal is
 * installed), and a word of an expired run is turned into a tombstone (a reader skips it; an expired run never makes
 * an identifier a duplicate). A filter that gets too full is rebuilt into a new buffer, installed between two batches.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { EntryViews } from './dedup-index';

/** Run file: header, the first `hi` of every block, then the rows sorted by `hi`. */
const MAGIC = 'MDRUN001';
const HEADER_BYTES = 32;
/** hi, lo (Uint32), recv, seq (Float64). */
const RUN_ROW_BYTES = 24;
/** Rows per block: a lookup reads one block (3 KiB), rarely two. */
const BLOCK_ROWS = 128;

const EMPTY = 0;
/** A word of an expired run: tag 0 is never a live run's. */
const TOMBSTONE = 0xffff0000;
/**
 * Fill (live and tombstones) at which a seal rebuilds the filter, and the fill of a rebuilt one: 5–8 bytes per
 * identifier. At 0.8 a miss reads about 13 words, mostly in one cache line, and a false match (which costs a read) has
 * a chance of about 13 in 65,536.
 */
const MAX_FILL = 0.8;
const REBUILT_FILL = 0.5;
const MIN_FILTER_SLOTS = 1 << 12;
export const MAX_RUN_TAG = 0xffff;

/**
 * What a worker needs to look identifiers up in the runs of one partition. Both arrays are on SharedArrayBuffers, so a
 * task carries them without a copy however many runs there are.
 */
export interface RunSet {
  filter: Uint32Array;
  /** Tag → the nonce in its run's file name; 0 for a tag no run in the window has. */
  nonces: Uint32Array;
  dir: string;
  partition: number;
}

export function runFileName(partition: number, tag: number, nonce: number): string {
  return `dedup-p${partition}-run-${tag}-${nonce.toString(16)}.run`;
}

export function emptyNonces(): Uint32Array {
  return new Uint32Array(new SharedArrayBuffer((MAX_RUN_TAG + 1) * 4));
}

export interface RunRef {
  tag: number;
  file: string;
  entries: number;
}

/** A seal: write the entries as a run, retire expired runs from the filter, add the new run to it. */
export interface SealTask {
  kind: 'seal';
  entries: EntryViews;
  file: string;
  tag: number;
  filter: Uint32Array;
  /** Slots of the filter in use, tombstones included. */
  filled: number;
  expired: RunRef[];
  /** The runs that stay (read again when the filter is rebuilt). */
  kept: RunRef[];
}

export interface SealResult {
  entries: number;
  newestMs: number;
  /** The filter to use from now on: the same buffer, or a rebuilt one. */
  filter: Uint32Array;
  filled: number;
  /** Tags of the runs retired from the filter (the task's expired runs). */
  retiredTags: number[];
  /** Tags of kept runs whose files could not be read when the filter was rebuilt: left out of it. */
  unreadableTags: number[];
}

export interface BuiltFilter {
  filter: Uint32Array;
  filled: number;
  /** Runs whose files could not be read: left out. */
  unreadableTags: number[];
}

export function emptyFilter(entries: number): Uint32Array {
  const slots = Math.max(MIN_FILTER_SLOTS, Math.ceil(entries / REBUILT_FILL));
  if (slots >= 2 ** 29) throw new Error(`${entries} identifiers in the runs of one partition: more than its filter can hold (use more partitions)`);
  return new Uint32Array(new SharedArrayBuffer(slots * 4));
}

/**
 * The slot a fingerprint's probe starts at: `lo` scaled to the table's size (any size, not only powers of two, so a
 * rebuilt filter is sized to its entries). Exact in doubles: 24 bits times fewer than 2^29 slots.
 */
function home(lo: number, slots: number): number {
  return Math.floor(((lo >>> 8) * slots) / 16777216);
}

function word(hi: number, tag: number): number {
  return ((hi & 0xffff0000) | tag) >>> 0;
}

function filterInsert(filter: Uint32Array, hi: number, lo: number, tag: number): void {
  const slots = filter.length;
  let i = home(lo, slots);
  while (filter[i] !== EMPTY) i = i + 1 === slots ? 0 : i + 1;
  filter[i] = word(hi, tag);
}

function filterRetire(filter: Uint32Array, hi: number, lo: number, tag: number): void {
  const slots = filter.length;
  const w = word(hi, tag);
  for (let i = home(lo, slots); filter[i] !== EMPTY; i = i + 1 === slots ? 0 : i + 1) {
    if (filter[i] === w) {
      filter[i] = TOMBSTONE;
      return;
    }
  }
}

/** Writes the run file durably: tmp file, fsync, rename, fsync of the directory. */
export function writeRun(file: string, { hi, lo, recv, seqs: seq }: EntryViews): { entries: number; newestMs: number } {
  const n = hi.length;
  // Sorted by hi with a two-pass radix sort (16 bits a pass) of the row order.
  let order = new Uint32Array(n);
  let next = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  for (const shift of [0, 16]) {
    const counts = new Uint32Array(65537);
    for (let i = 0; i < n; i++) counts[((hi[i] >>> shift) & 0xffff) + 1]++;
    for (let b = 0; b < 65536; b++) counts[b + 1] += counts[b];
    for (let i = 0; i < n; i++) {
      const r = order[i];
      next[counts[(hi[r] >>> shift) & 0xffff]++] = r;
    }
    [order, next] = [next, order];
  }
  const blocks = Math.ceil(n / BLOCK_ROWS);
  const rowsAt = rowsOffset(blocks);
  const out = Buffer.alloc(rowsAt + n * RUN_ROW_BYTES);
  // Rows through typed views (a store per field, not a call; rowsAt is 8-byte aligned): a row is 6 words, 3 doubles.
  const words = new Uint32Array(out.buffer, out.byteOffset, out.length >>> 2);
  const doubles = new Float64Array(out.buffer, out.byteOffset, out.length >>> 3);
  let newestMs = 0;
  for (let k = 0; k < n; k++) {
    const r = order[k];
    const w = (rowsAt >>> 2) + k * 6;
    words[w] = hi[r];
    words[w + 1] = lo[r];
    doubles[(w >>> 1) + 1] = recv[r];
    doubles[(w >>> 1) + 2] = seq[r];
    if (k % BLOCK_ROWS === 0) words[(HEADER_BYTES >>> 2) + k / BLOCK_ROWS] = hi[r];
    if (recv[r] > newestMs) newestMs = recv[r];
  }
  out.write(MAGIC, 0, 'latin1');
  out.writeUInt32LE(n, 8);
  out.writeUInt32LE(BLOCK_ROWS, 12);
  out.writeDoubleLE(newestMs, 16);
  const tmp = file + '.tmp';
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, out);
    fs.fdatasyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dir = fs.openSync(path.dirname(file), 'r');
  try {
    fs.fsyncSync(dir);
  } finally {
    fs.closeSync(dir);
  }
  return { entries: n, newestMs };
}

function rowsOffset(blocks: number): number {
  return (HEADER_BYTES + blocks * 4 + 7) & ~7;
}

/** A run file opened for lookups: its block index is read once and kept. */
interface OpenRun {
  fd: number;
  entries: number;
  fences: Uint32Array;
  rowsAt: number;
}

function readHeader(fd: number, file: string): { entries: number } {
  const head = Buffer.alloc(HEADER_BYTES);
  if (fs.readSync(fd, head, 0, HEADER_BYTES, 0) !== HEADER_BYTES || head.toString('latin1', 0, 8) !== MAGIC) {
    throw new Error(`dedup run ${file} is not a run file`);
  }
  if (head.readUInt32LE(12) !== BLOCK_ROWS) throw new Error(`dedup run ${file} has an unknown block size`);
  return { entries: head.readUInt32LE(8) };
}

/** Every fingerprint of a run, for building and retiring filter words. */
function readRunFingerprints(file: string): { hi: Uint32Array; lo: Uint32Array } {
  const fd = fs.openSync(file, 'r');
  try {
    const { entries } = readHeader(fd, file);
    const rowsAt = rowsOffset(Math.ceil(entries / BLOCK_ROWS));
    const rows = new Uint32Array(entries * (RUN_ROW_BYTES >>> 2));
    const bytes = Buffer.from(rows.buffer);
    if (fs.readSync(fd, bytes, 0, bytes.length, rowsAt) !== bytes.length) throw new Error(`dedup run ${file} is truncated`);
    const hi = new Uint32Array(entries);
    const lo = new Uint32Array(entries);
    for (let k = 0; k < entries; k++) {
      hi[k] = rows[k * 6];
      lo[k] = rows[k * 6 + 1];
    }
    return { hi, lo };
  } finally {
    fs.closeSync(fd);
  }
}

/** Open run files a worker keeps (least recently used closed first): lookups are rare, descriptors are not free. */
const OPEN_RUNS = 64;

/** Runs as a worker reads them: files opened on first use and kept open. */
export class RunReader {
  private readonly open = new Map<string, OpenRun>();
  private block = Buffer.alloc(BLOCK_ROWS * RUN_ROW_BYTES * 2);
  /** Result of the last lookup that found an entry. */
  foundRecv = 0;
  foundSeq = 0;

  private get(file: string): OpenRun {
    let run = this.open.get(file);
    if (run) {
      this.open.delete(file);
      this.open.set(file, run);
      return run;
    }
    if (this.open.size >= OPEN_RUNS) {
      const [oldest, old] = this.open.entries().next().value as [string, OpenRun];
      fs.closeSync(old.fd);
      this.open.delete(oldest);
    }
    const fd = fs.openSync(file, 'r');
    try {
      const { entries } = readHeader(fd, file);
      const blocks = Math.ceil(entries / BLOCK_ROWS);
      const fences = new Uint32Array(blocks);
      const raw = Buffer.alloc(blocks * 4);
      if (fs.readSync(fd, raw, 0, raw.length, HEADER_BYTES) !== raw.length) throw new Error(`dedup run ${file} is truncated`);
      for (let b = 0; b < blocks; b++) fences[b] = raw.readUInt32LE(b * 4);
      run = { fd, entries, fences, rowsAt: rowsOffset(blocks) };
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    this.open.set(file, run);
    return run;
  }

  /**
   * Looks a fingerprint up in every run whose filter word matches; true when found, with the newest entry's received
   * time and seq in foundRecv / foundSeq.
   */
  lookup(runs: RunSet, hi: number, lo: number): boolean {
    this.foundRecv = 0;
    this.foundSeq = 0;
    const filter = runs.filter;
    const slots = filter.length;
    const top = (hi & 0xffff0000) >>> 0;
    for (let i = home(lo, slots); filter[i] !== EMPTY; i = i + 1 === slots ? 0 : i + 1) {
      const w = filter[i];
      if ((w & 0xffff0000) >>> 0 !== top || w === TOMBSTONE) continue;
      const tag = w & 0xffff;
      const nonce = runs.nonces[tag];
      if (nonce !== 0) this.find(path.join(runs.dir, runFileName(runs.partition, tag, nonce)), hi, lo); // 0: retired since
    }
    return this.foundRecv !== 0;
  }

  /** Reads the blocks that can hold `hi` and keeps the entry if it is newer than one found before. */
  private find(file: string, hi: number, lo: number): void {
    const run = this.get(file);
    const f = run.fences;
    // Blocks [first, end): the last block starting below hi (it may run into hi) through those starting at hi.
    let a = 0;
    let b = f.length;
    while (a < b) {
      const m = (a + b) >>> 1;
      if (f[m] < hi) a = m + 1;
      else b = m;
    }
    const first = Math.max(0, a - 1);
    let end = a;
    while (end < f.length && f[end] === hi) end++;
    end = Math.max(end, first + 1);
    const rowFrom = first * BLOCK_ROWS;
    const rowTo = Math.min(run.entries, end * BLOCK_ROWS);
    const bytes = (rowTo - rowFrom) * RUN_ROW_BYTES;
    if (bytes > this.block.length) this.block = Buffer.alloc(bytes);
    if (fs.readSync(run.fd, this.block, 0, bytes, run.rowsAt + rowFrom * RUN_ROW_BYTES) !== bytes) throw new Error(`dedup run ${file} is truncated`);
    for (let at = 0; at < bytes; at += RUN_ROW_BYTES) {
      if (this.block.readUInt32LE(at) !== hi || this.block.readUInt32LE(at + 4) !== lo) continue;
      const recv = this.block.readDoubleLE(at + 8);
      if (recv <= this.foundRecv) continue;
      this.foundRecv = recv;
      this.foundSeq = this.block.readDoubleLE(at + 16);
    }
  }
}

/** The seal task, run in a worker: see SealTask. */
export function seal(task: SealTask): SealResult {
  const { entries, newestMs } = writeRun(task.file, task.entries);
  let filter = task.filter;
  let filled = task.filled;
  // An expired run that cannot be read keeps its words: the filter is rebuilt without them instead.
  let rebuild = filled + entries > filter.length * MAX_FILL;
  for (const run of task.expired) {
    try {
      const { hi, lo } = readRunFingerprints(run.file);
      for (let k = 0; k < hi.length; k++) filterRetire(filter, hi[k], lo[k], run.tag);
    } catch {
      rebuild = true;
    }
  }
  let unreadableTags: number[] = [];
  if (rebuild) {
    // Rebuilt from the kept runs' files: tombstones go, and the new table starts at REBUILT_FILL.
    ({ filter, filled, unreadableTags } = buildFilter(task.kept, entries));
  }
  for (let k = 0; k < entries; k++) filterInsert(filter, task.entries.hi[k], task.entries.lo[k], task.tag);
  filled += entries;
  return { entries, newestMs, filter, filled, retiredTags: task.expired.map((r) => r.tag), unreadableTags };
}

/**
 * A filter built from runs' files (at recovery, and when a seal rebuilds it), with room for `more`. A run whose file
 * cannot be read is left out and reported, not fatal: the others still deduplicate.
 */
export function buildFilter(runs: RunRef[], more = 0): BuiltFilter {
  let live = more;
  for (const run of runs) live += run.entries;
  const filter = emptyFilter(live);
  let filled = 0;
  const unreadableTags: number[] = [];
  for (const run of runs) {
    let fingerprints: { hi: Uint32Array; lo: Uint32Array };
    try {
      fingerprints = readRunFingerprints(run.file);
    } catch {
      unreadableTags.push(run.tag);
      continue;
    }
    const { hi, lo } = fingerprints;
    for (let k = 0; k < hi.length; k++) filterInsert(filter, hi[k], lo[k], run.tag);
    filled += hi.length;
  }
  return { filter, filled, unreadableTags };
}
