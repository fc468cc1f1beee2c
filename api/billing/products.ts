/**
 * v1 products: create (optionally with a chosen id), retrieve, update, delete, list (active, ids, shippable, type,
 * url, created), search (active, name, description, metadata, created).
 *
 * Stored as the Product object itself (type `product`). Deleting removes the document (retrieve is then a 404, as in
 * Stripe); a product that has prices (or plans, which are prices) cannot be deleted.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError, UniqueViolation } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import type { SearchFields } from '../../shared/search';
import { listEndpoint, nowSeconds, nullableString, readCreatedRange, readMetadata, recordBillingEvent, searchEndpoint, type Metadata } from './common';

export const PRODUCT_TYPE = 'product';
/** Same as PRICE_TYPE in prices.ts (kept here to avoid an import cycle). */
const PRICE_DOC_TYPE = 'price';

export interface ProductObject {
  id: string;
  object: 'product';
  active: boolean;
  created: number;
  default_price: string | null;
  description: string | null;
  images: string[];
  livemode: boolean;
  marketing_features: Array<{ name: string }>;
  metadata: Metadata;
  name: string;
  package_dimensions: null;
  shippable: boolean | null;
  statement_descriptor: string | null;
  tax_code: string | null;
  tax_details: null;
  type: 'service' | 'good';
  unit_label: string | null;
  updated: number;
  url: string | null;
}

export async function loadProduct(store: StateStore, p: Principal, id: string, param = 'id', status: 400 | 404 = 404): Promise<ProductObject> {
  const found = await store.getObject<ProductObject>(p.account, PRODUCT_TYPE, id);
  if (!found) {
    const msg = `No such product: '${id}'`;
    if (status === 400) throw new InvalidRequestError(msg, { param, code: 'resource_missing' });
    throw new NotFoundError(msg, param);
  }
  return found.data;
}

const UPDATABLE = [
  'active',
  'default_price',
  'description',
  'images',
  'marketing_features',
  'metadata',
  'name',
  'shippable',
  'statement_descriptor',
  'tax_code',
  'unit_label',
  'url',
  'expand',
];

function applyProductParams(r: ParamReader, prod: ProductObject, creating: boolean): void {
  const name = r.string('name', { required: creating, maxLength: 5000 });
  if (name !== undefined) prod.name = name;
  const active = r.boolean('active');
  if (active !== undefined) prod.active = active;
  const description = nullableString(r, 'description', 40000);
  if (description !== undefined) prod.description = description;
  if (r.has('images')) prod.images = r.isUnset('images') ? [] : (r.stringArray('images', { maxItems: 8 }) ?? []);
  if (r.has('marketing_features')) {
    if (r.isUnset('marketing_features')) prod.marketing_features = [];
    else {
      const items = r.objectArray('marketing_features', { maxItems: 15 }) ?? [];
      prod.marketing_features = items.map((it) => {
        it.assertNoUnknown(['name']);
        return { name: it.string('name', { required: true, maxLength: 80 }) };
      });
    }
  }
  const shippable = r.boolean('shippable');
  if (shippable !== undefined) prod.shippable = shippable;
  const sd = nullableString(r, 'statement_descriptor', 22);
  if (sd !== undefined) {
    if (sd !== null && (/[<>\\'"*]/.test(sd) || !/[A-Za-z]/.test(sd))) {
      throw new InvalidParamError('statement_descriptor', 'Invalid statement_descriptor: it must contain at least one letter and none of < > \\ \' " *.');
    }
    prod.statement_descriptor = sd;
  }
  const taxCode = nullableString(r, 'tax_code', 5000);
  if (taxCode !== undefined) prod.tax_code = taxCode;
  const unitLabel = nullableString(r, 'unit_label', 12);
  if (unitLabel !== undefined) prod.unit_label = unitLabel;
  const url = nullableString(r, 'url', 5000);
  if (url !== undefined) prod.url = url;
  const metadata = readMetadata(r, prod.metadata);
  if (metadata !== undefined) prod.metadata = metadata;
}

/** The product a price's `product_data` / a plan's `product[...]` hash creates, inside the caller's transaction. */
export async function createProductIn(
  tx: StateStore,
  p: Principal,
  nowMs: number,
  r: ParamReader,
  allowed: readonly string[],
  allowId = false,
): Promise<ProductObject> {
  r.assertNoUnknown(allowed);
  const now = Math.floor(nowMs / 1000);
  const id = allowId ? r.string('id', { maxLength: 5000 }) : undefined;
  const prod: ProductObject = {
    id: id ?? newId('prod', p.livemode),
    object: 'product',
    active: true,
    created: now,
    default_price: null,
    description: null,
    images: [],
    livemode: p.livemode,
    marketing_features: [],
    metadata: {},
    name: '',
    package_dimensions: null,
    shippable: null,
    statement_descriptor: null,
    tax_code: null,
    tax_details: null,
    type: 'service',
    unit_label: null,
    updated: now,
    url: null,
  };
  const type = r.string('type', { enum: ['service', 'good'] });
  if (type) prod.type = type as ProductObject['type'];
  applyProductParams(r, prod, true);
  try {
    await tx.insertObject({ account: p.account, type: PRODUCT_TYPE, id: prod.id, createdMs: nowMs, data: prod });
  } catch (err) {
    if (err instanceof UniqueViolation) throw new InvalidRequestError('Product already exists.', { param: r.param('id'), code: 'resource_already_exists' });
    throw err;
  }
  await recordBillingEvent(tx, p, 'product.created', prod);
  return prod;
}

async function createProduct(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  const { nowMs } = nowSeconds(s);
  const allowed = ['id', 'type', ...UPDATABLE.filter((k) => k !== 'default_price')];
  const prod = await s.state.transaction((tx) => createProductIn(tx, p, nowMs, r, allowed, true));
  return json(200, prod);
}

export const PRODUCT_SEARCH_FIELDS: SearchFields<ProductObject> = {
  active: { kind: 'boolean', get: (d) => d.active },
  created: { kind: 'number', get: (d) => d.created },
  description: { kind: 'string', get: (d) => d.description },
  metadata: { kind: 'metadata', get: (d) => d.metadata },
  name: { kind: 'string', get: (d) => d.name },
  shippable: { kind: 'boolean', get: (d) => d.shippable },
  url: { kind: 'string', get: (d) => d.url },
};

export function registerProductRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/products',
    apiEndpoint(s, (p, _req, params) => createProduct(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/products',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'active', 'created', 'ids', 'shippable', 'type', 'url', 'expand']);
      const page = readListParams(r);
      const where: Record<string, string | boolean> = {};
      const active = r.boolean('active');
      if (active !== undefined) where.active = active;
      const shippable = r.boolean('shippable');
      if (shippable !== undefined) where.shippable = shippable;
      const type = r.string('type', { enum: ['service', 'good'] });
      if (type !== undefined) where.type = type;
      const url = r.string('url', { maxLength: 5000 });
      if (url !== undefined) where.url = url;
      const ids = r.stringArray('ids', { maxItems: 100 });
      const pred = ids ? (d: ProductObject) => ids.includes(d.id) : undefined;
      return listEndpoint<ProductObject>(s, p, '/v1/products', PRODUCT_TYPE, page, { where, ...readCreatedRange(r) }, pred, (d) => d);
    }),
  );

  http.route(
    'GET',
    '/v1/products/search',
    apiEndpoint(s, (p, _req, params) =>
      searchEndpoint<ProductObject>(s, p, params, {
        url: '/v1/products/search',
        type: PRODUCT_TYPE,
        resource: 'products',
        fields: PRODUCT_SEARCH_FIELDS,
        render: (d) => d,
      }),
    ),
  );

  http.route(
    'GET',
    '/v1/products/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await loadProduct(s.state, p, req.params[0]));
    }),
  );

  http.route(
    'POST',
    '/v1/products/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(UPDATABLE);
      const { now } = nowSeconds(s);
      const prod = await s.state.transaction(async (tx) => {
        const prod = await loadProduct(tx, p, req.params[0]);
        const before = structuredClone(prod);
        applyProductParams(r, prod, false);
        if (r.has('default_price')) {
          const priceId = nullableString(r, 'default_price', 5000) ?? null;
          if (priceId !== null) {
            const price = await tx.getObject<{ product: string; active: boolean }>(p.account, PRICE_DOC_TYPE, priceId);
            if (!price) throw new InvalidRequestError(`No such price: '${priceId}'`, { param: 'default_price', code: 'resource_missing' });
            if (price.data.product !== prod.id) {
              throw new InvalidParamError('default_price', `The price '${priceId}' does not belong to product '${prod.id}'.`);
            }
            if (!price.data.active) throw new InvalidParamError('default_price', `The price '${priceId}' is archived: a default price must be active.`);
          }
          prod.default_price = priceId;
        }
        prod.updated = now;
        await tx.updateObject(p.account, PRODUCT_TYPE, prod.id, prod);
        await recordBillingEvent(tx, p, 'product.updated', prod, before as unknown as Record<string, unknown>);
        return prod;
      });
      return json(200, prod);
    }),
  );

  http.route(
    'DELETE',
    '/v1/products/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const gone = await s.state.transaction(async (tx) => {
        const prod = await loadProduct(tx, p, req.params[0]);
        const prices = await tx.listObjects(p.account, PRICE_DOC_TYPE, { limit: 1, where: { product: prod.id } });
        if (prices.data.length > 0) {
          throw new InvalidRequestError('This product cannot be deleted because it has one or more user-created prices.');
        }
        await tx.deleteObject(p.account, PRODUCT_TYPE, prod.id);
        await recordBillingEvent(tx, p, 'product.deleted', prod);
        return { id: prod.id, object: 'product', deleted: true };
      });
      return json(200, gone);
    }),
  );
}
