/**
 * Evaluates the active billing alerts against the aggregated usage in the analytics store (the meter summaries'
 * computation: rollups minus cancellations, `last` and pre-aggregated meters from raw events), every
 * BILLING_ALERT_INTERVAL_MS (default 5 s). An alert triggers for a customer when
 *  - the customer's aggregated usage of the meter reaches `gte`: over the current period of the customer's
 *    subscription item priced on that meter (real-time subscriptions; one on a test clock does not count, as Stripe's
 *    alerts do not work with test clocks), else over all the usage reported; usage reported before the alert was
 *    created counts (Stripe evaluates "when you report usage data after you create the alert", including earlier data);
 *  - and the customer reported usage of the meter after the alert was created (Stripe evaluates on new reports);
 *  - and it has not triggered for that customer before (`one_time`: once per customer, whatever the usage or the
 *    periods do afterwards).
 * A trigger writes, in one transaction, the (alert, customer) trigger row (unique: a second process evaluating the same
 * alert fails to insert it and records nothing), the v1 `billing.alert.triggered` event with its webhook deliveries and
 * the thin `v1.billing.alert.triggered` event with its event-destination deliveries. The alert is re-read in that
 * transaction, so a deactivated or archived alert never triggers.
 *
 * Bound: usage is visible to the evaluation once the aggregator has flushed it (FLUSH_INTERVAL_MS, 250 ms by default,
 * plus the store's write), so an alert fires within that freshness bound plus one BILLING_ALERT_INTERVAL_MS (plus one
 * evaluation pass), and its webhook follows within WEBHOOK_POLL_MS (sooner: a recorded event kicks the dispatcher).
 */
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import { sqlString } from '../../shared/analytics-store';
import { METER_TYPE, type MeterObject } from '../../shared/meters';
import { parseMeterValue, scaledToNumber } from '../../shared/decimal';
import { recordThinEvent } from '../../shared/core-events';
import { UniqueViolation } from '../../shared/errors';
import { log } from '../../shared/logger';
import { aggregateByCustomer } from '../summaries';
import { recordBillingEvent } from './common';
import { meteredUsage } from './invoice-lines';
import { SUBSCRIPTION_TYPE, type SubscriptionObject } from './subscription-model';
import { jobSlot, PeriodicJob } from './periodic-job';
import { ALERT_TRIGGER_TYPE, ALERT_TYPE, alertCustomer, renderAlert, type AlertObject } from './alerts';

/** Far enough in the future for "all usage" (year 9999), small enough for ClickHouse's Int64 milliseconds. */
const END_OF_TIME = 253_402_300_800;
const SCALE_ONE = parseMeterValue('1')!;
const CANDIDATES_PER_QUERY = 1000;

interface Period {
  start: number;
  end: number;
}

/**
 * `account NUL customer NUL meter` → the current period of the customer's real-time subscription item priced on the
 * meter (the latest started, when several).
 */
export function meteredPeriods(subs: Array<{ account: string; data: SubscriptionObject }>): Map<string, Period> {
  const out = new Map<string, Period>();
  for (const { account, data: sub } of subs) {
    if (sub.test_clock || sub.status === 'canceled' || sub.status === 'incomplete_expired') continue;
    for (const it of sub.items.data) {
      const meter = it.price.recurring?.meter;
      if (it.price.recurring?.usage_type !== 'metered' || !meter) continue;
      const key = `${account}\u0000${sub.customer}\u0000${meter}`;
      const prev = out.get(key);
      if (!prev || prev.start < it.current_period_start) out.set(key, { start: it.current_period_start, end: it.current_period_end });
    }
  }
  return out;
}

export class AlertEvaluator extends PeriodicJob {
  /** `alert customer` pairs known to have triggered (they never trigger again). */
  private readonly fired = new Set<string>();

  constructor(private readonly s: Services) {
    super('billing alert evaluation', s.config.alertIntervalMs);
  }

  /** One pass over every active alert. */
  async run(): Promise<void> {
    const started = Date.now();
    const alerts = (await this.s.state.scanType<AlertObject>(ALERT_TYPE)).filter((o) => o.data.status === 'active');
    if (alerts.length === 0) return;
    const periods = meteredPeriods(await this.s.state.scanType<SubscriptionObject>(SUBSCRIPTION_TYPE));
    for (const o of alerts) {
      if (this.stopped) return;
      await this.evaluate(o.account, o.data, periods).catch((err) => {
        if (!this.stopped) log.warn('billing alert evaluation failed', { alert: o.id, err: String(err) });
      });
    }
    log.debug('billing alerts evaluated', { alerts: alerts.length, ms: Date.now() - started });
  }

  private async evaluate(account: string, alert: AlertObject, periods: Map<string, Period>): Promise<void> {
    const meterId = alert.usage_threshold.meter;
    const meter = await this.s.state.getObject<MeterObject>(account, METER_TYPE, meterId);
    if (!meter) return;
    const only = alertCustomer(alert);
    const threshold = BigInt(alert.usage_threshold.gte) * SCALE_ONE;
    const all = await aggregateByCustomer(this.s, meter.data, { account, meterId, customer: only, start: 0, end: END_OF_TIME, grouping: END_OF_TIME });
    const values = new Map<string, bigint>();
    for (const [customer, windows] of all) {
      if (this.fired.has(`${alert.id} ${customer}`)) continue;
      const period = periods.get(`${account}\u0000${customer}\u0000${meterId}`);
      let value = windows.get(0) ?? 0n;
      // The period's usage exactly as the period's invoice will count it.
      if (period) value = await meteredUsage(this.s, { account, livemode: alert.livemode }, meterId, customer, period.start, period.end);
      if (value >= threshold) values.set(customer, value);
    }
    if (values.size === 0) return;
    // Only customers that reported usage of the meter since the alert was created (asked in chunks: short queries).
    const candidates = [...values.keys()];
    for (let i = 0; i < candidates.length && !this.stopped; i += CANDIDATES_PER_QUERY) {
      const reported = await this.s.analytics.query<{ cu: string }>(
        `SELECT DISTINCT customer AS cu FROM meter_events
         WHERE account = ${sqlString(account)} AND meter_id = ${sqlString(meterId)} AND received_ms >= ${alert._created_ms}
           AND customer IN (${candidates
             .slice(i, i + CANDIDATES_PER_QUERY)
             .map(sqlString)
             .join(', ')})`,
      );
      for (const { cu } of reported) {
        const value = values.get(cu);
        if (value === undefined || this.stopped) continue;
        await this.trigger(account, alert.id, cu, value);
      }
    }
  }

  private async trigger(account: string, alertId: string, customer: string, value: bigint): Promise<void> {
    const key = `${alertId} ${customer}`;
    try {
      await this.s.state.transaction(async (tx) => {
        const found = await tx.getObject<AlertObject>(account, ALERT_TYPE, alertId);
        if (found?.data.status !== 'active') return;
        const alert = found.data;
        const triggerId = `${alertId}:${customer}`;
        if (await tx.getObject(account, ALERT_TRIGGER_TYPE, triggerId)) {
          this.fired.add(key);
          return;
        }
        const nowMs = this.s.now();
        await tx.insertObject({ account, type: ALERT_TRIGGER_TYPE, id: triggerId, createdMs: nowMs, data: { alert: alertId, customer, value: String(value) } });
        const p: Principal = { account, livemode: alert.livemode };
        await recordBillingEvent(tx, p, 'billing.alert.triggered', {
          object: 'billing.alert_triggered',
          alert: renderAlert(alert),
          created: Math.floor(nowMs / 1000),
          customer,
          external_customer_id: customer,
          livemode: alert.livemode,
          value: scaledToNumber(value),
        });
        await recordThinEvent(tx, p, 'v1.billing.alert.triggered', { id: alertId, type: 'billing.alert', url: `/v1/billing/alerts/${alertId}` }, nowMs);
        this.fired.add(key);
      });
    } catch (err) {
      // Another process inserted the same trigger row first: it recorded the events.
      if (err instanceof UniqueViolation) this.fired.add(key);
      else throw err;
    }
  }
}

const slot = jobSlot((s: Services) => new AlertEvaluator(s));
export const startAlertEvaluator = slot.start;
export const stopAlertEvaluator = slot.stop;
