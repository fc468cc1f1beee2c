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
  t.equal(idx.seqOf(1, 2), 77);
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
  for (let i = 1; i <= 50_000; i++) if (idx.seqOf(i, i * 7) !== i) missing++;
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
