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
import { storeEvent } from './events';

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
): Promise<HttpResult> {
  const res = await listMatching<T>(s.state, p.account, type, page, filters, pred);
  return listResult(url, res.data.map(render), res.hasMore);
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
  throw new InvalidRequestError(`Invalid page: ${page.slice(0, 40)}. Use the next_page value of a previous search result.`, { param: 'page', code: 'parameter_invalid' });
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
  opts: { url: string; type: string; resource: string; fields: SearchFields<T>; where?: ListOptions['where']; include?: (doc: T) => boolean; render: (doc: T) => unknown },
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
  return randomBase62(24).toUpperCase().replace(/[^A-Z0-9]/g, '').slice(0, 8).padEnd(8, 'X');
}

export function nowSeconds(s: Services): { nowMs: number; now: number } {
  const nowMs = s.now();
  return { nowMs, now: Math.floor(nowMs / 1000) };
}
