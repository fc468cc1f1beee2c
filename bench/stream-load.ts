/**
 * Load generator for the v2 meter event stream: `node dist/bench/stream-load.js --help` lists the options
 * (bench/load/options.ts). The pieces: options.ts (parsing, help), generator.ts (shared state, meter, the load's
 * timing), http-load.ts (the HTTP stream load), templates.ts (batch bodies), control.ts (sessions, control plane),
 * probe.ts (in-run freshness probes), lag.ts (consumer lag), verify.ts (freshness and exactness of the summaries).
 *
 * Output: human table on stderr, one JSON line on stdout (last line). Exit 0 = OK, 1 = verification failed or the
 * run aborted, 2 = bad usage.
 */
import { performance } from 'node:perf_hooks';
import { sleep } from './load/control';
import { Generator } from './load/generator';
import { HttpLoad } from './load/http-load';
import { LagSampler } from './load/lag';
import { HELP, type Options, parseOptions, wantsHelp } from './load/options';
import { probeLoop } from './load/probe';
import { progressLine, report } from './load/report';
import { type Verification, converge, verify } from './load/verify';
import { WsLoad } from './load/ws-load';
import { WsRawLoad } from './load/ws-raw-load';

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (wantsHelp(argv)) {
    process.stdout.write(HELP);
    return 0;
  }
  let o: Options;
  try {
    o = parseOptions(argv);
  } catch (err) {
    process.stderr.write(`stream-load: ${(err as Error).message} (--help lists the options)\n`);
    return 2;
  }
  const g = new Generator(o);
  const log = (s: string): void => {
    process.stderr.write(`${s}\n`);
  };
  log(
    `stream-load: ${o.url.origin} run=${o.runId} events=${fmtInt(o.events)} duration<=${o.durationS}s ` +
      (o.transport !== 'http'
        ? `transport=${o.transport} connections=${o.wsConnections} batch=${o.wsBatch} in-flight=${o.wsInflight} encoding=${o.wsEncoding}`
        : `transport=http connections=${o.connections} batch=${o.batch} client=${o.client}`) +
      ` customers=${o.customers}${o.rate > 0 ? ` rate=${fmtInt(o.rate)}/s` : ''}${o.nullMode ? ' (null mode)' : ''}`,
  );

  const load = o.transport === 'ws' ? new WsLoad(g) : o.transport === 'ws-raw' ? new WsRawLoad(g) : new HttpLoad(g);
  let setupError: string | undefined;
  try {
    if (!o.nullMode) await g.setupMeter();
    await g.sessions.refresh();
    if (load instanceof WsRawLoad || load instanceof WsLoad) await load.open();
  } catch (err) {
    setupError = (err as Error).message;
  }
  if (setupError) {
    log(`stream-load: setup failed: ${setupError}`);
    g.closeAll();
    process.stdout.write(`${JSON.stringify({ ok: false, error: setupError, run_id: o.runId })}\n`);
    return 1;
  }
  g.windowStartS = Math.floor(Date.now() / 60_000) * 60 - 60;
  if (o.meterSettleMs > 0) {
    log(`stream-load: meter ${g.meterId}; waiting ${o.meterSettleMs} ms for every process to see it (--meter-settle-ms)`);
    await sleep(o.meterSettleMs);
  }
  let lag: LagSampler | null = null;
  if (o.health.length > 0) {
    lag = new LagSampler(g, o.health, o.healthIntervalMs);
    if (!(await lag.sample())) log(`stream-load: lag sampling: the first /healthz round failed (${lag.firstError}); will keep trying`);
  }

  // Progress: one line rewritten in place on a terminal, else a line every 5 s.
  const tty = process.stderr.isTTY === true;
  let lastAcked = 0;
  let lastT = performance.now();
  const progress = o.quiet
    ? null
    : setInterval(
        () => {
          const t = performance.now();
          const ls = lag?.samples[lag.samples.length - 1];
          const line = progressLine({
            elapsedS: (t - g.loadStart) / 1000,
            acked: g.acked,
            rateNow: ((g.acked - lastAcked) / Math.max(1, t - lastT)) * 1000,
            errors: [...g.errors.values()].reduce((x, y) => x + y, 0),
            lag: ls ? { stored: ls.stored, events: ls.acked - ls.stored, secondsBehind: lag!.secondsBehind(ls) } : null,
          });
          lastAcked = g.acked;
          lastT = t;
          if (tty) process.stderr.write(`\r\x1b[K${line}`);
          else log(line);
        },
        tty ? 1000 : 5000,
      );
  const endProgress = (): void => {
    if (progress) clearInterval(progress);
    if (progress && tty) process.stderr.write('\n');
  };

  const cpu0 = process.cpuUsage();
  const wall0 = Date.now();
  const probe = o.probe ? probeLoop(g).catch((e) => g.noteError('probe', String(e))) : Promise.resolve();
  lag?.start();
  await g.runLoad(load);
  g.stopping = true;
  const loadEndPerf = g.lastAck || performance.now();
  const cpu = process.cpuUsage(cpu0);
  const loadElapsedMs = Math.max(1, (g.lastAck || performance.now()) - g.loadStart);
  endProgress();
  await probe;
  g.closeLoad();

  let fresh: Awaited<ReturnType<typeof converge>> | null = null;
  let verification: Verification | null = null;
  if (!o.nullMode && !g.aborted) {
    log(`stream-load: load done; waiting for summaries to converge (deadline ${o.freshnessTimeoutS}s)...`);
    fresh = await converge(g);
    verification = await verify(g);
  }
  if (lag) await lag.stop();
  g.closeAll();
  const lagReport = lag ? lag.report(g.loadStartEpoch, g.lastAck ? performance.timeOrigin + g.lastAck : null) : null;

  const { result, rows } = report({
    o,
    g,
    ws: load instanceof WsLoad ? load.stats() : null,
    cpu,
    loadElapsedMs,
    loadStartEpochMs: wall0,
    loadEndEpochMs: Math.round(performance.timeOrigin + loadEndPerf),
    fresh,
    verification,
    lagReport,
  });
  const ok = result.ok;
  const w = Math.max(...rows.map((r) => r[0].length));
  log('');
  for (const [k, v] of rows) log(`  ${k.padEnd(w)}  ${v}`);
  log('');

  await new Promise<void>((r) => process.stdout.write(`${JSON.stringify(result)}\n`, () => r()));
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`stream-load: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
