/**
 * The bench orchestrator end to end at a tiny size: `node dist/bench/run.js` with every transport runs the null
 * servers and meterd (embedded; distributed when METERD_TEST_MODE=distributed and the servers' URLs are exported),
 * prints one table with every row, and every meterd row's summaries are exact. No timing is asserted.
 */
import t from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { MAIN, ROOT } from './helpers/server';

const RUN = path.join(ROOT, 'dist', 'bench', 'run.js');
const distributed = process.env.METERD_TEST_MODE === 'distributed';
const serversExported = ['KAFKA_BROKERS', 'CLICKHOUSE_URL', 'DATABASE_URL'].every((n) => process.env[n]);

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('BENCH_')));
    const child = spawn(process.execPath, [RUN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c;
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c;
    });
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('npm run bench -- --help explains the options and exits 0; an unknown option exits 2 with the help', async (t) => {
  const help = await run(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /--transport LIST +which streams/);
  const bad = await run(['--no-such-flag']);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /unknown option --no-such-flag/);
  t.match(bad.stderr, /Options:/, 'the help follows the error');
});

t.test(
  'a tiny run with every transport (HTTP, WebSocket through the client package, raw WebSocket frames): every row in one table, summaries exact',
  { skip: distributed && !serversExported ? 'distributed mode needs KAFKA_BROKERS, CLICKHOUSE_URL and DATABASE_URL exported' : false },
  async (t) => {
    t.ok(fs.existsSync(MAIN) && fs.existsSync(RUN), 'built (npm run build)');
    const results = fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-bench-smoke-'));
    t.teardown(() => fs.rmSync(results, { recursive: true, force: true }));
    const mode = distributed ? 'distributed' : 'embedded';
    const r = await run([
      '--mode',
      mode,
      '--transport',
      'all',
      '--events',
      '20000',
      // Generous bounds: every row ends at its 20k events, however slow a shared machine is (no timing asserted).
      '--duration',
      '120',
      '--null-events',
      '20000',
      '--null-duration',
      '120',
      '--ws-batch',
      '500',
      '--freshness-timeout',
      '60',
      '--chart',
      '--quiet',
      '--results-dir',
      results,
    ]);
    t.equal(r.code, 0, `exit 0 (stderr tail: ${r.stderr.split('\n').slice(-8).join(' | ')})`);
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('| '));
    const rows = lines.slice(1).map((l) =>
      l
        .split('|')
        .slice(1, -1)
        .map((c) => c.trim()),
    );
    const name = mode === 'embedded' ? 'embedded' : 'distributed (all)';
    t.same(
      rows.map((c) => `${c[0]}, ${c[1]}`),
      [
        'null server (uWS), HTTP',
        'null server (uWS), WebSocket',
        'null server (uWS), WebSocket (raw frames)',
        'null server (meterd HTTP layer), HTTP',
        `${name}, HTTP`,
        `${name}, WebSocket`,
        `${name}, WebSocket (raw frames)`,
      ],
      'every row, in order',
    );
    for (const c of rows) {
      t.equal(c[2], '20,000', `${c[0]}, ${c[1]}: every event acknowledged`);
      t.equal(c[13], '0', `${c[0]}, ${c[1]}: no error`);
    }
    for (const c of rows.slice(4)) {
      t.match(c[12]!, /^exact \(101 customers, [\d,]+ summary reads\/s\)$/, `${c[0]}, ${c[1]}: summaries exact, and read at a measured rate`);
      t.match(c[9]!, /^[\d.]+ \/ [\d.]+ \/ [\d.]+ \/ [\d.]+ \/ [\d.]+ \/ [\d.]+ = [\d.]+/, `${c[0]}, ${c[1]}: CPU per thread kind measured`);
      t.match(c[11]!, /MiB|GiB/, 'peak RSS measured');
    }
    const json = fs.readdirSync(results).filter((f) => /^[\d-]+T[\d-]+Z\.json$/.test(f));
    t.equal(json.length, 1, 'one JSON report');
    const report = JSON.parse(fs.readFileSync(path.join(results, json[0]!), 'utf8')) as { rows: { ok: boolean; transport: string }[] };
    t.same(
      report.rows.map((x) => x.ok),
      [true, true, true, true, true, true, true],
    );
    const svg = fs.readdirSync(results).filter((f) => f.endsWith('.svg'));
    t.equal(svg.length, 1, 'the chart written');
    t.match(fs.readFileSync(path.join(results, svg[0]!), 'utf8'), /^<svg /);
  },
);
