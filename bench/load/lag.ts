/** Consumer lag: the aggregator's stored count (GET /healthz) against the events acknowledged so far. */
import { RawConnection, buildRequest } from '../raw-http';
import { round } from '../stats';
import { sleepUnless } from './control';
import type { Generator } from './generator';
import type { Endpoint } from './options';

export interface AggregatorHealth {
  events?: number;
  stored?: number;
  duplicates?: number;
  invalid?: number;
  flushes?: number;
  lastFlushMs?: number;
  insertRetries?: number;
  partitions?: Record<string, { next: number; stored: number }>;
}

export interface LagSample {
  /** Epoch ms (midpoint of the health round trip). */
  t: number;
  /** Events acknowledged by then (load + probes), midpoint of the round trip. */
  acked: number;
  /** Sum of `aggregator.stored` over the health URLs, minus the baseline. */
  stored: number;
  invalid: number;
  duplicates: number;
}

/**
 * Consumer lag: every --health-interval ms, GET /healthz on every --health-url (in parallel, one connection each) and
 * sum `aggregator.stored` (events whose flush has landed in the analytics store); compare with the events acknowledged
 * so far (load + probes). A sample counts only when every URL answered with an aggregator. The acknowledged count is
 * read when the round starts and when its last answer arrives; the sample uses the midpoint of both (time and count).
 *
 * Seconds behind: the age of the oldest acknowledged event not yet stored, estimated from the acknowledgement
 * timeline as now − (when the acknowledged count first exceeded `stored`). Events are stored in log order per
 * partition, not globally, so this is an estimate. `stored` is per process since its start: the baseline taken before
 * the load is subtracted, so a server that already holds other traffic still works as long as nothing else is
 * ingesting during the run.
 */
export class LagSampler {
  readonly samples: LagSample[] = [];
  /** (epoch ms, acknowledged) points, in time order, for the seconds-behind estimate. */
  private readonly ackTimeline: [number, number][] = [];
  private readonly conns: RawConnection[];
  private readonly reqs: Buffer[];
  baseline: number | null = null;
  errors = 0;
  firstError = '';
  lastHealth: { url: string; aggregator: AggregatorHealth | null }[] = [];
  private stopped = false;
  private loop: Promise<void> | null = null;

  constructor(
    private readonly g: Generator,
    private readonly targets: Endpoint[],
    private readonly intervalMs: number,
  ) {
    this.conns = targets.map((e) => new RawConnection(e.host, e.port));
    this.reqs = targets.map((e) => buildRequest('GET', '/healthz', e.hostHeader, {}));
  }

  private ackedNow(): number {
    return this.g.acked + this.g.probeAcked;
  }

  private fetchOne(i: number, timeoutMs: number): Promise<AggregatorHealth | null> {
    const conn = this.conns[i]!;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => conn.close(), timeoutMs); // close() fails the request
      const attempt = (retry: boolean): void => {
        conn.send(this.reqs[i]!, (err, res) => {
          if (err && retry && !String(err).includes('closed by client')) return attempt(false); // stale keep-alive
          clearTimeout(timer);
          if (err || !res) return reject(err ?? new Error('no response'));
          if (res.status !== 200) return reject(new Error(`/healthz answered ${res.status}`));
          try {
            const j = JSON.parse(res.body.toString('utf8')) as { aggregator?: AggregatorHealth | null };
            resolve(j.aggregator ?? null);
          } catch (e) {
            reject(e as Error);
          }
        });
      };
      attempt(true);
    });
  }

  /** One round over every URL; returns the raw stored sum, or null when a URL failed or runs no aggregator. */
  async sample(): Promise<LagSample | null> {
    const t0 = Date.now();
    const a0 = this.ackedNow();
    this.ackTimeline.push([t0, a0]);
    // allSettled: every connection is idle again before the next round, even when one URL failed.
    const settled = await Promise.allSettled(this.targets.map((_, i) => this.fetchOne(i, 2000)));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      this.errors++;
      if (!this.firstError) this.firstError = String(failed.reason);
      return null;
    }
    const healths = settled.map((r) => (r as PromiseFulfilledResult<AggregatorHealth | null>).value);
    const t1 = Date.now();
    const a1 = this.ackedNow();
    this.ackTimeline.push([t1, a1]);
    this.lastHealth = healths.map((h, i) => ({ url: this.targets[i]!.url.origin, aggregator: h }));
    if (healths.some((h) => !h || typeof h.stored !== 'number')) {
      this.errors++;
      if (!this.firstError) this.firstError = 'a health URL shows no aggregator (aggregator: null or no `stored`)';
      return null;
    }
    const sum = (k: keyof AggregatorHealth): number => healths.reduce((acc, h) => acc + Number(h![k] ?? 0), 0);
    const stored = sum('stored');
    if (this.baseline === null) this.baseline = stored;
    const s: LagSample = {
      t: (t0 + t1) / 2,
      acked: Math.round((a0 + a1) / 2),
      stored: stored - this.baseline,
      invalid: sum('invalid'),
      duplicates: sum('duplicates'),
    };
    this.samples.push(s);
    return s;
  }

  start(): void {
    this.loop = (async () => {
      while (!this.stopped) {
        const t = Date.now();
        await this.sample();
        const wait = this.intervalMs - (Date.now() - t);
        if (wait > 0 && !this.stopped) await sleepUnless(wait, () => this.stopped);
      }
    })();
  }

  /** Stops the periodic sampling, then takes one last sample. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.loop) await this.loop;
    await this.sample();
    for (const c of this.conns) c.close();
  }

  /** When the acknowledged count first exceeded `n` (epoch ms), interpolated on the timeline; null if never. */
  private ackedPast(n: number): number | null {
    const tl = this.ackTimeline;
    let prevT = this.g.loadStartEpoch;
    let prevA = 0;
    for (const [t, a] of tl) {
      if (a > n) {
        if (t <= prevT || a <= prevA) return t;
        return prevT + ((n - prevA) / (a - prevA)) * (t - prevT);
      }
      if (t >= prevT) {
        prevT = t;
        prevA = a;
      }
    }
    return null;
  }

  secondsBehind(s: LagSample): number {
    if (s.acked <= s.stored) return 0;
    const since = this.ackedPast(s.stored);
    return since === null ? 0 : Math.max(0, (s.t - since) / 1000);
  }

  report(loadStartEpoch: number, lastAckEpoch: number | null): Record<string, unknown> {
    const rows: number[][] = [];
    let maxEvents = 0;
    let maxEventsAt: number | null = null;
    let maxBehind = 0;
    let maxBehindAt: number | null = null;
    let caughtUp: number | null = null;
    const finalAcked = this.ackedNow();
    for (const s of this.samples) {
      const lag = s.acked - s.stored;
      const behind = this.secondsBehind(s);
      const rel = Math.round(s.t - loadStartEpoch);
      rows.push([rel, s.acked, s.stored, lag, round(behind, 3)]);
      if (lag > maxEvents) {
        maxEvents = lag;
        maxEventsAt = rel;
      }
      if (behind > maxBehind) {
        maxBehind = behind;
        maxBehindAt = rel;
      }
      if (caughtUp === null && lastAckEpoch !== null && s.t >= lastAckEpoch && s.stored >= finalAcked) {
        caughtUp = Math.round(s.t - lastAckEpoch);
      }
    }
    const last = this.samples[this.samples.length - 1];
    const aggSum = (k: keyof AggregatorHealth): number =>
      this.lastHealth.reduce((acc, h) => acc + Number((h.aggregator as AggregatorHealth | null)?.[k] ?? 0), 0);
    return {
      health_urls: this.targets.map((e) => e.url.origin),
      interval_ms: this.intervalMs,
      samples: this.samples.length,
      sample_errors: this.errors,
      ...(this.firstError ? { first_sample_error: this.firstError } : {}),
      baseline_stored: this.baseline,
      max_events: this.samples.length ? maxEvents : null,
      max_events_at_s: maxEventsAt === null ? null : round(maxEventsAt / 1000, 2),
      max_seconds_behind: this.samples.length ? round(maxBehind, 3) : null,
      max_seconds_behind_at_s: maxBehindAt === null ? null : round(maxBehindAt / 1000, 2),
      caught_up_after_last_ack_ms: caughtUp,
      final: {
        acked: finalAcked,
        stored: last ? last.stored : null,
        events: aggSum('events'),
        duplicates: aggSum('duplicates'),
        invalid: aggSum('invalid'),
        flushes: aggSum('flushes'),
        insert_retries: aggSum('insertRetries'),
      },
      processes: this.lastHealth,
      series: { columns: ['t_ms', 'acked', 'stored', 'lag_events', 'seconds_behind'], t0_epoch_ms: loadStartEpoch, rows },
    };
  }
}
