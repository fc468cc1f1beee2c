/**
 * The outbox side of v2 event destinations: recording a thin event (shared/core-events.ts) or a v1 snapshot event
 * (api/billing/outbox.ts) writes, in the same transaction, one delivery row per enabled destination of the account
 * with that payload that subscribes to the event's type, so a delivery exists exactly when its event does. The delivery
 * workers (api/event-destinations.ts, on the machinery of api/billing/webhooks.ts) read the rows; they are told of new
 * ones through a listener (and poll, for rows written by other processes such as the aggregators). Here because the
 * aggregators record thin events too and never import api/.
 */
import type { StateStore } from './state-store';
import { newId } from './ids';

export const EVENT_DESTINATION_TYPE = 'v2.core.event_destination';
export const THIN_DELIVERY_TYPE = 'event_destination_delivery';
export const SNAPSHOT_DELIVERY_TYPE = 'event_destination_snapshot_delivery';

/** The stored destination: the served object plus its secret (never served after creation). */
export interface StoredDestination {
  id: string;
  object: 'v2.core.event_destination';
  created: string;
  description: string;
  enabled_events: string[];
  event_payload: 'thin' | 'snapshot';
  events_from: string[];
  livemode: boolean;
  metadata: Record<string, string>;
  name: string;
  snapshot_api_version: string | null;
  status: 'enabled' | 'disabled';
  status_details: { disabled: { reason: string } } | null;
  type: 'webhook_endpoint';
  updated: string;
  webhook_endpoint: { url: string };
  secret: string;
}

/**
 * A persisted delivery of one event to one target: a v1 webhook endpoint (api/billing/outbox.ts) or a v2 event
 * destination (`endpoint` names the destination); one dispatcher sends both.
 */
export interface DeliveryDoc {
  id: string;
  endpoint: string;
  event: string;
  attempts: number;
  next_attempt_ms: number;
  last_error: string | null;
  /** A dispatcher owns the delivery until then (several API processes share the store in distributed mode). */
  lease_until_ms?: number;
}

/** Thin destinations match event types exactly; `*` matches every type. */
export function destinationWants(d: Pick<StoredDestination, 'enabled_events' | 'event_payload' | 'status'>, type: string): boolean {
  return d.status === 'enabled' && d.event_payload === 'thin' && d.enabled_events.some((e) => e === '*' || e === type);
}

const listeners = new Set<() => void>();

/** Called after destination deliveries are queued in this process (the transaction may commit a little later). */
export function onDestinationDeliveriesQueued(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/**
 * Inside the event's transaction: one delivery per enabled destination of `account` that `wants` the event (or only
 * to `onlyDestination`, for a ping), as rows of `deliveryType`. Returns the count.
 */
async function enqueue(
  tx: StateStore,
  account: string,
  livemode: boolean,
  eventId: string,
  deliveryType: string,
  nowMs: number,
  wants: (d: StoredDestination) => boolean,
): Promise<number> {
  let n = 0;
  let cursor: string | undefined;
  for (;;) {
    const page = await tx.listObjects<StoredDestination>(account, EVENT_DESTINATION_TYPE, { limit: 100, startingAfter: cursor, where: { status: 'enabled' } });
    for (const o of page.data) {
      if (!wants(o.data)) continue;
      const d: DeliveryDoc = { id: newId('eddel', livemode), endpoint: o.id, event: eventId, attempts: 0, next_attempt_ms: nowMs, last_error: null };
      await tx.insertObject({ account, type: deliveryType, id: d.id, createdMs: nowMs, data: d });
      n++;
    }
    if (!page.hasMore || page.data.length === 0) break;
    cursor = page.data[page.data.length - 1].id;
  }
  if (n > 0) for (const listener of listeners) listener();
  return n;
}

/** A thin event's deliveries: every subscribed thin destination, or `onlyDestination` alone (a ping). */
export function enqueueThinDeliveries(
  tx: StateStore,
  account: string,
  livemode: boolean,
  eventId: string,
  type: string,
  nowMs: number,
  onlyDestination?: string,
): Promise<number> {
  const wants = onlyDestination !== undefined ? (d: StoredDestination) => d.id === onlyDestination : (d: StoredDestination) => destinationWants(d, type);
  return enqueue(tx, account, livemode, eventId, THIN_DELIVERY_TYPE, nowMs, wants);
}

/** A v1 snapshot event's deliveries to snapshot destinations; `matches` is the v1 `enabled_events` rule (wildcards). */
export function enqueueSnapshotDeliveries(
  tx: StateStore,
  account: string,
  livemode: boolean,
  eventId: string,
  type: string,
  nowMs: number,
  matches: (pattern: string, type: string) => boolean,
): Promise<number> {
  const wants = (d: StoredDestination) => d.event_payload === 'snapshot' && d.enabled_events.some((e) => matches(e, type));
  return enqueue(tx, account, livemode, eventId, SNAPSHOT_DELIVERY_TYPE, nowMs, wants);
}
