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
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError, UniqueViolation } from '../../shared/errors';
import { newId, randomBase62 } from '../../shared/ids';
import { readListParams } from '../meters';
import { expandBilling, expandParam, listEndpoint, readCreatedRange, readMetadata, recordBillingEvent, type Metadata } from './common';
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

export async function loadCoupon(store: StateStore, p: Principal, id: string, param = 'id'): Promise<CouponObject> {
  const found = await store.getObject<CouponObject>(p.account, COUPON_TYPE, id);
  if (!found) throw new NotFoundError(`No such coupon: '${id}'`, param);
  return found.data;
}

export async function loadDiscount(store: StateStore, p: Principal, id: string, param = 'id'): Promise<DiscountObject> {
  const found = await store.getObject<DiscountObject>(p.account, DISCOUNT_TYPE, id);
  if (!found) throw new NotFoundError(`No such discount: '${id}'`, param);
  return found.data;
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

function readCouponCreate(r: ParamReader, nowS: number, p: Principal): CouponObject {
  r.assertNoUnknown([
    'id',
    'amount_off',
    'percent_off',
    'currency',
    'duration',
    'duration_in_months',
    'max_redemptions',
    'metadata',
    'name',
    'redeem_by',
    'applies_to',
    'currency_options',
    'expand',
  ]);
  const id = r.string('id', { maxLength: 200 });
  if (id !== undefined && !/^[A-Za-z0-9_-]+$/.test(id))
    throw new InvalidParamError('id', 'Coupon ids may only contain letters, numbers, dashes and underscores.');
  const amountOff = r.integer('amount_off', { min: 1 });
  const percentRaw = r.raw('percent_off');
  let percentOff: number | undefined;
  if (percentRaw !== undefined && percentRaw !== '') {
    let bp: bigint;
    try {
      bp = percentToBasisPoints(String(percentRaw));
    } catch {
      throw new InvalidParamError('percent_off', `Invalid decimal: ${String(percentRaw).slice(0, 40)}`, 'parameter_invalid_decimal');
    }
    if (bp <= 0n || bp > 10000n) throw new InvalidParamError('percent_off', 'Percent must be greater than 0 and at most 100.');
    percentOff = Number(bp) / 100;
  }
  if (amountOff === undefined && percentOff === undefined)
    throw new InvalidRequestError('You must provide one of amount_off or percent_off.', { param: 'amount_off' });
  if (amountOff !== undefined && percentOff !== undefined)
    throw new InvalidRequestError('You cannot provide both amount_off and percent_off.', { param: 'percent_off' });
  const currency = r.string('currency', { maxLength: 3 })?.toLowerCase();
  if (currency !== undefined && !CURRENCY_RE.test(currency)) throw new InvalidParamError('currency', `Invalid currency: ${currency}`);
  if (amountOff !== undefined && currency === undefined) throw new InvalidParamError('currency', 'You must provide currency when you provide amount_off.');
  if (percentOff !== undefined && currency !== undefined) throw new InvalidParamError('currency', 'You cannot provide currency when you provide percent_off.');
  const duration = (r.string('duration', { enum: ['forever', 'once', 'repeating'] }) ?? 'once') as CouponObject['duration'];
  const months = r.integer('duration_in_months', { min: 1 });
  if (duration === 'repeating' && months === undefined)
    throw new InvalidParamError('duration_in_months', 'You must provide duration_in_months when duration is repeating.');
  if (duration !== 'repeating' && months !== undefined)
    throw new InvalidParamError('duration_in_months', 'duration_in_months can only be set when duration is repeating.');
  const maxRedemptions = r.integer('max_redemptions', { min: 1 }) ?? null;
  const redeemBy = r.integer('redeem_by', { min: 0 }) ?? null;
  if (redeemBy !== null && redeemBy <= nowS) throw new InvalidParamError('redeem_by', 'redeem_by must be in the future.');
  const appliesTo = r.object('applies_to');
  let products: string[] | undefined;
  if (appliesTo) {
    appliesTo.assertNoUnknown(['products']);
    products = appliesTo.stringArray('products', { maxItems: 100 }) ?? [];
  }
  if (r.has('currency_options')) throw new InvalidParamError('currency_options', 'currency_options is not supported: coupons have one currency here.');
  return {
    id: id ?? randomBase62(8),
    object: 'coupon',
    amount_off: amountOff ?? null,
    ...(products ? { applies_to: { products } } : {}),
    created: nowS,
    currency: currency ?? null,
    duration,
    duration_in_months: months ?? null,
    livemode: p.livemode,
    max_redemptions: maxRedemptions,
    metadata: readMetadata(r) ?? {},
    name: r.string('name', { maxLength: 40 }) ?? null,
    percent_off: percentOff ?? null,
    redeem_by: redeemBy,
    times_redeemed: 0,
    valid: true,
  };
}

export function registerCouponRoutes(http: HttpServer, s: Services): void {
  const nowS = () => Math.floor(s.now() / 1000);

  http.route(
    'POST',
    '/v1/coupons',
    apiEndpoint(s, async (p, _req, params) => {
      const coupon = readCouponCreate(new ParamReader(params), nowS(), p);
      try {
        await s.state.transaction(async (tx) => {
          await tx.insertObject({ account: p.account, type: COUPON_TYPE, id: coupon.id, createdMs: s.now(), data: coupon });
          await recordBillingEvent(tx, p, 'coupon.created', renderCoupon(coupon, nowS()));
        });
      } catch (err) {
        if (err instanceof UniqueViolation) throw new InvalidRequestError('Coupon already exists.', { param: 'id', code: 'resource_already_exists' });
        throw err;
      }
      return json(200, await expandBilling(s.state, p, renderCoupon(coupon, nowS()), expandParam(params)));
    }),
  );

  http.route(
    'GET',
    '/v1/coupons',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'created', 'expand']);
      return listEndpoint<CouponObject>(
        s,
        p,
        '/v1/coupons',
        COUPON_TYPE,
        readListParams(r),
        readCreatedRange(r),
        undefined,
        (c) => renderCoupon(c, nowS()),
        expandParam(params),
      );
    }),
  );

  http.route(
    'GET',
    '/v1/coupons/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await expandBilling(s.state, p, renderCoupon(await loadCoupon(s.state, p, req.params[0]), nowS()), expandParam(params)));
    }),
  );

  http.route(
    'POST',
    '/v1/coupons/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['metadata', 'name', 'currency_options', 'expand']);
      if (r.has('currency_options')) throw new InvalidParamError('currency_options', 'currency_options is not supported: coupons have one currency here.');
      const coupon = await s.state.transaction(async (tx) => {
        const c = await loadCoupon(tx, p, req.params[0]);
        const before = renderCoupon(c, nowS());
        const name = r.string('name', { maxLength: 40, allowEmpty: true });
        if (name !== undefined) c.name = name === '' ? null : name;
        const md = readMetadata(r, c.metadata);
        if (md !== undefined) c.metadata = md;
        await tx.updateObject(p.account, COUPON_TYPE, c.id, c);
        await recordBillingEvent(tx, p, 'coupon.updated', renderCoupon(c, nowS()), before as unknown as Record<string, unknown>);
        return c;
      });
      return json(200, await expandBilling(s.state, p, renderCoupon(coupon, nowS()), expandParam(params)));
    }),
  );

  http.route(
    'DELETE',
    '/v1/coupons/:id',
    apiEndpoint(s, async (p, req) => {
      const id = req.params[0];
      await s.state.transaction(async (tx) => {
        const c = await loadCoupon(tx, p, id);
        await tx.deleteObject(p.account, COUPON_TYPE, id);
        await recordBillingEvent(tx, p, 'coupon.deleted', renderCoupon(c, nowS()));
      });
      return json(200, { id, object: 'coupon', deleted: true });
    }),
  );
}
