/**
 * The billing cycle of subscriptions: periods (basil shape: on the items, which share one interval; months and years
 * keep the anchor's day of month, clamped; days and weeks add exact seconds), the lines of each period (licensed in
 * advance, metered in arrears from the meter's summary), the invoice of each period end reached by the customer's time
 * (a test clock's advance or the billing tick), and the upcoming invoice's preview.
 */
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import { InvalidParamError, InvalidRequestError } from '../../shared/errors';
import { loadCustomer, type CustomerObject } from './customers';
import type { PriceObject, Interval } from './prices';
import { inheritedDiscounts } from './discounts';
import { autoFinalize } from './invoice-transitions';
import { insertInvoice, timeFor } from './invoice-model';
import { meteredUsage, newInvoice, sweepPendingItems, type LineSpec } from './invoice-lines';
import { previewHooks } from './invoices';
import { SUBSCRIPTION_TYPE, type SubscriptionItem, type SubscriptionObject, loadSubscription, saveSubscription } from './subscription-model';

// ---------------------------------------------------------------------------------------------------------------------
// Periods

export function addInterval(from: number, anchor: number, interval: Interval, count: number): number {
  if (interval === 'day') return from + 86400 * count;
  if (interval === 'week') return from + 7 * 86400 * count;
  const months = interval === 'month' ? count : 12 * count;
  const d = new Date(from * 1000);
  const a = new Date(anchor * 1000);
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth() + months;
  const lastDay = new Date(Date.UTC(y, m + 1, 0)).getUTCDate();
  const day = Math.min(a.getUTCDate(), lastDay);
  return Math.floor(Date.UTC(y, m, day, a.getUTCHours(), a.getUTCMinutes(), a.getUTCSeconds()) / 1000);
}

export function periodOf(sub: SubscriptionObject): { start: number; end: number } {
  const it = sub.items.data[0];
  return { start: it.current_period_start, end: it.current_period_end };
}

export function nextEnd(sub: SubscriptionObject, end: number): number {
  const r = sub.items.data[0].price.recurring!;
  return addInterval(end, sub.billing_cycle_anchor, r.interval, r.interval_count);
}

function productName(price: PriceObject): string {
  return price.nickname ?? price.product;
}

function describe(item: SubscriptionItem): string {
  const q = item.quantity ?? 0;
  return item.price.recurring?.usage_type === 'metered' ? `Usage of ${productName(item.price)}` : `${q} × ${productName(item.price)}`;
}

/** Licensed lines in advance for [start, end). */
export function licensedLines(sub: SubscriptionObject, start: number, end: number): LineSpec[] {
  return sub.items.data
    .filter((it) => it.price.recurring?.usage_type !== 'metered')
    .map((it) => ({
      price: it.price,
      quantity: BigInt(it.quantity ?? 1) * 10n ** 15n,
      description: describe(it),
      period: { start, end },
      subscription: sub.id,
      subscriptionItem: it.id,
    }));
}

/** Metered lines in arrears for [start, end), with their usage. Reads the meters (outside any transaction). */
export async function meteredLines(s: Services, p: Principal, sub: SubscriptionObject, start: number, end: number): Promise<LineSpec[]> {
  const out: LineSpec[] = [];
  for (const it of sub.items.data) {
    if (it.price.recurring?.usage_type !== 'metered' || !it.price.recurring.meter) continue;
    const q = await meteredUsage(s, p, it.price.recurring.meter, sub.customer, start, end);
    out.push({ price: it.price, quantity: q, description: describe(it), period: { start, end }, subscription: sub.id, subscriptionItem: it.id });
  }
  return out;
}

/**
 * Runs the billing cycle of one subscription up to `now`: one invoice per period end reached, then period rollover
 * (or the end of a subscription set to cancel at period end). Each period is one transaction; usage is read before it.
 */
export async function cycleSubscription(s: Services, p: Principal, subId: string, now: number): Promise<void> {
  for (let guard = 0; guard < 1000; guard++) {
    const sub = await loadSubscription(s.state, p, subId);
    if (sub.status === 'canceled' || sub.items.data.length === 0) return;
    const { start, end } = periodOf(sub);
    if (end > now) return;
    const metered = await meteredLines(s, p, sub, start, end);
    const done = await s.state.transaction(async (tx) => {
      const cur = await loadSubscription(tx, p, subId);
      if (periodOf(cur).end !== end || cur.status === 'canceled') return false; // someone else ran this period
      const customer = await loadCustomer(tx, p, cur.customer, 'customer');
      const before = structuredClone(cur);
      const ending = cur.cancel_at_period_end || (cur.cancel_at !== null && cur.cancel_at <= end);
      const next = nextEnd(cur, end);
      const lines = ending ? metered : [...metered, ...licensedLines(cur, end, next)];
      const discounts = await inheritedDiscounts(tx, p, customer, cur, end, true);
      const inv = newInvoice(p, customer, {
        discounts,
        created: end,
        currency: cur.currency,
        subscription: cur.id,
        billingReason: 'subscription_cycle',
        periodStart: start,
        periodEnd: end,
        autoAdvance: true,
        lines,
      });
      await sweepPendingItems(tx, p, inv, cur.id);
      await insertInvoice(tx, p, inv);
      cur.latest_invoice = inv.id;
      if (ending) {
        cur.status = 'canceled';
        cur.canceled_at = cur.canceled_at ?? end;
        cur.ended_at = end;
        await saveSubscription(tx, p, cur, 'customer.subscription.deleted', before);
      } else {
        for (const it of cur.items.data) {
          it.current_period_start = end;
          it.current_period_end = next;
        }
        await saveSubscription(tx, p, cur, 'customer.subscription.updated', before);
      }
      return true;
    });
    if (!done) continue;
  }
}

/** Runs every billing step due for the customers of a test clock at `now`. */
export async function runClock(s: Services, p: Principal, clockId: string, now: number): Promise<void> {
  const customers = new Set<string>();
  let cursor: string | undefined;
  for (;;) {
    const page = await s.state.listObjects<SubscriptionObject>(p.account, SUBSCRIPTION_TYPE, {
      limit: 100,
      startingAfter: cursor,
      where: { test_clock: clockId },
    });
    for (const o of page.data) {
      customers.add(o.data.customer);
      await cycleSubscription(s, p, o.id, now);
    }
    if (!page.hasMore || page.data.length === 0) break;
    cursor = page.data[page.data.length - 1].id;
  }
  cursor = undefined;
  for (;;) {
    const page: { data: Array<{ id: string }>; hasMore: boolean } = await s.state.listObjects<CustomerObject>(p.account, 'customer', {
      limit: 100,
      startingAfter: cursor,
      where: { test_clock: clockId },
    });
    for (const o of page.data) customers.add(o.id);
    if (!page.hasMore || page.data.length === 0) break;
    cursor = page.data[page.data.length - 1].id;
  }
  for (const c of customers) await autoFinalize(s, p, c, now);
}

/** create_preview: the next invoice of the subscription (or of the customer's first active one), usage so far. */
previewHooks.preview = async (s, p, customer, subscriptionId) => {
  let sub: SubscriptionObject | undefined;
  if (subscriptionId) {
    sub = await loadSubscription(s.state, p, subscriptionId, 'subscription');
    if (sub.customer !== customer.id) throw new InvalidParamError('subscription', `The subscription ${sub.id} does not belong to customer ${customer.id}.`);
  } else {
    const res = await s.state.listObjects<SubscriptionObject>(p.account, SUBSCRIPTION_TYPE, { limit: 100, where: { customer: customer.id, status: 'active' } });
    sub = res.data[0]?.data;
  }
  const now = await timeFor(s, s.state, p, customer.test_clock);
  if (!sub || sub.status === 'canceled') {
    throw new InvalidRequestError(`No upcoming invoices for customer: ${customer.id}`, { code: 'invoice_upcoming_none' });
  }
  const { start, end } = periodOf(sub);
  const ending = sub.cancel_at_period_end;
  const lines = [...(await meteredLines(s, p, sub, start, end)), ...(ending ? [] : licensedLines(sub, end, nextEnd(sub, end)))];
  const inv = newInvoice(p, customer, {
    created: end,
    currency: sub.currency,
    subscription: sub.id,
    billingReason: 'upcoming',
    periodStart: start,
    periodEnd: end,
    autoAdvance: true,
    lines,
    discounts: await inheritedDiscounts(s.state, p, customer, sub, end, false),
  });
  void now;
  return inv;
};
