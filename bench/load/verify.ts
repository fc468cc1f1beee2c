/**
 * Verification of the summaries after the load: freshness (polling until every customer's summary equals what was
 * acknowledged for it) and the exactness pass.
 */
import { performance } from 'node:perf_hooks';
import { RawConnection, type RawResponse, buildRequest } from '../raw-http';
import { round } from '../stats';
import { bodyText, sleep } from './control';
import type { Generator } from './generator';

export interface Verification {
  ok: boolean;
  checked_customers: number;
  mismatches: { customer: string; expected: number; actual: number | null; error?: string }[];
  mismatch_count: number;
  /** The exactness pass read every customer's summary on 16 connections at once: how long it took, and the rate. */
  read_ms?: number;
  reads_per_s?: number;
}

export function summaryPath(g: Generator, customer: string): string {
  const endS = (Math.floor(Date.now() / 60_000) + 1) * 60;
  return (
    `/v1/billing/meters/${encodeURIComponent(g.meterId)}/event_summaries?customer=${encodeURIComponent(customer)}` +
    `&start_time=${g.windowStartS}&end_time=${endS}`
  );
}

/** Returns the summed aggregated_value, or an error string. */
export async function fetchSummary(
  g: Generator,
  conn: RawConnection,
  customer: string,
): Promise<{ value: number } | { error: string; fatal: boolean; status: number }> {
  const req = buildRequest('GET', summaryPath(g, customer), g.o.api.hostHeader, {
    Authorization: `Bearer ${g.o.key}`,
  });
  let res: RawResponse;
  try {
    res = await conn.request(req);
  } catch {
    try {
      res = await conn.request(req); // reconnect once
    } catch (err) {
      return { error: String(err), fatal: false, status: 0 };
    }
  }
  if (res.status !== 200) {
    return {
      error: `${res.status} ${bodyText(res)}`,
      fatal: res.status >= 400 && res.status < 500 && res.status !== 429,
      status: res.status,
    };
  }
  const j = JSON.parse(res.body.toString('utf8')) as { data?: { aggregated_value?: number | string }[] };
  let v = 0;
  for (const d of j.data ?? []) v += Number(d.aggregated_value ?? 0);
  if (customer === g.probeCustomer) g.observeProbe(v, performance.now());
  return { value: v };
}

export function expectations(g: Generator): { customer: string; expected: number }[] {
  const out: { customer: string; expected: number }[] = [];
  for (let i = 0; i < g.o.customers; i++) out.push({ customer: g.customerId(i), expected: g.totals[i]! });
  if (g.probeAcked > 0 || g.probeUncertain > 0) out.push({ customer: g.probeCustomer, expected: g.probeAcked });
  return out;
}

/**
 * Polls the summaries until every customer's equals the total acknowledged for it, or the deadline.
 *
 * `all` mode: every pending customer in every round (16 connections), a round every --poll-interval ms.
 * `adaptive` mode (default): a round polls a group of pending customers, starting with one; when the whole group
 * matches, the next group (twice as large) is polled at once, otherwise the round ends and the group size falls
 * back to 1 (customers that did not match go first next time). While the aggregator lags this costs about one
 * query per interval instead of one per customer, so the measurement does not slow down what it measures; once it
 * has caught up, all customers are swept in a few fast rounds. Events of every customer are spread over the whole
 * run, so customers converge together and the sentinel is representative.
 */
export async function converge(g: Generator): Promise<{
  converged: boolean;
  freshnessMs: number | null;
  pollRounds: number;
  queries: number;
  pendingAtDeadline: number;
  overshoot: number;
  error?: string;
}> {
  const exp = expectations(g);
  let pending = exp.map((_, i) => i);
  const adaptive = g.o.pollMode === 'adaptive';
  let group = adaptive ? 1 : pending.length;
  const pool = Array.from({ length: Math.min(16, pending.length) }, () => new RawConnection(g.o.api.host, g.o.api.port));
  const deadline = performance.now() + g.o.freshnessTimeoutS * 1000;
  let last = 0;
  let rounds = 0;
  let queries = 0;
  let overshoot = 0;
  let fatal: string | undefined;
  let lastAnswer = performance.now();
  try {
    while (pending.length && performance.now() < deadline && !fatal) {
      const roundStart = performance.now();
      rounds++;
      const take = pending.slice(0, group);
      const rest = pending.slice(group);
      const missed: number[] = [];
      let next = 0;
      const worker = async (conn: RawConnection): Promise<void> => {
        while (next < take.length && !fatal) {
          const idx = take[next++]!;
          queries++;
          const r = await fetchSummary(g, conn, exp[idx]!.customer);
          const t = performance.now();
          if (!('error' in r) || r.status) lastAnswer = t;
          if ('error' in r) {
            g.noteError(r.status ? `summary ${r.status}` : 'summary conn_error', r.error);
            if (r.fatal) fatal = `summaries: ${r.error}`;
            else if (!r.status && t - lastAnswer > 5000) fatal = `summaries: no HTTP response for 5 s: ${r.error}`;
            missed.push(idx);
          } else if (r.value === exp[idx]!.expected) {
            if (t > last) last = t;
          } else if (r.value > exp[idx]!.expected) {
            overshoot++; // more than was acknowledged: will not converge; the exactness pass reports it
          } else {
            missed.push(idx);
          }
        }
      };
      await Promise.all(pool.slice(0, Math.max(1, Math.min(pool.length, take.length))).map(worker));
      pending = missed.concat(rest);
      if (adaptive) {
        if (missed.length === 0) {
          group = Math.min(group * 2, 1024);
          continue; // caught up: sweep on without waiting
        }
        group = 1;
      }
      if (pending.length) {
        const wait = g.o.pollIntervalMs - (performance.now() - roundStart);
        if (wait > 0) await sleep(wait);
      }
    }
  } finally {
    for (const c of pool) c.close();
  }
  const converged = pending.length === 0 && overshoot === 0 && !fatal;
  return {
    converged,
    freshnessMs: converged ? round(Math.max(0, last - g.lastAck), 1) : null,
    pollRounds: rounds,
    queries,
    pendingAtDeadline: pending.length,
    overshoot,
    error: fatal,
  };
}

export async function verify(g: Generator): Promise<Verification> {
  const exp = expectations(g);
  const mismatches: Verification['mismatches'] = [];
  let mismatchCount = 0;
  const pool = Array.from({ length: Math.min(16, exp.length) }, () => new RawConnection(g.o.api.host, g.o.api.port));
  let next = 0;
  const started = performance.now();
  try {
    await Promise.all(
      pool.map(async (conn) => {
        while (next < exp.length) {
          const e = exp[next++]!;
          const r = await fetchSummary(g, conn, e.customer);
          const actual = 'value' in r ? r.value : null;
          if (actual !== e.expected) {
            mismatchCount++;
            if (mismatches.length < 20) {
              mismatches.push({ customer: e.customer, expected: e.expected, actual, ...('error' in r ? { error: r.error } : {}) });
            }
          }
        }
      }),
    );
  } finally {
    for (const c of pool) c.close();
  }
  const readMs = performance.now() - started;
  return {
    ok: mismatchCount === 0,
    checked_customers: exp.length,
    mismatches,
    mismatch_count: mismatchCount,
    read_ms: round(readMs, 1),
    reads_per_s: Math.round((exp.length / Math.max(readMs, 0.001)) * 1000),
  };
}
