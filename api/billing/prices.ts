/**
 * v1 prices: create, retrieve, update, list, search; and the pricing rules plans share (plans.ts).
 *
 * Representation (shared with plans): ONE stored document per price, of type `price`, holding the Price object as
 * Stripe serves it plus its `tiers` array (always stored; rendered only when `expand[]=tiers` / `data.tiers` is asked
 * for, as Stripe does). A plan is the same document seen through the Plan shape (renderPlan in plans.ts): creating a
 * plan stores a recurring price with the plan's id, and every recurring price is retrievable as a plan. One-time
 * prices are not plans.
 *
 * Lookup keys are unique per account: each key is also stored as a `price_lookup_key` object whose id is the key and
 * whose data names the price, written in the same transaction as the price (so the store's primary key enforces
 * uniqueness even when the key moves between prices with transfer_lookup_key).
 *
 * Amounts: unit_amount / flat_amount are integers in minor units; the *_decimal forms are kept exactly as the decimal
 * string sent (at most 12 decimal places), with the integer form set when the decimal is integral, null otherwise.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, MissingParamError, UniqueViolation } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { METER_TYPE, type MeterObject } from '../../shared/meters';
import { readListParams } from '../meters';
import type { SearchFields } from '../../shared/search';
import {
  expandBilling,
  listEndpoint,
  nowSeconds,
  nullableString,
  readCreatedRange,
  readExpand,
  readMetadata,
  recordBillingEvent,
  searchEndpoint,
  type Metadata,
} from './common';
import { createProductIn, loadProduct } from './products';
import { loadResource } from './resource';

export const PRICE_TYPE = 'price';
export const LOOKUP_KEY_TYPE = 'price_lookup_key';

export type Interval = 'day' | 'week' | 'month' | 'year';

export interface Tier {
  flat_amount: number | null;
  flat_amount_decimal: string | null;
  unit_amount: number | null;
  unit_amount_decimal: string | null;
  /** null is `inf`. */
  up_to: number | null;
}

export interface Recurring {
  interval: Interval;
  interval_count: number;
  meter: string | null;
  trial_period_days: number | null;
  usage_type: 'licensed' | 'metered';
}

export interface PriceObject {
  id: string;
  object: 'price';
  active: boolean;
  billing_scheme: 'per_unit' | 'tiered';
  created: number;
  currency: string;
  custom_unit_amount: null;
  livemode: boolean;
  lookup_key: string | null;
  metadata: Metadata;
  nickname: string | null;
  product: string;
  recurring: Recurring | null;
  tax_behavior: 'exclusive' | 'inclusive' | 'unspecified';
  tiers?: Tier[];
  tiers_mode: 'graduated' | 'volume' | null;
  transform_quantity: { divide_by: number; round: 'up' | 'down' } | null;
  type: 'one_time' | 'recurring';
  unit_amount: number | null;
  unit_amount_decimal: string | null;
}

// ---------------------------------------------------------------------------------------------------------------------
// Shared pricing rules (prices and plans)

/** Param names of the two dialects. */
export interface PricingNames {
  unitAmount: string;
  unitAmountDecimal: string;
  transform: string;
}
export const PRICE_NAMES: PricingNames = { unitAmount: 'unit_amount', unitAmountDecimal: 'unit_amount_decimal', transform: 'transform_quantity' };
export const PLAN_NAMES: PricingNames = { unitAmount: 'amount', unitAmountDecimal: 'amount_decimal', transform: 'transform_usage' };

const DECIMAL = /^\d+(\.\d{1,12})?$/;
const MAX_AMOUNT = 99_999_999_999;

/** An integer amount and/or a decimal amount (mutually exclusive), as [integer-or-null, decimal-string-or-null]. */
function readAmountPair(r: ParamReader, intName: string, decName: string): [number | null, string | null] | undefined {
  const n = r.integer(intName, { min: 0, max: MAX_AMOUNT });
  const d = r.raw(decName) === undefined || r.raw(decName) === '' ? undefined : String(r.raw(decName));
  if (n !== undefined && d !== undefined) {
    throw new InvalidRequestError(`You may only specify one of these parameters: ${r.param(intName)}, ${r.param(decName)}.`, { param: r.param(decName) });
  }
  if (n !== undefined) return [n, String(n)];
  if (d !== undefined) {
    if (!DECIMAL.test(d)) {
      throw new InvalidParamError(
        r.param(decName),
        `Invalid decimal: ${d.slice(0, 40)}; it must be a non-negative decimal with at most 12 decimal places.`,
        'parameter_invalid_decimal',
      );
    }
    const intPart = d.split('.')[0];
    const fracZero = !d.includes('.') || /^0+$/.test(d.split('.')[1]);
    const asInt = fracZero && Number(intPart) <= MAX_AMOUNT ? Number(intPart) : null;
    return [asInt, d];
  }
  return undefined;
}

export interface Pricing {
  billing_scheme: 'per_unit' | 'tiered';
  unit_amount: number | null;
  unit_amount_decimal: string | null;
  tiers: Tier[] | undefined;
  tiers_mode: 'graduated' | 'volume' | null;
  transform_quantity: { divide_by: number; round: 'up' | 'down' } | null;
}

/** billing_scheme, amounts, tiers, tiers_mode and the quantity transform, with Stripe's combination rules. */
export interface NewPrice {
  id: string;
  livemode: boolean;
  created: number;
  active: boolean;
  currency: string;
  pricing: Pricing;
  recurring: PriceObject['recurring'];
  product: string;
  lookupKey: PriceObject['lookup_key'];
  metadata: Metadata;
  nickname: PriceObject['nickname'];
  taxBehavior: PriceObject['tax_behavior'];
}

/** A new Price object (prices and plans both create them: a plan is a recurring price). */
export function buildPrice(n: NewPrice): PriceObject {
  const { pricing } = n;
  return {
    id: n.id,
    object: 'price',
    active: n.active,
    billing_scheme: pricing.billing_scheme,
    created: n.created,
    currency: n.currency,
    custom_unit_amount: null,
    livemode: n.livemode,
    lookup_key: n.lookupKey,
    metadata: n.metadata,
    nickname: n.nickname,
    product: n.product,
    recurring: n.recurring,
    tax_behavior: n.taxBehavior,
    ...(pricing.tiers ? { tiers: pricing.tiers } : {}),
    tiers_mode: pricing.tiers_mode,
    transform_quantity: pricing.transform_quantity,
    type: n.recurring ? 'recurring' : 'one_time',
    unit_amount: pricing.unit_amount,
    unit_amount_decimal: pricing.unit_amount_decimal,
  };
}

export function readPricing(r: ParamReader, names: PricingNames): Pricing {
  const scheme = (r.string('billing_scheme', { enum: ['per_unit', 'tiered'] }) ?? 'per_unit') as Pricing['billing_scheme'];
  const amount = readAmountPair(r, names.unitAmount, names.unitAmountDecimal);
  let transform: Pricing['transform_quantity'] = null;
  const tq = r.object(names.transform);
  if (tq) {
    tq.assertNoUnknown(['divide_by', 'round']);
    const divideBy = tq.integer('divide_by', { required: true, min: 1 });
    const round = tq.string('round', { required: true, enum: ['up', 'down'] }) as 'up' | 'down';
    transform = { divide_by: divideBy, round };
  }
  if (scheme === 'per_unit') {
    if (r.has('tiers')) throw new InvalidParamError('tiers', 'Tiers can only be specified when billing_scheme is tiered.');
    if (r.has('tiers_mode')) throw new InvalidParamError('tiers_mode', 'tiers_mode can only be specified when billing_scheme is tiered.');
    if (!amount) throw new MissingParamError(names.unitAmount);
    return {
      billing_scheme: scheme,
      unit_amount: amount[0],
      unit_amount_decimal: amount[1],
      tiers: undefined,
      tiers_mode: null,
      transform_quantity: transform,
    };
  }
  if (amount) {
    throw new InvalidParamError(
      r.has(names.unitAmount) ? names.unitAmount : names.unitAmountDecimal,
      `${names.unitAmount} cannot be used with billing_scheme tiered: set amounts on the tiers.`,
    );
  }
  if (transform) throw new InvalidParamError(names.transform, `${names.transform} cannot be used with billing_scheme tiered.`);
  const mode = r.string('tiers_mode', { required: true, enum: ['graduated', 'volume'] }) as 'graduated' | 'volume';
  const items = r.objectArray('tiers', { required: true, maxItems: 250 });
  if (items.length === 0) throw new MissingParamError('tiers');
  const tiers: Tier[] = [];
  let prev = 0;
  items.forEach((t, i) => {
    t.assertNoUnknown(['up_to', 'unit_amount', 'unit_amount_decimal', 'flat_amount', 'flat_amount_decimal']);
    const last = i === items.length - 1;
    let upTo: number | null;
    const raw = t.raw('up_to');
    if (raw === 'inf') upTo = null;
    else upTo = t.integer('up_to', { required: true, min: 1 });
    if (upTo === null && !last) throw new InvalidParamError(t.param('up_to'), 'Only the last tier can have up_to set to inf.');
    if (upTo !== null && last) throw new InvalidParamError(t.param('up_to'), 'The last tier must have up_to set to inf.');
    if (upTo !== null && upTo <= prev) throw new InvalidParamError(t.param('up_to'), 'Tiers must be in increasing order of up_to.');
    if (upTo !== null) prev = upTo;
    const unit = readAmountPair(t, 'unit_amount', 'unit_amount_decimal');
    const flat = readAmountPair(t, 'flat_amount', 'flat_amount_decimal');
    if (!unit && !flat) {
      throw new InvalidParamError(
        t.param('unit_amount'),
        `Each tier needs a unit amount or a flat amount: set ${t.param('unit_amount')} or ${t.param('flat_amount')}.`,
      );
    }
    tiers.push({
      flat_amount: flat ? flat[0] : null,
      flat_amount_decimal: flat ? flat[1] : null,
      unit_amount: unit ? unit[0] : null,
      unit_amount_decimal: unit ? unit[1] : null,
      up_to: upTo,
    });
  });
  return { billing_scheme: 'tiered', unit_amount: null, unit_amount_decimal: null, tiers, tiers_mode: mode, transform_quantity: null };
}

const MAX_INTERVAL_COUNT: Record<Interval, number> = { day: 1095, week: 156, month: 36, year: 3 };

/**
 * interval, interval_count, usage_type, meter and trial_period_days from `r` (the `recurring` hash of a price, the
 * top level of a plan). A metered price must name an ACTIVE meter of the account (since 2025-03-31.basil).
 */
export async function readRecurring(store: StateStore, p: Principal, r: ParamReader): Promise<Recurring> {
  const interval = r.string('interval', { required: true, enum: ['day', 'week', 'month', 'year'] }) as Interval;
  const count = r.integer('interval_count', { min: 1 }) ?? 1;
  if (count > MAX_INTERVAL_COUNT[interval]) {
    throw new InvalidParamError(r.param('interval_count'), 'The maximum billing interval is three years (3 years, 36 months, 156 weeks or 1095 days).');
  }
  const usageType = (r.string('usage_type', { enum: ['licensed', 'metered'] }) ?? 'licensed') as Recurring['usage_type'];
  const meterId = r.string('meter', { maxLength: 5000 });
  const trial = r.integer('trial_period_days', { min: 0, max: 730 });
  if (usageType === 'metered') {
    if (meterId === undefined) {
      throw new InvalidRequestError(`Metered prices must be backed by a billing meter: set ${r.param('meter')} to the id of an active meter.`, {
        param: r.param('meter'),
        code: 'parameter_missing',
      });
    }
    const found = await store.getObject<MeterObject>(p.account, METER_TYPE, meterId);
    if (!found) throw new InvalidRequestError(`No such billing meter: '${meterId}'`, { param: r.param('meter'), code: 'resource_missing' });
    if (found.data.status !== 'active') {
      throw new InvalidParamError(r.param('meter'), "You can't attach a deactivated meter to a price.");
    }
  } else if (meterId !== undefined) {
    throw new InvalidParamError(r.param('meter'), `${r.param('meter')} can only be set when ${r.param('usage_type')} is metered.`);
  }
  return { interval, interval_count: count, meter: meterId ?? null, trial_period_days: trial ?? null, usage_type: usageType };
}

/** Points `key` at `price` (whose lookup_key the caller sets). Transfers the key from its holder when `transfer`. */
async function claimLookupKey(tx: StateStore, p: Principal, key: string, priceId: string, transfer: boolean, nowMs: number): Promise<void> {
  const held = await tx.getObject<{ price: string }>(p.account, LOOKUP_KEY_TYPE, key);
  if (held) {
    if (held.data.price === priceId) return;
    if (!transfer) {
      throw new InvalidParamError(
        'lookup_key',
        `A price (\`${held.data.price}\`) already uses that lookup key. Set transfer_lookup_key to move it to this price.`,
      );
    }
    const holder = await tx.getObject<PriceObject>(p.account, PRICE_TYPE, held.data.price);
    if (holder) {
      holder.data.lookup_key = null;
      await tx.updateObject(p.account, PRICE_TYPE, holder.data.id, holder.data);
      await recordBillingEvent(tx, p, 'price.updated', holder.data, { lookup_key: key });
    }
    await tx.updateObject(p.account, LOOKUP_KEY_TYPE, key, { price: priceId });
    return;
  }
  await tx.insertObject({ account: p.account, type: LOOKUP_KEY_TYPE, id: key, createdMs: nowMs, data: { price: priceId } });
}

async function releaseLookupKey(tx: StateStore, p: Principal, key: string, priceId: string): Promise<void> {
  const held = await tx.getObject<{ price: string }>(p.account, LOOKUP_KEY_TYPE, key);
  if (held && held.data.price === priceId) await tx.deleteObject(p.account, LOOKUP_KEY_TYPE, key);
}

/** Stores a new price (a plan too), claiming its lookup key. `idParam` names the param of a chosen id. */
export async function insertPrice(
  tx: StateStore,
  p: Principal,
  price: PriceObject,
  nowMs: number,
  transferLookupKey: boolean,
  idParam?: string,
): Promise<void> {
  try {
    await tx.insertObject({ account: p.account, type: PRICE_TYPE, id: price.id, createdMs: nowMs, data: price });
  } catch (err) {
    if (err instanceof UniqueViolation) throw new InvalidRequestError(`Plan already exists.`, { param: idParam ?? 'id', code: 'resource_already_exists' });
    throw err;
  }
  if (price.lookup_key !== null) await claimLookupKey(tx, p, price.lookup_key, price.id, transferLookupKey, nowMs);
}

export function readCurrency(r: ParamReader): string {
  const c = r.string('currency', { required: true, maxLength: 3 }).toLowerCase();
  if (!/^[a-z]{3}$/.test(c)) throw new InvalidParamError('currency', `Invalid currency: ${c}. Currencies are three-letter ISO codes such as usd or eur.`);
  return c;
}

export function loadPrice(store: StateStore, p: Principal, id: string, param = 'id'): Promise<PriceObject> {
  return loadResource<PriceObject>(store, p, { type: PRICE_TYPE, noun: 'price' }, id, param);
}

function wantsTiers(expand: string[]): boolean {
  return expand.includes('tiers') || expand.includes('data.tiers');
}

export function renderPrice(d: PriceObject, expand: string[]): PriceObject {
  if (d.tiers === undefined || wantsTiers(expand)) return d;
  const { tiers: _t, ...rest } = d;
  return rest;
}

// ---------------------------------------------------------------------------------------------------------------------
// Endpoints

const PRODUCT_DATA_PARAMS = ['name', 'active', 'metadata', 'statement_descriptor', 'tax_code', 'unit_label'];

async function createPrice(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown([
    'currency',
    'product',
    'product_data',
    'unit_amount',
    'unit_amount_decimal',
    'billing_scheme',
    'tiers',
    'tiers_mode',
    'recurring',
    'transform_quantity',
    'nickname',
    'lookup_key',
    'transfer_lookup_key',
    'active',
    'metadata',
    'tax_behavior',
    'expand',
  ]);
  const expand = readExpand(r);
  const currency = readCurrency(r);
  const pricing = readPricing(r, PRICE_NAMES);
  const productId = r.string('product', { maxLength: 5000 });
  const productData = r.object('product_data');
  if (productId !== undefined && productData) {
    throw new InvalidRequestError('You may only specify one of these parameters: product, product_data.', { param: 'product_data' });
  }
  if (productId === undefined && !productData) throw new MissingParamError('product');
  const nickname = r.string('nickname', { maxLength: 5000 }) ?? null;
  const lookupKey = r.string('lookup_key', { maxLength: 200 }) ?? null;
  const transfer = r.boolean('transfer_lookup_key') ?? false;
  const active = r.boolean('active') ?? true;
  const metadata = readMetadata(r) ?? {};
  const taxBehavior = (r.string('tax_behavior', { enum: ['exclusive', 'inclusive', 'unspecified'] }) ?? 'unspecified') as PriceObject['tax_behavior'];
  const recurringParams = r.object('recurring');
  if (recurringParams) recurringParams.assertNoUnknown(['interval', 'interval_count', 'usage_type', 'meter', 'trial_period_days']);
  const { nowMs, now } = nowSeconds(s);

  const price = await s.state.transaction(async (tx) => {
    const recurring = recurringParams ? await readRecurring(tx, p, recurringParams) : null;
    const product = productData ? await createProductIn(tx, p, nowMs, productData, PRODUCT_DATA_PARAMS) : await loadProduct(tx, p, productId!, 'product', 400);
    const price = buildPrice({
      id: newId('price', p.livemode),
      livemode: p.livemode,
      created: now,
      active,
      currency,
      pricing,
      recurring,
      product: product.id,
      lookupKey,
      metadata,
      nickname,
      taxBehavior,
    });
    await insertPrice(tx, p, price, nowMs, transfer);
    await recordBillingEvent(tx, p, 'price.created', price);
    return price;
  });
  return json(200, await expandBilling(s.state, p, renderPrice(price, expand), expand, ['tiers']));
}

/** The fields Stripe lets you change on a price (shared by POST /v1/prices/:id and, partly, plans). */
export async function updatePriceDoc(
  tx: StateStore,
  p: Principal,
  id: string,
  nowMs: number,
  change: (price: PriceObject) => void | Promise<void>,
  lookup?: { key: string | null | undefined; transfer: boolean },
): Promise<PriceObject> {
  const price = await loadPrice(tx, p, id);
  const before = structuredClone(price);
  await change(price);
  if (lookup && lookup.key !== undefined && lookup.key !== price.lookup_key) {
    if (price.lookup_key !== null) await releaseLookupKey(tx, p, price.lookup_key, price.id);
    if (lookup.key !== null) await claimLookupKey(tx, p, lookup.key, price.id, lookup.transfer, nowMs);
    price.lookup_key = lookup.key;
  }
  await tx.updateObject(p.account, PRICE_TYPE, price.id, price);
  await recordBillingEvent(tx, p, 'price.updated', price, before as unknown as Record<string, unknown>);
  return price;
}

export const PRICE_SEARCH_FIELDS: SearchFields<PriceObject> = {
  active: { kind: 'boolean', get: (d) => d.active },
  created: { kind: 'number', get: (d) => d.created },
  currency: { kind: 'token', get: (d) => d.currency },
  lookup_key: { kind: 'token', get: (d) => d.lookup_key },
  metadata: { kind: 'metadata', get: (d) => d.metadata },
  product: { kind: 'token', get: (d) => d.product },
  type: { kind: 'token', get: (d) => d.type },
};

export function registerPriceRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/prices',
    apiEndpoint(s, (p, _req, params) => createPrice(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/prices',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'active', 'created', 'currency', 'lookup_keys', 'product', 'recurring', 'type', 'expand']);
      const page = readListParams(r);
      const expand = readExpand(r);
      const where: Record<string, string | boolean> = {};
      const active = r.boolean('active');
      if (active !== undefined) where.active = active;
      const currency = r.string('currency', { maxLength: 3 });
      if (currency !== undefined) where.currency = currency.toLowerCase();
      const product = r.string('product', { maxLength: 5000 });
      if (product !== undefined) where.product = product;
      const type = r.string('type', { enum: ['one_time', 'recurring'] });
      if (type !== undefined) where.type = type;
      const lookupKeys = r.stringArray('lookup_keys', { maxItems: 10 });
      const rec = r.object('recurring');
      let interval: string | undefined;
      let usageType: string | undefined;
      let meter: string | undefined;
      if (rec) {
        rec.assertNoUnknown(['interval', 'usage_type', 'meter']);
        interval = rec.string('interval', { enum: ['day', 'week', 'month', 'year'] });
        usageType = rec.string('usage_type', { enum: ['licensed', 'metered'] });
        meter = rec.string('meter', { maxLength: 5000 });
      }
      const preds: Array<(d: PriceObject) => boolean> = [];
      if (lookupKeys) preds.push((d) => d.lookup_key !== null && lookupKeys.includes(d.lookup_key));
      if (interval) preds.push((d) => d.recurring?.interval === interval);
      if (usageType) preds.push((d) => d.recurring?.usage_type === usageType);
      if (meter) preds.push((d) => d.recurring?.meter === meter);
      const pred = preds.length ? (d: PriceObject) => preds.every((f) => f(d)) : undefined;
      return listEndpoint<PriceObject>(s, p, '/v1/prices', PRICE_TYPE, page, { where, ...readCreatedRange(r) }, pred, (d) => renderPrice(d, expand), expand, [
        'data.tiers',
      ]);
    }),
  );

  http.route(
    'GET',
    '/v1/prices/search',
    apiEndpoint(s, (p, _req, params) => {
      const expand = new ParamReader(params).stringArray('expand') ?? [];
      return searchEndpoint<PriceObject>(s, p, params, {
        url: '/v1/prices/search',
        type: PRICE_TYPE,
        resource: 'prices',
        fields: PRICE_SEARCH_FIELDS,
        render: (d) => renderPrice(d, expand),
      });
    }),
  );

  http.route(
    'GET',
    '/v1/prices/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['expand']);
      const expand = readExpand(r);
      return json(200, await expandBilling(s.state, p, renderPrice(await loadPrice(s.state, p, req.params[0]), expand), expand, ['tiers']));
    }),
  );

  http.route(
    'POST',
    '/v1/prices/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['active', 'metadata', 'nickname', 'lookup_key', 'transfer_lookup_key', 'tax_behavior', 'expand']);
      const expand = readExpand(r);
      const active = r.boolean('active');
      const nickname = nullableString(r, 'nickname', 5000);
      const lookupKey = nullableString(r, 'lookup_key', 200);
      const transfer = r.boolean('transfer_lookup_key') ?? false;
      const taxBehavior = r.string('tax_behavior', { enum: ['exclusive', 'inclusive', 'unspecified'] });
      const { nowMs } = nowSeconds(s);
      const price = await s.state.transaction((tx) =>
        updatePriceDoc(
          tx,
          p,
          req.params[0],
          nowMs,
          (price) => {
            if (active !== undefined) price.active = active;
            if (nickname !== undefined) price.nickname = nickname;
            if (taxBehavior !== undefined && taxBehavior !== price.tax_behavior) {
              if (price.tax_behavior !== 'unspecified') {
                throw new InvalidParamError('tax_behavior', 'tax_behavior cannot be changed once it is set to inclusive or exclusive.');
              }
              price.tax_behavior = taxBehavior as PriceObject['tax_behavior'];
            }
            const metadata = readMetadata(r, price.metadata);
            if (metadata !== undefined) price.metadata = metadata;
          },
          { key: lookupKey, transfer },
        ),
      );
      return json(200, await expandBilling(s.state, p, renderPrice(price, expand), expand, ['tiers']));
    }),
  );
}
