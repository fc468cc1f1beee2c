/**
 * v1 events: the snapshot `event` objects every billing state change records (through recordBillingEvent in
 * common.ts, inside the change's own transaction), kept 30 days, listed and retrieved as Stripe does.
 *
 * Stored as type `event` with a 30-day expiry (the store hides and prunes expired objects). `api_version` is the
 * version the snapshot is rendered in (the server's current version: objects have one shape here). `request` is
 * `{id: null, idempotency_key: null}`: the hook is not handed the HTTP request, so events look like Stripe's
 * automatic (non-API) events; threading the request through is a follow-up.
 */
import type { HttpServer } from '../../shared/http/server';
import { json, CURRENT_API_VERSION } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import { listEndpoint, readCreatedRange } from './common';
import { enqueueDeliveries } from './webhooks';

export const EVENT_TYPE = 'event';
export const EVENT_RETENTION_MS = 30 * 24 * 3600 * 1000;

export interface EventObject {
  id: string;
  object: 'event';
  api_version: string | null;
  created: number;
  data: { object: unknown; previous_attributes?: Record<string, unknown> };
  livemode: boolean;
  pending_webhooks: number;
  request: { id: string | null; idempotency_key: string | null };
  type: string;
}

function isPlain(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * Stripe's `previous_attributes`: the old values of what changed. Hashes (metadata, address, …) are compared key by
 * key and only their changed keys appear, a key that did not exist before as null. Only the top-level keys present in
 * `before` are considered, so callers may pass either the whole previous object or just the changed attributes.
 */
export function previousAttributes(before: Record<string, unknown>, after: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(before)) {
    const b = before[k];
    const a = after[k];
    if (same(a, b)) continue;
    if (isPlain(a) && isPlain(b)) out[k] = nestedDiff(b, a);
    else out[k] = b === undefined ? null : b;
  }
  return out;
}

function nestedDiff(before: Record<string, unknown>, after: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const b = before[k];
    const a = after[k];
    if (same(a, b)) continue;
    if (isPlain(a) && isPlain(b)) out[k] = nestedDiff(b, a);
    else out[k] = b === undefined ? null : b;
  }
  return out;
}

/**
 * Builds and stores the event in `tx` (the caller's transaction), and queues its webhook deliveries in the same
 * transaction. An update whose diff is empty records nothing (Stripe sends no `*.updated` event for a no-op).
 */
export async function storeEvent(
  tx: StateStore,
  p: Principal,
  type: string,
  object: unknown,
  previous?: Record<string, unknown>,
): Promise<EventObject | null> {
  const snapshot = structuredClone(object);
  const data: EventObject['data'] = { object: snapshot };
  if (previous !== undefined && isPlain(snapshot)) {
    const prev = previousAttributes(previous, snapshot);
    if (Object.keys(prev).length === 0) return null;
    data.previous_attributes = prev;
  }
  const nowMs = Date.now();
  const ev: EventObject = {
    id: newId('evt', p.livemode),
    object: 'event',
    api_version: CURRENT_API_VERSION,
    created: Math.floor(nowMs / 1000),
    data,
    livemode: p.livemode,
    pending_webhooks: 0,
    request: { id: null, idempotency_key: null },
    type,
  };
  ev.pending_webhooks = await enqueueDeliveries(tx, p, ev, nowMs);
  await tx.insertObject({ account: p.account, type: EVENT_TYPE, id: ev.id, createdMs: nowMs, expiresMs: nowMs + EVENT_RETENTION_MS, data: ev });
  return ev;
}

/** `customer.*` style wildcards as in Stripe's `type` filter. */
export function eventTypeMatches(pattern: string, type: string): boolean {
  if (pattern === '*') return true;
  if (pattern.endsWith('.*')) return type.startsWith(pattern.slice(0, -1));
  if (pattern.includes('*')) {
    const re = new RegExp('^' + pattern.split('*').map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^]*') + '$');
    return re.test(type);
  }
  return pattern === type;
}

export function registerEventRoutes(http: HttpServer, s: Services): void {
  http.route(
    'GET',
    '/v1/events',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'type', 'types', 'created', 'delivery_success', 'expand']);
      const page = readListParams(r);
      const type = r.string('type', { maxLength: 5000 });
      const types = r.stringArray('types', { maxItems: 20 });
      if (type !== undefined && types !== undefined) {
        throw new InvalidParamError('types', 'You may only specify one of these parameters: type, types.');
      }
      const delivery = r.boolean('delivery_success');
      const filters = { ...readCreatedRange(r) };
      let pred: ((e: EventObject) => boolean) | undefined;
      let where: Record<string, string> | undefined;
      if (type !== undefined) {
        if (type.includes('*')) pred = (e) => eventTypeMatches(type, e.type);
        else where = { type };
      } else if (types !== undefined) {
        pred = (e) => types.some((t) => eventTypeMatches(t, e.type));
      }
      if (delivery !== undefined) {
        // Delivery success is not tracked per event beyond pending_webhooks: an event without outstanding deliveries
        // counts as delivered.
        const inner = pred;
        pred = (e) => (inner ? inner(e) : true) && (e.pending_webhooks === 0) === delivery;
      }
      return listEndpoint<EventObject>(s, p, '/v1/events', EVENT_TYPE, page, { ...filters, where }, pred, (e) => e);
    }),
  );

  http.route(
    'GET',
    '/v1/events/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const id = req.params[0];
      const found = await s.state.getObject<EventObject>(p.account, EVENT_TYPE, id);
      if (!found) throw new NotFoundError(`No such event: '${id}'`);
      return json(200, found.data);
    }),
  );
}
