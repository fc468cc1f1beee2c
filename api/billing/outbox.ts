/**
 * The outbox of billing state changes: recording a change writes its v1 `event` and one `webhook_delivery` row per
 * matching endpoint into the change's own transaction, so an event and its deliveries exist exactly when the change
 * does. Writing here is a one-way step: routes write (through common.ts), the delivery worker (webhooks.ts) reads the
 * rows and is told of new ones through a listener; this module imports neither.
 */
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { CURRENT_API_VERSION } from '../../shared/versioning/releases';
import { readAccountVersion } from '../../shared/versioning/account-versions';
import { isPlain, previousAttributes } from '../../shared/versioning/previous-attributes';

export { previousAttributes };
import { newId } from '../../shared/ids';
import { enqueueSnapshotDeliveries, type DeliveryDoc } from '../../shared/event-destinations';

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

/**
 * Builds and stores the event in `tx` (the caller's transaction), and queues its webhook deliveries in the same
 * transaction. An update whose diff is empty records nothing (Stripe sends no `*.updated` event for a no-op).
 */
export async function storeEvent(tx: StateStore, p: Principal, type: string, object: unknown, previous?: Record<string, unknown>): Promise<EventObject | null> {
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
    // The account's default version when the event happens: what its data is rendered in (webhook endpoints pinned
    // to a version get their own rendering at delivery).
    api_version: (await readAccountVersion(tx, p.account)) ?? CURRENT_API_VERSION,
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
    const re = new RegExp(
      '^' +
        pattern
          .split('*')
          .map((s) => s.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
          .join('[^]*') +
        '$',
    );
    return re.test(type);
  }
  return pattern === type;
}

export const WEBHOOK_ENDPOINT_TYPE = 'webhook_endpoint';
export const WEBHOOK_DELIVERY_TYPE = 'webhook_delivery';

export interface StoredEndpoint {
  id: string;
  object: 'webhook_endpoint';
  api_version: string | null;
  application: null;
  created: number;
  description: string | null;
  enabled_events: string[];
  livemode: boolean;
  metadata: Record<string, string>;
  secret: string;
  status: 'enabled' | 'disabled';
  url: string;
}

export type { DeliveryDoc } from '../../shared/event-destinations';

const deliveryListeners = new Set<() => void>();

/** Called after deliveries are queued (the transaction may commit a little later: the worker also polls). */
export function onDeliveriesQueued(listener: () => void): () => void {
  deliveryListeners.add(listener);
  return () => deliveryListeners.delete(listener);
}

/** Inside the event's transaction: queues one delivery per matching endpoint and snapshot event destination, returns the count. */
async function enqueueDeliveries(tx: StateStore, p: Principal, ev: EventObject, nowMs: number): Promise<number> {
  let n = 0;
  let cursor: string | undefined;
  for (;;) {
    const page = await tx.listObjects<StoredEndpoint>(p.account, WEBHOOK_ENDPOINT_TYPE, { limit: 100, startingAfter: cursor, where: { status: 'enabled' } });
    for (const o of page.data) {
      const e = o.data;
      if (!e.enabled_events.some((pat) => eventTypeMatches(pat, ev.type))) continue;
      const d: DeliveryDoc = { id: newId('whdel', p.livemode), endpoint: e.id, event: ev.id, attempts: 0, next_attempt_ms: nowMs, last_error: null };
      await tx.insertObject({ account: p.account, type: WEBHOOK_DELIVERY_TYPE, id: d.id, createdMs: nowMs, data: d });
      n++;
    }
    if (!page.hasMore || page.data.length === 0) break;
    cursor = page.data[page.data.length - 1].id;
  }
  if (n > 0) for (const listener of deliveryListeners) listener();
  return n + (await enqueueSnapshotDeliveries(tx, p.account, p.livemode, ev.id, ev.type, nowMs, eventTypeMatches));
}
