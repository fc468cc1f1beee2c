/**
 * v1 promotion codes (`/v1/promotion_codes`): customer-facing codes for a coupon (`promotion: {type: coupon,
 * coupon}`), with their own expiry, redemption limit, customer restriction and minimum amount. Stored as the
 * PromotionCode object (type `promotion_code`, id promo_…). Codes are compared case-insensitively and are unique among
 * the account's active codes (Stripe's rule); `active` is false once expired or fully redeemed.
 */
import type { HttpServer } from '../../shared/http/server';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import type { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { listMatching, newInvoicePrefix } from './common';
import { defineResource, P, whereOf } from './resource';
import { loadCustomer } from './customers';
import { couponValid, loadCoupon, PROMOTION_CODE_TYPE, type PromotionCodeObject } from './coupons';

const CODE_RE = /^[A-Za-z0-9_-]+$/;

function isActive(pc: PromotionCodeObject, nowS: number): boolean {
  if (!pc.active) return false;
  if (pc.expires_at !== null && pc.expires_at <= nowS) return false;
  return pc.max_redemptions === null || pc.times_redeemed < pc.max_redemptions;
}

export function renderPromotionCode(pc: PromotionCodeObject, nowS: number): PromotionCodeObject {
  return { ...pc, active: isActive(pc, nowS) };
}

function readMinimums(r: ParamReader, into: PromotionCodeObject['restrictions']): void {
  const opts = r.object('currency_options');
  if (!opts) return;
  for (const cur of opts.keys()) {
    if (!/^[a-z]{3}$/.test(cur)) throw new InvalidParamError(opts.param(cur), `Invalid currency: ${cur}`);
    const o = opts.object(cur)!;
    o.assertNoUnknown(['minimum_amount']);
    const min = o.integer('minimum_amount', { min: 0 });
    if (min !== undefined) into.currency_options[cur] = { minimum_amount: min };
  }
}

function noRestrictions(): PromotionCodeObject['restrictions'] {
  return { currency_options: {}, first_time_transaction: false, minimum_amount: null, minimum_amount_currency: null };
}

const CREATE_PARAMS = {
  promotion: P.custom((r, n) => {
    const promotion = r.object(n, { required: true });
    promotion.assertNoUnknown(['type', 'coupon']);
    promotion.string('type', { required: true, enum: ['coupon'] });
    return { coupon: promotion.string('coupon', { required: true, maxLength: 5000 }) };
  }),
  active: P.boolean(),
  code: P.custom((r, n) => {
    const code = r.string(n, { maxLength: 500 });
    if (code !== undefined && !CODE_RE.test(code)) throw new InvalidParamError(n, 'Promotion codes may only contain letters, numbers, dashes and underscores.');
    return code;
  }),
  customer: P.string({ maxLength: 5000 }),
  customer_account: P.custom<never>((r, n) => {
    if (r.has(n)) throw new InvalidParamError(n, 'Accounts v2 customers are not supported; use customer.');
    return undefined;
  }),
  expires_at: P.integer({ min: 0 }),
  max_redemptions: P.integer({ min: 1 }),
  metadata: P.metadata(),
  restrictions: P.custom((r, n) => {
    const rr = r.object(n);
    if (!rr) return undefined;
    rr.assertNoUnknown(['currency_options', 'first_time_transaction', 'minimum_amount', 'minimum_amount_currency']);
    const restrictions = noRestrictions();
    restrictions.first_time_transaction = rr.boolean('first_time_transaction') ?? false;
    restrictions.minimum_amount = rr.integer('minimum_amount', { min: 0 }) ?? null;
    restrictions.minimum_amount_currency = rr.string('minimum_amount_currency', { maxLength: 3 })?.toLowerCase() ?? null;
    if ((restrictions.minimum_amount === null) !== (restrictions.minimum_amount_currency === null)) {
      throw new InvalidParamError(rr.param('minimum_amount_currency'), 'minimum_amount and minimum_amount_currency must be provided together.');
    }
    readMinimums(rr, restrictions);
    return restrictions;
  }),
};

const UPDATE_PARAMS = {
  active: P.boolean(),
  metadata: P.metadata(),
  restrictions: P.custom((r, n) => {
    const rr = r.object(n);
    if (!rr) return undefined;
    rr.assertNoUnknown(['currency_options']);
    const minimums = noRestrictions();
    readMinimums(rr, minimums);
    return minimums.currency_options;
  }),
};

/** Stripe's rule: a code is unique among the account's active codes, compared case-insensitively. */
async function activeCodeClash(tx: StateStore, p: Principal, code: string, nowS: number, except?: string): Promise<boolean> {
  const clash = await listMatching<PromotionCodeObject>(
    tx,
    p.account,
    PROMOTION_CODE_TYPE,
    { limit: 1 },
    {},
    (o) => o.id !== except && o.code.toLowerCase() === code.toLowerCase() && isActive(o, nowS),
  );
  return clash.data.length > 0;
}

export function registerPromotionCodeRoutes(http: HttpServer, s: Services): void {
  const nowS = () => Math.floor(s.now() / 1000);
  defineResource(http, s, {
    path: '/v1/promotion_codes',
    type: PROMOTION_CODE_TYPE,
    noun: 'promotion code',
    render: (pc: PromotionCodeObject) => renderPromotionCode(pc, nowS()),
    expand: true,
    events: { created: 'promotion_code.created', updated: 'promotion_code.updated' },
    create: {
      params: CREATE_PARAMS,
      build: async ({ p, tx }, v): Promise<PromotionCodeObject> => {
        const code = v.code ?? newInvoicePrefix();
        const expiresAt = v.expires_at ?? null;
        const coupon = await loadCoupon(tx, p, v.promotion!.coupon, 'promotion[coupon]');
        if (!couponValid(coupon, nowS())) throw new InvalidParamError('promotion[coupon]', `Coupon ${coupon.id} is no longer valid.`);
        if (expiresAt !== null && coupon.redeem_by !== null && expiresAt > coupon.redeem_by) {
          throw new InvalidParamError('expires_at', "The promotion code's expires_at cannot be after its coupon's redeem_by.");
        }
        if (expiresAt !== null && expiresAt <= nowS()) throw new InvalidParamError('expires_at', 'expires_at must be in the future.');
        if (v.customer) await loadCustomer(tx, p, v.customer, 'customer');
        if (await activeCodeClash(tx, p, code, nowS())) {
          throw new InvalidRequestError(`An active promotion code with \`code: ${code}\` already exists.`, { param: 'code', code: 'resource_already_exists' });
        }
        return {
          id: newId('promo', p.livemode),
          object: 'promotion_code',
          active: v.active ?? true,
          code,
          created: nowS(),
          customer: v.customer ?? null,
          customer_account: null,
          expires_at: expiresAt,
          livemode: p.livemode,
          max_redemptions: v.max_redemptions ?? null,
          metadata: v.metadata?.({}) ?? {},
          promotion: { coupon: coupon.id, type: 'coupon' },
          restrictions: v.restrictions ?? noRestrictions(),
          times_redeemed: 0,
        };
      },
    },
    list: {
      params: {
        active: P.boolean(),
        code: P.string({ maxLength: 500 }),
        coupon: P.string({ maxLength: 5000 }),
        customer: P.string({ maxLength: 5000 }),
        customer_account: P.custom<never>(() => undefined),
        created: P.created(),
      },
      filter: ({ active, code, coupon, customer, created }) => ({
        where: whereOf({ customer }, ['customer']),
        ...created,
        pred: (d) =>
          (active === undefined || isActive(d, nowS()) === active) &&
          (code === undefined || d.code.toLowerCase() === code.toLowerCase()) &&
          (coupon === undefined || d.promotion.coupon === coupon),
      }),
    },
    update: {
      params: UPDATE_PARAMS,
      apply: async ({ p, tx }, pc, v) => {
        if (v.active !== undefined) {
          if (v.active && !pc.active && (await activeCodeClash(tx, p, pc.code, nowS(), pc.id))) {
            throw new InvalidRequestError(`An active promotion code with \`code: ${pc.code}\` already exists.`, { param: 'active' });
          }
          pc.active = v.active;
        }
        if (v.metadata) pc.metadata = v.metadata(pc.metadata);
        if (v.restrictions) Object.assign(pc.restrictions.currency_options, v.restrictions);
      },
    },
  });
}
