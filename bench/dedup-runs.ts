/**
 * What the dedup index's runs on disk cost (aggregator/dedup-runs.ts), against the in-memory table as the baseline:
 *
 *   node dist/bench/dedup-runs.js [--runs 10] [--entries 1000000] [--dir /var/tmp]
 *
 * Writes `--runs` runs of `--entries` random fingerprints into a temporary directory under `--dir` (removed after), and
 * prints one table: a seal per million identifiers (sort, write, fsync), a filter build from the files per million (a
 * start), and the time of one lookup: of an identifier in the in-memory table (the baseline), of a new identifier in
 * the filter (no match: no I/O), and of an identifier found on disk (a block read).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DedupIndex, type EntryViews } from '../aggregator/dedup-index';
import { buildFilter, emptyNonces, RunReader, runFileName, writeRun, type RunRef, type RunSet } from '../aggregator/dedup-runs';
import { Args } from './args';

function main(): void {
  const args = new Args(process.argv.slice(2), [], ['runs', 'entries', 'dir']);
  const runs = args.num('runs', 10);
  const n = args.num('entries', 1_000_000);
  const dir = fs.mkdtempSync(path.join(args.str('dir', os.tmpdir()), 'meterd-dedup-runs-'));
  let x = 0x9e3779b9;
  const random = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return x >>> 0;
  };
  const entries = (run: number): EntryViews => {
    const e: EntryViews = { hi: new Uint32Array(n), lo: new Uint32Array(n), recv: new Float64Array(n), seqs: new Float64Array(n) };
    for (let i = 0; i < n; i++) {
      e.hi[i] = random();
      e.lo[i] = random();
      e.recv[i] = 1_800_000_000_000 + run * n + i;
      e.seqs[i] = run * n + i;
    }
    return e;
  };
  try {
    const refs: RunRef[] = [];
    const nonces = emptyNonces();
    let sealMs = 0;
    let last: EntryViews | null = null;
    for (let r = 0; r < runs; r++) {
      last = entries(r);
      const tag = r + 1;
      nonces[tag] = 1;
      const file = path.join(dir, runFileName(0, tag, 1));
      const t0 = performance.now();
      writeRun(file, last);
      sealMs += performance.now() - t0;
      refs.push({ tag, file, entries: n });
    }
    const t1 = performance.now();
    const { filter } = buildFilter(refs);
    const buildMs = performance.now() - t1;
    const set: RunSet = { filter, nonces, dir, partition: 0 };

    const probes = Math.min(n, 200_000);
    const memory = new DedupIndex(24 * 3600_000, DedupIndex.capacityFor(n));
    for (let i = 0; i < n; i++) memory.set(last!.hi[i], last!.lo[i], last!.recv[i], last!.seqs[i]);
    const perLookup = (fn: (i: number) => void): number => {
      const t = performance.now();
      for (let i = 0; i < probes; i++) fn(i);
      return ((performance.now() - t) * 1e6) / probes;
    };
    let sink = 0;
    const memoryNs = perLookup((i) => (sink += memory.receivedAt(last!.hi[i], last!.lo[i])));
    const reader = new RunReader();
    let falseMatches = 0;
    const missNs = perLookup(() => {
      if (reader.lookup(set, random(), random())) falseMatches++;
    });
    let found = 0;
    const hitNs = perLookup((i) => {
      if (reader.lookup(set, last!.hi[i], last!.lo[i])) found++;
    });
    if (found !== probes || sink === 0) throw new Error(`lookups found ${found} of ${probes} identifiers on disk`);

    const total = runs * n;
    const rows: Array<[string, string, string]> = [
      ['seal (sort, write, fsync)', `${(sealMs / runs / (n / 1e6)).toFixed(0)} ms per M identifiers`, ''],
      [
        'filter build at start',
        `${(buildMs / (total / 1e6)).toFixed(0)} ms per M identifiers`,
        `${(filter.byteLength / total).toFixed(1)} bytes per identifier`,
      ],
      ['lookup in the in-memory table (baseline)', `${memoryNs.toFixed(0)} ns`, '1.0×'],
      ['lookup of a new identifier (filter only)', `${missNs.toFixed(0)} ns`, `${(missNs / memoryNs).toFixed(1)}×, ${falseMatches} false matches in ${probes}`],
      ['lookup of an identifier on disk (block read)', `${hitNs.toFixed(0)} ns`, `${(hitNs / memoryNs).toFixed(1)}×`],
    ];
    process.stdout.write(`dedup runs: ${runs} runs of ${n.toLocaleString('en-US')} identifiers, ${probes.toLocaleString('en-US')} lookups each\n\n`);
    process.stdout.write('| measure | time | vs baseline / note |\n|---|---|---|\n');
    for (const [a, b, c] of rows) process.stdout.write(`| ${a} | ${b} | ${c} |\n`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main();
