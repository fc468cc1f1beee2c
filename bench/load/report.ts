/** The generator's report: the JSON result (stdout) and the human table (stderr). */
import { round } from '../stats';
import type { Generator } from './generator';
import type { LagSampler } from './lag';
import type { Options } from './options';
import type { Verification, converge } from './verify';

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** The progress line: elapsed, acknowledged, rate now and so far, errors, and the consumer lag when sampled. */
export function progressLine(p: {
  elapsedS: number;
  acked: number;
  rateNow: number;
  errors: number;
  lag: { stored: number; events: number; secondsBehind: number } | null;
}): string {
  return (
    `  [${p.elapsedS.toFixed(1)}s] acked ${fmtInt(p.acked)} events, ${fmtInt(p.rateNow)}/s now, ` +
    `${fmtInt(p.elapsedS > 0 ? p.acked / p.elapsedS : 0)}/s so far, ${p.errors} errors` +
    (p.lag ? `, stored ${fmtInt(p.lag.stored)} (lag ${fmtInt(p.lag.events)} events, ${p.lag.secondsBehind.toFixed(1)} s behind)` : '')
  );
}

export interface ReportInput {
  o: Options;
  g: Generator;
  /** The client package's counters (WebSocket load), if it ran. */
  ws: { reconnects: number; resentBatches: number } | null;
  cpu: NodeJS.CpuUsage;
  loadElapsedMs: number;
  loadStartEpochMs: number;
  loadEndEpochMs: number;
  fresh: Awaited<ReturnType<typeof converge>> | null;
  verification: Verification | null;
  lagReport: ReturnType<LagSampler['report']> | null;
}

export function report(i: ReportInput) {
  const { o, g, cpu, loadElapsedMs, fresh, verification, lagReport } = i;
  const wsStats = i.ws;
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
    load_start_epoch_ms: i.loadStartEpochMs,
    load_end_epoch_ms: i.loadEndEpochMs,
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
        ? `OK (${verification.checked_customers} customers; their summaries read in ${verification.read_ms} ms on 16 connections, ${verification.reads_per_s}/s)`
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
  return { result, rows };
}
