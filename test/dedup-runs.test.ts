/**
 * The identifier index's runs on disk: run files and their lookups, the run filter (sealing, retiring, rebuilding), and
 * a partition index that seals its hot table, snapshots, and loads back from a snapshot that names runs.
 */
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildFilter, emptyFilter, emptyNonces, RunReader, runFileName, seal, writeRun, type RunSet, type SealTask } from '../aggregator/dedup-runs';
import { fingerprintKey } from '../aggregator/dedup-index';
import { CorruptSnapshotError, PartitionIndex, type RunStore, type WorkerTask } from '../aggregator/partition-index';
import { FileSnapshots } from '../aggregator/snapshots';
import run, { processChunk } from '../aggregator/worker';
import { fingerprint, legacyFingerprint } from '../aggregator/fingerprint';
import { encodeRecord, RecordKind, type MeterRecord } from '../shared/event-record';
import type { MeterInfo } from '../shared/meters';

const HOUR = 3600_000;

function tmp(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-runs-'));
}

/** n entries with distinct fingerprints; every 50th shares its `hi` with the one before (a 32-bit collision). */
function entries(n: number, seed: number, recvBase = 1_000_000) {
  const hi = new Uint32Array(n);
  const lo = new Uint32Array(n);
  const recv = new Float64Array(n);
  const seqs = new Float64Array(n);
  let x = seed >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  for (let i = 0; i < n; i++) {
    hi[i] = i % 50 === 1 ? hi[i - 1] : next();
    lo[i] = next();
    recv[i] = recvBase + i;
    seqs[i] = i * 128 + 3;
  }
  return { hi, lo, recv, seqs };
}

/** The in-thread equivalent of the aggregator's pool. */
const inThread: WorkerTask = async (task) => run(task);

t.test('a run file answers lookups by full fingerprint, 32-bit collisions included', async (t) => {
  const dir = tmp();
  const e = entries(5000, 7);
  const nonces = emptyNonces();
  nonces[3] = 0xabc;
  const file = path.join(dir, runFileName(0, 3, 0xabc));
  const written = writeRun(file, e);
  t.same(written, { entries: 5000, newestMs: 1_000_000 + 4999 });
  const { filter } = buildFilter([{ tag: 3, file, entries: 5000 }]);
  const runs: RunSet = { filter, nonces, dir, partition: 0 };
  const reader = new RunReader();
  let wrong = 0;
  for (let i = 0; i < 5000; i++) {
    if (!reader.lookup(runs, e.hi[i], e.lo[i]) || reader.foundRecv !== e.recv[i] || reader.foundSeq !== e.seqs[i]) wrong++;
  }
  t.equal(wrong, 0, 'every entry is found with its received time and seq');
  let falseHits = 0;
  for (let i = 0; i < 5000; i++) if (reader.lookup(runs, e.hi[i], (e.lo[i] + 1) >>> 0)) falseHits++;
  t.equal(falseHits, 0, 'a fingerprint that differs in its low half is not found, even where the filter matches');
  nonces[3] = 0;
  t.notOk(reader.lookup(runs, e.hi[10], e.lo[10]), 'a run no longer named is not read');
  fs.rmSync(dir, { recursive: true });
});

t.test('seals retire expired runs from the filter and rebuild it when it fills up', async (t) => {
  const dir = tmp();
  const nonces = emptyNonces();
  const runs: RunSet = { filter: emptyFilter(0), nonces, dir, partition: 1 };
  const reader = new RunReader();
  const sets = [entries(1000, 1), entries(1000, 2), entries(3000, 3)];
  const refs: { tag: number; file: string; entries: number }[] = [];
  let filled = 0;
  let filter = runs.filter;
  const filters: Uint32Array[] = [];
  for (let k = 0; k < sets.length; k++) {
    const tag = k + 1;
    const file = path.join(dir, runFileName(1, tag, 100 + k));
    const e = sets[k];
    // The third seal retires the first run.
    const expired = k === 2 ? refs.slice(0, 1) : [];
    const kept = refs.filter((r) => !expired.includes(r));
    const task: SealTask = {
      kind: 'seal',
      entries: { hi: e.hi.slice(), lo: e.lo.slice(), recv: e.recv.slice(), seqs: e.seqs.slice() },
      file,
      tag,
      filter,
      filled,
      expired,
      kept,
    };
    const result = seal(task);
    t.same(
      result.retiredTags,
      expired.map((r) => r.tag),
    );
    filter = result.filter;
    filled = result.filled;
    filters.push(filter);
    for (const r of expired) nonces[r.tag] = 0;
    nonces[tag] = 100 + k;
    refs.splice(0, refs.length, ...kept, { tag, file, entries: e.hi.length });
  }
  t.equal(filters[0], filters[1], 'a filter with room is filled in place');
  t.not(filters[2], filters[1], 'a full one is rebuilt into a larger buffer');
  t.equal(filled, 4000, 'without the retired run');
  const view: RunSet = { ...runs, filter };
  const found = sets.map((e) => {
    let n = 0;
    for (let i = 0; i < e.hi.length; i++) if (reader.lookup(view, e.hi[i], e.lo[i])) n++;
    return n;
  });
  t.same(found, [0, 1000, 3000], 'the retired run is no longer found; the others are');
  fs.rmSync(dir, { recursive: true });
});

/** Calls maintain, as the aggregator does between batches, until the seal it starts is installed. */
async function sealed(ix: PartitionIndex, hotLimit: number): Promise<void> {
  const seals = ix.seals + 1;
  for (let i = 0; i < 200 && ix.seals < seals; i++) {
    ix.maintain(hotLimit, inThread, Date.now());
    await new Promise((r) => setTimeout(r, 5));
  }
  if (ix.seals < seals) throw new Error('the seal was not installed');
}

t.test('a partition index seals its hot table into runs, snapshots them by name and loads them back', async (t) => {
  const dir = tmp();
  const store = new FileSnapshots(dir);
  const ix = new PartitionIndex(2, 24 * HOUR, store);
  const e = entries(700, 11);
  const HOT = 200;
  for (let i = 0; i < 700; i++) {
    ix.set(e.hi[i], e.lo[i], e.recv[i], e.seqs[i]);
    if (ix.hot.size >= HOT) await sealed(ix, HOT);
  }
  t.equal(ix.runCount, 3, 'three runs of 200');
  t.equal(ix.size, 700, 'every identifier is held, on disk or in memory');
  t.equal(ix.hot.size, 100);
  t.equal(ix.receivedAt(e.hi[0], e.lo[0]), 0, 'a sealed identifier is no longer in memory');
  const reader = new RunReader();
  t.ok(reader.lookup(ix.runSet()!, e.hi[0], e.lo[0]), 'but found on disk');
  t.equal(reader.foundSeq, e.seqs[0]);
  ix.pending.set(fingerprintKey(1, 2), { hi: 1, lo: 2, receivedMs: 5, account: 'a', eventName: 'n', identifier: 'i' });

  fs.writeFileSync(path.join(dir, runFileName(2, 77, 0x1234)), 'left by a seal a crash interrupted');
  const { bytes, serial } = ix.serialize(4321);
  await store.save(2, bytes);
  await ix.snapshotSaved(serial);
  const { index, offset } = await PartitionIndex.load(2, 24 * HOUR, store, await store.load(2), inThread);
  t.equal(offset, 4321);
  t.equal(index.runCount, 3);
  t.equal(index.size, 700);
  t.ok(index.pending.has(fingerprintKey(1, 2)), 'pending cancellations come back');
  let found = 0;
  const loaded = index.runSet()!;
  for (let i = 0; i < 600; i++) if (reader.lookup(loaded, e.hi[i], e.lo[i]) && reader.foundRecv === e.recv[i]) found++;
  for (let i = 600; i < 700; i++) if (index.receivedAt(e.hi[i], e.lo[i]) === e.recv[i]) found++;
  t.equal(found, 700, 'every identifier is found after the load');
  t.notOk(fs.existsSync(path.join(dir, runFileName(2, 77, 0x1234))), 'a run file no snapshot names is removed');
  fs.rmSync(dir, { recursive: true });
});

t.test('runs out of the window are retired, and removed once a snapshot no longer names them', async (t) => {
  const dir = tmp();
  const store = new FileSnapshots(dir);
  const ix = new PartitionIndex(0, HOUR, store);
  const old = entries(150, 5, 1_000_000);
  for (let i = 0; i < 150; i++) ix.set(old.hi[i], old.lo[i], old.recv[i], old.seqs[i]);
  await sealed(ix, 100);
  const firstRun = (await store.storedRuns(0))[0];
  // Two hours later: the first run is out of the window when the next one is sealed.
  const later = entries(150, 6, 1_000_000 + 2 * HOUR);
  for (let i = 0; i < 150; i++) ix.set(later.hi[i], later.lo[i], later.recv[i], later.seqs[i]);
  await sealed(ix, 100);
  t.equal(ix.runCount, 1, 'the new run replaced the expired one');
  const reader = new RunReader();
  t.notOk(reader.lookup(ix.runSet()!, old.hi[0], old.lo[0]), 'the expired run is no longer read');
  t.ok(reader.lookup(ix.runSet()!, later.hi[0], later.lo[0]));
  t.ok(fs.existsSync(path.join(dir, firstRun)), 'its file stays while the last snapshot names it');
  const { bytes, serial } = ix.serialize(10);
  await store.save(0, bytes);
  await ix.snapshotSaved(serial);
  t.notOk(fs.existsSync(path.join(dir, firstRun)), 'and goes once a snapshot without it is saved');
  fs.rmSync(dir, { recursive: true });
});

t.test('a seal that fails keeps the identifiers in memory and is retried', async (t) => {
  const dir = tmp();
  const store = new FileSnapshots(dir);
  // The run directory is unwritable for a while: the seal's file cannot be created.
  const blocked = path.join(dir, 'blocked');
  fs.writeFileSync(blocked, 'not a directory');
  const failing: RunStore = {
    runDir: () => blocked,
    persistRun: () => store.persistRun(),
    fetchRun: (p, name) => store.fetchRun(p, name),
    removeRun: (p, name) => store.removeRun(p, name),
    storedRuns: (p) => store.storedRuns(p),
  };
  const ix = new PartitionIndex(0, HOUR, failing);
  const e = entries(150, 9);
  for (let i = 0; i < 150; i++) ix.set(e.hi[i], e.lo[i], e.recv[i], e.seqs[i]);
  const now = Date.now();
  ix.maintain(100, inThread, now);
  for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 5));
  ix.maintain(100, inThread, now);
  t.equal(ix.runCount, 0, 'no run was installed');
  let inMemory = 0;
  for (let i = 0; i < 150; i++) if (ix.receivedAt(e.hi[i], e.lo[i]) === e.recv[i]) inMemory++;
  t.equal(inMemory, 150, 'every identifier is still found in memory (the frozen table)');
  t.equal(ix.size, 150);
  // The directory comes back; after the retry delay the seal is tried again and succeeds.
  fs.rmSync(blocked);
  fs.mkdirSync(blocked);
  for (let i = 0; i < 200 && ix.seals === 0; i++) {
    ix.maintain(100, inThread, now + 60_000);
    await new Promise((r) => setTimeout(r, 5));
  }
  t.equal(ix.runCount, 1, 'the retried seal installed a run');
  const reader = new RunReader();
  let onDisk = 0;
  for (let i = 0; i < 150; i++) if (ix.receivedAt(e.hi[i], e.lo[i]) === 0 && reader.lookup(ix.runSet()!, e.hi[i], e.lo[i])) onDisk++;
  t.equal(onDisk, 150, 'and the identifiers moved to it');
  fs.rmSync(dir, { recursive: true });
});

/** An index of 400 identifiers in four runs of 100, snapshotted into `store`. */
async function sealedIndex(store: FileSnapshots, dir: string): Promise<{ names: string[]; e: ReturnType<typeof entries> }> {
  const ix = new PartitionIndex(3, 24 * HOUR, store);
  const e = entries(400, 21);
  for (let i = 0; i < 400; i++) {
    ix.set(e.hi[i], e.lo[i], e.recv[i], e.seqs[i]);
    if (ix.hot.size >= 100) await sealed(ix, 100);
  }
  const { bytes } = ix.serialize(99);
  await store.save(3, bytes);
  const names = (await store.storedRuns(3)).sort();
  if (names.length !== 4 || !fs.existsSync(path.join(dir, names[0]))) throw new Error(`expected 4 runs, found ${names.join(',')}`);
  return { names, e };
}

t.test('loading: a missing or unreadable run is left out, the others still deduplicate', async (t) => {
  const dir = tmp();
  const store = new FileSnapshots(dir);
  const { names, e } = await sealedIndex(store, dir);
  fs.rmSync(path.join(dir, names[0]));
  fs.truncateSync(path.join(dir, names[1]), 100);
  const { index, offset } = await PartitionIndex.load(3, 24 * HOUR, store, await store.load(3), inThread);
  t.equal(offset, 99);
  t.equal(index.runCount, 2, 'the two intact runs are kept');
  t.same((await store.storedRuns(3)).sort(), names.slice(2), 'the unreadable run file is removed with the missing one');
  const reader = new RunReader();
  let found = 0;
  for (let i = 0; i < 400; i++) if (reader.lookup(index.runSet()!, e.hi[i], e.lo[i])) found++;
  t.equal(found, 200, "the intact runs' identifiers are found");
  fs.rmSync(dir, { recursive: true });
});

t.test('loading: a corrupt snapshot rejects as such, an outage rejects and removes nothing, no snapshot removes nothing', async (t) => {
  const dir = tmp();
  const store = new FileSnapshots(dir);
  const { names } = await sealedIndex(store, dir);
  const bytes = (await store.load(3))!;
  const corrupt = await PartitionIndex.load(3, 24 * HOUR, store, bytes.subarray(0, 20), inThread).catch((err: unknown) => err);
  t.ok(corrupt instanceof CorruptSnapshotError, 'a truncated snapshot rejects with CorruptSnapshotError');
  const outage: RunStore = {
    runDir: () => dir,
    persistRun: () => store.persistRun(),
    fetchRun: async () => {
      throw new Error('connection refused');
    },
    removeRun: (p, name) => store.removeRun(p, name),
    storedRuns: (p) => store.storedRuns(p),
  };
  await t.rejects(PartitionIndex.load(3, 24 * HOUR, outage, bytes, inThread), /connection refused/, 'a run that cannot be fetched for now fails the load');
  const empty = await PartitionIndex.load(3, 24 * HOUR, store, null, inThread);
  t.equal(empty.index.size, 0);
  t.same((await store.storedRuns(3)).sort(), names, 'every run file is still there');
  fs.rmSync(dir, { recursive: true });
});

t.test("an earlier version's snapshot: its entries, runs and pending cancellations are found until they leave the window", async (t) => {
  const dir = tmp();
  const store = new FileSnapshots(dir);
  const WINDOW = 24 * HOUR;
  const T = 10 * HOUR;
  const ix = new PartitionIndex(4, WINDOW, store);
  const ids = Array.from({ length: 300 }, (_, i) => `evt-${i}`);
  for (let i = 0; i < ids.length; i++) {
    const [h, l] = legacyFingerprint('acct_a', ids[i]);
    ix.set(h, l, T + i, i * 128 + 4);
    if (ix.hot.size >= 200) await sealed(ix, 200);
  }
  t.equal(ix.runCount, 1, 'the first 200 on disk, the rest in memory');
  const [ph, pl] = legacyFingerprint('acct_a', 'late');
  ix.pending.set(fingerprintKey(ph, pl), { hi: ph, lo: pl, receivedMs: T, account: 'acct_a', eventName: 'tokens', identifier: 'late' });
  const written = ix.serialize(99).bytes;
  // As an earlier version wrote it: the same layout, version 3.
  const at = written.indexOf('"version":4');
  t.ok(at > 0);
  written.write('"version":3', at);
  await store.save(4, written);

  const { index } = await PartitionIndex.load(4, WINDOW, store, await store.load(4), inThread);
  t.ok(index.legacyActive(), 'events are looked up by the legacy fingerprint too');
  t.equal(index.legacyUntilMs, T + 299 + WINDOW + 5 * 60_000, 'until the newest entry is out of the window');
  const [nh, nl] = fingerprint('acct_a', 'late');
  t.ok(index.pending.has(fingerprintKey(nh, nl)), 'a pending cancellation is keyed by the current fingerprint');

  const meters: MeterInfo[] = [
    { account: 'acct_a', id: 'mtr_1', eventName: 'tokens', active: true, customerKey: 'c', valueKey: 'v', formula: 'sum', window: null },
  ];
  const record: MeterRecord = {
    kind: RecordKind.Events,
    account: 'acct_a',
    livemode: false,
    receivedMs: T + 1000,
    validated: false,
    events: [ids[0], ids[250], 'new-1'].map((id) => ['tokens', id, T + 1000, { c: 'cus_1', v: '1' }] as [string, string, number, Record<string, string>]),
  };
  const data = encodeRecord(record);
  const task = { partition: 4, firstOffset: 100, data, ends: Uint32Array.of(data.length), meters, emitFromOffset: 0, runs: index.runSet() };
  const r = processChunk({ ...task, legacy: true });
  t.same([r.hi[0], r.lo[0]], fingerprint('acct_a', ids[0]), 'the events carry the current fingerprint');
  t.same([r.legacyHi[0], r.legacyLo[0]], legacyFingerprint('acct_a', ids[0]), 'and the legacy one');
  t.equal(r.runRecv[0], T, 'an identifier on disk is found by its legacy fingerprint');
  t.equal(index.receivedAt(r.legacyHi[1], r.legacyLo[1]), T + 250, 'one in memory too');
  t.equal(r.runRecv[2], 0, 'a new identifier is not found');
  const cancel = encodeRecord({ kind: RecordKind.Adjustments, account: 'acct_a', livemode: false, receivedMs: T + 1000, cancels: [['tokens', ids[1]]] });
  const c = processChunk({ ...task, data: cancel, ends: Uint32Array.of(cancel.length), legacy: true }).cancels[0];
  t.same(c.legacy, legacyFingerprint('acct_a', ids[1]), 'an adjustment carries the legacy fingerprint too');
  t.equal(c.runRecv, T + 1, 'and finds its event on disk by it');
  const without = processChunk({ ...task, data: encodeRecord(record), legacy: false });
  t.equal(without.legacyHi.length, 0, 'without legacy lookups, no legacy fingerprints');
  t.equal(without.runRecv[0], 0, 'and the identifier on disk is not found');

  const reloaded = await PartitionIndex.load(4, WINDOW, store, index.serialize(120).bytes, inThread);
  t.equal(reloaded.index.legacyUntilMs, index.legacyUntilMs, 'a snapshot taken meanwhile keeps the legacy lookups');
  index.set(nh, nl, index.legacyUntilMs + 1, 7);
  t.notOk(index.legacyActive(), 'an entry received after that time ends them');
  const after = await PartitionIndex.load(4, WINDOW, store, index.serialize(130).bytes, inThread);
  t.notOk(after.index.legacyActive(), 'for good');
  fs.rmSync(dir, { recursive: true });
});
