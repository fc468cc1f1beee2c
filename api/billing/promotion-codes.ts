/**
 * v1 promotion codes (`/v1/promotion_codes`): customer-facing codes for a coupon (`promotion: {type: coupon,
 * coupon}`), with their own expiry, redemption limit, customer restriction and minimum amount. Stored as the
 * PromotionCode object (type `promotion_code`, id promo_…). Codes are compared case-insensitively and are unique among
 * the account's active codes (Stripe's rule); `active` is false once expired or fully redeemed.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import { expandBilling, expandParam, listEndpoint, listMatching, newInvoicePrefix, readCreatedRange, readMetadata, recordBillingEvent } from './common';
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

async function loadPromotionCode(store: StateStore, p: Principal, id: string): Promise<PromotionCodeObject> {
  const found = await store.getObject<PromotionCodeObject>(p.account, PROMOTION_CODE_TYPE, id);
  if (!found) throw new NotFoundError(`No such promotion code: '${id}'`);
  return found.data;
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

export function registerPromotionCodeRoutes(http: HttpServer, s: Services): void {
  const nowS = () => Math.floor(s.now() / 1000);

  http.route(
    'POST',
    '/v1/promotion_codes',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['promotion', 'active', 'code', 'customer', 'customer_account', 'expires_at', 'max_redemptions', 'metadata', 'restrictions', 'expand']);
      const promotion = r.object('promotion', { required: true })!;
      promotion.assertNoUnknown(['type', 'coupon']);
      promotion.string('type', { required: true, enum: ['coupon'] });
      const couponId = promotion.string('coupon', { required: true, maxLength: 5000 })!;
      const code = r.string('code', { maxLength: 500 }) ?? newInvoicePrefix();
      if (!CODE_RE.test(code)) throw new InvalidParamError('code', 'Promotion codes may only contain letters, numbers, dashes and underscores.');
      const expiresAt = r.integer('expires_at', { min: 0 }) ?? null;
      const maxRedemptions = r.integer('max_redemptions', { min: 1 }) ?? null;
      const customerId = r.string('customer', { maxLength: 5000 }) ?? null;
      if (r.has('customer_account')) throw new InvalidParamError('customer_account', 'Accounts v2 customers are not supported; use customer.');
      const restrictions: PromotionCodeObject['restrictions'] = {
        currency_options: {},
        first_time_transaction: false,
        minimum_amount: null,
        minimum_amount_currency: null,
      };
      const rr = r.object('restrictions');
      if (rr) {
        rr.assertNoUnknown(['currency_options', 'first_time_transaction', 'minimum_amount', 'minimum_amount_currency']);
        restrictions.first_time_transaction = rr.boolean('first_time_transaction') ?? false;
        restrictions.minimum_amount = rr.integer('minimum_amount', { min: 0 }) ?? null;
        restrictions.minimum_amount_currency = rr.string('minimum_amount_currency', { maxLength: 3 })?.toLowerCase() ?? null;
        if ((restrictions.minimum_amount === null) !== (restrictions.minimum_amount_currency === null)) {
          throw new InvalidParamError(rr.param('minimum_amount_currency'), 'minimum_amount and minimum_amount_currency must be provided together.');
        }
        readMinimums(rr, restrictions);
      }
      const pc = await s.state.transaction(async (tx) => {
        const coupon = await loadCoupon(tx, p, couponId, 'promotion[coupon]');
        if (!couponValid(coupon, nowS())) throw new InvalidParamError('promotion[coupon]', `Coupon ${coupon.id} is no longer valid.`);
        if (expiresAt !== null && coupon.redeem_by !== null && expiresAt > coupon.redeem_by) {
          throw new InvalidParamError('expires_at', "The promotion code's expires_at cannot be after its coupon's redeem_by.");
        }
        if (expiresAt !== null && expiresAt <= nowS()) throw new InvalidParamError('expires_at', 'expires_at must be in the future.');
        if (customerId) await loadCustomer(tx, p, customerId, 'customer');
        const clash = await listMatching<PromotionCodeObject>(
          tx,
          p.account,
          PROMOTION_CODE_TYPE,
          { limit: 1 },
          {},
          (o) => o.code.toLowerCase() === code.toLowerCase() && isActive(o, nowS()),
        );
        if (clash.data.length > 0) {
          throw new InvalidRequestError(`An active promotion code with \`code: ${code}\` already exists.`, { param: 'code', code: 'resource_already_exists' });
        }
        const pc: PromotionCodeObject = {
          id: newId('promo', p.livemode),
          object: 'promotion_code',
          active: r.boolean('active') ?? true,
          code,
          created: nowS(),
          customer: customerId,
          customer_account: null,
          expires_at: expiresAt,
          livemode: p.livemode,
          max_redemptions: maxRedemptions,
          metadata: readMetadata(r) ?? {},
          promotion: { coupon: coupon.id, type: 'coupon' },
          restrictions,
          times_redeemed: 0,
        };
        await tx.insertObject({ account: p.account, type: PROMOTION_CODE_TYPE, id: pc.id, createdMs: s.now(), data: pc });
        await recordBillingEvent(tx, p, 'promotion_code.created', renderPromotionCode(pc, nowS()));
        return pc;
      });
      return json(200, await expandBilling(s.state, p, renderPromotionCode(pc, nowS()), expandParam(params)));
    }),
  );

  http.route(
    'GET',
    '/v1/promotion_codes',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'active', 'code', 'coupon', 'customer', 'customer_account', 'created', 'expand']);
      const page = readListParams(r);
      const active = r.boolean('active');
      const code = r.string('code', { maxLength: 500 });
      const coupon = r.string('coupon', { maxLength: 5000 });
      const customer = r.string('customer', { maxLength: 5000 });
      const where: Record<string, string> = {};
      if (customer) where.customer = customer;
      const pred = (d: PromotionCodeObject) =>
        (active === undefined || isActive(d, nowS()) === active) &&
        (code === undefined || d.code.toLowerCase() === code.toLowerCase()) &&
        (coupon === undefined || d.promotion.coupon === coupon);
      return listEndpoint<PromotionCodeObject>(
        s,
        p,
        '/v1/promotion_codes',
        PROMOTION_CODE_TYPE,
        page,
        { where, ...readCreatedRange(r) },
        pred,
        (d) => renderPromotionCode(d, nowS()),
        expandParam(params),
      );
    }),
  );

  http.route(
    'GET',
    '/v1/promotion_codes/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await expandBilling(s.state, p, renderPromotionCode(await loadPromotionCode(s.state, p, req.params[0]), nowS()), expandParam(params)));
    }),
  );

  http.route(
    'POST',
    '/v1/promotion_codes/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['active', 'metadata', 'restrictions', 'expand']);
      const pc = await s.state.transaction(async (tx) => {
        const pc = await loadPromotionCode(tx, p, req.params[0]);
        const before = renderPromotionCode(structuredClone(pc), nowS());
        const active = r.boolean('active');
        if (active !== undefined) {
          if (active && !pc.active) {
            const clash = await listMatching<PromotionCodeObject>(
              tx,
              p.account,
              PROMOTION_CODE_TYPE,
              { limit: 1 },
              {},
              (o) => o.id !== pc.id && o.code.toLowerCase() === pc.code.toLowerCase() && isActive(o, nowS()),
            );
            if (clash.data.length > 0) throw new InvalidRequestError(`An active promotion code with \`code: ${pc.code}\` already exists.`, { param: 'active' });
          }
          pc.active = active;
        }
        const md = readMetadata(r, pc.metadata);
        if (md !== undefined) pc.metadata = md;
        const rr = r.object('restrictions');
        if (rr) {
          rr.assertNoUnknown(['currency_options']);
          readMinimums(rr, pc.restrictions);
        }
        await tx.updateObject(p.account, PROMOTION_CODE_TYPE, pc.id, pc);
        await recordBillingEvent(tx, p, 'promotion_code.updated', renderPromotionCode(pc, nowS()), before as unknown as Record<string, unknown>);
        return pc;
      });
      return json(200, await expandBilling(s.state, p, renderPromotionCode(pc, nowS()), expandParam(params)));
    }),
  );
}
