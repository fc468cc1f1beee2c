/**
 * v1 plans, the legacy price API, kept in step with prices by construction: a plan IS a recurring price document
 * (type `price`, see the representation note in prices.ts) rendered through the Plan shape.
 *
 *  - POST /v1/plans stores a recurring price whose id is the plan id (given, or `price_…`); it is retrievable at
 *    /v1/prices/:id. `product` is an existing product id or a `product[...]` hash that creates one.
 *  - Every recurring price is a plan: GET /v1/plans/:id of a recurring price renders it; a one-time price is not.
 *  - Plan → Price field mapping: amount ↔ unit_amount, amount_decimal ↔ unit_amount_decimal, interval /
 *    interval_count / usage_type / meter / trial_period_days ↔ recurring.*, transform_usage ↔ transform_quantity.
 *  - DELETE /v1/plans/:id removes the document (the price with that id goes with it) and frees its lookup key; it is
 *    not yet refused for plans in use: nothing references prices until subscriptions exist (next slice's check).
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidRequestError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import { listEndpoint, nowSeconds, nullableString, readCreatedRange, readExpand, readMetadata, recordBillingEvent } from './common';
import { createProductIn, loadProduct } from './products';
import {
  LOOKUP_KEY_TYPE,
  buildPrice,
  PLAN_NAMES,
  PRICE_TYPE,
  insertPrice,
  readCurrency,
  readPricing,
  readRecurring,
  updatePriceDoc,
  type PriceObject,
  type Tier,
} from './prices';

export interface PlanObject {
  id: string;
  object: 'plan';
  active: boolean;
  amount: number | null;
  amount_decimal: string | null;
  billing_scheme: 'per_unit' | 'tiered';
  created: number;
  currency: string;
  interval: string;
  interval_count: number;
  livemode: boolean;
  metadata: Record<string, string>;
  meter: string | null;
  nickname: string | null;
  product: string;
  tiers?: Tier[];
  tiers_mode: 'graduated' | 'volume' | null;
  transform_usage: { divide_by: number; round: 'up' | 'down' } | null;
  trial_period_days: number | null;
  usage_type: 'licensed' | 'metered';
}

export function renderPlan(d: PriceObject, expand: string[]): PlanObject {
  const rec = d.recurring!;
  const plan: PlanObject = {
    id: d.id,
    object: 'plan',
    active: d.active,
    amount: d.unit_amount,
    amount_decimal: d.unit_amount_decimal,
    billing_scheme: d.billing_scheme,
    created: d.created,
    currency: d.currency,
    interval: rec.interval,
    interval_count: rec.interval_count,
    livemode: d.livemode,
    metadata: d.metadata,
    meter: rec.meter,
    nickname: d.nickname,
    product: d.product,
    tiers_mode: d.tiers_mode,
    transform_usage: d.transform_quantity,
    trial_period_days: rec.trial_period_days,
    usage_type: rec.usage_type,
  };
  if (d.tiers && (expand.includes('tiers') || expand.includes('data.tiers'))) plan.tiers = d.tiers;
  return plan;
}

async function loadPlanDoc(store: StateStore, p: Principal, id: string): Promise<PriceObject> {
  const found = await store.getObject<PriceObject>(p.account, PRICE_TYPE, id);
  if (found?.data.type !== 'recurring') throw new NotFoundError(`No such plan: '${id}'`);
  return found.data;
}

const PRODUCT_HASH_PARAMS = ['id', 'name', 'active', 'metadata', 'statement_descriptor', 'tax_code', 'unit_label'];

async function createPlan(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown([
    'id',
    'currency',
    'interval',
    'interval_count',
    'usage_type',
    'meter',
    'trial_period_days',
    'product',
    'amount',
    'amount_decimal',
    'billing_scheme',
    'tiers',
    'tiers_mode',
    'transform_usage',
    'nickname',
    'active',
    'metadata',
    'expand',
  ]);
  const expand = readExpand(r);
  const id = r.string('id', { maxLength: 5000 }) ?? newId('price', p.livemode);
  const currency = readCurrency(r);
  const pricing = readPricing(r, PLAN_NAMES);
  if (!r.has('product')) throw new InvalidRequestError('Missing required param: product.', { param: 'product', code: 'parameter_missing' });
  const productRaw = r.raw('product');
  const nickname = r.string('nickname', { maxLength: 5000 }) ?? null;
  const active = r.boolean('active') ?? true;
  const metadata = readMetadata(r) ?? {};
  const { nowMs, now } = nowSeconds(s);
  const price = await s.state.transaction(async (tx) => {
    const recurring = await readRecurring(tx, p, r);
    const product =
      typeof productRaw === 'string'
        ? await loadProduct(tx, p, r.string('product', { required: true, maxLength: 5000 }), 'product', 400)
        : await createProductIn(tx, p, nowMs, r.object('product', { required: true }), PRODUCT_HASH_PARAMS);
    const price = buildPrice({
      id,
      livemode: p.livemode,
      created: now,
      active,
      currency,
      pricing,
      recurring,
      product: product.id,
      lookupKey: null,
      metadata,
      nickname,
      taxBehavior: 'unspecified',
    });
    await insertPrice(tx, p, price, nowMs, false, 'id');
    await recordBillingEvent(tx, p, 'plan.created', price);
    await recordBillingEvent(tx, p, 'price.created', price);
    return price;
  });
  return json(200, renderPlan(price, expand));
}

export function registerPlanRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/plans',
    apiEndpoint(s, (p, _req, params) => createPlan(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/plans',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'active', 'created', 'product', 'expand']);
      const page = readListParams(r);
      const expand = readExpand(r);
      const where: Record<string, string | boolean> = { type: 'recurring' };
      const active = r.boolean('active');
      if (active !== undefined) where.active = active;
      const product = r.string('product', { maxLength: 5000 });
      if (product !== undefined) where.product = product;
      return listEndpoint<PriceObject>(s, p, '/v1/plans', PRICE_TYPE, page, { where, ...readCreatedRange(r) }, undefined, (d) => renderPlan(d, expand));
    }),
  );

  http.route(
    'GET',
    '/v1/plans/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['expand']);
      return json(200, renderPlan(await loadPlanDoc(s.state, p, req.params[0]), readExpand(r)));
    }),
  );

  http.route(
    'POST',
    '/v1/plans/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['active', 'metadata', 'nickname', 'product', 'trial_period_days', 'expand']);
      const expand = readExpand(r);
      const active = r.boolean('active');
      const nickname = nullableString(r, 'nickname', 5000);
      const productId = r.string('product', { maxLength: 5000 });
      const trial = r.has('trial_period_days') && r.isUnset('trial_period_days') ? null : r.integer('trial_period_days', { min: 0, max: 730 });
      const { nowMs } = nowSeconds(s);
      const price = await s.state.transaction(async (tx) => {
        await loadPlanDoc(tx, p, req.params[0]);
        return updatePriceDoc(tx, p, req.params[0], nowMs, async (price) => {
          if (active !== undefined) price.active = active;
          if (nickname !== undefined) price.nickname = nickname;
          if (trial !== undefined) price.recurring!.trial_period_days = trial;
          if (productId !== undefined) price.product = (await loadProduct(tx, p, productId, 'product', 400)).id;
          const metadata = readMetadata(r, price.metadata);
          if (metadata !== undefined) price.metadata = metadata;
        });
      });
      return json(200, renderPlan(price, expand));
    }),
  );

  http.route(
    'DELETE',
    '/v1/plans/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const gone = await s.state.transaction(async (tx) => {
        const doc = await loadPlanDoc(tx, p, req.params[0]);
        await tx.deleteObject(p.account, PRICE_TYPE, doc.id);
        if (doc.lookup_key !== null) {
          const held = await tx.getObject<{ price: string }>(p.account, LOOKUP_KEY_TYPE, doc.lookup_key);
          if (held && held.data.price === doc.id) await tx.deleteObject(p.account, LOOKUP_KEY_TYPE, doc.lookup_key);
        }
        await recordBillingEvent(tx, p, 'plan.deleted', doc);
        return { id: doc.id, object: 'plan', deleted: true };
      });
      return json(200, gone);
    }),
  );
}
