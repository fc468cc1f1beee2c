/**
 * v2 event destinations (`/v2/core/event_destinations`): webhook endpoints that receive thin events
 * (`v2.core.event`: meter lifecycle, meter error reports, billing alerts, pings), and their delivery worker.
 *
 * Deliveries are the outbox rows written with each thin event (shared/event-destinations.ts) and are sent by the v1
 * webhooks' dispatcher (api/billing/webhooks.ts) through a channel of their own: the same ordering per destination,
 * leases across processes, `Stripe-Signature: t=…,v1=…` signature with the destination's `whsec_` secret (what the
 * SDK's `parseEventNotification` verifies), backoff and WEBHOOK_* settings. The body is the thin event notification:
 * the event without its `data` (which receivers fetch with GET /v2/core/events/:id).
 *
 * Snapshot destinations (`event_payload: snapshot`) receive the v1 events (queued by api/billing/outbox.ts with the
 * webhook endpoints' deliveries, counted in `pending_webhooks`), with the body a v1 webhook endpoint gets.
 *
 * Where the reference is silent or we differ (README): only `type: webhook_endpoint`; `events_from` is `@self`
 * (accounts are walls, there are no connected accounts); `webhook_endpoint.signing_secret` is served only by create
 * with `include`, `webhook_endpoint.url` only with `include` (as the current API); a ping of a disabled destination is
 * recorded and not delivered.
 */
import type { HttpServer } from '../shared/http/server';
import { json } from '../shared/http/server';
import { apiEndpoint } from '../shared/http/endpoints';
import type { Services } from '../shared/services';
import type { Principal } from '../shared/http/auth';
import type { StateStore } from '../shared/state-store';
import { ParamReader, type Params } from '../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError } from '../shared/errors';
import { newId, randomBase62 } from '../shared/ids';
import { buildCoreEvent, CORE_EVENT_TYPE, recordCoreEvent, type CoreEventObject } from '../shared/core-events';
import {
  EVENT_DESTINATION_TYPE,
  SNAPSHOT_DELIVERY_TYPE,
  THIN_DELIVERY_TYPE,
  onDestinationDeliveriesQueued,
  type StoredDestination,
} from '../shared/event-destinations';
import type { ApiVersioning } from '../shared/versioning/versioning';
import { isKnownVersion } from '../shared/versioning/releases';
import { EVENT_TYPE, type EventObject } from './billing/outbox';
import { METADATA_LIMITS } from './billing/common';
import { readUrl, renderEventBody, settleEventDelivery, WebhookDispatcher, type DeliveryChannel } from './billing/webhooks';

const BASE = '/v2/core/event_destinations';
const INCLUDABLE = ['webhook_endpoint.url', 'webhook_endpoint.signing_secret'];
/** Thin types are named exactly (or `*`); snapshot (v1) types may end in `.*`, as a v1 webhook endpoint's. */
const THIN_TYPE_PATTERN = /^(\*|[a-z0-9_]+(\.[a-z0-9_]+)+)$/;
const SNAPSHOT_TYPE_PATTERN = /^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$/;

/** The thin event notification as delivered: the event without `data`. */
export function thinNotification(ev: CoreEventObject): string {
  const { data: _data, ...rest } = ev;
  return JSON.stringify(rest, null, 2);
}

function eventTypeOf(ev: unknown): string {
  return String((ev as { type?: unknown }).type ?? '');
}

/** A channel to event destinations: rows of `deliveryType` name an event of `eventType`, sent as `body(event)`. */
function destinationChannel<E>(
  deliveryType: string,
  eventType: string,
  body: (ev: E, dest: StoredDestination, account: string) => Promise<string>,
  settle: DeliveryChannel['settle'],
): DeliveryChannel {
  return {
    deliveryType,
    async prepare(store, account, d) {
      const [dest, ev] = await Promise.all([
        store.getObject<StoredDestination>(account, EVENT_DESTINATION_TYPE, d.endpoint),
        store.getObject<E>(account, eventType, d.event),
      ]);
      if (dest?.data.status !== 'enabled' || !ev) return null;
      return {
        url: dest.data.webhook_endpoint.url,
        secret: dest.data.secret,
        payload: await body(ev.data, dest.data, account),
        eventType: eventTypeOf(ev.data),
      };
    },
    settle,
    subscribe: onDestinationDeliveriesQueued,
  };
}

/** Thin events (they keep no delivery counters), and v1 events to snapshot destinations as a v1 webhook gets them. */
function channels(versioning: ApiVersioning): DeliveryChannel[] {
  const thin = destinationChannel<CoreEventObject>(
    THIN_DELIVERY_TYPE,
    CORE_EVENT_TYPE,
    async (ev) => thinNotification(ev),
    async () => {},
  );
  const snapshot = destinationChannel<EventObject>(
    SNAPSHOT_DELIVERY_TYPE,
    EVENT_TYPE,
    (ev, dest, account) => renderEventBody(versioning, account, ev, dest.snapshot_api_version),
    settleEventDelivery,
  );
  return [thin, snapshot];
}

function render(d: StoredDestination, include: string[]): Record<string, unknown> {
  const { secret, webhook_endpoint, snapshot_api_version, ...rest } = d;
  const endpoint: Record<string, unknown> = {};
  if (include.includes('webhook_endpoint.signing_secret')) endpoint.signing_secret = secret;
  if (include.includes('webhook_endpoint.url')) endpoint.url = webhook_endpoint.url;
  const out: Record<string, unknown> = { ...rest, webhook_endpoint: endpoint };
  if (snapshot_api_version !== null) out.snapshot_api_version = snapshot_api_version;
  return out;
}

function readInclude(r: ParamReader, allowed: string[]): string[] {
  const include = r.stringArray('include', { maxItems: 10 }) ?? [];
  for (let i = 0; i < include.length; i++) {
    if (!allowed.includes(include[i])) throw new InvalidParamError(`include[${i}]`, `Invalid include: must be one of ${allowed.join(', ')}.`);
  }
  return include;
}

function readEnabledEvents(r: ParamReader, required: boolean, payload: StoredDestination['event_payload']): string[] | undefined {
  const events = r.stringArray('enabled_events', { required, maxItems: 500 });
  if (events === undefined) return undefined;
  if (events.length === 0) throw new InvalidParamError('enabled_events', 'enabled_events must contain at least one event type.');
  const pattern = payload === 'thin' ? THIN_TYPE_PATTERN : SNAPSHOT_TYPE_PATTERN;
  events.forEach((e, i) => {
    if (!pattern.test(e)) throw new InvalidParamError(`enabled_events[${i}]`, `Invalid event type: ${e.slice(0, 100)}.`);
  });
  return [...new Set(events)];
}

/** v2 metadata: a map of strings; on update a key sent as null is removed. */
function readMetadata(r: ParamReader, current: Record<string, string>): Record<string, string> | undefined {
  const raw = r.raw('metadata');
  if (raw === undefined) return undefined;
  if (typeof raw !== 'object' || Array.isArray(raw))
    throw new InvalidParamError('metadata', 'Invalid metadata: must be an object.', 'parameter_invalid_object');
  const sent = raw as Record<string, unknown>;
  const out: Record<string, string> = Object.assign(Object.create(null) as Record<string, string>, current);
  for (const k of Object.keys(sent)) {
    const v = sent[k];
    if (k.length === 0 || k.length > METADATA_LIMITS.maxKeyLength) {
      throw new InvalidParamError(`metadata[${k}]`, `Metadata keys must be 1 to ${METADATA_LIMITS.maxKeyLength} characters.`);
    }
    if (v === null) delete out[k];
    else if (typeof v !== 'string' || v.length > METADATA_LIMITS.maxValueLength) {
      throw new InvalidParamError(`metadata[${k}]`, `Metadata values must be strings of at most ${METADATA_LIMITS.maxValueLength} characters.`);
    } else out[k] = v;
  }
  if (Object.keys(out).length > METADATA_LIMITS.maxKeys) {
    throw new InvalidParamError('metadata', `Metadata can have up to ${METADATA_LIMITS.maxKeys} keys.`);
  }
  return { ...out };
}

async function load(store: StateStore, p: Principal, id: string): Promise<StoredDestination> {
  const found = await store.getObject<StoredDestination>(p.account, EVENT_DESTINATION_TYPE, id);
  if (!found) throw new NotFoundError(`No such event destination: '${id}'`);
  return found.data;
}

async function create(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown([
    'name',
    'type',
    'event_payload',
    'enabled_events',
    'description',
    'events_from',
    'include',
    'metadata',
    'snapshot_api_version',
    'webhook_endpoint',
    'amazon_eventbridge',
    'azure_event_grid',
  ]);
  const name = r.string('name', { required: true, maxLength: 100 });
  const type = r.string('type', { required: true, maxLength: 100 });
  if (type !== 'webhook_endpoint') {
    throw new InvalidParamError('type', `Unsupported event destination type: ${type.slice(0, 100)}. Only webhook_endpoint destinations are available.`);
  }
  const payload = r.string('event_payload', { required: true, enum: ['thin', 'snapshot'] }) as StoredDestination['event_payload'];
  const version = r.string('snapshot_api_version', { maxLength: 100 });
  if (version !== undefined && payload !== 'snapshot') {
    throw new InvalidParamError('snapshot_api_version', 'snapshot_api_version is only for snapshot event destinations.');
  }
  if (version !== undefined && !isKnownVersion(version)) throw new InvalidParamError('snapshot_api_version', `Unknown API version: ${version.slice(0, 100)}.`);
  const enabled = readEnabledEvents(r, true, payload)!;
  const from = r.stringArray('events_from', { maxItems: 4 }) ?? ['@self'];
  from.forEach((f, i) => {
    if (f !== '@self') throw new InvalidParamError(`events_from[${i}]`, `Unsupported events_from: ${f.slice(0, 100)}. Only @self is available.`);
  });
  const url = readUrl(r.object('webhook_endpoint', { required: true }), true, p.livemode)!;
  const include = readInclude(r, INCLUDABLE);
  const nowMs = s.now();
  const at = new Date(nowMs).toISOString();
  const d: StoredDestination = {
    id: newId('ed', p.livemode),
    object: 'v2.core.event_destination',
    created: at,
    description: r.string('description', { maxLength: 5000, allowEmpty: true }) ?? '',
    enabled_events: enabled,
    event_payload: payload,
    events_from: [...new Set(from)],
    livemode: p.livemode,
    metadata: readMetadata(r, {}) ?? {},
    name,
    snapshot_api_version: version ?? null,
    status: 'enabled',
    status_details: null,
    type: 'webhook_endpoint',
    updated: at,
    webhook_endpoint: { url },
    secret: 'whsec_' + randomBase62(32),
  };
  await s.state.insertObject({ account: p.account, type: EVENT_DESTINATION_TYPE, id: d.id, createdMs: nowMs, data: d });
  return json(200, render(d, include));
}

/** Applies `change` to the destination in one transaction and serves the result. */
async function change(s: Services, p: Principal, id: string, include: string[], fn: (d: StoredDestination) => void) {
  const d = await s.state.transaction(async (tx) => {
    const d = await load(tx, p, id);
    fn(d);
    d.updated = new Date(s.now()).toISOString();
    await tx.updateObject(p.account, EVENT_DESTINATION_TYPE, d.id, d);
    return d;
  });
  return json(200, render(d, include));
}

interface ListPage {
  limit: number;
  include: string[];
  after?: string;
}

function readListPage(params: Params): ListPage {
  const r = new ParamReader(params);
  r.assertNoUnknown(['limit', 'include', 'page']);
  const page = r.string('page', { maxLength: 2000 });
  if (page !== undefined) {
    try {
      const q = JSON.parse(Buffer.from(page, 'base64url').toString('utf8')) as ListPage;
      if (Number.isInteger(q.limit) && Array.isArray(q.include)) return q;
    } catch {
      /* answered below */
    }
    throw new InvalidRequestError('Invalid page token.', { param: 'page', code: 'parameter_invalid' });
  }
  return { limit: r.integer('limit', { min: 1, max: 100 }) ?? 20, include: readInclude(r, ['webhook_endpoint.url']) };
}

export function registerEventDestinationRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    BASE,
    apiEndpoint(s, (p, _req, params) => create(s, p, params)),
  );

  http.route(
    'GET',
    BASE,
    apiEndpoint(s, async (p, _req, params) => {
      const q = readListPage(params);
      const res = await s.state.listObjects<StoredDestination>(p.account, EVENT_DESTINATION_TYPE, { limit: q.limit, startingAfter: q.after });
      const data = res.data.map((o) => render(o.data, q.include));
      const last = res.data[res.data.length - 1];
      const next = res.hasMore && last ? `${BASE}?page=${Buffer.from(JSON.stringify({ ...q, after: last.id })).toString('base64url')}` : null;
      return json(200, { data, next_page_url: next, previous_page_url: null });
    }),
  );

  http.route(
    'GET',
    `${BASE}/:id`,
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['include']);
      return json(200, render(await load(s.state, p, req.params[0]), readInclude(r, ['webhook_endpoint.url'])));
    }),
  );

  http.route(
    'POST',
    `${BASE}/:id`,
    apiEndpoint(s, (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['description', 'enabled_events', 'include', 'metadata', 'name', 'webhook_endpoint']);
      const include = readInclude(r, ['webhook_endpoint.url']);
      const name = r.string('name', { maxLength: 100 });
      const description = r.string('description', { maxLength: 5000, allowEmpty: true });
      const endpoint = r.object('webhook_endpoint');
      const url = endpoint ? readUrl(endpoint, true, p.livemode) : undefined;
      return change(s, p, req.params[0], include, (d) => {
        const enabled = readEnabledEvents(r, false, d.event_payload);
        if (name !== undefined) d.name = name;
        if (description !== undefined) d.description = description;
        if (enabled !== undefined) d.enabled_events = enabled;
        if (url !== undefined) d.webhook_endpoint = { url };
        const metadata = readMetadata(r, d.metadata);
        if (metadata !== undefined) d.metadata = metadata;
      });
    }),
  );

  http.route(
    'DELETE',
    `${BASE}/:id`,
    apiEndpoint(s, async (p, req) => {
      const d = await load(s.state, p, req.params[0]);
      // Deliveries still queued for it are dropped by the worker when it finds the destination gone.
      await s.state.deleteObject(p.account, EVENT_DESTINATION_TYPE, d.id);
      return json(200, { id: d.id, object: 'v2.core.event_destination', deleted: true });
    }),
  );

  for (const [action, status] of [
    ['enable', 'enabled'],
    ['disable', 'disabled'],
  ] as const) {
    http.route(
      'POST',
      `${BASE}/:id/${action}`,
      apiEndpoint(s, (p, req, params) => {
        new ParamReader(params).assertNoUnknown([]);
        return change(s, p, req.params[0], [], (d) => {
          d.status = status;
          d.status_details = status === 'disabled' ? { disabled: { reason: 'user' } } : null;
        });
      }),
    );
  }

  http.route(
    'POST',
    `${BASE}/:id/ping`,
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown([]);
      const d = await load(s.state, p, req.params[0]);
      const nowMs = s.now();
      const ev = buildCoreEvent(p.livemode, 'v2.core.event_destination.ping', nowMs, { id: d.id, type: 'v2.core.event_destination', url: `${BASE}/${d.id}` });
      await recordCoreEvent(s.state, p.account, ev, nowMs, d.id);
      return json(200, { ...ev, data: null });
    }),
  );

  for (const d of activeDispatchers) d.stop();
  activeDispatchers = channels(s.versioning).map((channel) => new WebhookDispatcher(s.state, s.config, channel));
  for (const d of activeDispatchers) d.start();
}

let activeDispatchers: WebhookDispatcher[] = [];
