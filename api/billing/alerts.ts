/**
 * Billing alerts (`/v1/billing/alerts`): `usage_threshold` alerts on a meter, for one customer (a `customer` filter) or
 * for every customer, with Stripe's `one_time` recurrence: an alert triggers once per customer, the first time the
 * customer's usage reaches `gte`, whatever the usage does afterwards. Evaluated by a periodic job over the aggregated
 * usage (alert-evaluator.ts). `activate` / `deactivate` switch evaluation on and off; `archive` is final and removes
 * the alert from the list.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint, listResult } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError } from '../../shared/errors';
import { loadResource } from './resource';
import { newId } from '../../shared/ids';
import { readListParams, loadMeter } from '../meters';
import { listEndpoint, listMatching, readExpand } from './common';
import { loadCustomer } from './customers';

export const ALERT_TYPE = 'billing.alert';
/** One row per (alert, customer) that triggered: the once-per-customer guarantee, also across processes. */
export const ALERT_TRIGGER_TYPE = 'billing.alert_trigger';
/** Stripe's limit: at most 25 alerts per meter and customer filter. */
const MAX_ALERTS_PER_SCOPE = 25;

export interface AlertObject {
  id: string;
  object: 'billing.alert';
  alert_type: 'usage_threshold';
  livemode: boolean;
  status: 'active' | 'inactive' | 'archived';
  title: string;
  usage_threshold: {
    filters: Array<{ type: 'customer'; customer: string }> | null;
    gte: number;
    meter: string;
    recurrence: 'one_time';
  };
  /** Creation time in ms (not served: Stripe's alert has no `created`); usage must be reported after it to trigger. */
  _created_ms: number;
}

export function renderAlert(a: AlertObject): Record<string, unknown> {
  const { _created_ms: _omit, ...served } = a;
  return served;
}

export function alertCustomer(a: AlertObject): string | null {
  return a.usage_threshold.filters?.[0]?.customer ?? null;
}

function loadAlert(store: StateStore, p: Principal, id: string): Promise<AlertObject> {
  return loadResource<AlertObject>(store, p, { type: ALERT_TYPE, noun: 'alert' }, id);
}

/** `expand[]`: `usage_threshold.meter` (the meter object); anything else is Stripe's 400. */
async function served(s: Services, p: Principal, a: AlertObject, expand: string[]): Promise<Record<string, unknown>> {
  const out = renderAlert(a);
  for (let i = 0; i < expand.length; i++) {
    if (expand[i] !== 'usage_threshold.meter') {
      throw new InvalidRequestError(`This property cannot be expanded (${expand[i]}).`, { param: `expand[${i}]` });
    }
    out.usage_threshold = { ...a.usage_threshold, meter: await loadMeter(s, p, a.usage_threshold.meter) };
  }
  return out;
}

async function createAlert(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown(['alert_type', 'title', 'usage_threshold', 'expand']);
  r.string('alert_type', { required: true, enum: ['usage_threshold'] });
  const title = r.string('title', { required: true, maxLength: 256 });
  const expand = readExpand(r);
  const ut = r.object('usage_threshold', { required: true });
  ut.assertNoUnknown(['filters', 'gte', 'meter', 'recurrence']);
  const gte = ut.integer('gte', { required: true });
  if (gte <= 0) throw new InvalidParamError(ut.param('gte'), 'The threshold (gte) must be greater than 0.');
  const meterId = ut.string('meter', { required: true, maxLength: 5000 });
  ut.string('recurrence', { required: true, enum: ['one_time'] });
  const filters = ut.objectArray('filters') ?? [];
  if (filters.length > 1) throw new InvalidParamError(ut.param('filters'), 'You can only specify up to one filter at this time.');
  let customer: string | null = null;
  for (const f of filters) {
    f.assertNoUnknown(['type', 'customer']);
    f.string('type', { required: true, enum: ['customer'] });
    customer = f.string('customer', { required: true, maxLength: 5000 });
  }
  const meter = await loadMeter(s, p, meterId).catch(() => {
    throw new InvalidParamError(ut.param('meter'), `No such billing meter: '${meterId}'`, 'resource_missing');
  });
  if (meter.status !== 'active') throw new InvalidParamError(ut.param('meter'), `The meter ${meter.id} is inactive: alerts need an active meter.`);
  if (customer !== null) {
    const c = await loadCustomer(s.state, p, customer, filters[0].param('customer'));
    customer = c.id;
  }
  const nowMs = s.now();
  const alert: AlertObject = {
    id: newId('alrt', p.livemode),
    object: 'billing.alert',
    alert_type: 'usage_threshold',
    livemode: p.livemode,
    status: 'active',
    title,
    usage_threshold: { filters: customer === null ? null : [{ type: 'customer', customer }], gte, meter: meter.id, recurrence: 'one_time' },
    _created_ms: nowMs,
  };
  await s.state.transaction(async (tx) => {
    let same = 0;
    let cursor: string | undefined;
    for (;;) {
      const page = await tx.listObjects<AlertObject>(p.account, ALERT_TYPE, { limit: 100, startingAfter: cursor });
      for (const o of page.data) {
        if (o.data.status !== 'archived' && o.data.usage_threshold.meter === meter.id && alertCustomer(o.data) === customer) same++;
      }
      if (!page.hasMore || page.data.length === 0) break;
      cursor = page.data[page.data.length - 1].id;
    }
    if (same >= MAX_ALERTS_PER_SCOPE) {
      throw new InvalidRequestError(`You can create at most ${MAX_ALERTS_PER_SCOPE} alerts for a meter and customer.`, { param: 'usage_threshold' });
    }
    await tx.insertObject({ account: p.account, type: ALERT_TYPE, id: alert.id, createdMs: nowMs, data: alert });
  });
  return json(200, await served(s, p, alert, expand));
}

/** activate / deactivate / archive: an archived alert stays archived. */
async function transition(s: Services, p: Principal, id: string, params: Params, to: AlertObject['status']) {
  const r = new ParamReader(params);
  r.assertNoUnknown(['expand']);
  const expand = readExpand(r);
  const alert = await s.state.transaction(async (tx) => {
    const a = await loadAlert(tx, p, id);
    if (a.status === to) return a;
    if (a.status === 'archived') throw new InvalidRequestError(`The alert ${a.id} is archived and cannot be changed.`, { code: 'alert_archived' });
    a.status = to;
    await tx.updateObject(p.account, ALERT_TYPE, a.id, a);
    return a;
  });
  return json(200, await served(s, p, alert, expand));
}

export function registerAlertRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/billing/alerts',
    apiEndpoint(s, (p, _req, params) => createAlert(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/billing/alerts',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['alert_type', 'meter', 'limit', 'starting_after', 'ending_before', 'expand']);
      r.string('alert_type', { enum: ['usage_threshold'] });
      const meter = r.string('meter', { maxLength: 5000 });
      const expand = readExpand(r);
      const page = readListParams(r);
      const pred = (a: AlertObject) => a.status !== 'archived' && (meter === undefined || a.usage_threshold.meter === meter);
      const bad = expand.findIndex((e) => e !== 'data.usage_threshold.meter');
      if (bad >= 0) throw new InvalidRequestError(`This property cannot be expanded (${expand[bad]}).`, { param: `expand[${bad}]` });
      if (expand.length === 0) return listEndpoint<AlertObject>(s, p, '/v1/billing/alerts', ALERT_TYPE, page, {}, pred, renderAlert);
      const res = await listMatching<AlertObject>(s.state, p.account, ALERT_TYPE, page, {}, pred);
      const data = await Promise.all(res.data.map((a) => served(s, p, a, ['usage_threshold.meter'])));
      return listResult('/v1/billing/alerts', data, res.hasMore);
    }),
  );

  http.route(
    'GET',
    '/v1/billing/alerts/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['expand']);
      return json(200, await served(s, p, await loadAlert(s.state, p, req.params[0]), readExpand(r)));
    }),
  );

  for (const [action, to] of [
    ['activate', 'active'],
    ['deactivate', 'inactive'],
    ['archive', 'archived'],
  ] as const) {
    http.route(
      'POST',
      `/v1/billing/alerts/:id/${action}`,
      apiEndpoint(s, (p, req, params) => transition(s, p, req.params[0], params, to)),
    );
  }
}
