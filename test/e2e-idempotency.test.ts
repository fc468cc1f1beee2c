/**
 * End-to-end Idempotency-Key tests against the real server: replays (durable for meters, in memory for meter events),
 * mismatches, scope (per account, per endpoint, POST only), limits, validation failures not being saved, persistence
 * across a restart, and the official client's automatic retry through a proxy that loses the first response.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually, currentRange, type TestServer } from './helpers/server';
import { randomKey, expectStripeError } from './helpers/assertions';

type Res = Awaited<ReturnType<TestServer['request']>>;

const JSON_CT = { 'content-type': 'application/json' };
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };

const KEY_A = randomKey('sk_test_');
const KEY_B = randomKey('sk_test_');
const API_KEYS = `${KEY_A},${KEY_B}`;
const RUN = Math.random().toString(36).slice(2, 8);
/** A fresh Idempotency-Key. */
const ik = (label: string) => `idem-${RUN}-${label}`;

let server: TestServer;

t.before(async () => {
  server = await startServer({ key: KEY_A, env: { API_KEYS } });
});
t.teardown(() => server?.stop());

function clientFor(s: TestServer, key: string, port = s.port): Stripe {
  return new Stripe(key, { host: '127.0.0.1', port, protocol: 'http', telemetry: false, maxNetworkRetries: 2 });
}

const postForm = (path: string, body: string, idempotencyKey?: string, key?: string, s: TestServer = server) =>
  s.request('POST', path, { body, headers: { ...FORM, ...(idempotencyKey === undefined ? {} : { 'idempotency-key': idempotencyKey }) }, key });
const postJson = (path: string, body: unknown, idempotencyKey?: string, key?: string, s: TestServer = server) =>
  s.request('POST', path, {
    body: JSON.stringify(body),
    headers: { ...JSON_CT, ...(idempotencyKey === undefined ? {} : { 'idempotency-key': idempotencyKey }) },
    key,
  });

/** A v1 (error.type) or v2 (error.code) idempotency_error. */
function expectIdempotencyError(t: tap.Test, res: Res, flavor: 'v1' | 'v2', label: string): void {
  t.equal(res.status, 400, `${label}: 400 (got ${res.status} ${res.text.slice(0, 250)})`);
  if (flavor === 'v1') t.equal(res.body?.error?.type, 'idempotency_error', `${label}: error.type`);
  else t.equal(res.body?.error?.code, 'idempotency_error', `${label}: error.code`);
  t.match(
    res.body?.error?.message ?? '',
    /^Keys for idempotent requests can only be used with the same parameters they were first used with/,
    `${label}: message`,
  );
  t.equal(res.headers.get('idempotent-replayed'), null, `${label}: not a replay`);
}

function meterBody(eventName: string, displayName = eventName, formula = 'sum'): string {
  return `display_name=${encodeURIComponent(displayName)}&event_name=${eventName}&default_aggregation[formula]=${formula}`;
}

async function metersNamed(eventName: string, key = KEY_A, s: TestServer = server): Promise<string[]> {
  const ids: string[] = [];
  for await (const m of clientFor(s, key).billing.meters.list({ limit: 100 })) if (m.event_name === eventName) ids.push(m.id);
  return ids;
}

async function summaryValue(s: TestServer, key: string, meterId: string, customer: string): Promise<number | undefined> {
  const { start, end } = currentRange();
  const list = await clientFor(s, key).billing.meters.listEventSummaries(meterId, { customer, start_time: start, end_time: end });
  return list.data[0]?.aggregated_value;
}

/**
 * The settled total for a customer: sends a sentinel event (value 1000, its own key) after everything else, waits until
 * it is visible (so every earlier event in the log has been aggregated too), lets one more flush interval pass, and
 * returns the total minus the sentinel.
 */
async function settledTotal(s: TestServer, key: string, eventName: string, meterId: string, customer: string): Promise<number | undefined> {
  const r = await s.request('POST', '/v1/billing/meter_events', {
    key,
    body: `event_name=${eventName}&payload[stripe_customer_id]=${customer}&payload[value]=1000`,
    headers: { ...FORM, 'idempotency-key': ik(`sentinel-${meterId}-${customer}-${Date.now()}`) },
  });
  if (r.status !== 200) throw new Error(`sentinel: ${r.status} ${r.text}`);
  await eventually(async () => ((await summaryValue(s, key, meterId, customer)) ?? 0) >= 1000, 30_000).catch(() => undefined);
  await new Promise((res) => setTimeout(res, 800));
  const v = await summaryValue(s, key, meterId, customer);
  return v === undefined ? undefined : v - 1000;
}

async function createMeter(eventName: string, key = KEY_A, s: TestServer = server): Promise<Stripe.Response<Stripe.Billing.Meter>> {
  return clientFor(s, key).billing.meters.create({ display_name: eventName, event_name: eventName, default_aggregation: { formula: 'sum' } });
}

// ---------------------------------------------------------------------------------------------------------------------

t.test('POST /v1/billing/meters: same key and body replays the first response', async (t) => {
  const key = ik('meter-replay');
  const body = meterBody('idem_replay', 'Idem replay');
  const first = await postForm('/v1/billing/meters', body, key);
  t.equal(first.status, 200, first.text);
  t.equal(first.headers.get('idempotent-replayed'), null, 'the first response is not a replay');
  t.equal(first.headers.get('idempotency-key'), key, 'the key is echoed');
  const second = await postForm('/v1/billing/meters', body, key);
  t.equal(second.status, 200, second.text);
  t.equal(second.headers.get('idempotent-replayed'), 'true', 'Idempotent-Replayed: true');
  t.equal(second.headers.get('idempotency-key'), key);
  t.equal(second.body.id, first.body.id, 'the same meter');
  t.equal(second.text, first.text, 'byte-identical body');
  t.not(second.headers.get('request-id'), first.headers.get('request-id'), 'a new Request-Id');
  const third = await postForm('/v1/billing/meters', body, key);
  t.equal(third.body.id, first.body.id, 'replays again');
  t.same(await metersNamed('idem_replay'), [first.body.id], 'only one meter exists');

  // Through the official client with an explicit key.
  const stripe = clientFor(server, KEY_A);
  const params = { display_name: 'Idem client', event_name: 'idem_replay_client', default_aggregation: { formula: 'sum' as const } };
  const m1 = await stripe.billing.meters.create(params, { idempotencyKey: ik('meter-client') });
  const m2 = await stripe.billing.meters.create(params, { idempotencyKey: ik('meter-client') });
  t.equal(m2.id, m1.id, 'client: the same meter');
  t.equal((m1.lastResponse as any).headers['idempotent-replayed'], undefined);
  t.equal((m2.lastResponse as any).headers['idempotent-replayed'], 'true', 'client sees Idempotent-Replayed');
  t.equal(m2.lastResponse.idempotencyKey, ik('meter-client'));
  t.same(await metersNamed('idem_replay_client'), [m1.id]);

  // v2 control-plane endpoint: meter_event_session.
  const s1 = await postJson('/v2/billing/meter_event_session', {}, ik('session'));
  const s2 = await postJson('/v2/billing/meter_event_session', {}, ik('session'));
  t.equal(s1.status, 200);
  t.equal(s2.status, 200);
  t.equal(s2.body.id, s1.body.id, 'v2 session: the same session');
  t.equal(s2.body.authentication_token, s1.body.authentication_token);
  t.equal(s2.headers.get('idempotent-replayed'), 'true');
});

t.test('same key, different body: idempotency_error', async (t) => {
  const key = ik('meter-mismatch');
  const first = await postForm('/v1/billing/meters', meterBody('idem_mismatch', 'First'), key);
  t.equal(first.status, 200, first.text);
  expectIdempotencyError(t, await postForm('/v1/billing/meters', meterBody('idem_mismatch', 'Second'), key), 'v1', 'other display_name');
  expectIdempotencyError(t, await postForm('/v1/billing/meters', meterBody('idem_mismatch_other', 'First'), key), 'v1', 'other event_name');
  expectIdempotencyError(t, await postForm('/v1/billing/meters', '', key), 'v1', 'empty body');
  t.same(await metersNamed('idem_mismatch_other'), [], 'nothing was created');
  t.same(await metersNamed('idem_mismatch'), [first.body.id]);
  // The original still replays after the mismatches.
  const again = await postForm('/v1/billing/meters', meterBody('idem_mismatch', 'First'), key);
  t.equal(again.body.id, first.body.id);
  t.equal(again.headers.get('idempotent-replayed'), 'true');

  const stripe = clientFor(server, KEY_A);
  const err = await expectStripeError(
    t,
    stripe.billing.meters.create({ display_name: 'Other', event_name: 'idem_mismatch', default_aggregation: { formula: 'sum' } }, { idempotencyKey: key }),
    Stripe.errors.StripeIdempotencyError,
    { statusCode: 400, rawType: 'idempotency_error' },
    'client',
  );
  t.equal(err?.type, 'StripeIdempotencyError');
  const e2 = await postJson('/v2/billing/meter_event_session', {}, ik('session-mismatch'));
  t.equal(e2.status, 200);
  expectIdempotencyError(t, await postJson('/v2/billing/meter_event_session', { x: 1 }, ik('session-mismatch')), 'v2', 'v2 session, other body');
});

t.test('same key on another endpoint: idempotency_error', async (t) => {
  const key = ik('meter-endpoint');
  const created = await postForm('/v1/billing/meters', meterBody('idem_endpoint'), key);
  t.equal(created.status, 200, created.text);
  const id = created.body.id as string;
  expectIdempotencyError(t, await postForm(`/v1/billing/meters/${id}`, 'display_name=Renamed', key), 'v1', 'update with the create key');
  expectIdempotencyError(t, await postForm(`/v1/billing/meters/${id}/deactivate`, '', key), 'v1', 'deactivate with the create key');
  expectIdempotencyError(t, await postJson('/v2/billing/meter_event_session', {}, key), 'v2', 'v2 session with the create key');
  const meter = await clientFor(server, KEY_A).billing.meters.retrieve(id);
  t.equal(meter.display_name, 'idem_endpoint', 'not renamed');
  t.equal(meter.status, 'active', 'not deactivated');
  // The same body on another meter's update path is another endpoint too.
  const other = await createMeter('idem_endpoint_2');
  const upd = ik('update');
  t.equal((await postForm(`/v1/billing/meters/${id}`, 'display_name=Same', upd)).status, 200);
  expectIdempotencyError(t, await postForm(`/v1/billing/meters/${other.id}`, 'display_name=Same', upd), 'v1', 'update of another meter');
  t.equal((await clientFor(server, KEY_A).billing.meters.retrieve(other.id)).display_name, 'idem_endpoint_2');
});

t.test('same key across meter and meter event endpoints: idempotency_error', async (t) => {
  await createMeter('idem_cross');
  // A key first used to create a meter, then on the meter event endpoints.
  const key1 = ik('cross-1');
  t.equal((await postForm('/v1/billing/meters', meterBody('idem_cross_2'), key1)).status, 200);
  expectIdempotencyError(
    t,
    await postForm('/v1/billing/meter_events', 'event_name=idem_cross&payload[stripe_customer_id]=cus_cross&payload[value]=1', key1),
    'v1',
    'v1 meter event with a meter-create key',
  );
  expectIdempotencyError(
    t,
    await postJson('/v2/billing/meter_events', { event_name: 'idem_cross', payload: { stripe_customer_id: 'cus_cross', value: '1' } }, key1),
    'v2',
    'v2 meter event with a meter-create key',
  );
  // A key first used for a meter event, then to create a meter.
  const key2 = ik('cross-2');
  t.equal((await postForm('/v1/billing/meter_events', 'event_name=idem_cross&payload[stripe_customer_id]=cus_cross&payload[value]=1', key2)).status, 200);
  expectIdempotencyError(t, await postForm('/v1/billing/meters', meterBody('idem_cross_3'), key2), 'v1', 'meter create with a meter-event key');
  t.same(await metersNamed('idem_cross_3'), [], 'no meter was created with the reused key');
  // Between the two meter event endpoints (same record store).
  expectIdempotencyError(
    t,
    await postJson('/v2/billing/meter_events', { event_name: 'idem_cross', payload: { stripe_customer_id: 'cus_cross', value: '1' } }, key2),
    'v2',
    'v2 meter event with a v1 meter-event key',
  );
});

t.test('keys are per account', async (t) => {
  const key = ik('per-account');
  const body = meterBody('idem_account');
  const a = await postForm('/v1/billing/meters', body, key, KEY_A);
  const b = await postForm('/v1/billing/meters', body, key, KEY_B);
  t.equal(a.status, 200, a.text);
  t.equal(b.status, 200, b.text);
  t.not(b.body.id, a.body.id, 'B gets its own meter');
  t.equal(b.headers.get('idempotent-replayed'), null, "not a replay of A's response");
  t.same(await metersNamed('idem_account', KEY_A), [a.body.id]);
  t.same(await metersNamed('idem_account', KEY_B), [b.body.id]);
  // A different body from B with A's key is not a mismatch either.
  const key2 = ik('per-account-2');
  t.equal((await postForm('/v1/billing/meters', meterBody('idem_account_a2'), key2, KEY_A)).status, 200);
  const b2 = await postForm('/v1/billing/meters', meterBody('idem_account_b2'), key2, KEY_B);
  t.equal(b2.status, 200, `B reuses A's key with another body: ${b2.text.slice(0, 200)}`);
  t.equal(b2.body.event_name, 'idem_account_b2');
  // Meter event endpoints too.
  const key3 = ik('per-account-3');
  t.equal((await postForm('/v1/billing/meter_events', 'event_name=idem_account&payload[stripe_customer_id]=cus_a&payload[value]=1', key3, KEY_A)).status, 200);
  const b3 = await postForm('/v1/billing/meter_events', 'event_name=idem_account&payload[stripe_customer_id]=cus_b&payload[value]=2', key3, KEY_B);
  t.equal(b3.status, 200, b3.text);
  t.equal(b3.body.payload.stripe_customer_id, 'cus_b', "B's own event, not A's replay");
  t.equal(b3.headers.get('idempotent-replayed'), null);
});

t.test('GET ignores the Idempotency-Key', async (t) => {
  const key = ik('get');
  const l1 = await server.request('GET', '/v1/billing/meters?limit=100', { headers: { 'idempotency-key': key } });
  t.equal(l1.status, 200);
  t.equal(l1.headers.get('idempotent-replayed'), null);
  const created = await createMeter('idem_get');
  const l2 = await server.request('GET', '/v1/billing/meters?limit=100', { headers: { 'idempotency-key': key } });
  t.equal(l2.status, 200);
  t.equal(l2.headers.get('idempotent-replayed'), null, 'not a replay');
  t.equal(l2.body.data.length, l1.body.data.length + 1, 'the second list is fresh');
  t.ok(l2.body.data.some((m: any) => m.id === created.id));
  const l3 = await server.request('GET', '/v1/billing/meters?limit=1', { headers: { 'idempotency-key': key } });
  t.equal(l3.body.data.length, 1, 'other query params with the same key are fine');
  // The key was not recorded: it can now be used for a POST.
  const post = await postForm('/v1/billing/meters', meterBody('idem_get_2'), key);
  t.equal(post.status, 200, post.text);
  t.equal(post.headers.get('idempotent-replayed'), null);
  // And a GET with a key used by a POST answers the GET, not the POST's saved response.
  const get = await server.request('GET', `/v1/billing/meters/${created.id}`, { headers: { 'idempotency-key': key } });
  t.equal(get.status, 200);
  t.equal(get.body.id, created.id);
  const summaries = await server.request('GET', `/v1/billing/meters/${created.id}/event_summaries?customer=c&start_time=0&end_time=60`, {
    headers: { 'idempotency-key': key },
  });
  t.equal(summaries.status, 200, summaries.text);
  t.equal(summaries.body.object, 'list');
});

t.test('Idempotency-Key longer than 255 characters: 400', async (t) => {
  const long = 'k'.repeat(256);
  const res = await postForm('/v1/billing/meters', meterBody('idem_long'), long);
  t.equal(res.status, 400, res.text);
  t.equal(res.body?.error?.type, 'invalid_request_error');
  t.same(await metersNamed('idem_long'), [], 'nothing was created');
  const ev = await postForm('/v1/billing/meter_events', 'event_name=idem_long&payload[stripe_customer_id]=c&payload[value]=1', long);
  t.equal(ev.status, 400, `meter events too: ${ev.text}`);
  const v2 = await postJson('/v2/billing/meter_event_session', {}, long);
  t.equal(v2.status, 400, 'v2');
  t.type(v2.body?.error?.code, 'string');
  const token = (await postJson('/v2/billing/meter_event_session', {})).body.authentication_token;
  const stream = await server.request('POST', '/v2/billing/meter_event_stream', {
    key: token,
    body: JSON.stringify({ events: [{ event_name: 'idem_long', payload: { stripe_customer_id: 'c', value: '1' } }] }),
    headers: { ...JSON_CT, 'idempotency-key': long },
  });
  t.equal(stream.status, 400, 'stream');
  await expectStripeError(
    t,
    clientFor(server, KEY_A).billing.meters.create(
      { display_name: 'x', event_name: 'idem_long', default_aggregation: { formula: 'sum' } },
      { idempotencyKey: long },
    ),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400 },
    'client',
  );
  // Exactly 255 is fine, and replays.
  const max = 'm'.repeat(243) + RUN.padEnd(12, '0').slice(0, 12);
  t.equal(max.length, 255);
  const ok1 = await postForm('/v1/billing/meters', meterBody('idem_255'), max);
  const ok2 = await postForm('/v1/billing/meters', meterBody('idem_255'), max);
  t.equal(ok1.status, 200, ok1.text);
  t.equal(ok2.body.id, ok1.body.id);
  t.equal(ok2.headers.get('idempotent-replayed'), 'true');
});

t.test('meter event endpoints: replay, counted once; mismatch is an idempotency_error', async (t) => {
  const meter = await createMeter('idem_events');
  const customer = 'cus_idem_events';
  // v1, no identifier: the replay carries the same (generated) identifier.
  const v1Body = `event_name=idem_events&payload[stripe_customer_id]=${customer}&payload[value]=5`;
  const a1 = await postForm('/v1/billing/meter_events', v1Body, ik('ev-v1'));
  const a2 = await postForm('/v1/billing/meter_events', v1Body, ik('ev-v1'));
  t.equal(a1.status, 200, a1.text);
  t.equal(a2.status, 200, a2.text);
  t.equal(a1.headers.get('idempotent-replayed'), null);
  t.equal(a2.headers.get('idempotent-replayed'), 'true');
  t.equal(a2.body.identifier, a1.body.identifier, 'the same identifier');
  t.equal(a2.text, a1.text, 'byte-identical body');
  expectIdempotencyError(
    t,
    await postForm('/v1/billing/meter_events', v1Body.replace('value]=5', 'value]=6'), ik('ev-v1')),
    'v1',
    'v1 meter event, other value',
  );
  await expectStripeError(
    t,
    clientFor(server, KEY_A).billing.meterEvents.create(
      { event_name: 'idem_events', payload: { stripe_customer_id: customer, value: '7' } },
      { idempotencyKey: ik('ev-v1') },
    ),
    Stripe.errors.StripeIdempotencyError,
    { statusCode: 400 },
    'client v1 meter event, other body',
  );

  // v2 meter event.
  const v2Body = { event_name: 'idem_events', payload: { stripe_customer_id: customer, value: '20' } };
  const b1 = await postJson('/v2/billing/meter_events', v2Body, ik('ev-v2'));
  const b2 = await postJson('/v2/billing/meter_events', v2Body, ik('ev-v2'));
  t.equal(b1.status, 200, b1.text);
  t.equal(b2.headers.get('idempotent-replayed'), 'true');
  t.equal(b2.body.identifier, b1.body.identifier);
  expectIdempotencyError(t, await postJson('/v2/billing/meter_events', { ...v2Body, identifier: 'other' }, ik('ev-v2')), 'v2', 'v2 meter event, other body');

  // Stream: events without identifiers.
  const token = (await postJson('/v2/billing/meter_event_session', {})).body.authentication_token;
  const streamBody = JSON.stringify({ events: [{ event_name: 'idem_events', payload: { stripe_customer_id: customer, value: '300' } }] });
  const stream = (body: string) =>
    server.request('POST', '/v2/billing/meter_event_stream', { key: token, body, headers: { ...JSON_CT, 'idempotency-key': ik('ev-stream') } });
  const c1 = await stream(streamBody);
  const c2 = await stream(streamBody);
  t.equal(c1.status, 200, c1.text);
  t.equal(c2.status, 200, c2.text);
  t.equal(c2.text, '{}');
  t.equal(c2.headers.get('idempotent-replayed'), 'true');
  expectIdempotencyError(t, await stream(streamBody.replace('300', '301')), 'v2', 'stream, other body');

  // Adjustments: replayed, mismatch rejected.
  const adj = 'event_name=idem_events&type=cancel&cancel[identifier]=does-not-exist';
  t.equal((await postForm('/v1/billing/meter_event_adjustments', adj, ik('adj'))).status, 200);
  const adj2 = await postForm('/v1/billing/meter_event_adjustments', adj, ik('adj'));
  t.equal(adj2.headers.get('idempotent-replayed'), 'true');
  expectIdempotencyError(
    t,
    await postForm('/v1/billing/meter_event_adjustments', adj.replace('does-not', 'really-does-not'), ik('adj')),
    'v1',
    'adjustment, other body',
  );

  t.equal(await settledTotal(server, KEY_A, 'idem_events', meter.id, customer), 325, 'each event counted once: 5 + 20 + 300');
});

t.test('a validation failure is not saved: the fixed request with the same key succeeds', async (t) => {
  // Durable store (meters).
  const key = ik('fix-meter');
  const bad = await postForm('/v1/billing/meters', 'display_name=x&event_name=idem_fix&default_aggregation[formula]=median', key);
  t.equal(bad.status, 400, bad.text);
  const missing = await postForm('/v1/billing/meters', 'display_name=x&default_aggregation[formula]=sum', key);
  t.equal(missing.status, 400, 'another invalid body with the same key is a validation error, not an idempotency_error');
  t.equal(missing.body?.error?.type, 'invalid_request_error');
  const fixed = await postForm('/v1/billing/meters', meterBody('idem_fix'), key);
  t.equal(fixed.status, 200, fixed.text);
  t.equal(fixed.headers.get('idempotent-replayed'), null);
  const replay = await postForm('/v1/billing/meters', meterBody('idem_fix'), key);
  t.equal(replay.body.id, fixed.body.id, 'from now on the success is what replays');

  // Memory store (meter events): no meter yet -> 400 no_meter; create it; retry with the same key succeeds.
  const evKey = ik('fix-event');
  const evBody = 'event_name=idem_fix_ev&payload[stripe_customer_id]=cus_fix&payload[value]=9';
  const noMeter = await postForm('/v1/billing/meter_events', evBody, evKey);
  t.equal(noMeter.status, 400, noMeter.text);
  t.equal(noMeter.body?.error?.code, 'no_meter');
  const meter = await createMeter('idem_fix_ev');
  const noCustomer = await postForm('/v1/billing/meter_events', 'event_name=idem_fix_ev&payload[value]=9', evKey);
  t.equal(noCustomer.status, 400, noCustomer.text);
  t.equal(noCustomer.body?.error?.code, 'payload_no_customer_defined');
  const evOk = await postForm('/v1/billing/meter_events', evBody, evKey);
  t.equal(evOk.status, 200, evOk.text);
  t.equal(evOk.headers.get('idempotent-replayed'), null);
  const v2Key = ik('fix-v2');
  const v2Bad = await postJson('/v2/billing/meter_events', { event_name: 'idem_fix_ev', payload: { stripe_customer_id: 'cus_fix', value: 'abc' } }, v2Key);
  t.equal(v2Bad.status, 400);
  t.equal(v2Bad.body?.error?.code, 'payload_invalid_value');
  const v2Ok = await postJson('/v2/billing/meter_events', { event_name: 'idem_fix_ev', payload: { stripe_customer_id: 'cus_fix', value: '1' } }, v2Key);
  t.equal(v2Ok.status, 200, v2Ok.text);
  const token = (await postJson('/v2/billing/meter_event_session', {})).body.authentication_token;
  const sKey = ik('fix-stream');
  const sBad = await server.request('POST', '/v2/billing/meter_event_stream', {
    key: token,
    body: JSON.stringify({ events: [] }),
    headers: { ...JSON_CT, 'idempotency-key': sKey },
  });
  t.equal(sBad.status, 400);
  const sOk = await server.request('POST', '/v2/billing/meter_event_stream', {
    key: token,
    body: JSON.stringify({ events: [{ event_name: 'idem_fix_ev', payload: { stripe_customer_id: 'cus_fix', value: '100' } }] }),
    headers: { ...JSON_CT, 'idempotency-key': sKey },
  });
  t.equal(sOk.status, 200, sOk.text);
  t.equal(await settledTotal(server, KEY_A, 'idem_fix_ev', meter.id, 'cus_fix'), 110, 'only the accepted events count: 9 + 1 + 100');

  // Through the client: a 400 then the corrected call with the same key.
  const stripe = clientFor(server, KEY_A);
  await expectStripeError(
    t,
    stripe.billing.meters.create(
      { display_name: 'x', event_name: 'idem_fix_client', default_aggregation: { formula: 'median' as any } },
      { idempotencyKey: ik('fix-client') },
    ),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400 },
    'client: invalid formula',
  );
  const m = await stripe.billing.meters.create(
    { display_name: 'x', event_name: 'idem_fix_client', default_aggregation: { formula: 'sum' } },
    { idempotencyKey: ik('fix-client') },
  );
  t.equal(m.event_name, 'idem_fix_client');
});

t.test('concurrent requests with one key: one execution, the others replay or get a retryable 409', async (t) => {
  const key = ik('concurrent-meter');
  const body = meterBody('idem_concurrent');
  const results = await Promise.all(Array.from({ length: 10 }, () => postForm('/v1/billing/meters', body, key)));
  const ids = new Set<string>();
  for (const r of results) {
    t.ok(r.status === 200 || r.status === 409, `200 or 409 (got ${r.status} ${r.text.slice(0, 200)})`);
    if (r.status === 200) ids.add(r.body.id);
    if (r.status === 409) {
      t.equal(r.body?.error?.type, 'invalid_request_error');
      t.equal(r.headers.get('stripe-should-retry'), 'true', '409: Stripe-Should-Retry: true');
    }
  }
  t.equal(ids.size, 1, 'every 200 is the same meter');
  t.same(await metersNamed('idem_concurrent'), [...ids], 'exactly one meter exists');

  // The client retries 409s: all calls resolve to the same meter.
  const stripe = clientFor(server, KEY_A);
  const params = { display_name: 'c', event_name: 'idem_concurrent_client', default_aggregation: { formula: 'sum' as const } };
  const meters = await Promise.all(Array.from({ length: 5 }, () => stripe.billing.meters.create(params, { idempotencyKey: ik('concurrent-client') })));
  t.equal(new Set(meters.map((m) => m.id)).size, 1, 'client: one meter');
  t.same(await metersNamed('idem_concurrent_client'), [meters[0].id]);

  // Meter events: counted once.
  const meter = await createMeter('idem_concurrent_ev');
  const evBody = 'event_name=idem_concurrent_ev&payload[stripe_customer_id]=cus_conc&payload[value]=4';
  const evs = await Promise.all(Array.from({ length: 10 }, () => postForm('/v1/billing/meter_events', evBody, ik('concurrent-event'))));
  const identifiers = new Set<string>();
  for (const r of evs) {
    t.ok(r.status === 200 || r.status === 409, `event: 200 or 409 (got ${r.status})`);
    if (r.status === 200) identifiers.add(r.body.identifier);
  }
  t.equal(identifiers.size, 1, 'one identifier');
  t.equal(await settledTotal(server, KEY_A, 'idem_concurrent_ev', meter.id, 'cus_conc'), 4, 'counted once');
});

/**
 * A loopback HTTP proxy that forwards everything, but for the first matching request on each path forwards it, throws
 * away the upstream response and destroys the client's socket.
 */
async function droppingProxy(targetPort: number, match: (method: string, path: string) => boolean) {
  const seen: { method: string; path: string; idempotencyKey: string; upstreamStatus: number; upstreamBody: string; dropped: boolean }[] = [];
  const droppedPaths = new Set<string>();
  const agent = new http.Agent({ keepAlive: false });
  const proxy = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const method = req.method ?? 'GET';
      const path = req.url ?? '/';
      const dropThis = match(method, path) && !droppedPaths.has(path);
      if (dropThis) droppedPaths.add(path);
      const headers = { ...req.headers, host: `127.0.0.1:${targetPort}` };
      const up = http.request({ host: '127.0.0.1', port: targetPort, method, path, headers, agent }, (upRes) => {
        const upChunks: Buffer[] = [];
        upRes.on('data', (c: Buffer) => upChunks.push(c));
        upRes.on('end', () => {
          const upstreamBody = Buffer.concat(upChunks);
          seen.push({
            method,
            path,
            idempotencyKey: String(req.headers['idempotency-key'] ?? ''),
            upstreamStatus: upRes.statusCode ?? 0,
            upstreamBody: upstreamBody.toString('utf8'),
            dropped: dropThis,
          });
          if (dropThis) {
            req.socket.destroy(); // the server did the work; the client never hears about it
            return;
          }
          const out = { ...upRes.headers };
          delete out['transfer-encoding'];
          delete out.connection;
          out['content-length'] = String(upstreamBody.length);
          res.writeHead(upRes.statusCode ?? 502, out);
          res.end(upstreamBody);
        });
      });
      up.on('error', (err) => {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { type: 'api_error', message: `proxy: ${String(err)}` } }));
      });
      up.end(Buffer.concat(chunks));
    });
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  const port = (proxy.address() as AddressInfo).port;
  return {
    port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        proxy.closeAllConnections();
        proxy.close(() => resolve());
      }),
  };
}

t.test('the official client retries a lost response with the same Idempotency-Key: counted once', async (t) => {
  const meter = await createMeter('idem_retry');
  const customer = 'cus_retry';
  const proxy = await droppingProxy(server.port, (m, p) => m === 'POST' && /^\/v[12]\/billing\/meter_event(s|_stream)$/.test(p));
  t.teardown(() => proxy.close());
  const viaProxy = new Stripe(KEY_A, { host: '127.0.0.1', port: proxy.port, protocol: 'http', telemetry: false, maxNetworkRetries: 2 });

  // v1 meter event without an identifier.
  const ev = await viaProxy.billing.meterEvents.create({ event_name: 'idem_retry', payload: { stripe_customer_id: customer, value: '3' } });
  const v1Calls = proxy.seen.filter((s) => s.path === '/v1/billing/meter_events');
  t.equal(v1Calls.length, 2, 'one lost response, one retry');
  t.equal(v1Calls[0].dropped, true);
  t.equal(v1Calls[0].upstreamStatus, 200, 'the server accepted the first attempt');
  t.match(v1Calls[0].idempotencyKey, /^stripe-node-retry-/, 'the client sent its own key');
  t.equal(v1Calls[1].idempotencyKey, v1Calls[0].idempotencyKey, 'the retry reuses the key');
  t.equal(ev.identifier, JSON.parse(v1Calls[0].upstreamBody).identifier, 'the client got the identifier of the first attempt');
  t.equal((ev.lastResponse as any).headers['idempotent-replayed'], 'true', 'answered by a replay');

  // v2 meter event.
  const ev2 = await viaProxy.v2.billing.meterEvents.create({ event_name: 'idem_retry', payload: { stripe_customer_id: customer, value: '40' } });
  const v2Calls = proxy.seen.filter((s) => s.path === '/v2/billing/meter_events');
  t.equal(v2Calls.length, 2);
  t.equal(v2Calls[0].upstreamStatus, 200);
  t.equal(v2Calls[1].idempotencyKey, v2Calls[0].idempotencyKey);
  t.equal(ev2.identifier, JSON.parse(v2Calls[0].upstreamBody).identifier);

  // Stream, with a session token.
  const session = await viaProxy.v2.billing.meterEventSession.create();
  const streamClient = new Stripe(session.authentication_token, {
    host: '127.0.0.1',
    port: proxy.port,
    protocol: 'http',
    telemetry: false,
    maxNetworkRetries: 2,
  });
  await streamClient.v2.billing.meterEventStream.create({ events: [{ event_name: 'idem_retry', payload: { stripe_customer_id: customer, value: '500' } }] });
  const streamCalls = proxy.seen.filter((s) => s.path === '/v2/billing/meter_event_stream');
  t.equal(streamCalls.length, 2);
  t.equal(streamCalls[0].upstreamStatus, 200);
  t.equal(streamCalls[1].idempotencyKey, streamCalls[0].idempotencyKey);
  t.ok(streamCalls[0].idempotencyKey.length > 0, 'the client sends a key on the stream');

  t.equal(await settledTotal(server, KEY_A, 'idem_retry', meter.id, customer), 543, 'each event counted once: 3 + 40 + 500');
});

t.test('idempotency survives a server restart', async (t) => {
  const meterKey = ik('restart-meter');
  const body = meterBody('idem_restart');
  const first = await postForm('/v1/billing/meters', body, meterKey);
  t.equal(first.status, 200, first.text);
  const evMeter = await createMeter('idem_restart_ev');
  const evKey = ik('restart-event');
  const evBody = 'event_name=idem_restart_ev&payload[stripe_customer_id]=cus_restart&payload[value]=8';
  const ev1 = await postForm('/v1/billing/meter_events', evBody, evKey);
  t.equal(ev1.status, 200, ev1.text);
  const v2Key = ik('restart-v2');
  const v2Body = { event_name: 'idem_restart_ev', payload: { stripe_customer_id: 'cus_restart', value: '70' } };
  const v2a = await postJson('/v2/billing/meter_events', v2Body, v2Key);
  t.equal(v2a.status, 200, v2a.text);
  // Let the aggregator see the events before the stop.
  await eventually(async () => (await summaryValue(server, KEY_A, evMeter.id, 'cus_restart')) === 78, 30_000).catch(() => undefined);

  const dataDir = server.dataDir;
  await server.stop();
  t.not(server.proc.exitCode, null, 'the first server exited');
  server = await startServer({ dataDir, key: KEY_A, env: { API_KEYS } });

  const replay = await postForm('/v1/billing/meters', body, meterKey);
  t.equal(replay.status, 200, replay.text);
  t.equal(replay.body.id, first.body.id, 'the same meter after the restart');
  t.equal(replay.headers.get('idempotent-replayed'), 'true');
  t.equal(replay.text, first.text);
  expectIdempotencyError(t, await postForm('/v1/billing/meters', meterBody('idem_restart', 'Other'), meterKey), 'v1', 'mismatch after the restart');
  t.same(await metersNamed('idem_restart'), [first.body.id], 'still one meter');
  const viaClient = await clientFor(server, KEY_A).billing.meters.create(
    { display_name: 'idem_restart', event_name: 'idem_restart', default_aggregation: { formula: 'sum' } },
    { idempotencyKey: meterKey },
  );
  t.equal(viaClient.id, first.body.id, 'client replay after the restart');

  // Meter events retried after the restart with the same key (and no identifier): the same derived identifier, so the
  // event still counts once.
  const ev2 = await postForm('/v1/billing/meter_events', evBody, evKey);
  t.equal(ev2.status, 200, ev2.text);
  t.equal(ev2.body.identifier, ev1.body.identifier, 'the identifier derived from the key is stable across restarts');
  const v2b = await postJson('/v2/billing/meter_events', v2Body, v2Key);
  t.equal(v2b.status, 200, v2b.text);
  t.equal(v2b.body.identifier, v2a.body.identifier);
  t.equal(await settledTotal(server, KEY_A, 'idem_restart_ev', evMeter.id, 'cus_restart'), 78, 'still 8 + 70');
});
