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
import { type Verification, converge, verify } from './load/verify';
import { WsLoad } from './load/ws-load';
import { WsRawLoad } from './load/ws-raw-load';
import { round } from './stats';

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** The progress line: elapsed, acknowledged, rate now and so far, errors, and the consumer lag when sampled. */
function progressLine(g: Generator, lag: LagSampler | null, now: number, rateNow: number): string {
  const elapsedS = (now - g.loadStart) / 1000;
  const errs = [...g.errors.values()].reduce((a, b) => a + b, 0);
  const ls = lag?.samples[lag.samples.length - 1];
  return (
    `  [${elapsedS.toFixed(1)}s] acked ${fmtInt(g.acked)} events, ${fmtInt(rateNow)}/s now, ` +
    `${fmtInt(elapsedS > 0 ? g.acked / elapsedS : 0)}/s so far, ${errs} errors` +
    (ls ? `, stored ${fmtInt(ls.stored)} (lag ${fmtInt(ls.acked - ls.stored)} events, ${lag!.secondsBehind(ls).toFixed(1)} s behind)` : '')
  );
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
          const line = progressLine(g, lag, t, ((g.acked - lastAcked) / Math.max(1, t - lastT)) * 1000);
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

  const wsStats = load instanceof WsLoad ? load.stats() : null;
  const eps = (g.acked / loadElapsedMs) * 1000;
  const lat = g.hist.summary();
  const errors: Record<string, number> = {};
  for (const [k, v] of [...g.errors.entries()].sort()) errors[k] = v;
  const firstErrors: Record<string, string> = {};
  for (const [k, v] of g.firstErrorBody) firstErrors[k] = v;
  const ok = !g.aborted && g.acked > 0 && (o.nullMode || (verification?.ok === true && fresh?.converged === true));

  const result = {
    ok,
    mode: o.nullMode ? 'null' : 'verify',
    run_id: o.runId,
    url: o.url.origin,
    api_url: o.api.url.origin,
    transport: o.transport,
    client: o.transport === 'ws' ? '@meterd/stream-client' : o.transport === 'ws-raw' ? 'ws (raw frames)' : o.client,
    meter_id: g.meterId || null,
    options: {
      events: o.events,
      duration_s: o.durationS,
      connections: o.transport !== 'http' ? o.wsConnections : o.connections,
      batch: o.transport !== 'http' ? o.wsBatch : o.batch,
      ...(o.transport !== 'http' ? { in_flight_per_connection: o.wsInflight, encoding: o.wsEncoding, identifiers: o.wsIdentifiers } : {}),
      rate: o.rate,
      customers: o.customers,
      meter_event_name: o.eventName,
      timestamps: o.timestamps,
    },
    events_acked: g.acked,
    requests: g.requests,
    load_seconds: round(loadElapsedMs / 1000, 3),
    events_per_s: Math.round(eps),
    requests_per_s: Math.round((g.requests / loadElapsedMs) * 1000),
    ack_latency_ms: lat,
    errors,
    first_error_bodies: firstErrors,
    retries: g.retries + (wsStats?.resentBatches ?? 0),
    ...(wsStats ? { ws_reconnects: wsStats.reconnects } : {}),
    rejected_events: g.rejectedEvents,
    uncertain_events: g.uncertainEvents,
    sessions_created: g.sessions.created,
    client_cpu: {
      user_s: round(cpu.user / 1e6, 3),
      system_s: round(cpu.system / 1e6, 3),
      pct_of_one_core: round(((cpu.user + cpu.system) / 1000 / loadElapsedMs) * 100, 1),
    },
    load_start_epoch_ms: wall0,
    load_end_epoch_ms: Math.round(performance.timeOrigin + loadEndPerf),
    freshness: fresh
      ? {
          after_last_ack_ms: fresh.freshnessMs,
          converged: fresh.converged,
          poll_rounds: fresh.pollRounds,
          poll_queries: fresh.queries,
          poll_mode: o.pollMode,
          pending_at_deadline: fresh.pendingAtDeadline,
          overshoot_customers: fresh.overshoot,
          deadline_s: o.freshnessTimeoutS,
          ...(fresh.error ? { error: fresh.error } : {}),
        }
      : null,
    probe_freshness_ms: o.probe ? { ...g.probeHist.summary(), probe_events: g.probeAcked, never_seen: g.probeAcked - g.probeVisible } : null,
    verification,
    lag: lagReport,
    aborted: g.aborted ? g.abortReason : null,
  };

  // Human table.
  const rows: [string, string][] = [
    ['target', `${o.url.origin}${o.nullMode ? ' (null mode)' : ''}`],
    ['events acknowledged', `${fmtInt(g.acked)} in ${(loadElapsedMs / 1000).toFixed(2)} s`],
    ['accepted events/s', fmtInt(eps)],
    [
      o.transport !== 'http' ? 'batches acknowledged' : 'requests (200)',
      `${fmtInt(g.requests)} (${fmtInt(result.requests_per_s)}/s, batch ${result.options.batch})`,
    ],
    ['offered load', o.rate > 0 ? `${fmtInt(o.rate)} events/s (latency from each batch's scheduled send)` : 'closed loop (as fast as answered)'],
    ['ack latency ms', `p50 ${lat.p50} | p90 ${lat.p90} | p99 ${lat.p99} | p999 ${lat.p999} | max ${lat.max}`],
    ['errors by status', Object.keys(errors).length ? JSON.stringify(errors) : 'none'],
    ['retries / rejected / uncertain', `${result.retries} / ${g.rejectedEvents} / ${g.uncertainEvents} events`],
    ['client CPU (load phase)', `${result.client_cpu.pct_of_one_core}% of one core`],
  ];
  if (fresh) {
    rows.push([
      'freshness after last ack',
      fresh.converged ? `${fresh.freshnessMs} ms` : `NOT converged within ${o.freshnessTimeoutS}s (${fresh.pendingAtDeadline} pending)`,
    ]);
  }
  if (o.probe) {
    const p = g.probeHist.summary();
    rows.push([
      'probe freshness ms (in-run)',
      `n=${p.count} p50 ${p.p50} | p90 ${p.p90} | max ${p.max}` + (g.probeAcked > g.probeVisible ? ` | ${g.probeAcked - g.probeVisible} never seen` : ''),
    ]);
  }
  if (verification) {
    rows.push([
      'exactness',
      verification.ok
        ? `OK (${verification.checked_customers} customers)`
        : `MISMATCH in ${verification.mismatch_count}/${verification.checked_customers} customers, e.g. ${JSON.stringify(verification.mismatches.slice(0, 3))}`,
    ]);
  }
  if (lagReport) {
    const L = lagReport as {
      max_events: number | null;
      max_seconds_behind: number | null;
      caught_up_after_last_ack_ms: number | null;
      samples: number;
      sample_errors: number;
      final: { stored: number | null; invalid: number; duplicates: number };
    };
    rows.push([
      'consumer lag (health)',
      L.max_events === null
        ? `no usable /healthz sample (${L.sample_errors} failed rounds)`
        : `max ${fmtInt(L.max_events)} events, max ${L.max_seconds_behind} s behind; stored ${fmtInt(L.final.stored ?? 0)}` +
          `, caught up ${L.caught_up_after_last_ack_ms === null ? 'never' : `${L.caught_up_after_last_ack_ms} ms after the last ack`}` +
          ` (${L.samples} samples${L.sample_errors ? `, ${L.sample_errors} failed` : ''}; invalid ${L.final.invalid}, duplicates ${L.final.duplicates})`,
    ]);
  }
  if (g.aborted) rows.push(['aborted', g.abortReason]);
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
