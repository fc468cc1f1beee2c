/**
 * The identifier index of one log partition, in two tiers: the identifiers received last in memory (the hot table,
 * bounded by DEDUP_MEMORY_IDENTIFIERS), older ones in sealed runs on disk behind a compact in-memory filter (see
 * dedup-runs.ts). When the hot table is full it is frozen (still read) while a worker writes it out as a run; the run
 * is installed, and the frozen table dropped, between two batches, when no worker is reading.
 *
 * Runs leave when their newest entry is out of the window, measured against the newest received time seen, not the
 * clock, so that replaying old records decides as it did the first time. Their files are removed only once a snapshot
 * that no longer names them is saved.
 */
import crypto from 'node:crypto';
import path from 'node:path';
import { DedupIndex, fingerprintKey, SNAPSHOT_VERSION, type PendingCancel } from './dedup-index';
import { fingerprint } from './fingerprint';
import { type BuiltFilter, emptyFilter, emptyNonces, MAX_RUN_TAG, runFileName, type RunRef, type RunSet, type SealResult, type SealTask } from './dedup-runs';
import type { FilterTask } from './worker';
import { log } from '../shared/logger';

/** A run as snapshots name it. */
export interface RunMeta {
  tag: number;
  nonce: number;
  entries: number;
  newestMs: number;
}

/** Where a partition's runs are kept: files in a local directory the workers read, and where a later owner finds them. */
export interface RunStore {
  runDir(partition: number): string;
  /** The run's file is durable locally: make it durable for whoever owns the partition next. */
  persistRun(partition: number, name: string): Promise<void>;
  /** Makes the run's file present in runDir (fetching it after a take-over); rejects when the run is gone. */
  fetchRun(partition: number, name: string): Promise<void>;
  removeRun(partition: number, name: string): Promise<void>;
  /** The partition's runs wherever this store keeps them (finished or not): those no snapshot names are removed. */
  storedRuns(partition: number): Promise<string[]>;
}

/** A run a snapshot names is gone (its file or blob): its identifiers are no longer deduplicated. */
export class RunMissingError extends Error {
  constructor(readonly run: string) {
    super(`dedup run ${run} is missing`);
  }
}

/** A snapshot that cannot be read (truncated, of an unknown version): the index is rebuilt from the retained log. */
export class CorruptSnapshotError extends Error {}

export type WorkerTask = (task: SealTask | FilterTask, transfer: ArrayBuffer[]) => Promise<unknown>;

/** A run whose newest entry is this much past the window is retired (received times are not strictly ordered). */
const EXPIRY_SLACK_MS = 5 * 60_000;
/** Wait before sealing again after a seal failed (a full disk, say): the frozen table stays readable meanwhile. */
const SEAL_RETRY_MS = 5000;

export class PartitionIndex {
  hot: DedupIndex;
  /** The table being sealed into a run: read until the run is installed. */
  private frozen: DedupIndex | null = null;
  private runs: RunMeta[] = [];
  private filter: Uint32Array = emptyFilter(0);
  private filled = 0;
  private readonly nonces = emptyNonces();
  private runSetCache: RunSet | undefined;
  private nextTag = 1;
  /** The newest received time seen. */
  newestMs = 0;
  private sealing = false;
  private sealed: { result: SealResult; run: RunMeta } | null = null;
  private sealRetryAtMs = 0;
  /** Runs out of the window, removed once snapshot number `after` or a later one is saved. */
  private retired: { name: string; after: number }[] = [];
  private serialized = 0;
  /** Seals installed since this index was created or loaded. */
  seals = 0;
  /**
   * Until this received time (0: not at all), the index may hold entries by the legacy fingerprint (fingerprint.ts),
   * from a snapshot an earlier version wrote: events are looked up by both fingerprints until those entries are out of
   * the window. New entries always take the current fingerprint.
   */
  legacyUntilMs = 0;

  constructor(
    readonly partition: number,
    readonly windowMs: number,
    private readonly store: RunStore,
    hot?: DedupIndex,
  ) {
    this.hot = hot ?? new DedupIndex(windowMs);
  }

  /** Received time of the identifier's entry in memory, or 0 (then see the runs: ChunkResult.runRecv). */
  receivedAt(hi: number, lo: number): number {
    const r = this.hot.receivedAt(hi, lo);
    return r !== 0 || !this.frozen ? r : this.frozen.receivedAt(hi, lo);
  }

  /** The identifier's entry in memory, or null (then see the runs: CancelItem.runRecv). */
  get(hi: number, lo: number): { receivedMs: number; seq: number } | null {
    return this.hot.get(hi, lo) ?? this.frozen?.get(hi, lo) ?? null;
  }

  set(hi: number, lo: number, receivedMs: number, seq: number): void {
    this.hot.set(hi, lo, receivedMs, seq);
    if (receivedMs > this.newestMs) this.newestMs = receivedMs;
  }

  get pending(): Map<string, PendingCancel> {
    return this.hot.pending;
  }

  /** Identifiers held, in memory and on disk. */
  get size(): number {
    let n = this.hot.size + (this.frozen?.size ?? 0);
    for (const r of this.runs) n += r.entries;
    return n;
  }

  /** Memory held: the tables and the run filter. */
  get bytes(): number {
    return this.hot.bytes + (this.frozen?.bytes ?? 0) + (this.runs.length ? this.filter.byteLength + this.nonces.byteLength : 0);
  }

  get runCount(): number {
    return this.runs.length;
  }

  /** Whether events must also be looked up by their legacy fingerprint (see legacyUntilMs). */
  legacyActive(): boolean {
    if (this.legacyUntilMs !== 0 && this.newestMs > this.legacyUntilMs) {
      this.legacyUntilMs = 0;
      log.info('dedup index: the entries by the legacy fingerprint are out of the window', { partition: this.partition });
    }
    return this.legacyUntilMs !== 0;
  }

  /** What a worker needs to look identifiers up on disk; undefined while there are no runs. */
  runSet(): RunSet | undefined {
    if (this.runs.length === 0) return undefined;
    this.runSetCache ??= { filter: this.filter, nonces: this.nonces, dir: this.store.runDir(this.partition), partition: this.partition };
    return this.runSetCache;
  }

  private runName(run: { tag: number; nonce: number }): string {
    return runFileName(this.partition, run.tag, run.nonce);
  }

  private ref(run: RunMeta): RunRef {
    return { tag: run.tag, file: path.join(this.store.runDir(this.partition), this.runName(run)), entries: run.entries };
  }

  /**
   * Between two batches (no worker reads the filter or the tables): installs a finished seal, and starts one when the
   * hot table holds `hotLimit` identifiers.
   */
  maintain(hotLimit: number, runTask: WorkerTask, nowMs: number): void {
    if (this.sealed) this.install();
    if (this.sealing || nowMs < this.sealRetryAtMs) return;
    if (this.frozen || this.hot.size >= hotLimit) this.startSeal(hotLimit, runTask);
  }

  private startSeal(hotLimit: number, runTask: WorkerTask): void {
    const inUse = new Set(this.runs.map((r) => r.tag));
    if (inUse.size >= MAX_RUN_TAG) return; // every tag names a run in the window: the hot table keeps growing
    let tag = this.nextTag;
    while (inUse.has(tag)) tag = (tag % MAX_RUN_TAG) + 1;
    this.nextTag = (tag % MAX_RUN_TAG) + 1;
    if (!this.frozen) {
      const frozen = this.hot;
      // Room for hotLimit identifiers without growing (growth is what costs while requests wait).
      this.hot = new DedupIndex(this.windowMs, DedupIndex.capacityFor(hotLimit));
      this.hot.pending = frozen.pending;
      frozen.pending = new Map();
      this.frozen = frozen;
    }
    const run: RunMeta = { tag, nonce: crypto.randomInt(1, 0xffffffff), entries: 0, newestMs: 0 };
    const name = this.runName(run);
    const entries = this.frozen.liveEntries();
    const cutoff = this.newestMs - this.windowMs - EXPIRY_SLACK_MS;
    const task: SealTask = {
      kind: 'seal',
      entries,
      file: path.join(this.store.runDir(this.partition), name),
      tag,
      filter: this.filter,
      filled: this.filled,
      expired: this.runs.filter((r) => r.newestMs < cutoff).map((r) => this.ref(r)),
      kept: this.runs.filter((r) => r.newestMs >= cutoff).map((r) => this.ref(r)),
    };
    this.sealing = true;
    const transfer = [entries.hi.buffer, entries.lo.buffer, entries.recv.buffer, entries.seqs.buffer] as ArrayBuffer[];
    void (async () => {
      try {
        const result = (await runTask(task, transfer)) as SealResult;
        await this.store.persistRun(this.partition, name);
        this.sealed = { result, run: { ...run, entries: result.entries, newestMs: result.newestMs } };
      } catch (err) {
        this.sealRetryAtMs = Date.now() + SEAL_RETRY_MS;
        // The task may have put words in the filter before it failed: the next seal rebuilds it rather than count on
        // its free slots.
        this.filled = this.filter.length;
        log.error('could not seal dedup identifiers into a run on disk; they stay in memory and the seal is retried', {
          partition: this.partition,
          err: String(err),
        });
        // The retry writes a run of another name: this one's file (and blob) would be left behind.
        for (const leftover of [name, `${name}.tmp`]) await this.store.removeRun(this.partition, leftover).catch(() => undefined);
      } finally {
        this.sealing = false;
      }
    })();
  }

  private install(): void {
    const { result, run } = this.sealed!;
    this.sealed = null;
    const unreadable = new Set(result.unreadableTags);
    const leaving = new Set([...result.retiredTags, ...unreadable]);
    for (const r of this.runs) {
      if (!leaving.has(r.tag)) continue;
      if (unreadable.has(r.tag)) logRunLost(this.partition, this.runName(r), 'unreadable');
      this.nonces[r.tag] = 0;
      this.retired.push({ name: this.runName(r), after: this.serialized + 1 });
    }
    this.runs = this.runs.filter((r) => !leaving.has(r.tag));
    this.runs.push(run);
    this.nonces[run.tag] = run.nonce;
    this.filter = result.filter;
    this.filled = result.filled;
    this.frozen = null;
    this.runSetCache = undefined;
    this.seals++;
    log.debug('dedup identifiers sealed into a run', { partition: this.partition, entries: run.entries, runs: this.runs.length });
  }

  /** The snapshot: the tables in memory, and the runs by name. `serial` goes to snapshotSaved() once it is durable. */
  serialize(coversOffset: number): { bytes: Buffer; serial: number } {
    const serial = ++this.serialized;
    const header = this.legacyActive() ? { runs: this.runs, legacyUntilMs: this.legacyUntilMs } : { runs: this.runs };
    return { bytes: this.hot.serialize(coversOffset, this.frozen, header), serial };
  }

  /** A snapshot is durable: the runs no snapshot from `serial` on names are removed. */
  async snapshotSaved(serial: number): Promise<void> {
    const due = this.retired.filter((r) => r.after <= serial);
    if (due.length === 0) return;
    this.retired = this.retired.filter((r) => r.after > serial);
    for (const r of due) {
      try {
        await this.store.removeRun(this.partition, r.name);
      } catch (err) {
        this.retired.push(r); // tried again after the next snapshot
        log.warn('could not remove a retired dedup run; will retry', { partition: this.partition, run: r.name, err: String(err) });
      }
    }
  }

  /**
   * A partition's index from its snapshot (null: none): the runs it names are fetched and their filter built; the
   * partition's runs it does not name (left by a seal that a crash interrupted) are removed. Rejects with
   * CorruptSnapshotError for a snapshot that cannot be read, and with the store's error when a run cannot be fetched
   * for now (an outage: the caller tries again); a run that is gone, or unreadable, is left out, with an error logged.
   */
  static async load(
    partition: number,
    windowMs: number,
    store: RunStore,
    bytes: Buffer | null,
    runTask: WorkerTask,
  ): Promise<{ index: PartitionIndex; offset: number }> {
    // Without a snapshot nothing says which stored runs are current: none is removed.
    if (!bytes) return { index: new PartitionIndex(partition, windowMs, store), offset: 0 };
    let snap: ReturnType<typeof DedupIndex.deserialize>;
    try {
      snap = DedupIndex.deserialize(bytes, windowMs, `dedup snapshot of partition ${partition}`);
    } catch (err) {
      throw new CorruptSnapshotError(String((err as Error)?.message ?? err));
    }
    const index = new PartitionIndex(partition, windowMs, store, snap.index);
    const named = Array.isArray(snap.header.runs) ? (snap.header.runs as RunMeta[]) : [];
    for (const run of named) {
      try {
        await store.fetchRun(partition, index.runName(run));
        index.runs.push(run);
      } catch (err) {
        if (!(err instanceof RunMissingError)) throw err;
        logRunLost(partition, err.run, 'missing');
      }
    }
    if (index.runs.length > 0) {
      const task: FilterTask = { kind: 'filter', runs: index.runs.map((r) => index.ref(r)) };
      const built = (await runTask(task, [])) as BuiltFilter;
      const unreadable = new Set(built.unreadableTags);
      for (const r of index.runs) if (unreadable.has(r.tag)) logRunLost(partition, index.runName(r), 'unreadable');
      index.runs = index.runs.filter((r) => !unreadable.has(r.tag));
      index.filter = built.filter;
      index.filled = built.filled;
    }
    for (const run of index.runs) {
      index.nonces[run.tag] = run.nonce;
      if (run.newestMs > index.newestMs) index.newestMs = run.newestMs;
    }
    const hotNewest = index.hot.newestReceivedMs();
    if (hotNewest > index.newestMs) index.newestMs = hotNewest;
    if (snap.header.version !== SNAPSHOT_VERSION) index.takeOverLegacy();
    else if (typeof snap.header.legacyUntilMs === 'number') index.legacyUntilMs = snap.header.legacyUntilMs;
    await removeUnnamed(partition, store, new Set(index.runs.map((r) => index.runName(r))));
    return { index, offset: snap.offset };
  }

  /**
   * A snapshot of an earlier version: its entries and runs hold legacy fingerprints, looked up as well until the newest
   * of them is out of the window. Its pending cancellations name their event, so they are keyed anew.
   */
  private takeOverLegacy(): void {
    if (this.newestMs > 0) this.legacyUntilMs = this.newestMs + this.windowMs + EXPIRY_SLACK_MS;
    const pending = new Map<string, PendingCancel>();
    for (const p of this.hot.pending.values()) {
      const [hi, lo] = fingerprint(p.account, p.identifier);
      pending.set(fingerprintKey(hi, lo), { ...p, hi, lo });
    }
    this.hot.pending = pending;
    log.info('dedup snapshot of an earlier version: looking events up by the legacy fingerprint too', {
      partition: this.partition,
      untilMs: this.legacyUntilMs,
    });
  }
}

function logRunLost(partition: number, run: string, why: 'missing' | 'unreadable'): void {
  log.error(`dedup run ${why}; its identifiers are no longer deduplicated`, { partition, run });
}

async function removeUnnamed(partition: number, store: RunStore, named: Set<string>): Promise<void> {
  for (const name of await store.storedRuns(partition)) {
    if (named.has(name)) continue;
    try {
      await store.removeRun(partition, name);
    } catch (err) {
      log.warn('could not remove an unused dedup run file', { partition, run: name, err: String(err) });
    }
  }
}
