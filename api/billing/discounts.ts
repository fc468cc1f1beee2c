/**
 * Discounts on customers, subscriptions and invoices: which discounts an invoice gets, their durations over billing
 * periods, and the endpoints that remove them (`DELETE /v1/customers/:id/discount`, `DELETE
 * /v1/subscriptions/:id/discount`).
 *
 * Which discounts an invoice gets (Stripe's inheritance): a subscription's invoices take the subscription's discounts,
 * or the customer's discount when the subscription has none; a manual invoice takes its `discounts` param, or the
 * customer's discount when the param is not sent. A discount counts for an invoice created before its `end`
 * (repeating: start + duration_in_months; once and forever: no end). A `once` discount of a subscription or customer
 * is used up by the first invoice it lands on: it is then removed from its subscription or customer and ended
 * (`end` = that invoice's creation), as Stripe removes it.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import type { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, NotFoundError } from '../../shared/errors';
import { recordBillingEvent } from './common';
import { createDiscount, DISCOUNT_TYPE, loadDiscount, renderDiscount, type DiscountObject } from './coupons';

/** What an invoice keeps of each of its discounts, to compute its amounts without reading them again. */
/** The customer fields used here (customers.ts imports this module, so it is not imported back). */
interface CustomerObject {
  id: string;
  currency: string | null;
  test_clock: string | null;
  discount: Record<string, unknown> | null;
}

const CUSTOMER_TYPE = 'customer';

export interface AppliedDiscount {
  id: string;
  percent_off: number | null;
  amount_off: number | null;
  products: string[] | null;
}

export function appliedFrom(d: DiscountObject): AppliedDiscount {
  return { id: d.id, percent_off: d._coupon.percent_off, amount_off: d._coupon.amount_off, products: d._coupon.applies_to?.products ?? null };
}

export function isCurrent(d: DiscountObject, at: number): boolean {
  return d.end === null || at < d.end;
}

async function loadAll(tx: StateStore, p: Principal, ids: string[]): Promise<DiscountObject[]> {
  const out: DiscountObject[] = [];
  for (const id of ids) {
    const found = await tx.getObject<DiscountObject>(p.account, DISCOUNT_TYPE, id);
    if (found) out.push(found.data);
  }
  return out;
}

/**
 * The discounts of an invoice of `subscriptionDiscounts` (the subscription's discount ids; null for a manual invoice)
 * for `customer`, created at `at`. With `consume`, `once` discounts are used up (see the header).
 */
export async function inheritedDiscounts(
  tx: StateStore,
  p: Principal,
  customer: CustomerObject,
  sub: { id: string; discounts: string[] } | null,
  at: number,
  consume: boolean,
): Promise<DiscountObject[]> {
  const own = sub ? (await loadAll(tx, p, sub.discounts)).filter((d) => isCurrent(d, at)) : [];
  if (own.length > 0) {
    if (consume) {
      const once = own.filter((d) => d._coupon.duration === 'once');
      if (once.length > 0) {
        sub!.discounts = sub!.discounts.filter((id) => !once.some((d) => d.id === id));
        for (const d of once) await endDiscount(tx, p, d, at);
      }
    }
    return own;
  }
  const cd = customer.discount as unknown as { id: string } | null;
  if (!cd) return [];
  const d = (await loadAll(tx, p, [cd.id]))[0];
  if (!d || !isCurrent(d, at)) return [];
  if (consume && d._coupon.duration === 'once') {
    const before = { discount: customer.discount };
    await endDiscount(tx, p, d, at);
    customer.discount = null;
    await tx.updateObject(p.account, CUSTOMER_TYPE, customer.id, customer);
    await recordBillingEvent(tx, p, 'customer.discount.deleted', renderDiscount(d));
    await recordBillingEvent(tx, p, 'customer.updated', customer, before);
  }
  return [d];
}

async function endDiscount(tx: StateStore, p: Principal, d: DiscountObject, at: number): Promise<void> {
  d.end = at;
  await tx.updateObject(p.account, DISCOUNT_TYPE, d.id, d);
}

/**
 * `coupon` / `promotion_code` on a customer (create or update; Stripe's legacy params, still what sets a customer's
 * discount): replaces the customer's discount. Returns what records customer.discount.created (and .deleted for a
 * replaced one), for the caller to run after it recorded customer.created / customer.updated.
 */
export async function applyCustomerDiscountParams(
  tx: StateStore,
  p: Principal,
  r: ParamReader,
  c: CustomerObject,
  realNow: number,
): Promise<() => Promise<void>> {
  const coupon = r.string('coupon', { maxLength: 5000 });
  const promotionCode = r.string('promotion_code', { maxLength: 5000 });
  if (coupon === undefined && promotionCode === undefined) return async () => {};
  if (coupon !== undefined && promotionCode !== undefined)
    throw new InvalidParamError('promotion_code', 'You may only specify one of coupon and promotion_code.');
  const old = c.discount as unknown as Omit<DiscountObject, '_coupon'> | null;
  // The discount starts at the customer's time: its test clock's, when it has one.
  const clock = c.test_clock ? await tx.getObject<{ frozen_time: number }>(p.account, 'test_helpers.test_clock', c.test_clock) : null;
  const now = clock?.data.frozen_time ?? realNow;
  const d = await createDiscount(
    tx,
    p,
    { coupon, promotionCode, param: coupon !== undefined ? 'coupon' : 'promotion_code' },
    { customer: c.id, currency: c.currency },
    now,
    { deferEvent: true },
  );
  c.discount = renderDiscount(d) as never;
  return async () => {
    if (old) await recordBillingEvent(tx, p, 'customer.discount.deleted', old);
    await recordBillingEvent(tx, p, 'customer.discount.created', renderDiscount(d));
  };
}

export function registerDiscountRoutes(
  http: HttpServer,
  s: Services,
  hooks: { deleteSubscriptionDiscounts: (tx: StateStore, p: Principal, id: string) => Promise<DiscountObject[]> },
): void {
  http.route(
    'DELETE',
    '/v1/customers/:id/discount',
    apiEndpoint(s, async (p, req) => {
      const d = await s.state.transaction(async (tx) => {
        const found = await tx.getObject<CustomerObject>(p.account, CUSTOMER_TYPE, req.params[0]);
        if (!found || (found.data as { deleted?: boolean }).deleted) throw new NotFoundError(`No such customer: '${req.params[0]}'`);
        const c = found.data;
        const cur = c.discount as unknown as { id: string } | null;
        if (!cur) throw new NotFoundError(`Customer ${c.id} does not have a discount.`, 'customer');
        const d = await loadDiscount(tx, p, cur.id);
        const before = { discount: c.discount };
        c.discount = null;
        await tx.updateObject(p.account, CUSTOMER_TYPE, c.id, c);
        await recordBillingEvent(tx, p, 'customer.discount.deleted', renderDiscount(d));
        await recordBillingEvent(tx, p, 'customer.updated', c, before);
        return d;
      });
      return json(200, { ...renderDiscount(d), deleted: true });
    }),
  );
  http.route(
    'DELETE',
    '/v1/subscriptions/:id/discount',
    apiEndpoint(s, async (p, req) => {
      const removed = await s.state.transaction((tx) => hooks.deleteSubscriptionDiscounts(tx, p, req.params[0]));
      if (removed.length === 0) throw new NotFoundError(`Subscription ${req.params[0]} does not have a discount.`, 'subscription');
      return json(200, { ...renderDiscount(removed[0]), deleted: true });
    }),
  );
}
