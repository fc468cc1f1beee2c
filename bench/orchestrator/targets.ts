/**
 * One row of the bench: its server process(es) started (a null server; meterd embedded, or distributed with all roles
 * or split), the generator run against them while their threads' CPU is sampled, then the clean-up.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ThreadCpu, peakRss, rssRange } from './cpu';
import { exited, freePort, runGenerator, START_ENV, startNode, stopChild, tempDirs, waitHealthy } from './processes';
import { type ProcInfo, type Role, type Row, type ServerCpu, label } from './rows';

export interface Ctx {
  stamp: string;
  resultsDir: string;
  dataParent: string;
  serverEntry: string;
  genScript: string;
  genTimeoutMs: number;
  healthIntervalMs: number;
}

/** The server's environment with the thread-tagging preload (bench/orchestrator/thread-tags.ts) added. */
function withThreadTags(env: NodeJS.ProcessEnv, tagsFile: string): NodeJS.ProcessEnv {
  const preload = path.join(__dirname, 'thread-tags.js');
  return { ...env, NODE_OPTIONS: `${env.NODE_OPTIONS ?? ''} --require "${preload}"`.trim(), BENCH_THREAD_TAGS: tagsFile };
}

/**
 * The CPU window of a row: from the first send until the aggregator(s) had stored every acknowledged event when the
 * lag sampling saw that moment (the whole pipeline's cost per event), else the load phase.
 */
function cpuWindow(row: Row): { t0: number; t1: number; kind: ServerCpu['window'] } | null {
  const r = row.result;
  if (!r?.load_start_epoch_ms || !r.load_end_epoch_ms) return null;
  const caught = r.lag?.caught_up_after_last_ack_ms;
  if (row.mode !== 'null' && typeof caught === 'number') return { t0: r.load_start_epoch_ms, t1: r.load_end_epoch_ms + caught, kind: 'until stored' };
  return { t0: r.load_start_epoch_ms, t1: r.load_end_epoch_ms, kind: 'load' };
}

/** Memory is judged flat after this much of the load (start-up allocations, the first seal of the dedup index). */
const RSS_WARMUP_MS = 60_000;

/** Runs the generator against the started processes and records its result, the server's CPU and memory. */
async function measure(ctx: Ctx, row: Row, procs: { child: ChildProcess }[], tagsFile: string, args: string[], timeoutMs: number): Promise<void> {
  const pids = procs.map((p) => p.child.pid!);
  const cpu = new ThreadCpu(pids, tagsFile);
  cpu.start();
  const g = await runGenerator(ctx.genScript, args, timeoutMs);
  cpu.stop();
  row.server_peak_rss_bytes = peakRss(pids);
  row.ran = true;
  row.result = g.result;
  row.generator_exit_code = g.code;
  row.ok = g.code === 0 && !!g.result?.ok;
  if (!g.result) row.error = `generator exited ${g.code} without a result`;
  const gen = g.result;
  if (gen?.load_start_epoch_ms && gen.load_end_epoch_ms) {
    const t0 = gen.load_start_epoch_ms;
    const series = cpu.rssSeries();
    row.server_rss_range = rssRange(series, t0, gen.load_end_epoch_ms, RSS_WARMUP_MS);
    let next = t0;
    row.server_rss_series = [];
    for (const [t, bytes] of series) {
      if (t < next) continue;
      row.server_rss_series.push([Math.round((t - t0) / 100) / 10, bytes]);
      next = t + 5000;
    }
  }
  const w = cpuWindow(row);
  const seconds = w ? cpu.between(w.t0, w.t1) : null;
  if (w && seconds) {
    row.server_cpu = { window: w.kind, window_s: Math.round(w.t1 - w.t0) / 1000, events: g.result?.events_acked ?? 0, seconds };
    const load = g.result!;
    const total = cpu.between(load.load_start_epoch_ms!, load.load_end_epoch_ms!);
    if (total) {
      const sum = Object.values(total).reduce((a, b) => a + b, 0);
      row.server_cpu_pct_of_one_core = Math.round((sum / ((load.load_end_epoch_ms! - load.load_start_epoch_ms!) / 1000)) * 1000) / 10;
    }
  }
  const dead = procs.filter((p) => exited(p.child));
  if (dead.length) {
    row.ok = false;
    row.error = `a server process exited during the run (code ${dead[0]!.child.exitCode}, signal ${dead[0]!.child.signalCode})`;
  }
}

/** A null-server row: the server answers without work, so the row shows the generator's ceiling for its transport. */
export async function runNull(ctx: Ctx, row: Row, script: string, logName: string, genArgs: string[]): Promise<void> {
  const logPath = path.join(ctx.resultsDir, `${ctx.stamp}-${logName}.log`);
  const tagsFile = path.join(os.tmpdir(), `meterd-bench-${ctx.stamp}-${logName}-${row.transport}.threads`);
  let child: ChildProcess | null = null;
  try {
    const port = await freePort();
    process.stderr.write(`\nbench: ${label(row)} on 127.0.0.1:${port}\n`);
    child = startNode(script, [], withThreadTags({ ...process.env, PORT: String(port), HOST: '127.0.0.1', NULL_SERVER_VALIDATE: '0' }, tagsFile), logPath);
    await waitHealthy(child, port, logPath, 15_000);
    await measure(ctx, row, [{ child }], tagsFile, ['--url', `http://127.0.0.1:${port}`, '--null', ...genArgs], ctx.genTimeoutMs);
  } catch (err) {
    row.error = (err as Error).message;
    process.stderr.write(`bench: ${label(row)} run failed: ${row.error}\n`);
  } finally {
    if (child) await stopChild(child);
    fs.rmSync(tagsFile, { force: true });
  }
}

export async function runMeterd(
  ctx: Ctx,
  row: Row,
  o: { baseEnv: NodeJS.ProcessEnv; roles: Role[]; meterSettleMs: number; healthTimeoutMs: number; genArgs: string[] },
): Promise<void> {
  const procs: { info: ProcInfo; child: ChildProcess }[] = [];
  let dataDir: string | null = null;
  try {
    if (!fs.existsSync(ctx.serverEntry)) throw new Error(`server entry ${ctx.serverEntry} not found (run \`npm run build\`)`);
    dataDir = fs.mkdtempSync(path.join(ctx.dataParent, 'meterd-bench-'));
    tempDirs.add(dataDir);
    const tagsFile = path.join(dataDir, 'threads');
    const key = `sk_test_bench_${randomBytes(12).toString('hex')}`;
    const start = async (role: Role): Promise<{ info: ProcInfo; child: ChildProcess }> => {
      const port = await freePort();
      const suffix = `${row.mode === 'embedded' ? 'server' : `distributed${role === 'all' ? '' : `-${role}`}`}-${row.transport}`;
      const logPath = path.join(ctx.resultsDir, `${ctx.stamp}-${suffix}.log`);
      // Each process its own DATA_DIR: in distributed mode it holds nothing shared.
      const dir = path.join(dataDir!, role);
      process.stderr.write(`bench: ${label(row)}: ${role} on 127.0.0.1:${port}, log ${logPath}\n`);
      const env: NodeJS.ProcessEnv = withThreadTags(
        { ...START_ENV, ...o.baseEnv, PORT: String(port), HOST: '127.0.0.1', DATA_DIR: dir, API_KEYS: key },
        tagsFile,
      );
      if (role !== 'all') env.ROLE = role;
      const child = startNode(ctx.serverEntry, [], env, logPath);
      const p = { info: { role, pid: child.pid ?? null, port, log: logPath }, child };
      procs.push(p);
      return p;
    };
    const t0 = Date.now();
    // The first process creates the topic, the tables and the schema; the others start once it is up.
    const first = await start(o.roles[0]!);
    await waitHealthy(first.child, first.info.port, first.info.log, o.healthTimeoutMs);
    const rest = [];
    for (const role of o.roles.slice(1)) rest.push(await start(role));
    await Promise.all(rest.map((p) => waitHealthy(p.child, p.info.port, p.info.log, o.healthTimeoutMs)));
    process.stderr.write(`bench: ${label(row)}: healthy after ${Date.now() - t0} ms\n`);
    row.processes = procs.map((p) => p.info);

    const by = (r: Role): number => (procs.find((p) => p.info.role === r) ?? procs.find((p) => p.info.role === 'all'))!.info.port;
    const url = (port: number): string => `http://127.0.0.1:${port}`;
    const aggregators = procs.filter((p) => p.info.role === 'all' || p.info.role === 'aggregator');
    const args = [
      '--url',
      url(by('gateway')),
      '--api-url',
      url(by('api')),
      '--key',
      key,
      ...aggregators.flatMap((p) => ['--health-url', url(p.info.port)]),
      '--health-interval',
      String(ctx.healthIntervalMs),
      '--meter-settle-ms',
      String(o.meterSettleMs),
      ...o.genArgs,
    ];
    await measure(ctx, row, procs, tagsFile, args, ctx.genTimeoutMs + o.meterSettleMs);
    const dead = procs.filter((p) => exited(p.child));
    if (dead.length) {
      row.error = dead
        .map((p) => `${p.info.role} exited during the run (code ${p.child.exitCode}, signal ${p.child.signalCode}); see ${p.info.log}`)
        .join('; ');
    }
  } catch (err) {
    row.error = (err as Error).message;
    process.stderr.write(`bench: ${label(row)} run failed: ${row.error}\n`);
  } finally {
    row.processes = procs.map((p) => p.info);
    await Promise.all(
      procs.map(async (p) => {
        await stopChild(p.child);
        p.info.exit = p.child.signalCode ? `signal ${p.child.signalCode}` : `code ${p.child.exitCode}`;
      }),
    );
    if (dataDir) {
      fs.rmSync(dataDir, { recursive: true, force: true });
      tempDirs.delete(dataDir);
    }
  }
}
