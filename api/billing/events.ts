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
import type { Services } from '../../shared/services';
import { InvalidParamError } from '../../shared/errors';
import { defineResource, P } from './resource';
import { EVENT_TYPE, eventTypeMatches, type EventObject } from './outbox';

const LIST_PARAMS = {
  type: P.string({ maxLength: 5000 }),
  types: P.stringArray({ maxItems: 20 }),
  created: P.created(),
  delivery_success: P.boolean(),
};

/** Read-only: events are recorded by the changes themselves. */
export function registerEventRoutes(http: HttpServer, s: Services): void {
  defineResource(http, s, {
    path: '/v1/events',
    type: EVENT_TYPE,
    noun: 'event',
    events: {},
    list: {
      params: LIST_PARAMS,
      filter: ({ type, types, created, delivery_success: delivery }) => {
        if (type !== undefined && types !== undefined) {
          throw new InvalidParamError('types', 'You may only specify one of these parameters: type, types.');
        }
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
        return { ...created, where, pred };
      },
    },
  });
}
