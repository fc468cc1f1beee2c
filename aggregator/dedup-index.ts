/**
 * The identifier index of one log partition: which (account, identifier) pairs were counted, when they were received
 * and where they sit in the log. Open addressing over typed arrays, so millions of identifiers cost ~24 bytes each and
 * no garbage; entries older than the window are dropped when the table is rebuilt on growth.
 *
 * Growth is incremental: a full table is replaced by an empty one and its entries move over a few slots at each
 * insert, while lookups read both. Rehashing millions of entries at once held the aggregator's thread (the main thread
 * in embedded mode, which also appends and acknowledges every request) for 0.1–1.5 s at each growth.
 *
 * Keys are two independent 32-bit hashes of the pair (a 64-bit fingerprint): at 100 million live identifiers the chance
 * that any two collide is below 0.03 %.
 */

const EMPTY_RECV = 0;
/** hi, lo (Uint32), recv, seqs (Float64). */
const BYTES_PER_SLOT = 4 + 4 + 8 + 8;
const MAX_LOAD = 0.6;
/**
 * Slots of the old table moved at each insert while growing. The new table has at least the old one's capacity and
 * receives at most 0.3 of it in live entries, so the move ends after capacity/32 inserts, long before it fills.
 */
const MIGRATE_SLOTS = 32;

/** Entries as parallel arrays. */
export interface EntryViews {
  hi: Uint32Array;
  lo: Uint32Array;
  recv: Float64Array;
  seqs: Float64Array;
}

/** A table being emptied into the current one: slots below `next` have moved. */
interface OldTable {
  hi: Uint32Array;
  lo: Uint32Array;
  recv: Float64Array;
  seqs: Float64Array;
  mask: number;
  next: number;
  /** Entries received before this are dropped instead of moved. */
  cutoff: number;
  dropped: number;
}

export interface PendingCancel {
  hi: number;
  lo: number;
  receivedMs: number;
  account: string;
  eventName: string;
  identifier: string;
}

/**
 * Version 4: the fingerprints are fingerprint.ts's; versions 1–3 hold legacy ones (PartitionIndex.load takes them
 * over). An earlier version of meterd refuses a version 4 snapshot and rebuilds its index from the log, rather than
 * read fingerprints it does not compute.
 */
export const SNAPSHOT_VERSION = 4;

export class DedupIndex {
  private hi: Uint32Array;
  private lo: Uint32Array;
  private recv: Float64Array;
  private seqs: Float64Array;
  private mask: number;
  /** The table the index grows from, while its entries move (see set). */
  private old: OldTable | null = null;
  /** Whether the last growth found most entries expired: the next one then keeps the capacity. */
  private mostlyExpired = false;
  size = 0;
  /** Adjustments seen before the event they cancel, keyed by fingerprint. */
  pending = new Map<string, PendingCancel>();

  constructor(
    readonly windowMs: number,
    capacity = 1 << 16,
  ) {
    let cap = 1 << 4;
    while (cap < capacity) cap <<= 1;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.recv = new Float64Array(cap);
    this.seqs = new Float64Array(cap);
    this.mask = cap - 1;
  }

  /** A capacity that holds `entries` without growing. */
  static capacityFor(entries: number): number {
    return Math.ceil((entries + 1) / MAX_LOAD);
  }

  get capacity(): number {
    return this.mask + 1;
  }

  /** Memory held by the tables (the current one and, while growing, the old one). */
  get bytes(): number {
    return (this.capacity + (this.old ? this.old.mask + 1 : 0)) * BYTES_PER_SLOT;
  }

  private slotOf(hi: number, lo: number): number {
    let i = (lo ^ Math.imul(hi, 0x9e3779b1)) & this.mask;
    for (;;) {
      if (this.recv[i] === EMPTY_RECV) return i;
      if (this.hi[i] === hi && this.lo[i] === lo) return i;
      i = (i + 1) & this.mask;
    }
  }

  /** The slot of an entry of the old table that has not moved yet, or -1. */
  private oldSlotOf(hi: number, lo: number): number {
    const o = this.old;
    if (!o) return -1;
    let i = (lo ^ Math.imul(hi, 0x9e3779b1)) & o.mask;
    for (;;) {
      if (o.recv[i] === EMPTY_RECV) return -1;
      if (o.hi[i] === hi && o.lo[i] === lo) return i >= o.next ? i : -1;
      i = (i + 1) & o.mask;
    }
  }

  /** The entry for a fingerprint as [receivedMs, seq], or null. */
  get(hi: number, lo: number): { receivedMs: number; seq: number } | null {
    const i = this.slotOf(hi, lo);
    if (this.recv[i] !== EMPTY_RECV) return { receivedMs: this.recv[i], seq: this.seqs[i] };
    const j = this.oldSlotOf(hi, lo);
    return j < 0 ? null : { receivedMs: this.old!.recv[j], seq: this.old!.seqs[j] };
  }

  /** The newest received time among the entries, 0 when none (a scan: for loading a snapshot, not for the hot path). */
  newestReceivedMs(): number {
    let newest = 0;
    for (const r of this.recv) if (r > newest) newest = r;
    if (this.old) for (const r of this.old.recv) if (r > newest) newest = r;
    return newest;
  }

  /** Received time of the live entry, or 0. Allocation-free variant of get() for the hot path. */
  receivedAt(hi: number, lo: number): number {
    const r = this.recv[this.slotOf(hi, lo)];
    if (r !== EMPTY_RECV || !this.old) return r;
    const j = this.oldSlotOf(hi, lo);
    return j < 0 ? EMPTY_RECV : this.old.recv[j];
  }

  set(hi: number, lo: number, receivedMs: number, seq: number): void {
    if (this.old) this.migrate(MIGRATE_SLOTS);
    else if (this.size + 1 > this.capacity * MAX_LOAD) this.grow(receivedMs);
    const i = this.slotOf(hi, lo);
    // A new entry, unless it is still waiting in the old table (it is counted there; the move skips it later).
    if (this.recv[i] === EMPTY_RECV && this.oldSlotOf(hi, lo) < 0) this.size++;
    this.hi[i] = hi;
    this.lo[i] = lo;
    this.recv[i] = receivedMs;
    this.seqs[i] = seq;
  }

  /** Starts moving into a new table: twice as large, or as large when the last growth found most entries expired. */
  private grow(nowMs: number): void {
    const cap = this.mostlyExpired ? this.capacity : this.capacity * 2;
    this.old = { hi: this.hi, lo: this.lo, recv: this.recv, seqs: this.seqs, mask: this.mask, next: 0, cutoff: nowMs - this.windowMs, dropped: 0 };
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.recv = new Float64Array(cap);
    this.seqs = new Float64Array(cap);
    this.mask = cap - 1;
    for (const [k, p] of this.pending) if (p.receivedMs < this.old.cutoff) this.pending.delete(k);
  }

  /** Moves up to `slots` slots of the old table (all of them when Infinity). */
  private migrate(slots: number): void {
    const o = this.old;
    if (!o) return;
    const end = Math.min(o.mask + 1, o.next + slots);
    for (let j = o.next; j < end; j++) {
      const r = o.recv[j];
      if (r === EMPTY_RECV) continue;
      if (r < o.cutoff) {
        o.dropped++;
        this.size--;
        continue;
      }
      const i = this.slotOf(o.hi[j], o.lo[j]);
      if (this.recv[i] !== EMPTY_RECV) continue; // set since the growth began: the newer entry stays
      this.hi[i] = o.hi[j];
      this.lo[i] = o.lo[j];
      this.recv[i] = r;
      this.seqs[i] = o.seqs[j];
    }
    o.next = end;
    if (end > o.mask) {
      this.mostlyExpired = o.dropped * 2 > this.size + o.dropped;
      this.old = null;
    }
  }

  /** Drops entries older than the window (relative to `nowMs`), growing the table if it is still too full. */
  rebuild(nowMs: number): void {
    this.migrate(Infinity);
    const oldHi = this.hi;
    const oldLo = this.lo;
    const oldRecv = this.recv;
    const oldSeq = this.seqs;
    const cutoff = nowMs - this.windowMs;
    let live = 0;
    for (let i = 0; i < oldRecv.length; i++) if (oldRecv[i] !== EMPTY_RECV && oldRecv[i] >= cutoff) live++;
    let cap = this.capacity;
    while (live + 1 > cap * (MAX_LOAD / 2)) cap <<= 1;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.recv = new Float64Array(cap);
    this.seqs = new Float64Array(cap);
    this.mask = cap - 1;
    this.size = 0;
    for (let i = 0; i < oldRecv.length; i++) {
      if (oldRecv[i] === EMPTY_RECV || oldRecv[i] < cutoff) continue;
      const j = this.slotOf(oldHi[i], oldLo[i]);
      this.hi[j] = oldHi[i];
      this.lo[j] = oldLo[i];
      this.recv[j] = oldRecv[i];
      this.seqs[j] = oldSeq[i];
      this.size++;
    }
    for (const [k, p] of this.pending) if (p.receivedMs < cutoff) this.pending.delete(k);
  }

  /** A frozen copy (for a snapshot taken while processing goes on). */
  clone(): DedupIndex {
    this.migrate(Infinity);
    const c = new DedupIndex(this.windowMs, 16);
    c.hi = this.hi.slice();
    c.lo = this.lo.slice();
    c.recv = this.recv.slice();
    c.seqs = this.seqs.slice();
    c.mask = this.mask;
    c.size = this.size;
    for (const [k, v] of this.pending) c.pending.set(k, v);
    return c;
  }

  /**
   * The index and the log offset it covers, as bytes: replay after a crash resumes from that offset. Only the live
   * entries are written, from both tables while the index grows (finishing the move here would hold the thread that
   * calls this, and the empty slots, 40–70 % of them, would double the copy). `older` (a table being sealed into a
   * run) is written first, so that this index's entries win on load; `header` adds fields (the runs on disk).
   */
  serialize(coversOffset: number, older: DedupIndex | null = null, header: Record<string, unknown> = {}): Buffer {
    // Laid out for `size` entries, which counts every live entry once and may count expired ones the move has not
    // dropped yet: slots left over stay zero, which reads back as empty. One pass, no counting pass.
    const m = this.size + (older?.size ?? 0);
    const head = Buffer.from(
      JSON.stringify({ ...header, version: SNAPSHOT_VERSION, offset: coversOffset, windowMs: this.windowMs, entries: m, pending: [...this.pending.values()] }),
    );
    // The arrays start on an 8-byte boundary so that they are written through typed views (a store per field, not a
    // call): at millions of entries that is what keeps the thread free.
    const base = snapshotBase(head.length);
    const out = Buffer.alloc(base + m * BYTES_PER_SLOT);
    out.writeUInt32LE(head.length, 0);
    head.copy(out, 4);
    const ab = out.buffer as ArrayBuffer;
    const at = out.byteOffset + base;
    const views: EntryViews = {
      hi: new Uint32Array(ab, at, m),
      lo: new Uint32Array(ab, at + 4 * m, m),
      recv: new Float64Array(ab, at + 8 * m, m),
      seqs: new Float64Array(ab, at + 16 * m, m),
    };
    const k = older ? older.writeLive(views, 0) : 0;
    this.writeLive(views, k);
    return out;
  }

  /** The live entries as arrays of their own (what a run is written from). */
  liveEntries(): EntryViews {
    const m = this.size;
    const views: EntryViews = { hi: new Uint32Array(m), lo: new Uint32Array(m), recv: new Float64Array(m), seqs: new Float64Array(m) };
    const k = this.writeLive(views, 0);
    return k === m ? views : { hi: views.hi.slice(0, k), lo: views.lo.slice(0, k), recv: views.recv.slice(0, k), seqs: views.seqs.slice(0, k) };
  }

  /** Writes the live entries into `out` from position `k`; returns the position after them. */
  private writeLive(out: EntryViews, k: number): number {
    const { hi, lo, recv, seqs } = this;
    for (let j = 0; j < recv.length; j++) {
      if (recv[j] === EMPTY_RECV) continue;
      out.hi[k] = hi[j];
      out.lo[k] = lo[j];
      out.recv[k] = recv[j];
      out.seqs[k] = seqs[j];
      k++;
    }
    const o = this.old;
    if (o) {
      // Entries not moved yet: not those the move would drop as expired, nor those set again since (the current
      // table has them).
      for (let j = o.next; j < o.recv.length; j++) {
        const r = o.recv[j];
        if (r === EMPTY_RECV || r < o.cutoff || this.recv[this.slotOf(o.hi[j], o.lo[j])] !== EMPTY_RECV) continue;
        out.hi[k] = o.hi[j];
        out.lo[k] = o.lo[j];
        out.recv[k] = r;
        out.seqs[k] = o.seqs[j];
        k++;
      }
    }
    return k;
  }

  /**
   * Reads a snapshot: version 4 (live entries and the runs on disk, by the fingerprint of fingerprint.ts), 3 (the same,
   * by the legacy fingerprint), 2 (live entries, no runs) or 1 (whole tables), the last three written by earlier
   * versions. `header` is the whole header, for the fields serialize() was given.
   */
  static deserialize(buf: Buffer, windowMs: number, what = 'dedup snapshot'): { index: DedupIndex; offset: number; header: Record<string, unknown> } {
    if (buf.length < 4 || buf.length < 4 + buf.readUInt32LE(0)) throw new Error(`${what} is truncated`);
    const hlen = buf.readUInt32LE(0);
    const header = JSON.parse(buf.subarray(4, 4 + hlen).toString('utf8')) as {
      version: number;
      offset: number;
      capacity?: number;
      size?: number;
      entries?: number;
      pending: PendingCancel[];
    };
    let base = 4 + hlen;
    let index: DedupIndex;
    if (header.version === 1) {
      const cap = header.capacity!;
      if (buf.length !== base + cap * BYTES_PER_SLOT) throw new Error(`${what} is truncated`);
      index = new DedupIndex(windowMs, cap);
      index.hi = new Uint32Array(copiedSection(buf, base, cap * 4));
      index.lo = new Uint32Array(copiedSection(buf, base + cap * 4, cap * 4));
      index.recv = new Float64Array(copiedSection(buf, base + cap * 8, cap * 8));
      index.seqs = new Float64Array(copiedSection(buf, base + cap * 16, cap * 8));
      index.mask = cap - 1;
      index.size = header.size!;
    } else if (header.version === 2 || header.version === 3 || header.version === 4) {
      const n = header.entries!;
      base = snapshotBase(hlen);
      if (!Number.isSafeInteger(n) || n < 0 || buf.length !== base + n * BYTES_PER_SLOT) throw new Error(`${what} is truncated`);
      const his = new Uint32Array(copiedSection(buf, base, 4 * n));
      const los = new Uint32Array(copiedSection(buf, base + 4 * n, 4 * n));
      const recvs = new Float64Array(copiedSection(buf, base + 8 * n, 8 * n));
      const seqs = new Float64Array(copiedSection(buf, base + 16 * n, 8 * n));
      // Room for twice the entries before the next growth, as after a rebuild.
      let cap = 1 << 16;
      while (n + 1 > cap * (MAX_LOAD / 2)) cap <<= 1;
      index = new DedupIndex(windowMs, cap);
      for (let k = 0; k < n; k++) {
        if (recvs[k] === EMPTY_RECV) continue; // a slot the writer did not need
        const i = index.slotOf(his[k], los[k]);
        if (index.recv[i] === EMPTY_RECV) index.size++;
        index.hi[i] = his[k];
        index.lo[i] = los[k];
        index.recv[i] = recvs[k];
        index.seqs[i] = seqs[k];
      }
    } else throw new Error(`${what} has an unknown version ${header.version}`);
    for (const p of header.pending) index.pending.set(fingerprintKey(p.hi, p.lo), p);
    return { index, offset: header.offset, header };
  }
}

/** Bytes of a snapshot copied into an ArrayBuffer of their own: the buffer read from disk need not be aligned. */
function copiedSection(buf: Buffer, from: number, bytes: number): ArrayBuffer {
  const copy = new ArrayBuffer(bytes);
  new Uint8Array(copy).set(buf.subarray(from, from + bytes));
  return copy;
}

/** Where a version 2 snapshot's arrays start: after the length and the header, on an 8-byte boundary. */
function snapshotBase(headerLength: number): number {
  return (4 + headerLength + 7) & ~7;
}

export function fingerprintKey(hi: number, lo: number): string {
  return hi.toString(36) + ':' + lo.toString(36);
}
