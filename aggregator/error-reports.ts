/**
 * Collects the asynchronous validation failures of one flush and turns them into Stripe's thin events:
 * `v1.billing.meter.error_report_triggered` per meter, `v1.billing.meter.no_meter_found` for events naming no meter.
 */
import type { EventError } from './worker';
import { buildCoreEvent, meterRelatedObject, type CoreEventObject } from '../shared/core-events';

const SAMPLES_PER_CODE = 5;

interface Group {
  account: string;
  livemode: boolean;
  meterId: string | null;
  count: number;
  byCode: Map<string, { count: number; samples: Array<{ error_message: string; request: { identifier: string } }> }>;
}

export class ErrorReports {
  private groups = new Map<string, Group>();
  private startMs = 0;

  add(e: EventError, nowMs: number): void {
    if (this.groups.size === 0) this.startMs = nowMs;
    const key = e.account + '\u0000' + (e.meterId ?? '');
    let g = this.groups.get(key);
    if (!g) this.groups.set(key, (g = { account: e.account, livemode: e.livemode, meterId: e.meterId, count: 0, byCode: new Map() }));
    g.count++;
    let c = g.byCode.get(e.code);
    if (!c) g.byCode.set(e.code, (c = { count: 0, samples: [] }));
    c.count++;
    if (c.samples.length < SAMPLES_PER_CODE) c.samples.push({ error_message: e.message, request: { identifier: e.identifier } });
  }

  get empty(): boolean {
    return this.groups.size === 0;
  }

  /** Builds the events and resets the collector. */
  drain(nowMs: number): Array<{ account: string; event: CoreEventObject }> {
    const out: Array<{ account: string; event: CoreEventObject }> = [];
    for (const g of this.groups.values()) {
      const data = {
        developer_message_summary: g.count === 1 ? 'There is 1 invalid event' : `There are ${g.count} invalid events`,
        reason: {
          error_count: g.count,
          error_types: [...g.byCode].map(([code, c]) => ({ code, error_count: c.count, sample_errors: c.samples })),
        },
        validation_start: new Date(this.startMs).toISOString(),
        validation_end: new Date(nowMs).toISOString(),
      };
      const event = g.meterId
        ? buildCoreEvent(g.livemode, 'v1.billing.meter.error_report_triggered', nowMs, meterRelatedObject(g.meterId), data)
        : buildCoreEvent(g.livemode, 'v1.billing.meter.no_meter_found', nowMs, null, data);
      out.push({ account: g.account, event });
    }
    this.groups = new Map();
    return out;
  }
}
