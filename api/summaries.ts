/**
 * GET /v1/billing/meters/:id/event_summaries. Sums and counts come from the per-minute rollups, minus the events
 * cancelled by adjustments; `last` and pre-aggregated (event_time_window) meters are computed from raw events. Reads of
 * raw events and cancellations collapse duplicate rows by seq, which a crash between two inserts can leave behind.
 *
 * Choices where Stripe's docs are silent (see README): summaries come newest first, like every Stripe list; with a
 * value_grouping_window only windows holding at least one counted event are listed; without one, exactly one summary
 * is returned, 0 when there is no usage.
 */
import type { HttpServer } from '../shared/http/server';
import { apiEndpoint, listResult } from '../shared/http/endpoints';
import type { Services } from '../shared/services';
import { ParamReader } from '../shared/wire/form';
import { InvalidRequestError } from '../shared/errors';
import { sqlString } from '../shared/analytics-store';
import { usesRollups, type MeterObject } from '../shared/meters';
import { parseMeterValue, scaledToNumber } from '../shared/decimal';
import { loadMeter, readListParams } from './meters';
import { metrics } from '../shared/metrics';

export interface SummaryWindow {
  start: number;
  end: number;
  /** Scaled decimal (shared/decimal.ts). */
  value: bigint;
}

interface Range {
  account: string;
  meterId: string;
  /** One customer, several (a coalesced read), or null for every customer of the meter (aggregateByCustomer). */
  customer: string | readonly string[] | null;
  start: number;
  end: number;
  /** Window length in seconds (end - start when there is no grouping). */
  grouping: number;
}

function toScaled(text: string | number | null | undefined): bigint {
  if (text === null || text === undefined) return 0n;
  return parseMeterValue(String(text)) ?? 0n;
}

function customerFilter(r: Range): string {
  if (r.customer === null) return '';
  if (typeof r.customer === 'string') return ` AND customer = ${sqlString(r.customer)}`;
  return ` AND customer IN (${r.customer.map(sqlString).join(', ')})`;
}

function rawFilter(r: Range): string {
  return `account = ${sqlString(r.account)} AND meter_id = ${sqlString(r.meterId)}${customerFilter(r)}
    AND timestamp_ms >= ${r.start * 1000} AND timestamp_ms < ${r.end * 1000}`;
}

/** The meter's rows of meter_cancellations. */
function meterCancellations(r: Range): string {
  return `meter_cancellations WHERE account = ${sqlString(r.account)} AND meter_id = ${sqlString(r.meterId)}`;
}

function cancelledSeqs(r: Range): string {
  return `(SELECT seq FROM ${meterCancellations(r)})`;
}

/** Most customers one coalesced read asks for, and most characters of their ids (bounds the query's size). */
const MAX_COALESCED_CUSTOMERS = 500;
const MAX_COALESCED_CHARS = 64 * 1024;

interface WaitingRead {
  customer: string;
  resolve(windows: Map<number, bigint>): void;
  reject(err: unknown): void;
}

/**
 * Summary reads of one meter and range, coalesced. Each analytics query has a fixed cost (5–8 ms in the embedded
 * engine, which runs one query at a time) far above its per-customer cost, and billing jobs and dashboards ask for
 * many customers' summaries at once. So while a read of a meter and range is running, the reads of that meter and
 * range that arrive wait, and then run together as one query over all their customers. A read never joins a query
 * that started before it arrived, so it sees at least what a query of its own would have seen.
 */
class CoalescedReads {
  private readonly waiting: WaitingRead[] = [];
  private running = false;

  constructor(
    private readonly s: Services,
    private readonly meter: MeterObject,
    private readonly range: Omit<Range, 'customer'>,
    private readonly done: () => void,
  ) {}

  read(customer: string): Promise<Map<number, bigint>> {
    metrics.summaryReads.child().inc();
    return new Promise((resolve, reject) => {
      this.waiting.push({ customer, resolve, reject });
      if (!this.running) void this.run();
    });
  }

  private async run(): Promise<void> {
    this.running = true;
    while (this.waiting.length > 0) {
      const batch = this.take();
      const customers = [...new Set(batch.map((w) => w.customer))];
      metrics.summaryQueries.child().inc();
      try {
        const windows = await aggregateByCustomer(this.s, this.meter, { ...this.range, customer: customers.length === 1 ? customers[0] : customers });
        for (const w of batch) w.resolve(windows.get(w.customer) ?? new Map());
      } catch (err) {
        for (const w of batch) w.reject(err);
      }
    }
    this.running = false;
    this.done();
  }

  /** The waiting reads that fit into one query, oldest first. */
  private take(): WaitingRead[] {
    let chars = 0;
    let n = 0;
    while (n < this.waiting.length && n < MAX_COALESCED_CUSTOMERS) {
      chars += this.waiting[n].customer.length;
      if (n > 0 && chars > MAX_COALESCED_CHARS) break;
      n++;
    }
    return this.waiting.splice(0, n);
  }
}

/** The coalesced reads in progress, per analytics store (one per process's services) and meter and range. */
const readsInProgress = new WeakMap<object, Map<string, CoalescedReads>>();

/** Aggregated value per window index, for windows that hold counted events (reads coalesced: see CoalescedReads). */
export function computeWindows(s: Services, meter: MeterObject, r: Range & { customer: string }): Promise<Map<number, bigint>> {
  let byKey = readsInProgress.get(s.analytics);
  if (!byKey) readsInProgress.set(s.analytics, (byKey = new Map()));
  // The meter's id names its formula and event time window too: neither can change once the meter exists.
  const key = `${r.account}\u0000${r.meterId}\u0000${r.start}\u0000${r.end}\u0000${r.grouping}`;
  let reads = byKey.get(key);
  if (!reads) {
    const { customer: _one, ...range } = r;
    const created = new CoalescedReads(s, meter, range, () => {
      if (byKey.get(key) === created) byKey.delete(key);
    });
    byKey.set(key, (reads = created));
  }
  return reads.read(r.customer);
}

/** Aggregated value per customer and window index (windows that hold counted events); `r.customer` null: all customers. */
export async function aggregateByCustomer(s: Services, meter: MeterObject, r: Range): Promise<Map<string, Map<number, bigint>>> {
  const out = new Map<string, Map<number, bigint>>();
  const windowsOf = (cu: string) => {
    let m = out.get(cu);
    if (!m) out.set(cu, (m = new Map()));
    return m;
  };
  const formula = meter.default_aggregation.formula;
  if (usesRollups({ formula, window: meter.event_time_window })) {
    // The cancelled events are subtracted from the rollups. Finding them reads the raw events of the range, the most
    // expensive read here, so it runs only when the meter has cancellations at all (most have none): with one
    // ClickHouse engine per process (embedded), queries run one at a time, and this read was half of each summary's.
    const [rolled, cancellations] = await Promise.all([
      s.analytics.query<{ cu: string; w: number | string; s: string; c: number | string }>(
        `SELECT customer AS cu, intDiv(minute - ${r.start}, ${r.grouping}) AS w, toString(sum(value_sum)) AS s, sum(event_count) AS c
         FROM meter_rollups_1m
         WHERE account = ${sqlString(r.account)} AND meter_id = ${sqlString(r.meterId)}${customerFilter(r)}
           AND minute >= ${r.start} AND minute < ${r.end}
         GROUP BY cu, w`,
      ),
      s.analytics.query<{ n: number | string }>(`SELECT count() AS n FROM ${meterCancellations(r)}`),
    ]);
    const cancelled =
      Number(cancellations[0]?.n ?? 0) === 0
        ? []
        : await s.analytics.query<{ cu: string; w: number | string; s: string; c: number | string }>(
            `SELECT cu, w, toString(sum(v)) AS s, count() AS c FROM (
               SELECT any(customer) AS cu, any(intDiv(intDiv(timestamp_ms, 1000) - ${r.start}, ${r.grouping})) AS w, any(value) AS v
               FROM meter_events WHERE ${rawFilter(r)} AND seq IN ${cancelledSeqs(r)}
               GROUP BY seq
             ) GROUP BY cu, w`,
          );
    const counts = new Map<string, Map<number, number>>();
    const countsOf = (cu: string) => {
      let m = counts.get(cu);
      if (!m) counts.set(cu, (m = new Map()));
      return m;
    };
    for (const row of rolled) {
      const w = Number(row.w);
      countsOf(row.cu).set(w, Number(row.c));
      windowsOf(row.cu).set(w, formula === 'sum' ? toScaled(row.s) : BigInt(row.c) * SCALE_ONE);
    }
    for (const row of cancelled) {
      const w = Number(row.w);
      const c = countsOf(row.cu);
      c.set(w, (c.get(w) ?? 0) - Number(row.c));
      const v = windowsOf(row.cu);
      v.set(w, (v.get(w) ?? 0n) - (formula === 'sum' ? toScaled(row.s) : BigInt(row.c) * SCALE_ONE));
    }
    for (const [cu, byWindow] of counts) {
      const v = windowsOf(cu);
      for (const [w, c] of byWindow) if (c <= 0) v.delete(w);
      if (v.size === 0) out.delete(cu);
    }
    return out;
  }
  const notCancelled = `seq NOT IN ${cancelledSeqs(r)}`;
  if (meter.event_time_window === null) {
    // formula `last`: the value of the latest event by timestamp; ties go to the later arrival (receipt time, then log
    // position: across partitions the log position alone says nothing about arrival).
    const rows = await s.analytics.query<{ cu: string; w: number | string; v: string }>(
      `SELECT customer AS cu, intDiv(intDiv(timestamp_ms, 1000) - ${r.start}, ${r.grouping}) AS w, toString(argMax(value, tuple(timestamp_ms, received_ms, seq))) AS v
       FROM meter_events WHERE ${rawFilter(r)} AND ${notCancelled}
       GROUP BY cu, w`,
    );
    for (const row of rows) windowsOf(row.cu).set(Number(row.w), toScaled(row.v));
    return out;
  }
  // Pre-aggregated meters: within each hour/day window only the most recently sent event counts.
  const tw = meter.event_time_window === 'hour' ? 3600 : 86400;
  const agg = formula === 'sum' ? 'toString(sum(v))' : formula === 'count' ? 'toString(count())' : 'toString(argMax(v, tww))';
  const rows = await s.analytics.query<{ cu: string; w: number | string; v: string }>(
    `SELECT cu, intDiv(greatest(tww, ${r.start}) - ${r.start}, ${r.grouping}) AS w, ${agg} AS v FROM (
       SELECT customer AS cu, intDiv(intDiv(timestamp_ms, 1000), ${tw}) * ${tw} AS tww, argMax(value, tuple(received_ms, seq)) AS v
       FROM meter_events WHERE ${rawFilter(r)} AND ${notCancelled}
       GROUP BY cu, tww
     ) GROUP BY cu, w`,
  );
  for (const row of rows) windowsOf(row.cu).set(Number(row.w), formula === 'count' ? BigInt(row.v) * SCALE_ONE : toScaled(row.v));
  return out;
}

const SCALE_ONE = parseMeterValue('1')!;

function summaryId(meterId: string, customer: string, start: number, end: number): string {
  return 'mtrusg_' + Buffer.from(`${meterId}|${customer}|${start}|${end}`).toString('base64url');
}

function windowStartOf(id: string, param: string): number {
  if (id.startsWith('mtrusg_')) {
    const parts = Buffer.from(id.slice(7), 'base64url').toString('utf8').split('|');
    const start = Number(parts[2]);
    if (parts.length === 4 && Number.isInteger(start)) return start;
  }
  throw new InvalidRequestError(`Invalid ${param}: '${id.slice(0, 60)}' is not a meter event summary id.`, { param });
}

function aligned(value: number, unit: number, param: string, what: string): void {
  if (value % unit !== 0) throw new InvalidRequestError(`${param} must be aligned with ${what} boundaries.`, { param, code: 'parameter_invalid_integer' });
}

export function registerSummaryRoutes(http: HttpServer, s: Services): void {
  http.route(
    'GET',
    '/v1/billing/meters/:id/event_summaries',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['customer', 'start_time', 'end_time', 'value_grouping_window', 'limit', 'starting_after', 'ending_before', 'expand']);
      const meter = await loadMeter(s, p, req.params[0]);
      const customer = r.string('customer', { required: true, maxLength: 5000 })!;
      const start = r.integer('start_time', { required: true, min: 0 })!;
      const end = r.integer('end_time', { required: true, min: 0 })!;
      const grouping = r.string('value_grouping_window', { enum: ['day', 'hour'] });
      const page = readListParams(r);
      aligned(start, 60, 'start_time', 'minute');
      aligned(end, 60, 'end_time', 'minute');
      if (end <= start) throw new InvalidRequestError('end_time must be after start_time.', { param: 'end_time' });
      let size = end - start;
      if (grouping === 'hour') {
        aligned(start, 3600, 'start_time', 'hour');
        aligned(end, 3600, 'end_time', 'hour');
        size = 3600;
      } else if (grouping === 'day') {
        aligned(start, 86400, 'start_time', 'day (00:00 UTC)');
        aligned(end, 86400, 'end_time', 'day (00:00 UTC)');
        size = 86400;
      }
      const values = await computeWindows(s, meter, { account: p.account, meterId: meter.id, customer, start, end, grouping: size });
      let windows: SummaryWindow[];
      if (!grouping) windows = [{ start, end, value: values.get(0) ?? 0n }];
      else {
        windows = [...values.entries()]
          .map(([w, value]) => ({ start: start + w * size, end: start + (w + 1) * size, value }))
          .sort((a, b) => b.start - a.start);
      }
      let selected: SummaryWindow[];
      let hasMore: boolean;
      if (page.startingAfter) {
        const after = windowStartOf(page.startingAfter, 'starting_after');
        const older = windows.filter((w) => w.start < after);
        selected = older.slice(0, page.limit);
        hasMore = older.length > page.limit;
      } else if (page.endingBefore) {
        const before = windowStartOf(page.endingBefore, 'ending_before');
        const newer = windows.filter((w) => w.start > before);
        selected = newer.slice(Math.max(0, newer.length - page.limit));
        hasMore = newer.length > page.limit;
      } else {
        selected = windows.slice(0, page.limit);
        hasMore = windows.length > page.limit;
      }
      return listResult(
        `/v1/billing/meters/${meter.id}/event_summaries`,
        selected.map((w) => ({
          id: summaryId(meter.id, customer, w.start, w.end),
          object: 'billing.meter_event_summary',
          aggregated_value: scaledToNumber(w.value),
          end_time: w.end,
          livemode: p.livemode,
          meter: meter.id,
          start_time: w.start,
        })),
        hasMore,
      );
    }),
  );
}
