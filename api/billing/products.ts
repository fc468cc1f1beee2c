/**
 * v1 products: create (optionally with a chosen id), retrieve, update, delete, list (active, ids, shippable, type,
 * url, created), search (active, name, description, metadata, created).
 *
 * Stored as the Product object itself (type `product`). Deleting removes the document (retrieve is then a 404, as in
 * Stripe); a product that has prices (or plans, which are prices) cannot be deleted.
 */
import type { HttpServer } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import type { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import type { SearchFields } from '../../shared/search';
import { nullableString, searchEndpoint, type Metadata } from './common';
import { defineResource, insertCreated, loadResource, P, pickParams, readParams, whereOf, type ParamValues } from './resource';

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

const PRODUCTS = { type: PRODUCT_TYPE, noun: 'product', events: { created: 'product.created', updated: 'product.updated', deleted: 'product.deleted' } };

export function loadProduct(store: StateStore, p: Principal, id: string, param = 'id', status: 400 | 404 = 404): Promise<ProductObject> {
  return loadResource<ProductObject>(store, p, PRODUCTS, id, param, status);
}

const PRODUCT_PARAMS = {
  active: P.boolean(),
  description: P.nullableString(40000),
  images: P.clearableStringArray({ maxItems: 8 }),
  marketing_features: P.custom((r, n) => {
    if (!r.has(n)) return undefined;
    if (r.isUnset(n)) return [];
    return (r.objectArray(n, { maxItems: 15 }) ?? []).map((it) => {
      it.assertNoUnknown(['name']);
      return { name: it.string('name', { required: true, maxLength: 80 }) };
    });
  }),
  metadata: P.metadata(),
  name: P.string({ maxLength: 5000 }),
  shippable: P.boolean(),
  statement_descriptor: P.custom((r, n) => {
    const sd = nullableString(r, n, 22);
    if (sd !== undefined && sd !== null && (/[<>\\'"*]/.test(sd) || !/[A-Za-z]/.test(sd))) {
      throw new InvalidParamError(n, 'Invalid statement_descriptor: it must contain at least one letter and none of < > \\ \' " *.');
    }
    return sd;
  }),
  tax_code: P.nullableString(5000),
  unit_label: P.nullableString(12),
  url: P.nullableString(5000),
};

const CREATE_PARAMS = {
  id: P.string({ maxLength: 5000 }),
  type: P.string({ enum: ['service', 'good'] }),
  ...PRODUCT_PARAMS,
  name: P.string({ required: true, maxLength: 5000 }),
};

const UPDATE_PARAMS = { ...PRODUCT_PARAMS, default_price: P.nullableString(5000) };

type ProductValues = ParamValues<typeof PRODUCT_PARAMS>;

function applyProductParams(prod: ProductObject, v: Partial<ProductValues>): void {
  if (v.name !== undefined) prod.name = v.name;
  if (v.active !== undefined) prod.active = v.active;
  if (v.description !== undefined) prod.description = v.description;
  if (v.images !== undefined) prod.images = v.images;
  if (v.marketing_features !== undefined) prod.marketing_features = v.marketing_features;
  if (v.shippable !== undefined) prod.shippable = v.shippable;
  if (v.statement_descriptor !== undefined) prod.statement_descriptor = v.statement_descriptor;
  if (v.tax_code !== undefined) prod.tax_code = v.tax_code;
  if (v.unit_label !== undefined) prod.unit_label = v.unit_label;
  if (v.url !== undefined) prod.url = v.url;
  if (v.metadata !== undefined) prod.metadata = v.metadata(prod.metadata);
}

function newProduct(p: Principal, now: number, v: Partial<ParamValues<typeof CREATE_PARAMS>>): ProductObject {
  const prod: ProductObject = {
    id: v.id ?? newId('prod', p.livemode),
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
    type: (v.type as ProductObject['type'] | undefined) ?? 'service',
    unit_label: null,
    updated: now,
    url: null,
  };
  applyProductParams(prod, v);
  return prod;
}

/** The product a price's `product_data` / a plan's `product[...]` hash creates (those of `allowed`), inside the caller's transaction. */
export async function createProductIn(tx: StateStore, p: Principal, nowMs: number, r: ParamReader, allowed: readonly string[]): Promise<ProductObject> {
  const values = readParams(r, pickParams(CREATE_PARAMS, allowed), []);
  const prod = newProduct(p, Math.floor(nowMs / 1000), values);
  await insertCreated({ p, tx, nowMs, r }, PRODUCTS, prod, PRODUCT_ID_TAKEN);
  return prod;
}

const PRODUCT_ID_TAKEN = 'Product already exists.';

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
  // Before the resource's `/:id` routes.
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

  defineResource(http, s, {
    ...PRODUCTS,
    path: '/v1/products',
    create: { params: CREATE_PARAMS, build: ({ p, now }, v) => newProduct(p, now, v), idTaken: PRODUCT_ID_TAKEN },
    list: {
      params: {
        active: P.boolean(),
        created: P.created(),
        ids: P.stringArray({ maxItems: 100 }),
        shippable: P.boolean(),
        type: P.string({ enum: ['service', 'good'] }),
        url: P.string({ maxLength: 5000 }),
      },
      filter: (v) => {
        const ids = v.ids;
        return { where: whereOf(v, ['active', 'shippable', 'type', 'url']), ...v.created, pred: ids ? (d) => ids.includes(d.id) : undefined };
      },
    },
    update: {
      params: UPDATE_PARAMS,
      apply: async ({ p, tx, now }, prod, v) => {
        applyProductParams(prod, v);
        const priceId = v.default_price;
        if (priceId !== undefined) {
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
      },
    },
    remove: {
      check: async ({ p, tx }, prod) => {
        const prices = await tx.listObjects(p.account, PRICE_DOC_TYPE, { limit: 1, where: { product: prod.id } });
        if (prices.data.length > 0) throw new InvalidRequestError('This product cannot be deleted because it has one or more user-created prices.');
      },
    },
  });
}
