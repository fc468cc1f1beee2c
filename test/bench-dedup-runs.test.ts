/**
 * The dedup runs benchmark (bench/dedup-runs.ts) at a small size: it runs, every lookup it times finds what it should
 * (it exits non-zero otherwise), and it prints its one table.
 */
import t from 'tap';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { ROOT } from './helpers/server';

t.test('node dist/bench/dedup-runs.js prints the table of the runs costs', async (t) => {
  const out = execFileSync(process.execPath, [path.join(ROOT, 'dist', 'bench', 'dedup-runs.js'), '--runs', '2', '--entries', '20000'], { encoding: 'utf8' });
  t.match(out, /2 runs of 20,000 identifiers/);
  for (const row of [
    'seal (sort, write, fsync)',
    'filter build at start',
    'lookup in the in-memory table (baseline)',
    'lookup of a new identifier',
    'lookup of an identifier on disk',
  ]) {
    t.match(out, new RegExp(`^\\| ${row.replace(/[()]/g, '\\$&')}.* \\|$`, 'm'), row);
  }
  t.throws(
    () => execFileSync(process.execPath, [path.join(ROOT, 'dist', 'bench', 'dedup-runs.js'), '--rusn', '2'], { stdio: 'pipe' }),
    'an unknown option fails',
  );
});
