/**
 * v1 coupons (`/v1/coupons`) and the discounts made from them (coupons or promotion codes applied to a customer, a
 * subscription or an invoice).
 *
 * A coupon is stored as the Coupon object (type `coupon`, id chosen by the caller or 8 random characters). Deleting
 * one removes it (retrieve answers 404, as Stripe) while the discounts already made from it keep working: every
 * discount keeps a snapshot of its coupon (`_coupon`, stripped when served). `valid` is computed when served: false
 * once redeem_by has passed or max_redemptions is reached.
 *
 * Discounts are `discount` documents (di_…) so that invoices and subscriptions refer to them by id as Stripe does
 * (invoice `discounts`, line `discount_amounts[].discount`). Making one redeems its coupon (times_redeemed + 1) and
 * its promotion code, in the caller's transaction.
 */
import type { HttpServer } from '../../shared/http/server';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import type { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError } from '../../shared/errors';
import { newId, randomBase62 } from '../../shared/ids';
import { recordBillingEvent, type Metadata } from './common';
import { defineResource, loadResource, P, type ParamValues } from './resource';
import { percentToBasisPoints } from './allocation';

export const COUPON_TYPE = 'coupon';
export const DISCOUNT_TYPE = 'discount';
export const PROMOTION_CODE_TYPE = 'promotion_code';

export interface CouponObject {
  id: string;
  object: 'coupon';
  amount_off: number | null;
  applies_to?: { products: string[] };
  created: number;
  currency: string | null;
  duration: 'forever' | 'once' | 'repeating';
  duration_in_months: number | null;
  livemode: boolean;
  max_redemptions: number | null;
  metadata: Metadata;
  name: string | null;
  percent_off: number | null;
  redeem_by: number | null;
  times_redeemed: number;
  valid: boolean;
}

export interface DiscountObject {
  id: string;
  object: 'discount';
  checkout_session: null;
  customer: string | null;
  customer_account: null;
  end: number | null;
  invoice: string | null;
  invoice_item: null;
  promotion_code: string | null;
  source: { coupon: string; type: 'coupon' };
  start: number;
  subscription: string | null;
  subscription_item: null;
  /** The coupon as it was when the discount was made. */
  _coupon: CouponObject;
}

export interface PromotionCodeObject {
  id: string;
  object: 'promotion_code';
  active: boolean;
  code: string;
  created: number;
  customer: string | null;
  customer_account: null;
  expires_at: number | null;
  livemode: boolean;
  max_redemptions: number | null;
  metadata: Metadata;
  promotion: { coupon: string; type: 'coupon' };
  restrictions: {
    currency_options: Record<string, { minimum_amount: number }>;
    first_time_transaction: boolean;
    minimum_amount: number | null;
    minimum_amount_currency: string | null;
  };
  times_redeemed: number;
}

const CURRENCY_RE = /^[a-z]{3}$/;

export function couponValid(c: CouponObject, nowS: number): boolean {
  if (c.redeem_by !== null && c.redeem_by <= nowS) return false;
  if (c.max_redemptions !== null && c.times_redeemed >= c.max_redemptions) return false;
  return true;
}

export function renderCoupon(c: CouponObject, nowS: number): CouponObject {
  return { ...c, valid: couponValid(c, nowS) };
}

export function renderDiscount(d: DiscountObject): Omit<DiscountObject, '_coupon'> {
  const { _coupon: _c, ...rest } = d;
  return rest;
}

export function loadCoupon(store: StateStore, p: Principal, id: string, param = 'id'): Promise<CouponObject> {
  return loadResource<CouponObject>(store, p, { type: COUPON_TYPE, noun: 'coupon' }, id, param);
}

export function loadDiscount(store: StateStore, p: Principal, id: string, param = 'id'): Promise<DiscountObject> {
  return loadResource<DiscountObject>(store, p, { type: DISCOUNT_TYPE, noun: 'discount' }, id, param);
}

/** Months after `from`, keeping the day of month (clamped to the month's last day) and the time of day. */
export function addMonths(from: number, months: number): number {
  const d = new Date(from * 1000);
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth() + months;
  const lastDay = new Date(Date.UTC(y, m + 1, 0)).getUTCDate();
  return Math.floor(Date.UTC(y, m, Math.min(d.getUTCDate(), lastDay), d.getUTCHours(), d.getUTCMinutes(), d.getUTCSeconds()) / 1000);
}

/** Where a new discount is attached. */
export interface DiscountTarget {
  customer: string;
  subscription?: string | null;
  invoice?: string | null;
  /** The currency of what it discounts (an amount_off coupon must match it); null when not known yet. */
  currency: string | null;
}

/**
 * Makes a discount from `coupon` or `promotion_code` (exactly one), checking that it can still be redeemed, and
 * redeems it. `start` is the target's time (its customer's test clock, or now).
 */
export async function createDiscount(
  tx: StateStore,
  p: Principal,
  src: { coupon?: string; promotionCode?: string; param: string },
  target: DiscountTarget,
  start: number,
  opts: { deferEvent?: boolean } = {},
): Promise<DiscountObject> {
  let promo: PromotionCodeObject | null = null;
  let couponId = src.coupon;
  if (src.promotionCode) {
    const found = await tx.getObject<PromotionCodeObject>(p.account, PROMOTION_CODE_TYPE, src.promotionCode);
    if (!found) throw new NotFoundError(`No such promotion code: '${src.promotionCode}'`, src.param);
    promo = found.data;
    const inactive =
      !promo.active ||
      (promo.expires_at !== null && promo.expires_at <= start) ||
      (promo.max_redemptions !== null && promo.times_redeemed >= promo.max_redemptions);
    if (inactive)
      throw new InvalidParamError(src.param, `This promotion code cannot be redeemed because it is inactive: ${promo.code}.`, 'promotion_code_inactive');
    if (promo.customer !== null && promo.customer !== target.customer) {
      throw new InvalidParamError(src.param, `This promotion code cannot be redeemed by this customer: ${promo.code}.`);
    }
    if (promo.restrictions.first_time_transaction) {
      const paid = await tx.listObjects(p.account, 'invoice', { limit: 1, where: { customer: target.customer, status: 'paid' } });
      if (paid.data.length > 0) throw new InvalidParamError(src.param, `This promotion code is only for customers who have never paid: ${promo.code}.`);
    }
    couponId = promo.promotion.coupon;
  }
  const coupon = await loadCoupon(tx, p, couponId!, src.param);
  if (!couponValid(coupon, Math.floor(Date.now() / 1000))) {
    throw new InvalidParamError(src.param, `Coupon expired: ${coupon.id}`, 'coupon_expired');
  }
  if (coupon.amount_off !== null && target.currency !== null && coupon.currency !== target.currency) {
    throw new InvalidParamError(src.param, `The coupon ${coupon.id} is in ${coupon.currency}, which does not match the currency ${target.currency}.`);
  }
  coupon.times_redeemed += 1;
  await tx.updateObject(p.account, COUPON_TYPE, coupon.id, coupon);
  if (promo) {
    promo.times_redeemed += 1;
    await tx.updateObject(p.account, PROMOTION_CODE_TYPE, promo.id, promo);
  }
  const d: DiscountObject = {
    id: newId('di', p.livemode),
    object: 'discount',
    checkout_session: null,
    customer: target.customer,
    customer_account: null,
    end: coupon.duration === 'repeating' ? addMonths(start, coupon.duration_in_months ?? 0) : null,
    invoice: target.invoice ?? null,
    invoice_item: null,
    promotion_code: promo?.id ?? null,
    source: { coupon: coupon.id, type: 'coupon' },
    start,
    subscription: target.subscription ?? null,
    subscription_item: null,
    _coupon: { ...coupon },
  };
  await tx.insertObject({ account: p.account, type: DISCOUNT_TYPE, id: d.id, createdMs: Date.now(), data: d });
  // Stripe reports discounts attached to customers and subscriptions (not those made for one invoice).
  if (!d.invoice && !opts.deferEvent) await recordBillingEvent(tx, p, 'customer.discount.created', renderDiscount(d));
  return d;
}

/**
 * `discounts[]` of a subscription or invoice request: `{coupon}`, `{promotion_code}` or `{discount}` (an existing
 * discount of the same customer, reused). '' (unset) gives []. Returns the discounts in the order sent, or undefined
 * when the param was not sent.
 */
export async function readDiscountsParam(
  tx: StateStore,
  p: Principal,
  r: ParamReader,
  target: DiscountTarget,
  start: number,
): Promise<DiscountObject[] | undefined> {
  if (!r.has('discounts')) return undefined;
  if (r.isUnset('discounts')) return [];
  const entries = r.objectArray('discounts', { maxItems: 20 }) ?? [];
  const out: DiscountObject[] = [];
  for (const e of entries) {
    e.assertNoUnknown(['coupon', 'promotion_code', 'discount']);
    const coupon = e.string('coupon', { maxLength: 5000 });
    const promotionCode = e.string('promotion_code', { maxLength: 5000 });
    const existing = e.string('discount', { maxLength: 5000 });
    const given = [coupon, promotionCode, existing].filter((x) => x !== undefined).length;
    if (given !== 1) throw new InvalidParamError(e.param('coupon'), 'Each discount must have exactly one of coupon, promotion_code or discount.');
    if (existing) {
      const d = await loadDiscount(tx, p, existing, e.param('discount'));
      if (d.customer !== target.customer)
        throw new InvalidParamError(e.param('discount'), `The discount ${existing} does not belong to customer ${target.customer}.`);
      out.push(d);
    } else {
      out.push(await createDiscount(tx, p, { coupon, promotionCode, param: e.param(coupon ? 'coupon' : 'promotion_code') }, target, start));
    }
  }
  const coupons = out.map((d) => d._coupon.id);
  if (new Set(coupons).size !== coupons.length) throw new InvalidParamError('discounts', 'The same coupon cannot be applied more than once.');
  return out;
}

/** Refused with a message of its own: coupons have one currency here. */
const NO_CURRENCY_OPTIONS = P.custom<never>((r, n) => {
  if (r.has(n)) throw new InvalidParamError(n, 'currency_options is not supported: coupons have one currency here.');
  return undefined;
});

const CREATE_PARAMS = {
  id: P.custom((r, n) => {
    const id = r.string(n, { maxLength: 200 });
    if (id !== undefined && !/^[A-Za-z0-9_-]+$/.test(id))
      throw new InvalidParamError(n, 'Coupon ids may only contain letters, numbers, dashes and underscores.');
    return id;
  }),
  amount_off: P.integer({ min: 1 }),
  percent_off: P.custom((r, n) => {
    const raw = r.raw(n);
    if (raw === undefined || raw === '') return undefined;
    let bp: bigint;
    try {
      bp = percentToBasisPoints(String(raw));
    } catch {
      throw new InvalidParamError(n, `Invalid decimal: ${String(raw).slice(0, 40)}`, 'parameter_invalid_decimal');
    }
    if (bp <= 0n || bp > 10000n) throw new InvalidParamError(n, 'Percent must be greater than 0 and at most 100.');
    return Number(bp) / 100;
  }),
  currency: P.custom((r, n) => {
    const currency = r.string(n, { maxLength: 3 })?.toLowerCase();
    if (currency !== undefined && !CURRENCY_RE.test(currency)) throw new InvalidParamError(n, `Invalid currency: ${currency}`);
    return currency;
  }),
  duration: P.string({ enum: ['forever', 'once', 'repeating'] }),
  duration_in_months: P.integer({ min: 1 }),
  max_redemptions: P.integer({ min: 1 }),
  metadata: P.metadata(),
  name: P.string({ maxLength: 40 }),
  redeem_by: P.integer({ min: 0 }),
  applies_to: P.custom((r, n) => {
    const appliesTo = r.object(n);
    if (!appliesTo) return undefined;
    appliesTo.assertNoUnknown(['products']);
    return { products: appliesTo.stringArray('products', { maxItems: 100 }) ?? [] };
  }),
  currency_options: NO_CURRENCY_OPTIONS,
};

function newCoupon(p: Principal, nowS: number, v: ParamValues<typeof CREATE_PARAMS>): CouponObject {
  const { amount_off: amountOff, percent_off: percentOff, currency } = v;
  if (amountOff === undefined && percentOff === undefined)
    throw new InvalidRequestError('You must provide one of amount_off or percent_off.', { param: 'amount_off' });
  if (amountOff !== undefined && percentOff !== undefined)
    throw new InvalidRequestError('You cannot provide both amount_off and percent_off.', { param: 'percent_off' });
  if (amountOff !== undefined && currency === undefined) throw new InvalidParamError('currency', 'You must provide currency when you provide amount_off.');
  if (percentOff !== undefined && currency !== undefined) throw new InvalidParamError('currency', 'You cannot provide currency when you provide percent_off.');
  const duration = (v.duration ?? 'once') as CouponObject['duration'];
  const months = v.duration_in_months;
  if (duration === 'repeating' && months === undefined)
    throw new InvalidParamError('duration_in_months', 'You must provide duration_in_months when duration is repeating.');
  if (duration !== 'repeating' && months !== undefined)
    throw new InvalidParamError('duration_in_months', 'duration_in_months can only be set when duration is repeating.');
  const redeemBy = v.redeem_by ?? null;
  if (redeemBy !== null && redeemBy <= nowS) throw new InvalidParamError('redeem_by', 'redeem_by must be in the future.');
  return {
    id: v.id ?? randomBase62(8),
    object: 'coupon',
    amount_off: amountOff ?? null,
    ...(v.applies_to ? { applies_to: v.applies_to } : {}),
    created: nowS,
    currency: currency ?? null,
    duration,
    duration_in_months: months ?? null,
    livemode: p.livemode,
    max_redemptions: v.max_redemptions ?? null,
    metadata: v.metadata?.({}) ?? {},
    name: v.name ?? null,
    percent_off: percentOff ?? null,
    redeem_by: redeemBy,
    times_redeemed: 0,
    valid: true,
  };
}

export function registerCouponRoutes(http: HttpServer, s: Services): void {
  const nowS = () => Math.floor(s.now() / 1000);
  defineResource(http, s, {
    path: '/v1/coupons',
    type: COUPON_TYPE,
    noun: 'coupon',
    render: (c: CouponObject) => renderCoupon(c, nowS()),
    expand: true,
    events: { created: 'coupon.created', updated: 'coupon.updated', deleted: 'coupon.deleted' },
    create: { params: CREATE_PARAMS, build: ({ p, now }, v) => newCoupon(p, now, v), idTaken: 'Coupon already exists.' },
    list: { params: { created: P.created() }, filter: (v) => ({ ...v.created }) },
    update: {
      params: { metadata: P.metadata(), name: P.nullableString(40), currency_options: NO_CURRENCY_OPTIONS },
      apply: (_ctx, c, v) => {
        if (v.name !== undefined) c.name = v.name;
        if (v.metadata) c.metadata = v.metadata(c.metadata);
      },
    },
    remove: {},
  });
}
