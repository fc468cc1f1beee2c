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
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, NotFoundError } from '../../shared/errors';
import { readListParams } from '../meters';
import { listEndpoint, readCreatedRange } from './common';
import { EVENT_TYPE, eventTypeMatches, type EventObject } from './outbox';

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
