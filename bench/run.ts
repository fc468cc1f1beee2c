/**
 * Benchmark orchestrator: `npm run bench -- --help` (the options are in bench/orchestrator/options.ts). The pieces:
 * orchestrator/options.ts (options, help), processes.ts (child processes, the generator's run), targets.ts (one row:
 * a null server or meterd, the generator, CPU per thread kind, peak RSS), distributed.ts (the distributed servers and
 * the run's deployment), cpu.ts and thread-tags.ts (CPU from /proc per thread kind), table.ts and chart.ts (the
 * report); the load generator is bench/stream-load.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { svgChart } from './orchestrator/chart';
import { deploymentNames, distributedServers, dropDeployment, redactUrl, withoutDistributedEnv } from './orchestrator/distributed';
import { type RunOptions, type Transport, generatorArgs, helpText, parseRunOptions } from './orchestrator/options';
import { findRepoRoot, killChildrenAndRemoveTemp } from './orchestrator/processes';
import { type Row, label } from './orchestrator/rows';
import { fmtInt, markdownTable } from './orchestrator/table';
import { type Ctx, runMeterd, runNull } from './orchestrator/targets';

type Servers = { env: Record<string, string>; source: string };

/** One distributed row: a deployment of its own (topic, database, schema, consumer group), dropped afterwards. */
async function distributedRow(ctx: Ctx, row: Row, o: RunOptions, servers: Servers, genArgs: string[]): Promise<void> {
  const split = o.topology === 'split';
  const d = deploymentNames();
  row.deployment = d;
  process.stderr.write(
    `bench: ${label(row)}: Kafka ${servers.env.KAFKA_BROKERS} topic ${d.topic}, ClickHouse ${redactUrl(servers.env.CLICKHOUSE_URL)} ` +
      `database ${d.clickhouse_database}, PostgreSQL ${redactUrl(servers.env.DATABASE_URL)} schema ${d.database_schema} (servers from ${servers.source})\n`,
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
    ...(o.kafkaPartitions ? { KAFKA_PARTITIONS: o.kafkaPartitions } : {}),
  };
  try {
    await runMeterd(ctx, row, {
      baseEnv,
      roles: split ? ['api', 'aggregator', 'gateway'] : ['all'],
      // A split aggregator learns a new meter from the state store (polled every second): events it reads before
      // that are invalid (no_meter), so the generator waits before the load.
      meterSettleMs: o.meterSettleMs ?? (split ? 2500 : 0),
      healthTimeoutMs: 120_000,
      genArgs,
    });
  } finally {
    if (o.keepData) row.deployment = { ...d, cleanup: 'kept' };
    else {
      process.stderr.write(`bench: dropping ${d.topic} / ${d.clickhouse_database} / ${d.database_schema}\n`);
      row.deployment = { ...d, cleanup: await dropDeployment(servers.env, d) };
    }
  }
}

async function main(): Promise<number> {
  const root = findRepoRoot(__dirname);
  let o: RunOptions;
  try {
    o = parseRunOptions(process.argv.slice(2), root);
  } catch (err) {
    process.stderr.write(`bench: ${(err as Error).message}\n\n${helpText()}`);
    return 2;
  }
  if (o.help) {
    process.stdout.write(helpText());
    return 0;
  }
  fs.mkdirSync(o.resultsDir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const ctx: Ctx = {
    stamp,
    resultsDir: o.resultsDir,
    dataParent: o.dataParent,
    serverEntry: o.serverEntry,
    genScript: path.join(__dirname, 'stream-load.js'),
    genTimeoutMs: (o.duration + o.freshnessTimeout + 30 + 60) * 1000,
    healthIntervalMs: o.healthInterval,
  };

  // The plan: every row, in order, so the progress can say where it is.
  const plan: { row: Row; run: () => Promise<void> }[] = [];
  let servers: Servers | null = null;
  for (const transport of o.transports) {
    if (o.skipNull) break;
    // The uWS null server answers both transports without work: the generator's ceiling per transport.
    const row: Row = { target: 'null server (uWS)', mode: 'null', transport, ran: false, ok: false };
    plan.push({
      row,
      run: () => runNull(ctx, row, path.join(__dirname, 'null-server.js'), 'null-server', generatorArgs(o, transport, o.nullEvents, o.nullDuration, 0)),
    });
  }
  if (!o.skipNull && o.transports.includes('http')) {
    // The same routes on meterd's own HTTP layer (HTTP only): what that layer costs before any real work.
    const row: Row = { target: 'null server (meterd HTTP layer)', mode: 'null', transport: 'http', ran: false, ok: false };
    const args = generatorArgs(o, 'http', o.nullEvents, o.nullDuration, 0);
    plan.push({ row, run: () => runNull(ctx, row, path.join(__dirname, 'http-null-server.js'), 'http-null-server', args) });
  }
  const meterdArgs = (t: Transport): string[] => generatorArgs(o, t, o.events, o.duration, o.rate);
  if (!o.skipServer && (o.mode === 'embedded' || o.mode === 'both')) {
    for (const transport of o.transports) {
      // One process, its own files; no distributed setting is inherited.
      const row: Row = { target: 'meterd ×1 (all roles)', mode: 'embedded', transport, ran: false, ok: false };
      plan.push({
        row,
        run: () =>
          runMeterd(ctx, row, {
            baseEnv: withoutDistributedEnv(process.env),
            roles: ['all'],
            meterSettleMs: o.meterSettleMs ?? 0,
            healthTimeoutMs: 60_000,
            genArgs: meterdArgs(transport),
          }),
      });
    }
  }
  if (!o.skipServer && (o.mode === 'distributed' || o.mode === 'both')) {
    for (const transport of o.transports) {
      const split = o.topology === 'split';
      const target = split ? 'meterd ×3 (gateway, aggregator, api)' : 'meterd ×1 (all roles)';
      const row: Row = { target, mode: 'distributed', topology: o.topology, transport, ran: false, ok: false, deployment: null };
      plan.push({
        row,
        run: async () => {
          try {
            servers ??= await distributedServers(root);
            await distributedRow(ctx, row, o, servers, meterdArgs(transport));
          } catch (err) {
            row.error ??= (err as Error).message;
            process.stderr.write(`bench: ${label(row)} failed: ${(err as Error).message}\n`);
          }
        },
      });
    }
  }

  const started = Date.now();
  const rows: Row[] = [];
  for (const [i, step] of plan.entries()) {
    process.stderr.write(`\nbench: [${i + 1}/${plan.length}] ${label(step.row)} (${((Date.now() - started) / 1000).toFixed(0)} s elapsed)\n`);
    rows.push(step.row);
    await step.run();
  }

  let table = markdownTable(rows);
  const notes = rows.filter((r) => r.error).map((r) => `- ${label(r)}: ${r.error!.split('\n')[0]}`);
  if (notes.length) table += `\n\n${notes.join('\n')}`;
  const cpus = os.cpus();
  const { help: _help, ...options } = o;
  const report = {
    timestamp: new Date().toISOString(),
    command: `node dist/bench/run.js ${process.argv.slice(2).join(' ')}`.trim(),
    machine: {
      cpus: cpus.length,
      cpu_model: cpus[0]?.model ?? null,
      load_average_1m_at_end: os.loadavg()[0],
      node: process.version,
      platform: `${os.platform()} ${os.release()}`,
    },
    options,
    distributed_servers: servers
      ? {
          source: (servers as Servers).source,
          kafka_brokers: (servers as Servers).env.KAFKA_BROKERS,
          clickhouse_url: redactUrl((servers as Servers).env.CLICKHOUSE_URL),
          database_url: redactUrl((servers as Servers).env.DATABASE_URL),
        }
      : null,
    rows,
    table,
  };
  const jsonPath = path.join(o.resultsDir, `${stamp}.json`);
  fs.writeFileSync(jsonPath, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\n${table}\n\n`);
  process.stderr.write(`bench: results written to ${jsonPath}\n`);
  if (o.chart) {
    const svgPath = path.join(o.resultsDir, `${stamp}.svg`);
    const title =
      `meterd stream ingest (${o.mode}${o.mode !== 'embedded' ? `, ${o.topology}` : ''}): ≤${fmtInt(o.events)} events, ≤${o.duration} s per row` +
      `${o.rate > 0 ? `, offered ${fmtInt(o.rate)} events/s` : ''}, ${cpus.length} cores`;
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
