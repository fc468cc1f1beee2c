/**
 * v1 meter endpoints: create, list, retrieve, update (display_name only), deactivate, reactivate.
 */
import type { HttpServer } from '../shared/http/server';
import { json } from '../shared/http/server';
import { apiEndpoint, listResult } from '../shared/http/endpoints';
import type { Services } from '../shared/services';
import type { Principal } from '../shared/http/auth';
import { ParamReader, type Params } from '../shared/wire/form';
import { InvalidRequestError, NotFoundError, UniqueViolation } from '../shared/errors';
import { METER_TYPE, type Formula, type MeterObject, type TimeWindow } from '../shared/meters';
import { newId } from '../shared/ids';
import { buildCoreEvent, meterRelatedObject, recordCoreEvent } from '../shared/core-events';

const FORMULAS = ['count', 'last', 'sum'] as const;

export async function loadMeter(s: Services, principal: Principal, id: string): Promise<MeterObject> {
  const found = await s.state.getObject<MeterObject>(principal.account, METER_TYPE, id);
  if (!found) throw new NotFoundError(`No such billing meter: '${id}'`);
  return found.data;
}

export function readListParams(r: ParamReader): { limit: number; startingAfter?: string; endingBefore?: string } {
  const limit = r.integer('limit', { min: 1, max: 100 }) ?? 10;
  const startingAfter = r.string('starting_after', { maxLength: 5000 }) || undefined;
  const endingBefore = r.string('ending_before', { maxLength: 5000 }) || undefined;
  if (startingAfter && endingBefore) {
    throw new InvalidRequestError('You may only specify one of these parameters: ending_before, starting_after.', { param: 'ending_before' });
  }
  return { limit, startingAfter, endingBefore };
}

async function createMeter(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown(['customer_mapping', 'default_aggregation', 'display_name', 'event_name', 'event_time_window', 'value_settings', 'expand']);
  const aggregation = r.object('default_aggregation', { required: true })!;
  aggregation.assertNoUnknown(['formula']);
  const formula = aggregation.string('formula', { required: true, enum: FORMULAS }) as Formula;
  const displayName = r.string('display_name', { required: true, maxLength: 250 })!;
  const eventName = r.string('event_name', { required: true, maxLength: 100 })!;
  let customerKey = 'stripe_customer_id';
  const mapping = r.object('customer_mapping');
  if (mapping) {
    mapping.assertNoUnknown(['event_payload_key', 'type']);
    customerKey = mapping.string('event_payload_key', { required: true, maxLength: 100 })!;
    mapping.string('type', { required: true, enum: ['by_id'] });
  }
  let valueKey = 'value';
  const valueSettings = r.object('value_settings');
  if (valueSettings) {
    valueSettings.assertNoUnknown(['event_payload_key']);
    valueKey = valueSettings.string('event_payload_key', { required: true, maxLength: 100 })!;
  }
  const window = (r.string('event_time_window', { enum: ['day', 'hour'], allowEmpty: true }) || null) as TimeWindow | null;

  const nowMs = s.now();
  const now = Math.floor(nowMs / 1000);
  const meter: MeterObject = {
    id: newId('mtr', p.livemode),
    object: 'billing.meter',
    created: now,
    customer_mapping: { event_payload_key: customerKey, type: 'by_id' },
    default_aggregation: { formula },
    display_name: displayName,
    event_name: eventName,
    event_time_window: window,
    livemode: p.livemode,
    status: 'active',
    status_transitions: { deactivated_at: null },
    updated: now,
    value_settings: { event_payload_key: valueKey },
  };
  try {
    await s.state.insertObject({ account: p.account, type: METER_TYPE, id: meter.id, createdMs: nowMs, uniqueKey: eventName, data: meter });
  } catch (err) {
    if (err instanceof UniqueViolation) {
      throw new InvalidRequestError(`A meter with event_name '${eventName}' already exists. You can only use an event name with a single meter.`, {
        param: 'event_name',
        code: 'resource_already_exists',
      });
    }
    throw err;
  }
  s.meters.upsert(p.account, meter);
  await recordCoreEvent(s.state, p.account, buildCoreEvent(p.livemode, 'v1.billing.meter.created', nowMs, meterRelatedObject(meter.id)), nowMs);
  return json(200, meter);
}

async function changeMeter(s: Services, p: Principal, id: string, eventType: string, change: (m: MeterObject, now: number) => void): Promise<MeterObject> {
  const meter = await loadMeter(s, p, id);
  const nowMs = s.now();
  change(meter, Math.floor(nowMs / 1000));
  meter.updated = Math.floor(nowMs / 1000);
  await s.state.updateObject(p.account, METER_TYPE, id, meter);
  s.meters.upsert(p.account, meter);
  await recordCoreEvent(s.state, p.account, buildCoreEvent(p.livemode, eventType, nowMs, meterRelatedObject(meter.id)), nowMs);
  return meter;
}

export function registerMeterRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/billing/meters',
    apiEndpoint(s, (p, _req, params) => createMeter(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/billing/meters',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'status', 'expand']);
      const page = readListParams(r);
      const status = r.string('status', { enum: ['active', 'inactive'] });
      const result = await s.state.listObjects<MeterObject>(p.account, METER_TYPE, { ...page, where: status ? { status } : undefined });
      return listResult(
        '/v1/billing/meters',
        result.data.map((o) => o.data),
        result.hasMore,
      );
    }),
  );

  http.route(
    'GET',
    '/v1/billing/meters/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await loadMeter(s, p, req.params[0]));
    }),
  );

  http.route(
    'POST',
    '/v1/billing/meters/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['display_name', 'expand']);
      const displayName = r.string('display_name', { maxLength: 250 });
      const meter = await changeMeter(s, p, req.params[0], 'v1.billing.meter.updated', (m) => {
        if (displayName !== undefined) m.display_name = displayName;
      });
      return json(200, meter);
    }),
  );

  http.route(
    'POST',
    '/v1/billing/meters/:id/deactivate',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const meter = await changeMeter(s, p, req.params[0], 'v1.billing.meter.deactivated', (m, now) => {
        if (m.status === 'inactive') throw new InvalidRequestError(`The meter '${m.id}' is already inactive.`, { code: 'billing_meter_already_inactive' });
        m.status = 'inactive';
        m.status_transitions = { deactivated_at: now };
      });
      return json(200, meter);
    }),
  );

  http.route(
    'POST',
    '/v1/billing/meters/:id/reactivate',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const meter = await changeMeter(s, p, req.params[0], 'v1.billing.meter.reactivated', (m) => {
        if (m.status === 'active') throw new InvalidRequestError(`The meter '${m.id}' is already active.`, { code: 'billing_meter_already_active' });
        m.status = 'active';
        m.status_transitions = { deactivated_at: null };
      });
      return json(200, meter);
    }),
  );
}
