/** One meterd run: its processes started (embedded, or distributed with all roles or split), the generator, the clean-up. */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { TreeCpu } from './cpu';
import { exited, freePort, runGenerator, startNode, stopChild, tempDirs, waitHealthy } from './processes';
import { type ProcInfo, type Role, type Row, label } from './rows';

export interface Ctx {
  root: string;
  stamp: string;
  resultsDir: string;
  dataParent: string;
  serverEntry: string;
  genScript: string;
  genArgs: string[];
  genTimeoutMs: number;
  healthIntervalMs: number;
}

export async function runMeterd(
  ctx: Ctx,
  row: Row,
  o: { baseEnv: NodeJS.ProcessEnv; roles: Role[]; meterSettleMs: number; healthTimeoutMs: number },
): Promise<void> {
  const procs: { info: ProcInfo; child: ChildProcess }[] = [];
  let dataDir: string | null = null;
  try {
    if (!fs.existsSync(ctx.serverEntry)) throw new Error(`server entry ${ctx.serverEntry} not found (run \`npm run build\`)`);
    dataDir = fs.mkdtempSync(path.join(ctx.dataParent, 'meterd-bench-'));
    tempDirs.add(dataDir);
    const key = `sk_test_bench_${randomBytes(12).toString('hex')}`;
    const start = async (role: Role): Promise<{ info: ProcInfo; child: ChildProcess }> => {
      const port = await freePort();
      const suffix = row.mode === 'embedded' ? 'server' : `distributed${role === 'all' ? '' : `-${role}`}`;
      const logPath = path.join(ctx.resultsDir, `${ctx.stamp}-${suffix}.log`);
      // Each process its own DATA_DIR: in distributed mode it holds nothing shared.
      const dir = path.join(dataDir!, role);
      process.stderr.write(`bench: ${label(row)}: ${role} on 127.0.0.1:${port}, log ${logPath}\n`);
      const env: NodeJS.ProcessEnv = { ...o.baseEnv, PORT: String(port), HOST: '127.0.0.1', DATA_DIR: dir, API_KEYS: key };
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
      ...ctx.genArgs,
    ];
    const cpu = new TreeCpu(procs.map((p) => p.child.pid!));
    cpu.start();
    const g = await runGenerator(ctx.genScript, args, ctx.genTimeoutMs + o.meterSettleMs);
    cpu.stop();
    row.ran = true;
    row.result = g.result;
    row.generator_exit_code = g.code;
    row.ok = g.code === 0 && !!g.result?.ok;
    if (g.result?.load_start_epoch_ms && g.result.load_end_epoch_ms) {
      row.server_cpu_pct_of_one_core = cpu.pctBetween(g.result.load_start_epoch_ms, g.result.load_end_epoch_ms);
    }
    if (!g.result) row.error = `generator exited ${g.code} without a result`;
    const dead = procs.filter((p) => exited(p.child));
    if (dead.length) {
      row.ok = false;
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
