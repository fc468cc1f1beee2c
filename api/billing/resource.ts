/**
 * One declaration per billing resource, from which its create / retrieve / update / list / delete routes are
 * registered (defineResource). What is the same for every resource lives here once: the account scoping (every read
 * and write names the caller's account), Stripe's 404 for a missing id, the declared parameters (unknown ones and
 * type errors rejected in one place, with ParamReader's Stripe messages), pagination and `created` filters, `expand[]`,
 * the transaction of each change and the v1 event it records. A resource file declares only what is its own: how a
 * new object is built, how an update applies, which filters a list takes, what must hold before a delete.
 *
 * Parameters are declared as a schema: name -> reader (`P.string({ maxLength: 5000 })`, `P.metadata()`, …). The
 * schema's names (plus `expand`) are the allowed parameters; every reader runs before the handler does, in the order
 * declared, and the handler gets the typed values (undefined when not sent).
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { ListOptions, StateStore } from '../../shared/state-store';
import { ParamReader, type ArrayOptions, type IntegerOptions, type Params, type PresenceOptions, type StringOptions } from '../../shared/wire/form';
import { InvalidRequestError, NotFoundError, UniqueViolation } from '../../shared/errors';
import { readListParams } from '../meters';
import { expandBilling, listEndpoint, nullableString, readCreatedRange, readExpand, readMetadata, recordBillingEvent, type Metadata } from './common';

// ---------------------------------------------------------------------------------------------------------------------
// Parameter schemas

/** Reads one parameter; undefined when it was not sent. */
export type ParamReaderFn<V> = (r: ParamReader, name: string) => V | undefined;
export type ParamSchema = Record<string, ParamReaderFn<unknown>>;
export type ParamValues<S extends ParamSchema> = { [K in keyof S]: S[K] extends ParamReaderFn<infer V> ? V | undefined : never };

/** The readers of a schema, each a ParamReader call with Stripe's checks and messages. */
export const P = {
  string:
    (opts: StringOptions = {}): ParamReaderFn<string> =>
    (r, n) =>
      r.string(n, opts),
  /** Nullable on update: '' (stripe-node's null) gives null. */
  nullableString:
    (maxLength: number): ParamReaderFn<string | null> =>
    (r, n) =>
      nullableString(r, n, maxLength),
  integer:
    (opts: IntegerOptions = {}): ParamReaderFn<number> =>
    (r, n) =>
      r.integer(n, opts),
  boolean:
    (opts: PresenceOptions = {}): ParamReaderFn<boolean> =>
    (r, n) =>
      r.boolean(n, opts),
  stringArray:
    (opts: ArrayOptions = {}): ParamReaderFn<string[]> =>
    (r, n) =>
      r.stringArray(n, opts),
  /** An array that `key=` empties. */
  clearableStringArray:
    (opts: ArrayOptions = {}): ParamReaderFn<string[]> =>
    (r, n) => {
      if (!r.has(n)) return undefined;
      return r.isUnset(n) ? [] : (r.stringArray(n, opts) ?? []);
    },
  /**
   * `metadata` with Stripe's rules (common.readMetadata): checked when read; the value applies the sent keys to the
   * object's current metadata (merge, '' removes a key, `metadata=` removes all).
   */
  metadata: (): ParamReaderFn<(current: Metadata) => Metadata> => (r) => {
    if (readMetadata(r) === undefined) return undefined;
    return (current) => readMetadata(r, current) ?? current;
  },
  /** `created` as an exact second or a gt/gte/lt/lte hash (a list filter). */
  created: (): ParamReaderFn<Pick<ListOptions, 'createdGteMs' | 'createdLtMs'>> => (r, n) => (r.has(n) ? readCreatedRange(r) : undefined),
  /** A reader written by the resource (nested hashes, lists of objects). */
  custom: <V>(read: (r: ParamReader, name: string) => V | undefined): ParamReaderFn<V> => read,
};

/**
 * Rejects parameters the schema does not name (Stripe's `Received unknown parameter`), then reads every declared one.
 * `also` names parameters read elsewhere (`expand` at the top level; none in a nested hash).
 */
export function readParams<S extends ParamSchema>(r: ParamReader, schema: S, also: readonly string[] = ['expand']): ParamValues<S> {
  r.assertNoUnknown([...Object.keys(schema), ...also]);
  const out = Object.create(null) as Record<string, unknown>;
  for (const [name, read] of Object.entries(schema)) out[name] = read(r, name);
  return out as ParamValues<S>;
}

/** The part of a schema that `names` lists (a nested hash that takes fewer of a resource's parameters). */
export function pickParams<S extends ParamSchema>(schema: S, names: readonly string[]): Partial<S> {
  const out: ParamSchema = {};
  for (const n of names) if (Object.hasOwn(schema, n)) out[n] = schema[n];
  return out as Partial<S>;
}

/** The schema's values that are set, as a store filter on the document's top-level fields of the same names. */
export function whereOf(values: Record<string, unknown>, names: readonly string[]): Record<string, string | number | boolean> {
  const where: Record<string, string | number | boolean> = {};
  for (const n of names) {
    const v = values[n];
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') where[n] = v;
  }
  return where;
}

// ---------------------------------------------------------------------------------------------------------------------
// Resources

/** What a resource's hooks get: the caller, the transaction the change runs in, and the time of the request. */
export interface ResourceContext {
  s: Services;
  p: Principal;
  tx: StateStore;
  nowMs: number;
  now: number;
  /** The request's params, for what a schema cannot say (a nested reader's parameter names). */
  r: ParamReader;
  /** The values of the path's own parameters before the id (`/v1/customers/:customer/tax_ids`: the customer). */
  parent: string[];
}

/** An event name, or the name for the object (a customer's tax ID records `customer.tax_id.created`). */
export type EventName<T> = string | ((doc: T) => string);

function eventName<T>(name: EventName<T>, doc: T): string {
  return typeof name === 'string' ? name : name(doc);
}

export interface ResourceDefinition<T extends { id: string }, C extends ParamSchema, U extends ParamSchema, L extends ParamSchema> {
  /** The collection's path, e.g. `/v1/products`; the object's is `<path>/:id`. May name a parent (`:customer`). */
  path: string;
  /** For a nested path: whether the object belongs to the parent named in it (otherwise it is a 404 there). */
  scope?: (doc: T, parent: string[]) => boolean;
  /** The document type in the state store, and the `object` of the deleted stub. */
  type: string;
  /** The name in Stripe's 404, "No such <noun>: '<id>'". */
  noun: string;
  /** Served form of a stored document (internal fields dropped); the document itself by default. */
  render?: (doc: T) => unknown;
  /** Apply `expand[]` (common.ts's billing resolvers) to what is served; otherwise `expand` is accepted and ignored. */
  expand?: boolean;
  /** The v1 events recorded with each change, e.g. `product.created`. */
  events: { created?: EventName<T>; updated?: EventName<T>; deleted?: EventName<T> };
  create?: {
    params: C;
    /** The new object, built in the transaction that inserts it. */
    build: (ctx: ResourceContext, values: ParamValues<C>) => Promise<T> | T;
    /** Message of the 400 when the object's id is taken (a chosen `id`). */
    idTaken?: string;
    /** The create's answer when it shows more than `render` (a webhook endpoint's secret). */
    answer?: (doc: T) => unknown;
    /** What follows the insert and its event in the same transaction (a credit grant's first balance transaction). */
    after?: (ctx: ResourceContext, doc: T) => Promise<void>;
  };
  update?: {
    params: U;
    /** Applies the values to the loaded object (in the transaction that saves it). */
    apply: (ctx: ResourceContext, doc: T, values: ParamValues<U>) => Promise<void> | void;
  };
  list?: {
    params: L;
    /** Store filters (`where`, `created` range) and a predicate for what the store cannot filter. */
    filter: (values: ParamValues<L>, ctx: { s: Services; p: Principal; parent: string[] }) => ListFilters<T> | Promise<ListFilters<T>>;
  };
  retrieve?: boolean;
  /** DELETE removes the document (a later retrieve is a 404, as in Stripe); `check` refuses it first, or changes what refers to it, in the same transaction. */
  remove?: { check?: (ctx: ResourceContext, doc: T) => Promise<void> | void };
}

export type ListFilters<T> = Pick<ListOptions, 'where' | 'createdGteMs' | 'createdLtMs'> & { pred?: (doc: T) => boolean };

/** Loads one object of the caller's account, or Stripe's 404 (400 `resource_missing` when it is named by a param). */
export async function loadResource<T>(
  store: StateStore,
  p: Principal,
  def: { type: string; noun: string },
  id: string,
  param = 'id',
  status: 400 | 404 = 404,
): Promise<T> {
  const found = await store.getObject<T>(p.account, def.type, id);
  if (!found) {
    const msg = `No such ${def.noun}: '${id}'`;
    if (status === 400) throw new InvalidRequestError(msg, { param, code: 'resource_missing' });
    throw new NotFoundError(msg, param);
  }
  return found.data;
}

/**
 * Inserts a new object and records its `created` event (in the caller's transaction). A taken id is Stripe's 400
 * `resource_already_exists` with `idTaken` as its message.
 */
export async function insertCreated<T extends { id: string }>(
  ctx: Pick<ResourceContext, 'p' | 'tx' | 'nowMs' | 'r'>,
  def: { type: string; render?: (doc: T) => unknown; events: { created?: EventName<T> } },
  doc: T,
  idTaken?: string,
): Promise<void> {
  try {
    await ctx.tx.insertObject({ account: ctx.p.account, type: def.type, id: doc.id, createdMs: ctx.nowMs, data: doc });
  } catch (err) {
    if (err instanceof UniqueViolation && idTaken) throw new InvalidRequestError(idTaken, { param: ctx.r.param('id'), code: 'resource_already_exists' });
    throw err;
  }
  if (def.events.created) await recordBillingEvent(ctx.tx, ctx.p, eventName(def.events.created, doc), def.render ? def.render(doc) : doc);
}

/** Registers the routes a definition declares. */
export function defineResource<T extends { id: string }, C extends ParamSchema, U extends ParamSchema, L extends ParamSchema>(
  http: HttpServer,
  s: Services,
  def: ResourceDefinition<T, C, U, L>,
): void {
  const render = def.render ?? ((d: T) => d);
  const serve = async (p: Principal, doc: T, params: Params, as: (doc: T) => unknown = render) => {
    const out = as(doc);
    return json(200, def.expand ? await expandBilling(s.state, p, out, readExpand(new ParamReader(params))) : out);
  };
  const inTransaction = <R>(p: Principal, r: ParamReader, parent: string[], fn: (ctx: ResourceContext) => Promise<R>): Promise<R> => {
    const nowMs = s.now();
    return s.state.transaction((tx) => fn({ s, p, tx, nowMs, now: Math.floor(nowMs / 1000), r, parent }));
  };
  const parents = (def.path.match(/\/:/g) ?? []).length;
  /** The path's parameters before the id, and the id (undefined on the collection's routes). */
  const pathOf = (params: string[]) => ({ parent: params.slice(0, parents), id: params[parents] });
  const load = async (store: StateStore, p: Principal, params: string[]) => {
    const { parent, id } = pathOf(params);
    const doc = await loadResource<T>(store, p, def, id);
    if (def.scope && !def.scope(doc, parent)) throw new NotFoundError(`No such ${def.noun}: '${id}'`, 'id');
    return doc;
  };
  const collectionUrl = (parent: string[]) => {
    let i = 0;
    return def.path.replace(/:[a-z_]+/g, () => parent[i++]);
  };
  const { create, update, list, remove } = def;

  if (create) {
    http.route(
      'POST',
      def.path,
      apiEndpoint(s, async (p, req, params) => {
        const r = new ParamReader(params);
        const values = readParams(r, create.params);
        const doc = await inTransaction(p, r, pathOf(req.params).parent, async (ctx) => {
          const doc = await create.build(ctx, values);
          await insertCreated(ctx, def, doc, create.idTaken);
          await create.after?.(ctx, doc);
          return doc;
        });
        return serve(p, doc, params, create.answer);
      }),
    );
  }

  if (list) {
    http.route(
      'GET',
      def.path,
      apiEndpoint(s, async (p, req, params) => {
        const r = new ParamReader(params);
        const values = readParams(r, list.params, ['limit', 'starting_after', 'ending_before', 'expand']);
        const page = readListParams(r);
        const { parent } = pathOf(req.params);
        const { pred, ...filters } = await list.filter(values, { s, p, parent });
        return listEndpoint<T>(s, p, collectionUrl(parent), def.type, page, filters, pred, render, def.expand ? readExpand(r) : []);
      }),
    );
  }

  if (def.retrieve !== false) {
    http.route(
      'GET',
      `${def.path}/:id`,
      apiEndpoint(s, async (p, req, params) => {
        new ParamReader(params).assertNoUnknown(['expand']);
        return serve(p, await load(s.state, p, req.params), params);
      }),
    );
  }

  if (update) {
    http.route(
      'POST',
      `${def.path}/:id`,
      apiEndpoint(s, async (p, req, params) => {
        const r = new ParamReader(params);
        const values = readParams(r, update.params);
        const doc = await inTransaction(p, r, pathOf(req.params).parent, async (ctx) => {
          const doc = await load(ctx.tx, p, req.params);
          const before = structuredClone(doc);
          await update.apply(ctx, doc, values);
          await ctx.tx.updateObject(p.account, def.type, doc.id, doc);
          if (def.events.updated)
            await recordBillingEvent(ctx.tx, p, eventName(def.events.updated, doc), render(doc), render(before) as Record<string, unknown>);
          return doc;
        });
        return serve(p, doc, params);
      }),
    );
  }

  if (remove) {
    http.route(
      'DELETE',
      `${def.path}/:id`,
      apiEndpoint(s, async (p, req, params) => {
        const r = new ParamReader(params);
        r.assertNoUnknown(['expand']);
        const id = await inTransaction(p, r, pathOf(req.params).parent, async (ctx) => {
          const doc = await load(ctx.tx, p, req.params);
          await remove.check?.(ctx, doc);
          await ctx.tx.deleteObject(p.account, def.type, doc.id);
          if (def.events.deleted) await recordBillingEvent(ctx.tx, p, eventName(def.events.deleted, doc), render(doc));
          return doc.id;
        });
        return json(200, { id, object: def.type, deleted: true });
      }),
    );
  }
}
