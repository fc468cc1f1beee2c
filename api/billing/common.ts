/**
 * Shared pieces of the billing REST layer: metadata rules, `created` range filters, filtered lists and search on top
 * of the StateStore, and the (for now empty) hook through which every state change will record a v1 event.
 *
 * Lists: filters on top-level fields go to the store (`where`); filters the store cannot express (nested fields such
 * as `recurring[interval]`, lists of values such as `lookup_keys[]`, search queries) are predicates applied while
 * walking the store's own newest-first pages of 100, so ordering and cursors stay exactly the store's. That is a scan
 * of the account's objects of one type in the worst case; fine for catalogue-sized collections, and the place to add
 * indexes later.
 */
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore, ListOptions } from '../../shared/state-store';
import { json, type HttpResult } from '../../shared/http/server';
import { listResult } from '../../shared/http/endpoints';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, StripeError } from '../../shared/errors';
import { compileSearch, type SearchFields } from '../../shared/search';
import { randomBase62 } from '../../shared/ids';
import { storeEvent } from './outbox';

export type Metadata = Record<string, string>;

export const METADATA_LIMITS = { maxKeys: 50, maxKeyLength: 40, maxValueLength: 500 };

/**
 * Reads `metadata` with Stripe's rules (at most 50 keys, keys up to 40 characters, values up to 500) and applies it to
 * `current`: keys are merged, a key sent with an empty value is removed, `metadata=` (empty) removes every key.
 * Returns undefined when the param was not sent.
 */
export function readMetadata(r: ParamReader, current: Metadata = {}): Metadata | undefined {
  if (r.isUnset('metadata')) return {};
  const sent = r.stringMap('metadata', { maxKeyLength: METADATA_LIMITS.maxKeyLength, maxValueLength: METADATA_LIMITS.maxValueLength });
  if (sent === undefined) return undefined;
  const out: Metadata = { ...current };
  for (const [k, v] of Object.entries(sent)) {
    if (k.length === 0) throw new InvalidParamError('metadata', 'Metadata keys cannot be empty.');
    if (v === '') delete out[k];
    else out[k] = v;
  }
  if (Object.keys(out).length > METADATA_LIMITS.maxKeys) {
    throw new InvalidParamError('metadata', `Metadata can have up to ${METADATA_LIMITS.maxKeys} keys, but it would have ${Object.keys(out).length}.`);
  }
  return out;
}

/** A nullable string param for updates: undefined = not sent, null = unset with '', else the value. */
export function nullableString(r: ParamReader, name: string, maxLength: number): string | null | undefined {
  const v = r.string(name, { maxLength, allowEmpty: true });
  if (v === undefined) return undefined;
  return v === '' ? null : v;
}

/** `created` as an integer (exact second) or a hash of gt/gte/lt/lte, turned into the store's [gteMs, ltMs) range. */
export function readCreatedRange(r: ParamReader): Pick<ListOptions, 'createdGteMs' | 'createdLtMs'> {
  if (!r.has('created') || r.isUnset('created')) return {};
  const raw = r.raw('created');
  let gte: number | undefined;
  let lt: number | undefined;
  const tighten = (g?: number, l?: number) => {
    if (g !== undefined) gte = gte === undefined ? g : Math.max(gte, g);
    if (l !== undefined) lt = lt === undefined ? l : Math.min(lt, l);
  };
  if (typeof raw === 'string' || typeof raw === 'number') {
    const n = r.integer('created')!;
    tighten(n * 1000, (n + 1) * 1000);
  } else {
    const c = r.object('created')!;
    c.assertNoUnknown(['gt', 'gte', 'lt', 'lte']);
    const gt = c.integer('gt');
    const ge = c.integer('gte');
    const lts = c.integer('lt');
    const le = c.integer('lte');
    if (gt !== undefined) tighten((gt + 1) * 1000);
    if (ge !== undefined) tighten(ge * 1000);
    if (lts !== undefined) tighten(undefined, lts * 1000);
    if (le !== undefined) tighten(undefined, (le + 1) * 1000);
  }
  return { createdGteMs: gte, createdLtMs: lt };
}

export interface PageParams {
  limit: number;
  startingAfter?: string;
  endingBefore?: string;
}

const BATCH = 100;

/**
 * One page of an account's objects of `type`, newest first, with the store's filters and an optional predicate on
 * the document. Cursors are object ids as in every Stripe list.
 */
export async function listMatching<T>(
  store: StateStore,
  account: string,
  type: string,
  page: PageParams,
  filters: Pick<ListOptions, 'where' | 'createdGteMs' | 'createdLtMs'>,
  pred?: (doc: T) => boolean,
): Promise<{ data: T[]; hasMore: boolean }> {
  if (!pred) {
    const res = await store.listObjects<T>(account, type, { ...filters, ...page });
    return { data: res.data.map((o) => o.data), hasMore: res.hasMore };
  }
  const { limit } = page;
  if (page.endingBefore === undefined) {
    const out: T[] = [];
    let cursor = page.startingAfter;
    for (;;) {
      const res = await store.listObjects<T>(account, type, { ...filters, limit: BATCH, startingAfter: cursor });
      for (const o of res.data) {
        if (pred(o.data)) out.push(o.data);
        if (out.length > limit) return { data: out.slice(0, limit), hasMore: true };
      }
      if (!res.hasMore || res.data.length === 0) return { data: out, hasMore: false };
      cursor = res.data[res.data.length - 1].id;
    }
  }
  // Backwards from ending_before: collect the nearest newer matches, then serve them newest first.
  const nearestFirst: T[] = [];
  let cursor = page.endingBefore;
  for (;;) {
    const res = await store.listObjects<T>(account, type, { ...filters, limit: BATCH, endingBefore: cursor });
    for (let i = res.data.length - 1; i >= 0; i--) {
      if (pred(res.data[i].data)) nearestFirst.push(res.data[i].data);
      if (nearestFirst.length > limit) return { data: nearestFirst.slice(0, limit).reverse(), hasMore: true };
    }
    if (!res.hasMore || res.data.length === 0) return { data: nearestFirst.reverse(), hasMore: false };
    cursor = res.data[0].id;
  }
}

/** One page of an in-memory list (an invoice's or credit note's lines) by Stripe's cursors (ids). */
export function pageOfArray<T extends { id: string }>(all: T[], page: PageParams): { data: T[]; hasMore: boolean } {
  let rest = all;
  if (page.startingAfter) {
    const i = all.findIndex((l) => l.id === page.startingAfter);
    rest = i < 0 ? [] : all.slice(i + 1);
  } else if (page.endingBefore) {
    const i = all.findIndex((l) => l.id === page.endingBefore);
    rest = i < 0 ? [] : all.slice(Math.max(0, i - page.limit), i);
  }
  return { data: rest.slice(0, page.limit), hasMore: rest.length > page.limit };
}

/** Lists `type` and renders a Stripe list envelope. */
export async function listEndpoint<T>(
  s: Services,
  p: Principal,
  url: string,
  type: string,
  page: PageParams,
  filters: Pick<ListOptions, 'where' | 'createdGteMs' | 'createdLtMs'>,
  pred: ((doc: T) => boolean) | undefined,
  render: (doc: T) => unknown,
  expand: string[] = [],
  expandExtra: string[] = [],
): Promise<HttpResult> {
  const res = await listMatching<T>(s.state, p.account, type, page, filters, pred);
  if (expand.length === 0) return listResult(url, res.data.map(render), res.hasMore);
  return json(200, await expandBilling(s.state, p, { object: 'list', data: res.data.map(render), has_more: res.hasMore, url }, expand, expandExtra));
}

function encodePage(id: string): string {
  return Buffer.from(JSON.stringify({ a: id }), 'utf8').toString('base64url');
}

function decodePage(page: string): string {
  try {
    const v = JSON.parse(Buffer.from(page, 'base64url').toString('utf8')) as { a?: unknown };
    if (typeof v.a === 'string' && v.a.length > 0) return v.a;
  } catch {
    /* fall through */
  }
  throw new InvalidRequestError(`Invalid page: ${page.slice(0, 40)}. Use the next_page value of a previous search result.`, {
    param: 'page',
    code: 'parameter_invalid',
  });
}

/**
 * `GET /v1/<resource>/search`: `query`, `limit` (1..100, default 10), `page` (the previous result's next_page),
 * `expand[]=total_count`. Results are newest first; `next_page` is an opaque cursor (the last id served), null at
 * the end. Unlike Stripe's index, results are immediately consistent.
 */
export async function searchEndpoint<T>(
  s: Services,
  p: Principal,
  params: Record<string, unknown>,
  opts: {
    url: string;
    type: string;
    resource: string;
    fields: SearchFields<T>;
    where?: ListOptions['where'];
    include?: (doc: T) => boolean;
    render: (doc: T) => unknown;
  },
): Promise<HttpResult> {
  const r = new ParamReader(params);
  r.assertNoUnknown(['query', 'limit', 'page', 'expand']);
  const query = r.string('query', { required: true, maxLength: 10_000 });
  const limit = r.integer('limit', { min: 1, max: 100 }) ?? 10;
  const pageParam = r.string('page', { maxLength: 5000 });
  const expand = r.stringArray('expand') ?? [];
  const match = compileSearch(query, opts.fields, opts.resource);
  const include = opts.include;
  const pred = include ? (d: T) => include(d) && match(d) : match;
  const startingAfter = pageParam ? decodePage(pageParam) : undefined;
  let res: { data: T[]; hasMore: boolean };
  try {
    res = await listMatching<T>(s.state, p.account, opts.type, { limit, startingAfter }, { where: opts.where }, pred);
  } catch (err) {
    if (err instanceof StripeError && err.param === 'starting_after') {
      throw new InvalidRequestError(`Invalid page: ${pageParam}.`, { param: 'page', code: 'parameter_invalid' });
    }
    throw err;
  }
  const body: Record<string, unknown> = {
    object: 'search_result',
    data: res.data.map(opts.render),
    has_more: res.hasMore,
    next_page: res.hasMore && res.data.length > 0 ? encodePage((res.data[res.data.length - 1] as { id: string }).id) : null,
    url: opts.url,
  };
  if (expand.includes('total_count')) {
    let total = 0;
    let cursor: string | undefined;
    for (;;) {
      const all = await s.state.listObjects<T>(p.account, opts.type, { limit: BATCH, startingAfter: cursor, where: opts.where });
      for (const o of all.data) if (pred(o.data)) total++;
      if (!all.hasMore || all.data.length === 0) break;
      cursor = all.data[all.data.length - 1].id;
    }
    body.total_count = total;
  }
  return json(200, body);
}

/** `expand[]` of a request (only used to decide which includable fields, such as a price's `tiers`, to render). */
export function readExpand(r: ParamReader): string[] {
  return r.stringArray('expand', { maxItems: 100 }) ?? [];
}

/**
 * The single place every billing state change reports to: stores the v1 `event` (`customer.created`,
 * `price.updated`, `invoice.paid`, …) with a snapshot of `object` in `tx` — call it inside the transaction that makes
 * the change, so the event exists exactly when the change does — and queues the webhook deliveries for it (sent after
 * the transaction commits; see webhooks.ts). For updates pass the previous state (the whole object before the change,
 * or just the changed attributes' old values): `data.previous_attributes` is the diff, and an update that changed
 * nothing records no event.
 */
export async function recordBillingEvent(
  tx: StateStore,
  p: Principal,
  type: string,
  object: unknown,
  previousAttributes?: Record<string, unknown>,
): Promise<void> {
  await storeEvent(tx, p, type, object, previousAttributes);
}

/** Stripe's invoice prefixes: 8 uppercase letters/digits. */
export function newInvoicePrefix(): string {
  return randomBase62(24)
    .toUpperCase()
    .replace(/[^A-Z0-9]/g, '')
    .slice(0, 8)
    .padEnd(8, 'X');
}

export function nowSeconds(s: Services): { nowMs: number; now: number } {
  const nowMs = s.now();
  return { nowMs, now: Math.floor(nowMs / 1000) };
}

// ---------------------------------------------------------------------------------------------------------------------
// expand[]

/** Loads one object of the caller's account by id (never another account's: accounts are walls). */
export type ExpandLoader = (state: StateStore, p: Principal, id: string) => Promise<unknown>;

/**
 * How a field of an object type expands: `id` reads the id to expand from the object (defaults to the field's own
 * value when it is a string); when absent the field only descends (an embedded object or list). `noop` fields are
 * accepted and left as they are (e.g. default_payment_method, always null here).
 */
export interface ExpandField {
  id?: (obj: Record<string, unknown>) => unknown;
  noop?: boolean;
}

/** object type (`subscription`, `invoice`, `line_item`, …) → field name → how it expands. */
export type ExpandResolvers = Record<string, Record<string, ExpandField>>;

const EXPAND_MAX_DEPTH = 4;

function cannotExpand(path: string, index: number): never {
  throw new InvalidRequestError(`This property cannot be expanded (${path}).`, { param: `expand[${index}]` });
}

/**
 * Applies `expand[]` paths to a rendered object (or a `list` envelope, whose paths start with `data.`): each segment
 * names an expandable field of the current object's type in `resolvers`, whose id is replaced by the object loaded
 * through `loaders` (chosen by the id's prefix: `cus_`, `sub_`, `in_`, `price_`, `prod_`, …, always in the caller's
 * account), or an embedded object/list to descend into (`items.data.price`). Up to 4 levels; `extra` names paths
 * handled elsewhere (a price's `tiers`, a search's `total_count`). Unknown paths are Stripe's 400 on `expand[i]`.
 */
export async function expandObject<T>(
  state: StateStore,
  p: Principal,
  object: T,
  paths: string[],
  resolvers: ExpandResolvers,
  loaders: Record<string, ExpandLoader>,
  extra: string[] = [],
): Promise<T> {
  if (paths.length === 0) return object;
  const cache = new Map<string, Promise<unknown>>();
  const load = (id: string, path: string, index: number): Promise<unknown> => {
    let hit = cache.get(id);
    if (!hit) {
      const us = id.indexOf('_');
      const loader = us > 0 ? loaders[id.slice(0, us)] : undefined;
      if (!loader) cannotExpand(path, index);
      hit = loader(state, p, id).then((v) => structuredClone(v));
      cache.set(id, hit);
    }
    return hit.then((v) => structuredClone(v));
  };
  const root = structuredClone(object) as unknown;
  const walk = async (node: unknown, segs: string[], path: string, index: number): Promise<unknown> => {
    if (segs.length === 0 || node === null || node === undefined || typeof node !== 'object') return node;
    const obj = node as Record<string, unknown>;
    const [seg, ...rest] = segs;
    if (obj.object === 'list' || obj.object === 'search_result') {
      if (seg !== 'data' || !Array.isArray(obj.data)) cannotExpand(path, index);
      if (rest.length === 0) cannotExpand(path, index);
      obj.data = await Promise.all((obj.data as unknown[]).map((d) => walk(d, rest, path, index)));
      return obj;
    }
    const type = typeof obj.object === 'string' ? obj.object : '';
    const field = resolvers[type]?.[seg];
    if (!field) cannotExpand(path, index);
    if (field.noop) return obj;
    let value = obj[seg];
    if (Array.isArray(value)) {
      // A list of ids (an invoice's or subscription's `discounts`): each id expands.
      const items = await Promise.all(value.map((v) => (typeof v === 'string' ? load(v, path, index) : v)));
      obj[seg] = await Promise.all(items.map((v) => walk(v, rest, path, index)));
      return obj;
    }
    if (value !== null && typeof value === 'object') {
      /* already embedded or expanded by an earlier path: descend */
    } else if (field.id || typeof value === 'string') {
      const id = field.id ? field.id(obj) : value;
      if (typeof id === 'string') value = await load(id, path, index);
      else if (typeof value === 'string' || value === undefined) value = id ?? null;
    } else if (value === undefined) {
      cannotExpand(path, index);
    }
    obj[seg] = await walk(value, rest, path, index);
    return obj;
  };
  for (let i = 0; i < paths.length; i++) {
    const path = paths[i];
    if (extra.includes(path)) continue;
    const segs = path.split('.');
    if (segs.some((s) => s.length === 0)) cannotExpand(path, i);
    if (segs.filter((s) => s !== 'data').length > EXPAND_MAX_DEPTH) {
      throw new InvalidRequestError(`You cannot expand more than ${EXPAND_MAX_DEPTH} levels of a property. Property: ${path}`, { param: `expand[${i}]` });
    }
    await walk(root, segs, path, i);
  }
  return root as T;
}

/** Stored documents as served: internal `_` fields dropped, a price's tiers and an invoice's lines beyond 10 hidden. */
function served(type: string, doc: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(doc)) if (!k.startsWith('_')) out[k] = v;
  if (type === 'price' && out.tiers !== undefined) delete out.tiers;
  if (type === 'invoice' && out.lines && typeof out.lines === 'object') {
    const lines = out.lines as { data: unknown[] };
    out.lines = { ...lines, data: lines.data.slice(0, 10), has_more: lines.data.length > 10 };
  }
  return out;
}

function storeLoader(type: string): ExpandLoader {
  return async (state, p, id) => {
    const found = await state.getObject<Record<string, unknown>>(p.account, type, id);
    if (!found) return id;
    if (found.data.deleted === true) return { id, object: type, deleted: true };
    return served(type, found.data);
  };
}

/** Loaders by id prefix; every one reads the caller's account only. */
export const EXPAND_LOADERS: Record<string, ExpandLoader> = {
  cus: storeLoader('customer'),
  sub: storeLoader('subscription'),
  in: storeLoader('invoice'),
  price: storeLoader('price'),
  plan: storeLoader('price'),
  prod: storeLoader('product'),
  ii: storeLoader('invoiceitem'),
  di: storeLoader('discount'),
  promo: storeLoader('promotion_code'),
  cn: storeLoader('credit_note'),
  credgr: storeLoader('billing.credit_grant'),
};

const pricingPrice = (o: Record<string, unknown>) => (o.pricing as { price_details?: { price?: string } | null } | null)?.price_details?.price ?? null;

/** The expandable fields of the billing objects, as the official client knows them. */
export const BILLING_EXPAND: ExpandResolvers = {
  subscription: { discounts: {}, customer: {}, latest_invoice: {}, default_payment_method: { noop: true }, default_source: { noop: true }, items: {} },
  subscription_item: { price: {} },
  price: { product: {} },
  plan: { product: {} },
  invoice: { discounts: {}, customer: {}, subscription: {}, lines: {}, default_payment_method: { noop: true }, default_source: { noop: true } },
  line_item: { price: { id: pricingPrice }, subscription: {}, invoice: {} },
  invoiceitem: { customer: {}, invoice: {}, subscription: {}, price: { id: pricingPrice } },
  customer: { default_source: { noop: true } },
  discount: { customer: {}, promotion_code: {}, subscription: {}, invoice: {} },
  promotion_code: { customer: {} },
  credit_note: { customer: {}, invoice: {}, customer_balance_transaction: { noop: true } },
  'billing.credit_grant': { customer: {} },
  'billing.credit_balance_transaction': { credit_grant: {} },
};

/** expandObject with the billing resolvers and loaders. */
export function expandBilling<T>(state: StateStore, p: Principal, object: T, paths: string[], extra: string[] = []): Promise<T> {
  return expandObject(state, p, object, paths, BILLING_EXPAND, EXPAND_LOADERS, extra);
}

/** `expand[]` straight from a request's params. */
export function expandParam(params: Record<string, unknown>): string[] {
  return readExpand(new ParamReader(params));
}
