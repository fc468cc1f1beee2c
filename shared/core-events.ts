/**
 * v2 thin events (`v2.core.event`): meter lifecycle changes and the asynchronous validation reports of streamed
 * events. Kept in the state store for 30 days, readable through GET /v2/core/events, and delivered to the account's
 * event destinations (the delivery rows are written with the event: shared/event-destinations.ts).
 */
import type { StateStore } from './state-store';
import { newId } from './ids';
import { enqueueThinDeliveries } from './event-destinations';

export const CORE_EVENT_TYPE = 'v2.core.event';
export const CORE_EVENT_RETENTION_MS = 30 * 24 * 3600 * 1000;

export interface CoreEventObject {
  id: string;
  object: 'v2.core.event';
  type: string;
  created: string;
  livemode: boolean;
  context: null;
  reason: null;
  /** The object the event is about; a singleton (a customer's cash balance) has no id. */
  related_object?: { id?: string; type: string; url: string } | null;
  data?: Record<string, unknown>;
}

export function meterRelatedObject(meterId: string): { id: string; type: string; url: string } {
  return { id: meterId, type: 'billing.meter', url: `/v1/billing/meters/${meterId}` };
}

export function buildCoreEvent(
  livemode: boolean,
  type: string,
  nowMs: number,
  relatedObject: CoreEventObject['related_object'],
  data?: Record<string, unknown>,
): CoreEventObject {
  const ev: CoreEventObject = {
    id: newId('evt', livemode),
    object: 'v2.core.event',
    type,
    created: new Date(nowMs).toISOString(),
    livemode,
    context: null,
    reason: null,
  };
  if (relatedObject !== undefined) ev.related_object = relatedObject;
  if (data) ev.data = data;
  return ev;
}

/**
 * Stores the event and queues its deliveries to event destinations, atomically (in `store`'s transaction when it is
 * one). `onlyDestination` delivers to that destination alone (a ping).
 */
export async function recordCoreEvent(store: StateStore, account: string, ev: CoreEventObject, nowMs: number, onlyDestination?: string): Promise<void> {
  await store.transaction(async (tx) => {
    await tx.insertObject({
      account,
      type: CORE_EVENT_TYPE,
      id: ev.id,
      createdMs: nowMs,
      expiresMs: nowMs + CORE_EVENT_RETENTION_MS,
      data: ev,
    });
    await enqueueThinDeliveries(tx, account, ev.livemode, ev.id, ev.type, nowMs, onlyDestination);
  });
}

/**
 * The thin counterpart (`v1.<type>`) of a v1 event, for event destinations: stored and queued in `store` (the v1
 * event's transaction).
 */
export function recordThinEvent(
  store: StateStore,
  p: { account: string; livemode: boolean },
  type: string,
  related: CoreEventObject['related_object'],
  nowMs: number,
): Promise<void> {
  return recordCoreEvent(store, p.account, buildCoreEvent(p.livemode, type, nowMs, related), nowMs);
}
