import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DedupIndex, fingerprintKey } from '../aggregator/dedup-index';
import { FileSnapshots } from '../aggregator/snapshots';

const HOUR = 3600_000;

t.test('remembers identifiers, with their receipt time and seq', async (t) => {
  const idx = new DedupIndex(24 * HOUR, 16);
  idx.set(1, 2, 1000, 77);
  t.equal(idx.receivedAt(1, 2), 1000);
  t.equal(idx.get(1, 2)?.seq, 77);
  t.same(idx.get(1, 2), { receivedMs: 1000, seq: 77 });
  t.equal(idx.get(2, 1), null, 'hi/lo are not interchangeable');
  t.equal(idx.receivedAt(9, 9), 0);
});

t.test('grows past its initial capacity without losing entries', async (t) => {
  const idx = new DedupIndex(24 * HOUR, 16);
  for (let i = 1; i <= 50_000; i++) idx.set(i, i * 7, 5000 + i, i);
  t.equal(idx.size, 50_000);
  t.ok(idx.capacity >= 50_000 / 0.6);
  let missing = 0;
  for (let i = 1; i <= 50_000; i++) if (idx.get(i, i * 7)?.seq !== i) missing++;
  t.equal(missing, 0);
});

t.test('rebuild drops entries older than the window', async (t) => {
  const idx = new DedupIndex(10 * HOUR, 16);
  idx.set(1, 1, 1 * HOUR, 1);
  idx.set(2, 2, 20 * HOUR, 2);
  idx.pending.set(fingerprintKey(3, 3), { hi: 3, lo: 3, receivedMs: 1 * HOUR, account: 'a', eventName: 'e', identifier: 'x' });
  idx.pending.set(fingerprintKey(4, 4), { hi: 4, lo: 4, receivedMs: 19 * HOUR, account: 'a', eventName: 'e', identifier: 'y' });
  idx.rebuild(25 * HOUR);
  t.equal(idx.receivedAt(1, 1), 0, 'expired');
  t.equal(idx.receivedAt(2, 2), 20 * HOUR, 'kept');
  t.equal(idx.size, 1);
  t.same([...idx.pending.keys()], [fingerprintKey(4, 4)]);
});

t.test('snapshots round-trip with their offset and pending cancels', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dedup-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const snapshots = new FileSnapshots(dir);
  t.equal(await snapshots.load(0), null, 'no snapshot yet');
  const idx = new DedupIndex(HOUR, 16);
  for (let i = 1; i <= 1000; i++) idx.set(i, 1000 - i, 123 + i, i * 10);
  idx.pending.set(fingerprintKey(5, 6), { hi: 5, lo: 6, receivedMs: 99, account: 'acct', eventName: 'ev', identifier: 'id-1' });
  await snapshots.save(0, idx.serialize(4242));
  t.same(fs.readdirSync(dir), ['dedup-p0.snap'], 'no temporary file left behind');
  const loaded = DedupIndex.deserialize((await snapshots.load(0))!, HOUR);
  t.equal(loaded.offset, 4242);
  t.equal(loaded.index.size, 1000);
  for (const i of [1, 500, 1000]) t.same(loaded.index.get(i, 1000 - i), { receivedMs: 123 + i, seq: i * 10 });
  t.same(loaded.index.pending.get(fingerprintKey(5, 6))?.identifier, 'id-1');
  const frozen = idx.clone();
  idx.set(7777, 1, 1, 1);
  t.equal(frozen.receivedAt(7777, 1), 0, 'a clone does not see later changes');
  t.throws(() => DedupIndex.deserialize(idx.serialize(1).subarray(0, 100), HOUR), /truncated/);
  t.throws(() => DedupIndex.deserialize(idx.serialize(1).subarray(0, 5000), HOUR), /truncated/);
});

t.test('growth moves entries a few at a time: lookups, overwrites and expiry stay exact meanwhile', async (t) => {
  const idx = new DedupIndex(10 * HOUR, 1024);
  const limit = Math.floor(1024 * 0.6);
  // Half the entries are old enough to expire once the table grows at 20 h.
  for (let i = 1; i <= limit; i++) idx.set(i, i, i % 2 === 0 ? 1 * HOUR : 15 * HOUR, i);
  t.equal(idx.capacity, 1024);
  idx.set(100_000, 1, 20 * HOUR, 100_000); // starts the growth
  t.equal(idx.capacity, 2048, 'the new table is twice as large');
  // Mid-growth: entries not moved yet are found, and an overwrite of one of them wins over the old copy.
  t.equal(idx.get(limit - 1, limit - 1)?.seq, limit - 1, 'an entry still in the old table is found');
  idx.set(limit - 1, limit - 1, 21 * HOUR, 7);
  t.equal(idx.get(limit - 1, limit - 1)?.seq, 7);
  for (let k = 1; k <= 200; k++) idx.set(200_000 + k, k, 20 * HOUR, k);
  let lost = 0;
  for (let i = 1; i <= limit; i++) {
    const expect = i === limit - 1 ? 21 * HOUR : i % 2 === 0 ? 1 * HOUR : 15 * HOUR;
    const r = idx.receivedAt(i, i);
    if (r !== expect && !(r === 0 && expect === 1 * HOUR)) lost++;
  }
  t.equal(lost, 0, 'every live entry is found during and after the move; expired ones may be gone');
  t.equal(idx.get(limit - 1, limit - 1)?.seq, 7, 'the overwrite survives the move');
  const frozen = idx.clone(); // finishes the move
  const expired = Math.floor(limit / 2) - ((limit - 1) % 2 === 0 ? 1 : 0);
  t.equal(idx.size, limit + 1 + 200 - expired, 'size counts live entries only once the move ends');
  t.equal(frozen.size, idx.size);
  let kept = 0;
  for (let i = 2; i <= limit; i += 2) if (i !== limit - 1 && idx.receivedAt(i, i) !== 0) kept++;
  t.equal(kept, 0, 'expired entries are dropped by the move');
});

t.test('a snapshot taken while the index grows holds each live entry once, and no empty slots', async (t) => {
  const idx = new DedupIndex(10 * HOUR, 1024);
  const limit = Math.floor(1024 * 0.6);
  // Every third entry is old enough to expire when the table grows at 20 h.
  const recvOf = (i: number) => (i % 3 === 0 ? 1 * HOUR : 15 * HOUR);
  for (let i = 1; i <= limit; i++) idx.set(i, i, recvOf(i), i);
  idx.set(100_000, 1, 20 * HOUR, 100_000); // starts the growth
  idx.set(limit - 1, limit - 1, 21 * HOUR, 7); // set again while its old copy waits to move
  for (let k = 1; k <= 10; k++) idx.set(200_000 + k, k, 20 * HOUR, k); // the move is part way through
  t.ok(idx.bytes > idx.capacity * 24, 'both tables are held meanwhile');
  const bytes = idx.serialize(9);
  t.ok(bytes.length <= 256 + idx.size * 24, `a slot per entry (${bytes.length} bytes for ${idx.size})`);
  t.ok(bytes.length < (idx.capacity * 24) / 2, 'not a slot per table slot');
  const { index, offset } = DedupIndex.deserialize(bytes, 10 * HOUR);
  t.equal(offset, 9);
  let wrong = 0;
  for (let i = 1; i <= limit; i++) {
    const got = index.get(i, i);
    if (i === limit - 1) continue;
    if (i % 3 === 0 ? got !== null && got.receivedMs !== recvOf(i) : got?.receivedMs !== recvOf(i) || got?.seq !== i) wrong++;
  }
  t.equal(wrong, 0, 'every live entry, with its receipt time and seq');
  t.same(index.get(limit - 1, limit - 1), { receivedMs: 21 * HOUR, seq: 7 }, 'the entry set again keeps its newer value');
  t.same(index.get(100_000, 1), { receivedMs: 20 * HOUR, seq: 100_000 });
  for (let k = 1; k <= 10; k++) t.same(index.get(200_000 + k, k), { receivedMs: 20 * HOUR, seq: k });
  const moved = idx.clone(); // finishes the move: the reference for what the snapshot must hold
  t.ok(index.size >= moved.size && index.size <= moved.size + Math.floor(limit / 3), 'each entry once (expired ones the move had not reached may remain)');
  t.ok(index.capacity * 0.3 >= index.size, 'loaded with room to grow');
});

t.test('a version 1 snapshot (whole tables, written by earlier versions) still loads', async (t) => {
  const idx = new DedupIndex(HOUR, 16);
  for (let i = 1; i <= 300; i++) idx.set(i, 300 - i, 500 + i, i * 3);
  idx.pending.set(fingerprintKey(8, 9), { hi: 8, lo: 9, receivedMs: 42, account: 'acct', eventName: 'ev', identifier: 'id-v1' });
  // The layout version 1 wrote: header, then the four arrays of every slot.
  const tables = idx.clone() as unknown as { hi: Uint32Array; lo: Uint32Array; recv: Float64Array; seqs: Float64Array; capacity: number; size: number };
  const header = Buffer.from(
    JSON.stringify({ version: 1, offset: 77, windowMs: HOUR, capacity: tables.capacity, size: tables.size, pending: [...idx.pending.values()] }),
  );
  const len = Buffer.alloc(4);
  len.writeUInt32LE(header.length);
  const v1 = Buffer.concat([len, header, ...[tables.hi, tables.lo, tables.recv, tables.seqs].map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength))]);
  const { index, offset } = DedupIndex.deserialize(v1, HOUR);
  t.equal(offset, 77);
  t.equal(index.size, 300);
  for (const i of [1, 150, 300]) t.same(index.get(i, 300 - i), { receivedMs: 500 + i, seq: i * 3 });
  t.equal(index.pending.get(fingerprintKey(8, 9))?.identifier, 'id-v1');
  t.throws(() => DedupIndex.deserialize(v1.subarray(0, v1.length - 8), HOUR), /truncated/);
  const unknown = Buffer.from(v1);
  unknown.write(JSON.stringify({ version: 9 }).padEnd(header.length), 4);
  t.throws(() => DedupIndex.deserialize(unknown, HOUR), /unknown version 9/);
});
