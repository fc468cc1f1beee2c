/**
 * Benchmark orchestrator: `npm run bench -- --help` (the text is in bench/orchestrator/options.ts). The pieces:
 * orchestrator/options.ts (options, help), processes.ts (child processes, the generator's run), targets.ts (a meterd
 * run), distributed.ts (the distributed servers and the run's deployment), cpu.ts (CPU from /proc), table.ts and
 * chart.ts (the report); the load generator is bench/stream-load.ts.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Args } from './args';
import { svgChart } from './orchestrator/chart';
import { TreeCpu } from './orchestrator/cpu';
import { deploymentNames, distributedServers, dropDeployment, redactUrl, withoutDistributedEnv } from './orchestrator/distributed';
import { findRepoRoot, freePort, killChildrenAndRemoveTemp, runGenerator, startNode, stopChild, waitHealthy } from './orchestrator/processes';
import { type Row, type Topology, label } from './orchestrator/rows';
import { type Ctx, runMeterd } from './orchestrator/targets';
import { fmtInt, markdownTable } from './orchestrator/table';

async function main(): Promise<number> {
  const a = new Args(process.argv.slice(2), ['chart', 'skip-null', 'skip-server', 'timestamps', 'keep-data']);
  const root = findRepoRoot(__dirname);
  const mode = a.str('mode', 'embedded');
  if (!['embedded', 'distributed', 'both'].includes(mode)) throw new Error('--mode must be embedded, distributed or both');
  const topology = a.str('topology', 'all') as Topology;
  if (topology !== 'all' && topology !== 'split') throw new Error('--topology must be all or split');
  const events = a.num('events', 2_000_000);
  const duration = a.num('duration', 30);
  const connections = a.num('connections', 16);
  const batch = a.num('batch', 100);
  const customers = a.num('customers', 100);
  const client = a.str('client', 'raw');
  const healthInterval = a.num('health-interval', 250);
  const freshnessTimeout = a.num('freshness-timeout', 60);
  const kafkaPartitions = a.str('kafka-partitions');
  const serverEntry = path.resolve(a.str('server-entry', path.join(root, 'dist', 'main.js')));
  const resultsDir = path.resolve(a.str('results-dir', path.join(root, 'bench', 'results')));
  const dataParent = path.resolve(a.str('data-parent', os.tmpdir()));
  const nullScript = path.join(__dirname, 'null-server.js');
  const genScript = path.join(__dirname, 'stream-load.js');
  fs.mkdirSync(resultsDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');

  const rate = a.num('rate', 0);
  if (!(rate >= 0)) throw new Error('--rate must be >= 0 (events/s)');
  const genArgs = (ev: number, dur: number, offered = 0): string[] => [
    '--events',
    String(ev),
    '--duration',
    String(dur),
    '--connections',
    String(connections),
    '--batch',
    String(batch),
    '--customers',
    String(customers),
    '--client',
    client,
    ...(a.bool('timestamps') ? ['--timestamps'] : []),
    ...(offered > 0 ? ['--rate', String(offered)] : []),
    ...(a.str('poll-mode') ? ['--poll-mode', a.str('poll-mode')!] : []),
    ...(a.str('freshness-timeout') ? ['--freshness-timeout', a.str('freshness-timeout')!] : []),
  ];
  // The null server takes millions of events per second: give its run enough events and time to be more than JIT
  // warm-up, but keep it short.
  const nullEvents = a.num('null-events', Math.max(events, 10_000_000));
  const nullDuration = a.num('null-duration', Math.min(duration, 5));
  const genTimeout = (duration + freshnessTimeout + 30 + 60) * 1000;
  const rows: Row[] = [];

  // (a) null servers: uWS answering without work is the generator's ceiling; the same routes on meterd's own HTTP
  // layer show what that layer costs before any real work.
  const nullTargets: [string, string, string][] = [
    ['null server', nullScript, 'null-server'],
    ['null server, meterd HTTP layer', path.join(__dirname, 'http-null-server.js'), 'http-null-server'],
  ];
  for (const [target, script, logName] of a.bool('skip-null') ? [] : nullTargets) {
    const row: Row = { target, mode: 'null', ran: false, ok: false };
    rows.push(row);
    const logPath = path.join(resultsDir, `${stamp}-${logName}.log`);
    let child: ChildProcess | null = null;
    try {
      const port = await freePort();
      process.stderr.write(`\nbench: ${target} on 127.0.0.1:${port}\n`);
      child = startNode(script, [], { ...process.env, PORT: String(port), HOST: '127.0.0.1', NULL_SERVER_VALIDATE: '0' }, logPath);
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
      process.stderr.write(`bench: ${target} run failed: ${row.error}\n`);
    } finally {
      if (child) await stopChild(child);
    }
  }

  const ctx: Ctx = {
    root,
    stamp,
    resultsDir,
    dataParent,
    serverEntry,
    genScript,
    genArgs: genArgs(events, duration, rate),
    genTimeoutMs: genTimeout,
    healthIntervalMs: healthInterval,
  };

  // (b) the embedded server: one process, its own files; no distributed setting is inherited.
  if (!a.bool('skip-server') && (mode === 'embedded' || mode === 'both')) {
    process.stderr.write(`\n`);
    const row: Row = { target: 'meterd ×1 (all roles)', mode: 'embedded', ran: false, ok: false };
    rows.push(row);
    await runMeterd(ctx, row, {
      baseEnv: withoutDistributedEnv(process.env),
      roles: ['all'],
      meterSettleMs: a.num('meter-settle-ms', 0),
      healthTimeoutMs: 60_000,
    });
  }

  // (c) the distributed server on Kafka + ClickHouse + PostgreSQL, in a deployment of its own.
  let servers: { env: Record<string, string>; source: string } | null = null;
  if (!a.bool('skip-server') && (mode === 'distributed' || mode === 'both')) {
    process.stderr.write(`\n`);
    const split = topology === 'split';
    const row: Row = {
      target: split ? 'meterd ×3 (gateway, aggregator, api)' : 'meterd ×1 (all roles)',
      mode: 'distributed',
      topology,
      ran: false,
      ok: false,
      deployment: null,
    };
    rows.push(row);
    try {
      servers = await distributedServers(root);
      const d = deploymentNames();
      row.deployment = d;
      process.stderr.write(
        `bench: distributed (${topology}): Kafka ${servers.env.KAFKA_BROKERS} topic ${d.topic}, ClickHouse ` +
          `${redactUrl(servers.env.CLICKHOUSE_URL)} database ${d.clickhouse_database}, PostgreSQL ` +
          `${redactUrl(servers.env.DATABASE_URL)} schema ${d.database_schema} (servers from ${servers.source})\n`,
      );
      const baseEnv: NodeJS.ProcessEnv = {
        ...withoutDistributedEnv(process.env),
        // Kafka client settings (TLS, SASL, timeouts) of the operator's environment still apply.
        ...Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('KAFKA_'))),
        ...servers.env,
        KAFKA_TOPIC: d.topic,
        KAFKA_CONSUMER_GROUP: d.consumer_group,
        CLICKHOUSE_DATABASE: d.clickhouse_database,
        DATABASE_SCHEMA: d.database_schema,
        ...(kafkaPartitions ? { KAFKA_PARTITIONS: kafkaPartitions } : {}),
      };
      try {
        await runMeterd(ctx, row, {
          baseEnv,
          roles: split ? ['api', 'aggregator', 'gateway'] : ['all'],
          // A split aggregator learns a new meter from the state store (polled every second): events it reads
          // before that are invalid (no_meter), so the generator waits before the load.
          meterSettleMs: a.num('meter-settle-ms', split ? 2500 : 0),
          healthTimeoutMs: 120_000,
        });
      } finally {
        if (a.bool('keep-data')) {
          row.deployment = { ...d, cleanup: 'kept' };
        } else {
          process.stderr.write(`bench: dropping ${d.topic} / ${d.clickhouse_database} / ${d.database_schema}\n`);
          row.deployment = { ...d, cleanup: await dropDeployment(servers.env, d) };
        }
      }
    } catch (err) {
      row.error ??= (err as Error).message;
      process.stderr.write(`bench: distributed run failed: ${(err as Error).message}\n`);
    }
  }

  let table = markdownTable(rows);
  const notes = rows.filter((r) => r.error).map((r) => `- ${label(r)}: ${r.error!.split('\n')[0]}`);
  if (notes.length) table += `\n\n${notes.join('\n')}`;
  const cpus = os.cpus();
  const report = {
    timestamp: new Date().toISOString(),
    machine: { cpus: cpus.length, cpu_model: cpus[0]?.model ?? null, node: process.version, platform: `${os.platform()} ${os.release()}` },
    options: {
      mode,
      topology,
      events,
      duration_s: duration,
      null_events: nullEvents,
      null_duration_s: nullDuration,
      connections,
      batch,
      customers,
      client,
      timestamps: a.bool('timestamps'),
      health_interval_ms: healthInterval,
    },
    distributed_servers: servers
      ? {
          source: servers.source,
          kafka_brokers: servers.env.KAFKA_BROKERS,
          clickhouse_url: redactUrl(servers.env.CLICKHOUSE_URL),
          database_url: redactUrl(servers.env.DATABASE_URL),
        }
      : null,
    rows,
    table,
  };
  const jsonPath = path.join(resultsDir, `${stamp}.json`);
  fs.writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\n${table}\n\n`);
  process.stderr.write(`bench: results written to ${jsonPath}\n`);
  if (a.bool('chart')) {
    const svgPath = path.join(resultsDir, `${stamp}.svg`);
    const title =
      `meterd stream ingest (${mode}${mode !== 'embedded' ? `, ${topology}` : ''}): ≤${fmtInt(events)} events, ≤${duration} s, ` +
      `${connections} connections, batch ${batch}${rate > 0 ? `, offered ${fmtInt(rate)} events/s` : ''}, ${cpus.length} cores`;
    fs.writeFileSync(svgPath, svgChart(rows, title));
    process.stderr.write(`bench: chart written to ${svgPath}\n`);
  }
  return rows.length > 0 && rows.every((r) => r.ok) ? 0 : 1;
}

function cleanupAndExit(code: number): void {
  killChildrenAndRemoveTemp();
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
