/**
 * Benchmark orchestrator.
 *
 *   npm run bench -- [--events N] [--duration S] [--connections N] [--chart]      (= node dist/bench/run.js ...)
 *
 * (a) starts the null server (bench/null-server.ts) in a child process and runs the load generator against it: the
 *     generator's ceiling on this machine;
 * (b) starts the real server (`node dist/main.js`, random free port, temp DATA_DIR, API_KEYS=<fresh sk_test key>),
 *     waits for GET /healthz, runs the generator (meter creation, load, freshness, exactness), stops the server
 *     (SIGTERM, SIGKILL after 10 s) and removes the temp dir.
 * Prints a markdown table on stdout, writes bench/results/<timestamp>.json and, with --chart, <timestamp>.svg; server
 * logs go to bench/results/<timestamp>-server.log.
 *
 * Flags:
 *   --events N --duration S --connections N     passed to the generator (defaults 2,000,000 / 30 / 16)
 *   --batch N --customers N --client raw|http   passed to the generator (defaults 100 / 100 / raw)
 *   --timestamps                                passed to the generator (explicit event timestamps)
 *   --poll-mode adaptive|all --freshness-timeout S   passed to the generator
 *   --null-events N --null-duration S           the null-server run (defaults max(events, 10M) / min(duration, 5))
 *   --chart                                     also write an SVG bar chart
 *   --skip-null | --skip-server                 run only one of the two targets
 *   --server-entry PATH                         server entry point (default <repo>/dist/main.js)
 *   --data-parent DIR                           where the temp DATA_DIR is created (default the OS temp dir)
 *   --results-dir DIR                           default <repo>/bench/results
 * Exit status: 0 when every target ran and verified, 1 otherwise.
 */
import { spawn, ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { Args } from './args';

// ------------------------------------------------------------------------------------------------ helpers

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if ((JSON.parse(fs.readFileSync(pj, 'utf8')) as { name?: string }).name === 'meterd') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function httpStatus(port: number, p: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent: false, timeout: 1000 }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

function startNode(script: string, args: string[], env: NodeJS.ProcessEnv, logPath: string): ChildProcess {
  const fd = fs.openSync(logPath, 'a');
  const child = spawn(process.execPath, [script, ...args], { env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (exited(child)) return;
  child.kill('SIGTERM');
  if (await waitExit(child, 10_000)) return;
  process.stderr.write(`bench: pid ${child.pid} did not stop within 10 s of SIGTERM; sending SIGKILL\n`);
  child.kill('SIGKILL');
  await waitExit(child, 5_000);
}

function tail(file: string, lines = 30): string {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  }
}

async function waitHealthy(child: ChildProcess, port: number, logPath: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (exited(child)) {
      throw new Error(`process exited (code ${child.exitCode}, signal ${child.signalCode}) before /healthz answered 200;` +
        ` log tail:\n${tail(logPath)}`);
    }
    if ((await httpStatus(port, '/healthz')) === 200) return;
    await sleep(100);
  }
  throw new Error(`/healthz did not answer 200 within ${timeoutMs / 1000} s; log tail:\n${tail(logPath)}`);
}

// ------------------------------------------------------------------------------------------------ CPU of a process tree

const CLK_TCK = 100; // USER_HZ on Linux

/** Samples the CPU time (user+system, all threads) of a process and its descendants from /proc, every 500 ms. */
class TreeCpu {
  private readonly samples: [number, number][] = [];
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly rootPid: number) {}

  start(): void {
    if (process.platform !== 'linux') return;
    this.sample();
    this.timer = setInterval(() => this.sample(), 500);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private sample(): void {
    const stats = new Map<number, { ppid: number; ticks: number }>();
    let entries: string[];
    try {
      entries = fs.readdirSync('/proc');
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.charCodeAt(0) < 48 || e.charCodeAt(0) > 57) continue;
      try {
        const s = fs.readFileSync(`/proc/${e}/stat`, 'latin1');
        const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
        stats.set(Number(e), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
      } catch {
        /* gone */
      }
    }
    const tree = new Set<number>([this.rootPid]);
    let grew = true;
    while (grew) {
      grew = false;
      for (const [pid, st] of stats) {
        if (!tree.has(pid) && tree.has(st.ppid)) {
          tree.add(pid);
          grew = true;
        }
      }
    }
    let ticks = 0;
    for (const pid of tree) ticks += stats.get(pid)?.ticks ?? 0;
    if (stats.has(this.rootPid)) this.samples.push([Date.now(), ticks]);
  }

  private at(t: number): number | null {
    const s = this.samples;
    if (s.length === 0) return null;
    if (t <= s[0]![0]) return s[0]![1];
    for (let i = 1; i < s.length; i++) {
      if (s[i]![0] >= t) {
        const [t0, v0] = s[i - 1]!;
        const [t1, v1] = s[i]!;
        return v0 + ((v1 - v0) * (t - t0)) / Math.max(1, t1 - t0);
      }
    }
    return s[s.length - 1]![1];
  }

  /** CPU use between two epoch-ms instants, in % of one core; null when unknown. */
  pctBetween(t0: number, t1: number): number | null {
    const a = this.at(t0);
    const b = this.at(t1);
    if (a === null || b === null || t1 <= t0) return null;
    return Math.round(((((b - a) / CLK_TCK) * 1000) / (t1 - t0)) * 1000) / 10;
  }
}

// ------------------------------------------------------------------------------------------------ generator

// The generator's JSON result (see stream-load.ts); only the fields used here are typed.
interface GenResult {
  ok: boolean;
  error?: string;
  events_acked?: number;
  events_per_s?: number;
  requests?: number;
  load_seconds?: number;
  ack_latency_ms?: { p50: number | null; p99: number | null };
  errors?: Record<string, number>;
  client_cpu?: { pct_of_one_core: number };
  load_start_epoch_ms?: number;
  load_end_epoch_ms?: number;
  freshness?: { after_last_ack_ms: number | null; converged: boolean } | null;
  probe_freshness_ms?: { p50: number | null; max: number | null; count: number } | null;
  verification?: { ok: boolean; mismatch_count: number; checked_customers: number } | null;
  aborted?: string | null;
  [k: string]: unknown;
}

function runGenerator(script: string, args: string[], timeoutMs: number): Promise<{ code: number | null; result: GenResult | null }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.add(child);
    let out = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (c: string) => {
      out += c;
    });
    const timer = setTimeout(() => {
      process.stderr.write(`bench: generator exceeded ${timeoutMs / 1000} s; killing it\n`);
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(timer);
      children.delete(child);
      const last = out.trim().split('\n').pop() ?? '';
      let result: GenResult | null = null;
      try {
        result = JSON.parse(last) as GenResult;
      } catch {
        result = null;
      }
      resolve({ code, result });
    });
  });
}

// ------------------------------------------------------------------------------------------------ report

interface Row {
  target: string;
  ran: boolean;
  ok: boolean;
  error?: string;
  generator_exit_code?: number | null;
  server_cpu_pct_of_one_core?: number | null;
  result?: GenResult | null;
}

function fmtInt(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US');
}
function fmtMs(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : Math.round(n).toString();
}

function markdownTable(rows: Row[]): string {
  const nullEps = rows.find((r) => r.target === 'null server')?.result?.events_per_s;
  const head = [
    'target',
    'events acked',
    'accepted events/s',
    'vs null server',
    'p50 ack (ms)',
    'p99 ack (ms)',
    'freshness after last ack',
    'verification',
    'client CPU',
    'server CPU',
    'errors',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const g = r.result;
    if (!r.ran || !g || g.events_per_s === undefined) {
      lines.push(`| ${r.target} | – | – | – | – | – | – | FAILED: ${(r.error ?? g?.error ?? 'no result').split('\n')[0]} | – | – | – |`);
      continue;
    }
    const isNull = r.target === 'null server';
    const ratio = nullEps ? `${((g.events_per_s / nullEps) * 100).toFixed(1)}%` : '–';
    const fresh = isNull
      ? 'n/a'
      : g.freshness?.converged
        ? `${fmtMs(g.freshness.after_last_ack_ms)} ms`
        : `not converged`;
    const ver = isNull
      ? 'n/a (null)'
      : g.verification
        ? g.verification.ok
          ? `OK (${g.verification.checked_customers} customers)`
          : `MISMATCH (${g.verification.mismatch_count})`
        : `not run${g.aborted ? `: ${g.aborted}` : ''}`;
    const errs = g.errors && Object.keys(g.errors).length ? Object.entries(g.errors).map(([k, v]) => `${k}×${v}`).join(' ') : '0';
    lines.push(
      `| ${r.target} | ${fmtInt(g.events_acked)} | ${fmtInt(g.events_per_s)} | ${isNull ? '100%' : ratio} | ` +
        `${fmtMs(g.ack_latency_ms?.p50)} | ${fmtMs(g.ack_latency_ms?.p99)} | ${fresh} | ${ver} | ` +
        `${g.client_cpu ? `${g.client_cpu.pct_of_one_core}%` : '–'} | ` +
        `${r.server_cpu_pct_of_one_core != null ? `${r.server_cpu_pct_of_one_core}%` : '–'} | ${errs} |`,
    );
  }
  return lines.join('\n');
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Hand-written SVG: accepted events/s per target, and p50/p99 ack latency per target. */
function svgChart(rows: Row[], title: string): string {
  const data = rows
    .filter((r) => r.result?.events_per_s !== undefined)
    .map((r) => ({
      name: r.target,
      eps: r.result!.events_per_s!,
      p50: r.result!.ack_latency_ms?.p50 ?? 0,
      p99: r.result!.ack_latency_ms?.p99 ?? 0,
      note:
        r.target === 'null server'
          ? 'baseline'
          : `freshness ${r.result!.freshness?.converged ? `${fmtMs(r.result!.freshness.after_last_ack_ms)} ms` : 'n/a'}, ` +
            `verification ${r.result!.verification?.ok ? 'OK' : 'FAILED'}`,
    }));
  const W = 860;
  const labelW = 150;
  const barH = 26;
  const gap = 14;
  const panelW = W - labelW - 150;
  const colors = ['#4c78a8', '#f58518', '#54a24b', '#e45756'];
  let y = 50;
  const parts: string[] = [];
  parts.push(`<text x="20" y="28" font-size="17" font-weight="bold">${esc(title)}</text>`);

  // Panel 1: events/s.
  const maxEps = Math.max(1, ...data.map((d) => d.eps));
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Accepted events/s (higher is better)</text>`);
  y += 14;
  data.forEach((d, i) => {
    const w = Math.max(1, (d.eps / maxEps) * panelW);
    parts.push(`<text x="${labelW - 8}" y="${y + barH * 0.68}" font-size="13" text-anchor="end">${esc(d.name)}</text>`);
    parts.push(`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colors[i % colors.length]}"/>`);
    parts.push(
      `<text x="${labelW + w + 6}" y="${y + barH * 0.68}" font-size="12">${fmtInt(d.eps)}/s</text>`,
    );
    parts.push(`<text x="${labelW}" y="${y + barH + 12}" font-size="10" fill="#555">${esc(d.note)}</text>`);
    y += barH + gap + 10;
  });

  // Panel 2: latency.
  y += 16;
  const maxLat = Math.max(0.001, ...data.map((d) => Math.max(d.p50, d.p99)));
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Ack latency per request, ms (lower is better)</text>`);
  y += 14;
  const lh = 16;
  data.forEach((d, i) => {
    parts.push(`<text x="${labelW - 8}" y="${y + lh + 4}" font-size="13" text-anchor="end">${esc(d.name)}</text>`);
    const w50 = Math.max(1, (d.p50 / maxLat) * panelW);
    const w99 = Math.max(1, (d.p99 / maxLat) * panelW);
    parts.push(`<rect x="${labelW}" y="${y}" width="${w50.toFixed(1)}" height="${lh}" fill="${colors[i % colors.length]}"/>`);
    parts.push(`<text x="${labelW + w50 + 6}" y="${y + lh * 0.78}" font-size="11">p50 ${fmtMs(d.p50)}</text>`);
    parts.push(
      `<rect x="${labelW}" y="${y + lh + 2}" width="${w99.toFixed(1)}" height="${lh}" fill="${colors[i % colors.length]}" fill-opacity="0.55"/>`,
    );
    parts.push(`<text x="${labelW + w99 + 6}" y="${y + lh * 1.78 + 2}" font-size="11">p99 ${fmtMs(d.p99)}</text>`);
    y += 2 * lh + gap + 6;
  });
  const H = y + 10;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="Helvetica, Arial, sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`
  );
}

// ------------------------------------------------------------------------------------------------ main

async function main(): Promise<number> {
  const a = new Args(process.argv.slice(2), ['chart', 'skip-null', 'skip-server', 'timestamps']);
  const root = findRepoRoot(__dirname);
  const events = a.num('events', 2_000_000);
  const duration = a.num('duration', 30);
  const connections = a.num('connections', 16);
  const batch = a.num('batch', 100);
  const customers = a.num('customers', 100);
  const client = a.str('client', 'raw');
  const serverEntry = path.resolve(a.str('server-entry', path.join(root, 'dist', 'main.js')));
  const resultsDir = path.resolve(a.str('results-dir', path.join(root, 'bench', 'results')));
  const dataParent = path.resolve(a.str('data-parent', os.tmpdir()));
  const nullScript = path.join(__dirname, 'null-server.js');
  const genScript = path.join(__dirname, 'stream-load.js');
  fs.mkdirSync(resultsDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');

  const genArgs = (ev: number, dur: number): string[] => [
    '--events', String(ev),
    '--duration', String(dur),
    '--connections', String(connections),
    '--batch', String(batch),
    '--customers', String(customers),
    '--client', client,
    ...(a.bool('timestamps') ? ['--timestamps'] : []),
    ...(a.str('poll-mode') ? ['--poll-mode', a.str('poll-mode')!] : []),
    ...(a.str('freshness-timeout') ? ['--freshness-timeout', a.str('freshness-timeout')!] : []),
  ];
  // The null server takes millions of events per second: give its run enough events and time to be more than JIT
  // warm-up, but keep it short.
  const nullEvents = a.num('null-events', Math.max(events, 10_000_000));
  const nullDuration = a.num('null-duration', Math.min(duration, 5));
  const genTimeout = (duration + 60 + 30 + 60) * 1000;
  const rows: Row[] = [];

  // (a) null server: the generator's ceiling.
  if (!a.bool('skip-null')) {
    const row: Row = { target: 'null server', ran: false, ok: false };
    rows.push(row);
    const logPath = path.join(resultsDir, `${stamp}-null-server.log`);
    let child: ChildProcess | null = null;
    try {
      const port = await freePort();
      process.stderr.write(`\nbench: null server on 127.0.0.1:${port}\n`);
      child = startNode(nullScript, [], { ...process.env, PORT: String(port), HOST: '127.0.0.1', NULL_SERVER_VALIDATE: '0' }, logPath);
      await waitHealthy(child, port, logPath, 15_000);
      const cpu = new TreeCpu(child.pid!);
      cpu.start();
      const g = await runGenerator(genScript, ['--url', `http://127.0.0.1:${port}`, '--null', ...genArgs(nullEvents, nullDuration)], genTimeout);
      cpu.stop();
      row.ran = true;
      row.result = g.result;
      row.generator_exit_code = g.code;
      row.ok = g.code === 0 && !!g.result?.ok;
      if (g.result?.load_start_epoch_ms && g.result.load_end_epoch_ms) {
        row.server_cpu_pct_of_one_core = cpu.pctBetween(g.result.load_start_epoch_ms, g.result.load_end_epoch_ms);
      }
      if (!g.result) row.error = `generator exited ${g.code} without a result`;
    } catch (err) {
      row.error = (err as Error).message;
      process.stderr.write(`bench: null server run failed: ${row.error}\n`);
    } finally {
      if (child) await stopChild(child);
    }
  }

  // (b) the real server.
  if (!a.bool('skip-server')) {
    const row: Row = { target: 'embedded server', ran: false, ok: false };
    rows.push(row);
    const logPath = path.join(resultsDir, `${stamp}-server.log`);
    let child: ChildProcess | null = null;
    let dataDir: string | null = null;
    try {
      if (!fs.existsSync(serverEntry)) throw new Error(`server entry ${serverEntry} not found (run \`npm run build\`)`);
      const port = await freePort();
      dataDir = fs.mkdtempSync(path.join(dataParent, 'meterd-bench-'));
      tempDirs.add(dataDir);
      const key = `sk_test_bench_${randomBytes(12).toString('hex')}`;
      process.stderr.write(`\nbench: server ${serverEntry} on 127.0.0.1:${port}, DATA_DIR=${dataDir}, log ${logPath}\n`);
      child = startNode(
        serverEntry,
        [],
        { ...process.env, PORT: String(port), HOST: '127.0.0.1', DATA_DIR: dataDir, API_KEYS: key },
        logPath,
      );
      const t0 = Date.now();
      await waitHealthy(child, port, logPath, 60_000);
      process.stderr.write(`bench: server healthy after ${Date.now() - t0} ms\n`);
      const cpu = new TreeCpu(child.pid!);
      cpu.start();
      const g = await runGenerator(genScript, ['--url', `http://127.0.0.1:${port}`, '--key', key, ...genArgs(events, duration)], genTimeout);
      cpu.stop();
      row.ran = true;
      row.result = g.result;
      row.generator_exit_code = g.code;
      row.ok = g.code === 0 && !!g.result?.ok;
      if (g.result?.load_start_epoch_ms && g.result.load_end_epoch_ms) {
        row.server_cpu_pct_of_one_core = cpu.pctBetween(g.result.load_start_epoch_ms, g.result.load_end_epoch_ms);
      }
      if (!g.result) row.error = `generator exited ${g.code} without a result`;
      if (exited(child)) {
        row.ok = false;
        row.error = `server exited during the run (code ${child.exitCode}, signal ${child.signalCode})`;
      }
    } catch (err) {
      row.error = (err as Error).message;
      process.stderr.write(`bench: server run failed: ${row.error}\n`);
    } finally {
      if (child) await stopChild(child);
      if (dataDir) {
        fs.rmSync(dataDir, { recursive: true, force: true });
        tempDirs.delete(dataDir);
      }
    }
  }

  let table = markdownTable(rows);
  const notes = rows.filter((r) => r.error).map((r) => `- ${r.target}: ${r.error!.split('\n')[0]}`);
  if (notes.length) table += `\n\n${notes.join('\n')}`;
  const cpus = os.cpus();
  const report = {
    timestamp: new Date().toISOString(),
    machine: { cpus: cpus.length, cpu_model: cpus[0]?.model ?? null, node: process.version, platform: `${os.platform()} ${os.release()}` },
    options: {
      events,
      duration_s: duration,
      null_events: nullEvents,
      null_duration_s: nullDuration,
      connections,
      batch,
      customers,
      client,
      timestamps: a.bool('timestamps'),
    },
    rows,
    table,
  };
  const jsonPath = path.join(resultsDir, `${stamp}.json`);
  fs.writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\n${table}\n\n`);
  process.stderr.write(`bench: results written to ${jsonPath}\n`);
  if (a.bool('chart')) {
    const svgPath = path.join(resultsDir, `${stamp}.svg`);
    const title = `meterd stream ingest — ${fmtInt(events)} events max, ${duration} s max, ${connections} connections, batch ${batch}, ${cpus.length} cores`;
    fs.writeFileSync(svgPath, svgChart(rows, title));
    process.stderr.write(`bench: chart written to ${svgPath}\n`);
  }
  return rows.length > 0 && rows.every((r) => r.ok) ? 0 : 1;
}

function cleanupAndExit(code: number): void {
  for (const c of children) {
    if (!exited(c)) c.kill('SIGKILL');
  }
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
  process.exit(code);
}
process.on('SIGINT', () => cleanupAndExit(130));
process.on('SIGTERM', () => cleanupAndExit(143));

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench: ${(err as Error).stack ?? String(err)}\n`);
    cleanupAndExit(1);
  },
);
