/**
 * End-to-end tests of Stripe's wire conventions against the real server (dist/main.js in a child process): Request-Id,
 * Stripe-Version, v1 form encodings (node, python, curl), v2 JSON bodies, Stripe-style errors for unknown, missing and
 * malformed parameters, body size limits, stream batch limits, list pagination params, unknown routes, and that no bad
 * input can take the process down.
 */
import net from 'node:net';
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually, currentRange, type TestServer } from './helpers/server';
import { expectStripeError } from './helpers/assertions';

type Res = Awaited<ReturnType<TestServer['request']>>;
type Flavor = 'v1' | 'v2';

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const JSON_CT = { 'content-type': 'application/json' };
const CURRENT_VERSION = '2026-10-28.endive';
const REQUEST_ID = /^req_[0-9A-Za-z]{10,}$/;
const RFC3339_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

let server: TestServer;

/** Every error response seen in this file, re-checked at the end. */
const seenErrors: { label: string; flavor: Flavor; res: Res }[] = [];

t.before(async () => {
  server = await startServer();
});
t.teardown(() => server?.stop());

function alive(s: TestServer): boolean {
  return s.proc.exitCode === null && s.proc.signalCode === null;
}

/** A raw request that reports a connection failure as status -1 instead of throwing (a crashed server). */
async function req(
  method: string,
  path: string,
  opts: { body?: string | Buffer; headers?: Record<string, string>; key?: string | null } = {},
  s: TestServer = server,
): Promise<Res> {
  try {
    return await s.request(method, path, opts);
  } catch (err) {
    return { status: -1, headers: new Headers(), body: null, text: `request failed: ${String((err as Error)?.cause ?? err)}` };
  }
}

const postForm = (path: string, body: string, extra: Record<string, string> = {}, s: TestServer = server) =>
  req('POST', path, { body, headers: { ...FORM, ...extra } }, s);
const postJson = (path: string, body: unknown, extra: Record<string, string> = {}, key?: string | null, s: TestServer = server) =>
  req('POST', path, { body: typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body), headers: { ...JSON_CT, ...extra }, key }, s);

/**
 * Asserts a Stripe error response: the status, JSON content type, a Request-Id, a parseable body with error.type (v1) or
 * error.code (v2) and a message. Returns the `error` object.
 */
function expectError(t: tap.Test, res: Res, status: number, flavor: Flavor, label: string): Record<string, any> {
  seenErrors.push({ label, flavor, res });
  t.equal(res.status, status, `${label}: status ${status} (body ${res.text.slice(0, 300)})`);
  t.match(res.headers.get('content-type') ?? '', /^application\/json/, `${label}: JSON content type`);
  t.match(res.headers.get('request-id') ?? '', REQUEST_ID, `${label}: Request-Id`);
  let parsed: any = null;
  try {
    parsed = JSON.parse(res.text);
  } catch {
    parsed = null;
  }
  t.ok(parsed && typeof parsed === 'object' && parsed.error && typeof parsed.error === 'object', `${label}: body is a JSON error object`);
  const error = (parsed?.error ?? {}) as Record<string, any>;
  if (flavor === 'v1') {
    t.equal(typeof error.type, 'string', `${label}: v1 error.type`);
  } else {
    t.equal(typeof error.code, 'string', `${label}: v2 error.code`);
    t.ok(error.code.length > 0, `${label}: v2 error.code is not empty`);
  }
  t.equal(typeof error.message, 'string', `${label}: error.message`);
  return error;
}

/** Creates a meter through the official client (unique event names per subtest). */
async function createMeter(eventName: string, formula: 'sum' | 'count' | 'last' = 'sum'): Promise<Stripe.Response<Stripe.Billing.Meter>> {
  return server.stripe().billing.meters.create({ display_name: eventName, event_name: eventName, default_aggregation: { formula } });
}

async function newSessionToken(s: TestServer = server): Promise<string> {
  const res = await postJson('/v2/billing/meter_event_session', {}, {}, undefined, s);
  if (res.status !== 200) throw new Error(`meter_event_session: ${res.status} ${res.text}`);
  return res.body.authentication_token as string;
}

async function summaryValue(meterId: string, customer: string): Promise<number | null> {
  const { start, end } = currentRange();
  const list = await server.stripe().billing.meters.listEventSummaries(meterId, { customer, start_time: start, end_time: end });
  return list.data.length === 1 ? list.data[0].aggregated_value : null;
}

// ---------------------------------------------------------------------------------------------------------------------

t.test('Request-Id on every response: success, 4xx, 404 route', async (t) => {
  const responses: [string, Res][] = [
    ['GET list 200', await req('GET', '/v1/billing/meters')],
    ['POST session 200', await postJson('/v2/billing/meter_event_session', {})],
    ['GET healthz 200', await req('GET', '/healthz')],
    ['400 bad limit', await req('GET', '/v1/billing/meters?limit=0')],
    ['401 no key', await req('GET', '/v1/billing/meters', { key: null })],
    ['401 no key v2', await postJson('/v2/billing/meter_events', {}, {}, null)],
    ['404 missing meter', await req('GET', '/v1/billing/meters/mtr_test_doesnotexist')],
    ['404 unknown v1 route', await req('GET', '/v1/not_a_route')],
    ['404 unknown v2 route', await postJson('/v2/not_a_route', {})],
  ];
  const ids = new Set<string>();
  for (const [label, res] of responses) {
    const id = res.headers.get('request-id') ?? '';
    t.match(id, REQUEST_ID, `${label}: Request-Id ${id}`);
    ids.add(id);
  }
  t.equal(ids.size, responses.length, 'every response has its own Request-Id');
  t.equal(responses[0][1].status, 200);
  t.equal(responses[3][1].status, 400);
  t.equal(responses[4][1].status, 401);
  t.equal(responses[7][1].status, 404);

  const meter = await createMeter('wire_reqid');
  t.match(meter.lastResponse.requestId, REQUEST_ID, 'the stripe client reads the Request-Id');
  const err = await expectStripeError(
    t,
    server.stripe().billing.meters.retrieve('mtr_test_nope'),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 404 },
    'retrieve a missing meter',
  );
  t.match(err?.requestId, REQUEST_ID, 'errors carry the Request-Id too');
});

t.test('Stripe-Version is echoed when sent, defaulted when absent', async (t) => {
  for (const version of ['2024-09-30.acacia', CURRENT_VERSION, '2025-03-31.basil']) {
    const ok = await req('GET', '/v1/billing/meters', { headers: { 'stripe-version': version } });
    t.equal(ok.status, 200);
    t.equal(ok.headers.get('stripe-version'), version, `v1 success echoes ${version}`);
    const err = await req('GET', '/v1/billing/meters?limit=0', { headers: { 'stripe-version': version } });
    t.equal(err.status, 400);
    t.equal(err.headers.get('stripe-version'), version, `v1 error echoes ${version}`);
    const v2 = await postJson('/v2/billing/meter_event_session', {}, { 'stripe-version': version });
    t.equal(v2.status, 200);
    t.equal(v2.headers.get('stripe-version'), version, `v2 echoes ${version}`);
    const notFound = await req('GET', '/v1/not_a_route', { headers: { 'stripe-version': version } });
    t.equal(notFound.status, 404);
    t.equal(notFound.headers.get('stripe-version'), version, `404 route echoes ${version}`);
    const unauth = await req('GET', '/v1/billing/meters', { key: null, headers: { 'stripe-version': version } });
    t.equal(unauth.status, 401);
    t.equal(unauth.headers.get('stripe-version'), version, `401 echoes ${version}`);
  }
  // python3-stripe sends no Stripe-Version at all.
  for (const res of [await req('GET', '/v1/billing/meters'), await req('GET', '/v1/not_a_route'), await postJson('/v2/billing/meter_event_session', {})]) {
    t.equal(res.headers.get('stripe-version'), CURRENT_VERSION, 'absent: the current version');
  }
  // Through the official client: its pinned version, or the one passed to the constructor.
  const list = await server.stripe().billing.meters.list({ limit: 1 });
  t.equal(list.lastResponse.apiVersion, CURRENT_VERSION, 'stripe 23.1.0 pins 2026-10-28.endive and gets it back');
  const old = new Stripe(server.key, {
    host: '127.0.0.1',
    port: server.port,
    protocol: 'http',
    telemetry: false,
    apiVersion: '2024-09-30.acacia' as Stripe.LatestApiVersion,
  });
  const oldList = await old.billing.meters.list({ limit: 1 });
  t.equal(oldList.lastResponse.apiVersion, '2024-09-30.acacia', 'an app pinned to acacia gets acacia back');
  t.equal(oldList.object, 'list');
});

t.test('v1 form encodings: node brackets, %5B%5D brackets, python + spaces, percent escapes', async (t) => {
  // stripe-node: literal brackets, %20 spaces.
  const node = await postForm(
    '/v1/billing/meters',
    'display_name=Wire%20node%20meter&event_name=wire_node&default_aggregation[formula]=sum&customer_mapping[type]=by_id&customer_mapping[event_payload_key]=cust&value_settings[event_payload_key]=val',
  );
  t.equal(node.status, 200, node.text);
  t.equal(node.body.display_name, 'Wire node meter');
  t.equal(node.body.event_name, 'wire_node');
  t.same(node.body.default_aggregation, { formula: 'sum' });
  t.same(node.body.customer_mapping, { event_payload_key: 'cust', type: 'by_id' });
  t.same(node.body.value_settings, { event_payload_key: 'val' });
  t.equal(node.body.event_time_window, null);

  // Percent-encoded brackets (upper and lower case) and python's '+' for spaces.
  const encoded = await postForm(
    '/v1/billing/meters',
    'display_name=Wire+python+meter&event_name=wire_encoded&default_aggregation%5Bformula%5D=count&customer_mapping%5btype%5d=by_id&customer_mapping%5Bevent_payload_key%5D=customer+id',
  );
  t.equal(encoded.status, 200, encoded.text);
  t.equal(encoded.body.display_name, 'Wire python meter', '+ is a space');
  t.same(encoded.body.default_aggregation, { formula: 'count' }, '%5B%5D brackets');
  t.same(encoded.body.customer_mapping, { event_payload_key: 'customer id', type: 'by_id' }, '%5b%5d brackets, + in a value');

  // payload keys and values with escaped & = + ' ( ) and UTF-8 round-trip exactly in the meter event response.
  const ts = Math.floor(Date.now() / 1000) - 60;
  const ev = await postForm(
    '/v1/billing/meter_events',
    `event_name=wire_node&identifier=wire-weird-1&timestamp=${ts}&payload[cust]=cus_wire&payload[val]=3&payload[weird%20key]=a%26b%3Dc%2Bd&payload[quote]=%27%28x%29%21&payload[utf8]=%C3%A9t%C3%A9%20%E2%82%AC`,
  );
  t.equal(ev.status, 200, ev.text);
  t.same(ev.body, {
    object: 'billing.meter_event',
    created: ev.body.created,
    event_name: 'wire_node',
    identifier: 'wire-weird-1',
    livemode: false,
    payload: { cust: 'cus_wire', val: '3', 'weird key': 'a&b=c+d', quote: "'(x)!", utf8: 'été €' },
    timestamp: ts,
  });
  t.ok(Number.isInteger(ev.body.created) && Math.abs(ev.body.created - Date.now() / 1000) < 120, 'created is unix seconds, now');

  // The same through python's encoding: + for spaces, %5B%5D brackets in the body.
  const py = await postForm(
    '/v1/billing/meter_events',
    'event_name=wire_node&identifier=wire-weird-2&payload%5Bcust%5D=cus_wire&payload%5Bval%5D=4&payload%5Bweird+key%5D=a%26b%3Dc%2Bd+e',
  );
  t.equal(py.status, 200, py.text);
  t.same(py.body.payload, { cust: 'cus_wire', val: '4', 'weird key': 'a&b=c+d e' });
  t.equal(py.body.identifier, 'wire-weird-2');

  // And through the official client, which does its own encoding.
  const viaClient = await server.stripe().billing.meterEvents.create({
    event_name: 'wire_node',
    identifier: 'wire-weird-3',
    payload: { cust: 'cus_wire', val: '5', 'weird key': "a&b=c+d'(x)", note: '[] ü 100%' },
  });
  t.same(viaClient.payload, { cust: 'cus_wire', val: '5', 'weird key': "a&b=c+d'(x)", note: '[] ü 100%' }, 'client-encoded payload round-trips');
});

t.test('v1 arrays: expand[]= and expand[0]= forms, node and python queries', async (t) => {
  await createMeter('wire_expand');
  const plain = await req('GET', '/v1/billing/meters?limit=100');
  t.equal(plain.status, 200);
  for (const [label, q] of [
    ['expand[]=', 'expand[]=data.customer_mapping&expand[]=data.value_settings'],
    ['expand[0]=', 'expand[0]=data.customer_mapping&expand[1]=data.value_settings'],
    ['python %5B0%5D', 'expand%5B0%5D=data.customer_mapping&expand%5B1%5D=data.value_settings'],
    ['curl %5B%5D', 'expand%5B%5D=data.customer_mapping'],
  ] as const) {
    const res = await req('GET', `/v1/billing/meters?limit=100&${q}`);
    t.equal(res.status, 200, `${label}: ${res.text.slice(0, 200)}`);
    t.same(res.body, plain.body, `${label}: same list`);
  }
  const meter = await createMeter('wire_expand_post');
  for (const body of ['display_name=Renamed%20A&expand[]=customer_mapping', 'display_name=Renamed%20B&expand[0]=customer_mapping&expand[1]=value_settings']) {
    const res = await postForm(`/v1/billing/meters/${meter.id}`, body);
    t.equal(res.status, 200, res.text);
    t.equal(res.body.id, meter.id);
  }
  const meterEvent = await postForm(
    '/v1/billing/meter_events',
    'event_name=wire_expand_post&payload[stripe_customer_id]=cus_x&payload[value]=1&expand[]=payload',
  );
  t.equal(meterEvent.status, 200, meterEvent.text);
  // Mixing both forms for one name is ambiguous.
  const mixed = await req('GET', '/v1/billing/meters?expand[]=a&expand[0]=b');
  const e = expectError(t, mixed, 400, 'v1', 'expand[] and expand[0] mixed');
  t.equal(e.type, 'invalid_request_error');
  t.equal(e.param, 'expand');
});

t.test('v2 JSON bodies', async (t) => {
  await createMeter('wire_v2');
  const ts = new Date(Math.floor(Date.now() / 1000) * 1000 - 120_000).toISOString();
  const res = await postJson('/v2/billing/meter_events', {
    event_name: 'wire_v2',
    identifier: 'wire-v2-1',
    timestamp: ts,
    payload: { stripe_customer_id: 'cus_v2', value: '7', 'weird key': 'a&b=c+d "q" \\ é' },
  });
  t.equal(res.status, 200, res.text);
  t.same(res.body, {
    object: 'v2.billing.meter_event',
    created: res.body.created,
    event_name: 'wire_v2',
    identifier: 'wire-v2-1',
    livemode: false,
    payload: { stripe_customer_id: 'cus_v2', value: '7', 'weird key': 'a&b=c+d "q" \\ é' },
    timestamp: ts,
  });
  t.match(res.body.created, RFC3339_MS, 'created is RFC 3339 with milliseconds');
  t.match(res.headers.get('content-type') ?? '', /^application\/json/);

  const charset = await postJson(
    '/v2/billing/meter_events',
    { event_name: 'wire_v2', payload: { stripe_customer_id: 'cus_v2', value: '1' } },
    { 'content-type': 'application/json; charset=utf-8' },
  );
  t.equal(charset.status, 200, `content-type with charset: ${charset.text}`);
  t.match(charset.body.timestamp, RFC3339_MS, 'timestamp defaults to now');
  t.type(charset.body.identifier, 'string');
  t.ok(charset.body.identifier.length > 0, 'an identifier is generated');

  const adj = await postJson('/v2/billing/meter_event_adjustments', { event_name: 'wire_v2', type: 'cancel', cancel: { identifier: 'wire-v2-1' } });
  t.equal(adj.status, 200, adj.text);
  t.equal(adj.body.object, 'v2.billing.meter_event_adjustment');
  t.same(adj.body.cancel, { identifier: 'wire-v2-1' });
  t.equal(adj.body.type, 'cancel');

  const token = await newSessionToken();
  const stream = await postJson(
    '/v2/billing/meter_event_stream',
    { events: [{ event_name: 'wire_v2', payload: { stripe_customer_id: 'cus_v2', value: '1' } }] },
    {},
    token,
  );
  t.equal(stream.status, 200, stream.text);
  t.equal(stream.text, '{}', 'the stream answers exactly {}');
  t.match(stream.headers.get('request-id') ?? '', REQUEST_ID);
});

t.test('unknown parameters are rejected with parameter_unknown and the param (v1 and v2, nested)', async (t) => {
  await createMeter('wire_unknown');
  const v1Cases: [string, Promise<Res>, string][] = [
    ['v1 top-level', postForm('/v1/billing/meters', 'display_name=x&event_name=wire_unknown_2&default_aggregation[formula]=sum&bogus=1'), 'bogus'],
    [
      'v1 nested',
      postForm('/v1/billing/meters', 'display_name=x&event_name=wire_unknown_3&default_aggregation[formula]=sum&default_aggregation[bogus]=1'),
      'default_aggregation[bogus]',
    ],
    [
      'v1 nested 2',
      postForm(
        '/v1/billing/meters',
        'display_name=x&event_name=wire_unknown_4&default_aggregation[formula]=sum&customer_mapping[type]=by_id&customer_mapping[event_payload_key]=c&customer_mapping[extra]=1',
      ),
      'customer_mapping[extra]',
    ],
    ['v1 meter event', postForm('/v1/billing/meter_events', 'event_name=wire_unknown&payload[stripe_customer_id]=cus_u&payload[value]=1&value=1'), 'value'],
    [
      'v1 adjustment nested',
      postForm('/v1/billing/meter_event_adjustments', 'event_name=wire_unknown&type=cancel&cancel[identifier]=x&cancel[bogus]=y'),
      'cancel[bogus]',
    ],
    ['v1 update', postForm('/v1/billing/meters/mtr_test_whatever', 'event_name=renamed'), 'event_name'],
    ['v1 GET query', req('GET', '/v1/billing/meters?bogus=1'), 'bogus'],
  ];
  for (const [label, p, param] of v1Cases) {
    const e = expectError(t, await p, 400, 'v1', label);
    t.equal(e.type, 'invalid_request_error', `${label}: type`);
    t.equal(e.code, 'parameter_unknown', `${label}: code`);
    t.equal(e.param, param, `${label}: param`);
    t.equal(e.message, `Received unknown parameter: ${param}`, `${label}: message`);
  }
  const token = await newSessionToken();
  const v2Cases: [string, Promise<Res>, string][] = [
    [
      'v2 meter event',
      postJson('/v2/billing/meter_events', { event_name: 'wire_unknown', payload: { stripe_customer_id: 'c', value: '1' }, bogus: 1 }),
      'bogus',
    ],
    [
      'v2 adjustment nested',
      postJson('/v2/billing/meter_event_adjustments', { event_name: 'wire_unknown', type: 'cancel', cancel: { identifier: 'x', bogus: 'y' } }),
      'cancel[bogus]',
    ],
    ['v2 session', postJson('/v2/billing/meter_event_session', { bogus: true }), 'bogus'],
    [
      'v2 stream top-level',
      postJson('/v2/billing/meter_event_stream', { events: [{ event_name: 'wire_unknown', payload: { c: '1' } }], extra: 1 }, {}, token),
      'extra',
    ],
    [
      'v2 stream nested',
      postJson(
        '/v2/billing/meter_event_stream',
        {
          events: [
            { event_name: 'wire_unknown', payload: { c: '1' } },
            { event_name: 'wire_unknown', payload: { c: '1' }, bogus: 'y' },
          ],
        },
        {},
        token,
      ),
      'events[1][bogus]',
    ],
  ];
  for (const [label, p, param] of v2Cases) {
    const e = expectError(t, await p, 400, 'v2', label);
    t.equal(e.code, 'parameter_unknown', `${label}: code`);
    t.match(e.message, param, `${label}: the message names ${param}`);
  }
  // Through the official client.
  await expectStripeError(
    t,
    server.stripe().billing.meters.create({ display_name: 'x', event_name: 'wire_unknown_5', default_aggregation: { formula: 'sum' }, bogus: 'x' } as any),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400, code: 'parameter_unknown', param: 'bogus' },
    'client: unknown parameter',
  );
});

t.test('missing required params: parameter_missing with the param', async (t) => {
  await createMeter('wire_missing');
  const v1Cases: [string, Promise<Res>, string][] = [
    ['meter without event_name', postForm('/v1/billing/meters', 'display_name=x&default_aggregation[formula]=sum'), 'event_name'],
    ['meter without display_name', postForm('/v1/billing/meters', 'event_name=wire_missing_2&default_aggregation[formula]=sum'), 'display_name'],
    ['meter without default_aggregation', postForm('/v1/billing/meters', 'display_name=x&event_name=wire_missing_3'), 'default_aggregation'],
    [
      'customer_mapping without key',
      postForm('/v1/billing/meters', 'display_name=x&event_name=wire_missing_5&default_aggregation[formula]=sum&customer_mapping[type]=by_id'),
      'customer_mapping[event_payload_key]',
    ],
    ['meter event without payload', postForm('/v1/billing/meter_events', 'event_name=wire_missing'), 'payload'],
    ['meter event without event_name', postForm('/v1/billing/meter_events', 'payload[stripe_customer_id]=c&payload[value]=1'), 'event_name'],
    ['adjustment without type', postForm('/v1/billing/meter_event_adjustments', 'event_name=wire_missing&cancel[identifier]=x'), 'type'],
    ['empty body', postForm('/v1/billing/meter_events', ''), 'event_name'],
  ];
  for (const [label, p, param] of v1Cases) {
    const e = expectError(t, await p, 400, 'v1', label);
    t.equal(e.type, 'invalid_request_error', `${label}: type`);
    t.equal(e.code, 'parameter_missing', `${label}: code`);
    t.equal(e.param, param, `${label}: param`);
    t.equal(e.message, `Missing required param: ${param}.`, `${label}: message`);
  }
  const formula = expectError(
    t,
    await postForm('/v1/billing/meters', 'display_name=x&event_name=wire_missing_6&default_aggregation[formula]='),
    400,
    'v1',
    'empty formula',
  );
  t.equal(formula.param, 'default_aggregation[formula]');

  const meter = await createMeter('wire_missing_summary');
  const summary = expectError(
    t,
    await req('GET', `/v1/billing/meters/${meter.id}/event_summaries?start_time=0&end_time=60`),
    400,
    'v1',
    'summaries without customer',
  );
  t.equal(summary.code, 'parameter_missing');
  t.equal(summary.param, 'customer');

  const token = await newSessionToken();
  const v2Cases: [string, Promise<Res>, string][] = [
    ['v2 event without payload', postJson('/v2/billing/meter_events', { event_name: 'wire_missing' }), 'payload'],
    ['v2 event without event_name', postJson('/v2/billing/meter_events', { payload: { stripe_customer_id: 'c', value: '1' } }), 'event_name'],
    ['v2 adjustment without cancel', postJson('/v2/billing/meter_event_adjustments', { event_name: 'wire_missing', type: 'cancel' }), 'cancel'],
    ['stream without events', postJson('/v2/billing/meter_event_stream', {}, {}, token), 'events'],
    ['stream event without event_name', postJson('/v2/billing/meter_event_stream', { events: [{ payload: { c: '1' } }] }, {}, token), 'events[0][event_name]'],
    [
      'stream event without payload',
      postJson('/v2/billing/meter_event_stream', { events: [{ event_name: 'x', payload: { c: '1' } }, { event_name: 'x' }] }, {}, token),
      'events[1][payload]',
    ],
  ];
  for (const [label, p, param] of v2Cases) {
    const e = expectError(t, await p, 400, 'v2', label);
    t.equal(e.code, 'parameter_missing', `${label}: code`);
    t.match(e.message, param, `${label}: the message names ${param}`);
  }
  await expectStripeError(
    t,
    server.stripe().billing.meters.create({ display_name: 'x', default_aggregation: { formula: 'sum' } } as any),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400, code: 'parameter_missing', param: 'event_name' },
    'client: missing parameter',
  );
});

t.test('malformed bodies: bad JSON on v2, JSON on v1, bad percent escapes on v1', async (t) => {
  await createMeter('wire_malformed');
  const token = await newSessionToken();
  const v2Bad: [string, Promise<Res>][] = [
    ['truncated JSON', postJson('/v2/billing/meter_events', '{"event_name": "wire_malformed", "payload": {')],
    ['not JSON', postJson('/v2/billing/meter_events', 'event_name=wire_malformed')],
    ['top-level array', postJson('/v2/billing/meter_events', '[{"event_name":"wire_malformed"}]')],
    ['top-level string', postJson('/v2/billing/meter_events', '"hello"')],
    ['top-level null', postJson('/v2/billing/meter_events', 'null')],
    ['trailing garbage', postJson('/v2/billing/meter_events', '{"event_name":"wire_malformed"} x')],
    ['session bad JSON', postJson('/v2/billing/meter_event_session', '{')],
    ['adjustment bad JSON', postJson('/v2/billing/meter_event_adjustments', '{"event_name":')],
    ['stream bad JSON', postJson('/v2/billing/meter_event_stream', '{"events":[{"event_name":"a",', {}, token)],
    ['stream top-level array', postJson('/v2/billing/meter_event_stream', '[]', {}, token)],
    ['invalid UTF-8 JSON', postJson('/v2/billing/meter_events', Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]))],
  ];
  for (const [label, p] of v2Bad) {
    const e = expectError(t, await p, 400, 'v2', label);
    t.notMatch(e.message, /unknown error/i, `${label}: not an internal error`);
  }
  const v1Json = expectError(
    t,
    await req('POST', '/v1/billing/meter_events', { body: JSON.stringify({ event_name: 'wire_malformed' }), headers: JSON_CT }),
    400,
    'v1',
    'JSON body on a v1 endpoint',
  );
  t.equal(v1Json.type, 'invalid_request_error');

  const v1Bad: [string, Promise<Res>][] = [
    ['%zz in a value', postForm('/v1/billing/meter_events', 'event_name=%zz&payload[stripe_customer_id]=c&payload[value]=1')],
    ['lone % in a value', postForm('/v1/billing/meter_events', 'event_name=wire_malformed&payload[stripe_customer_id]=100%&payload[value]=1')],
    ['truncated UTF-8 escape', postForm('/v1/billing/meter_events', 'event_name=wire_malformed&payload[stripe_customer_id]=%E2%82&payload[value]=1')],
    ['invalid UTF-8 escape', postForm('/v1/billing/meter_events', 'event_name=wire_malformed&payload[stripe_customer_id]=%FF%FE&payload[value]=1')],
    ['bad escape in a key', postForm('/v1/billing/meter_events', 'event_name=wire_malformed&payload%5Gx%5D=c&payload[value]=1')],
    ['bad escape in a meter create', postForm('/v1/billing/meters', 'display_name=%&event_name=wire_malformed_2&default_aggregation[formula]=sum')],
    ['bad escape in a GET query', req('GET', '/v1/billing/meters?limit=%zz')],
    ['bad escape in a GET query key', req('GET', '/v1/billing/meters?li%mit=1')],
  ];
  for (const [label, p] of v1Bad) {
    const e = expectError(t, await p, 400, 'v1', label);
    t.equal(e.type, 'invalid_request_error', `${label}: type`);
  }
  t.ok(alive(server), 'the server is still running');
});

t.test('body over MAX_BODY_BYTES: 413 JSON error, and the server keeps serving', async (t) => {
  const small = await startServer({ env: { MAX_BODY_BYTES: '2048' } });
  t.teardown(() => small.stop());
  const meter = await small.stripe().billing.meters.create({ display_name: 'Small', event_name: 'wire_small', default_aggregation: { formula: 'sum' } });

  const bigForm = 'event_name=wire_small&payload[stripe_customer_id]=cus_big&payload[value]=1&payload[filler]=' + 'x'.repeat(10 * 1024);
  const v1 = expectError(t, await postForm('/v1/billing/meter_events', bigForm, {}, small), 413, 'v1', '10 KB v1 body');
  t.equal(v1.type, 'invalid_request_error');
  t.match(v1.message, /2048/, 'the message names the limit');

  const bigJson = JSON.stringify({ event_name: 'wire_small', payload: { stripe_customer_id: 'cus_big', value: '1', filler: 'x'.repeat(10 * 1024) } });
  const v2 = expectError(t, await postJson('/v2/billing/meter_events', bigJson, {}, undefined, small), 413, 'v2', '10 KB v2 body');
  t.type(v2.code, 'string');

  const token = await newSessionToken(small);
  const events = Array.from({ length: 100 }, (_, i) => ({
    event_name: 'wire_small',
    identifier: `big-${i}`,
    payload: { stripe_customer_id: 'cus_big', value: '1' },
  }));
  expectError(t, await postJson('/v2/billing/meter_event_stream', { events }, {}, token, small), 413, 'v2', 'stream body over the limit');

  const meterBody = 'display_name=' + 'y'.repeat(10 * 1024) + '&event_name=wire_small_2&default_aggregation[formula]=sum';
  expectError(t, await postForm('/v1/billing/meters', meterBody, { 'idempotency-key': 'wire-413' }, small), 413, 'v1', '10 KB meter create');

  // Much larger than the limit, in several TCP chunks.
  const huge = await postForm('/v1/billing/meter_events', 'a=' + 'z'.repeat(1024 * 1024), {}, small);
  expectError(t, huge, 413, 'v1', '1 MB body');

  t.ok(alive(small), 'the process is still running');
  // Later requests, on new connections, are served.
  const ok = await postForm('/v1/billing/meter_events', 'event_name=wire_small&payload[stripe_customer_id]=cus_big&payload[value]=2', {}, small);
  t.equal(ok.status, 200, `a normal request afterwards: ${ok.text}`);
  const justUnder = await postForm(
    '/v1/billing/meter_events',
    'event_name=wire_small&payload[stripe_customer_id]=cus_big&payload[value]=3&payload[filler]=' + 'w'.repeat(100),
    {},
    small,
  );
  t.equal(justUnder.status, 200, justUnder.text);
  const list = await small.stripe().billing.meters.list();
  t.same(
    list.data.map((m) => m.id),
    [meter.id],
    'the oversized meter create did not create anything',
  );
  const { start, end } = currentRange();
  await eventually(async () => {
    const s = await small.stripe().billing.meters.listEventSummaries(meter.id, { customer: 'cus_big', start_time: start, end_time: end });
    return s.data[0]?.aggregated_value === 5;
  }, 20_000);
  const s = await small.stripe().billing.meters.listEventSummaries(meter.id, { customer: 'cus_big', start_time: start, end_time: end });
  t.equal(s.data[0].aggregated_value, 5, 'only the two accepted events count');
});

t.test('meter event stream batch limits', async (t) => {
  const meter = await createMeter('wire_stream');
  const token = await newSessionToken();
  const ev = (i: number) => ({ event_name: 'wire_stream', identifier: `wire-stream-${i}`, payload: { stripe_customer_id: 'cus_stream', value: '1' } });
  const stream = (body: unknown) => postJson('/v2/billing/meter_event_stream', body, {}, token);

  const e101 = expectError(t, await stream({ events: Array.from({ length: 101 }, (_, i) => ev(1000 + i)) }), 400, 'v2', '101 events');
  t.match(e101.message, /100/, '101 events: the message names the limit');
  expectError(t, await stream({ events: [] }), 400, 'v2', '0 events');
  for (const [label, events] of [
    ['events a string', 'x'],
    ['events an object', { 0: ev(0) }],
    ['events a number', 5],
    ['events null', null],
    ['events true', true],
  ] as const) {
    expectError(t, await stream({ events }), 400, 'v2', label);
  }
  for (const [label, events] of [
    ['an event that is a string', ['x']],
    ['an event that is an array', [[ev(0)]]],
    ['an event that is null', [null]],
    ['payload a string', [{ event_name: 'wire_stream', payload: 'x' }]],
    ['event_name a number', [{ event_name: 5, payload: { stripe_customer_id: 'c', value: '1' } }]],
    ['a bad timestamp', [{ event_name: 'wire_stream', payload: { stripe_customer_id: 'c', value: '1' }, timestamp: 'yesterday' }]],
  ] as const) {
    expectError(t, await stream({ events }), 400, 'v2', label);
  }
  // The boundary: exactly 100 events are accepted and all counted.
  const ok = await stream({ events: Array.from({ length: 100 }, (_, i) => ev(i)) });
  t.equal(ok.status, 200, ok.text);
  t.equal(ok.text, '{}');
  await eventually(async () => (await summaryValue(meter.id, 'cus_stream')) === 100, 20_000).catch(() => undefined);
  t.equal(await summaryValue(meter.id, 'cus_stream'), 100, '100 events counted; none of the rejected batches');
});

t.test('list pagination params', async (t) => {
  const meter = await createMeter('wire_pages');
  for (const limit of ['0', '101', '-1', '1000']) {
    const e = expectError(t, await req('GET', `/v1/billing/meters?limit=${limit}`), 400, 'v1', `limit=${limit}`);
    t.equal(e.type, 'invalid_request_error');
    t.equal(e.param, 'limit', `limit=${limit}: param`);
  }
  for (const limit of ['abc', '1.5', '']) {
    const res = await req('GET', `/v1/billing/meters?limit=${limit}`);
    if (limit === '') {
      t.equal(res.status, 200, 'limit= (empty, null) falls back to the default');
      continue;
    }
    const e = expectError(t, res, 400, 'v1', `limit=${limit}`);
    t.equal(e.param, 'limit');
    t.equal(e.code, 'parameter_invalid_integer');
  }
  for (const limit of ['1', '100']) {
    const res = await req('GET', `/v1/billing/meters?limit=${limit}`);
    t.equal(res.status, 200, `limit=${limit} is allowed`);
    t.equal(res.body.object, 'list');
    t.equal(res.body.url, '/v1/billing/meters');
  }
  const both = expectError(
    t,
    await req('GET', `/v1/billing/meters?starting_after=${meter.id}&ending_before=${meter.id}`),
    400,
    'v1',
    'starting_after + ending_before',
  );
  t.equal(both.type, 'invalid_request_error');
  t.ok(both.param === 'starting_after' || both.param === 'ending_before', `param names one of them (${both.param})`);
  t.match(both.message, /ending_before/);
  t.match(both.message, /starting_after/);

  const { start, end } = currentRange();
  const base = `/v1/billing/meters/${meter.id}/event_summaries?customer=cus_p&start_time=${start}&end_time=${end}`;
  for (const limit of ['0', '101']) {
    const e = expectError(t, await req('GET', `${base}&limit=${limit}`), 400, 'v1', `summaries limit=${limit}`);
    t.equal(e.param, 'limit');
  }
  expectError(t, await req('GET', `${base}&starting_after=a&ending_before=b`), 400, 'v1', 'summaries starting_after + ending_before');

  await expectStripeError(
    t,
    server.stripe().billing.meters.list({ limit: 101 }),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400, param: 'limit' },
    'client: limit 101',
  );
  await expectStripeError(
    t,
    server.stripe().billing.meters.list({ starting_after: meter.id, ending_before: meter.id }),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400 },
    'client: both cursors',
  );
});

t.test('unknown routes: 404 with a Stripe-style JSON error', async (t) => {
  const cases: [string, string, Flavor][] = [
    ['GET', '/v1/not_a_route', 'v1'],
    ['POST', '/v1/billing/meterz', 'v1'],
    ['GET', '/v1/billing/meters/mtr_x/nope', 'v1'],
    ['DELETE', '/v1/billing/meters', 'v1'],
    ['PUT', '/v1/billing/meters', 'v1'],
    ['GET', '/v2/billing/meter_events', 'v2'],
    ['POST', '/v2/billing/nope', 'v2'],
    ['GET', '/', 'v1'],
  ];
  for (const [method, path, flavor] of cases) {
    const res = await req(
      method,
      path,
      method === 'POST' || method === 'PUT' ? { body: flavor === 'v2' ? '{}' : 'a=1', headers: flavor === 'v2' ? JSON_CT : FORM } : {},
    );
    const e = expectError(t, res, 404, flavor, `${method} ${path}`);
    t.equal(
      e.message,
      `Unrecognized request URL (${method}: ${path}). Please see https://docs.stripe.com/api or we can help at https://support.stripe.com/.`,
      `${method} ${path}: message`,
    );
    if (flavor === 'v1') t.equal(e.type, 'invalid_request_error');
  }
  const missing = expectError(t, await req('GET', '/v1/billing/meters/mtr_test_missing'), 404, 'v1', 'unknown meter');
  t.equal(missing.code, 'resource_missing');
  t.equal(missing.param, 'id');
  t.equal(missing.message, "No such billing meter: 'mtr_test_missing'");
  await expectStripeError(
    t,
    server.stripe().rawRequest('GET', '/v1/not_a_route', {}),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 404 },
    'client: unknown route',
  );
});

t.test('HTTP-level abuse: aborted bodies, garbage, deep nesting, prototype keys, too many params', async (t) => {
  // A client that disconnects in the middle of a body, and one that sends garbage instead of HTTP.
  await new Promise<void>((resolve) => {
    const c = net.connect(server.port, '127.0.0.1', () => {
      c.write(`POST /v1/billing/meters HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${server.key}\r\nContent-Length: 1000\r\n\r\ndisplay_name=`);
      setTimeout(() => {
        c.destroy();
        resolve();
      }, 100);
    });
    c.on('error', () => resolve());
  });
  await new Promise<void>((resolve) => {
    const c = net.connect(server.port, '127.0.0.1', () => c.write('NOT HTTP AT ALL\r\n\r\n\x00\x01\x02'));
    c.on('error', () => resolve());
    c.on('close', () => resolve());
    setTimeout(() => {
      c.destroy();
      resolve();
    }, 500);
  });
  t.ok(alive(server), 'alive after an aborted body and garbage');

  // Chunked request bodies are read like any other.
  const chunked = await new Promise<string>((resolve) => {
    let out = '';
    const c = net.connect(server.port, '127.0.0.1', () =>
      c.write(
        `POST /v1/billing/meters HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${server.key}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n` +
          `10\r\ndisplay_name=abc\r\n0\r\n\r\n`,
      ),
    );
    c.on('data', (d) => (out += String(d)));
    c.on('close', () => resolve(out));
    c.on('error', () => resolve(out));
    setTimeout(() => {
      c.destroy();
      resolve(out);
    }, 5000);
  });
  t.match(chunked, /^HTTP\/1\.1 400 /, 'a chunked body is parsed (then rejected for the missing params)');
  t.match(chunked, /"param":"default_aggregation"/);

  const deep = expectError(t, await postForm('/v1/billing/meter_events', 'a[b][c][d][e][f][g][h][i][j]=1'), 400, 'v1', '9 levels of brackets');
  t.equal(deep.type, 'invalid_request_error');
  const many = Array.from({ length: 1001 }, (_, i) => `payload[k${i}]=v`).join('&');
  expectError(t, await postForm('/v1/billing/meter_events', `event_name=x&${many}`), 400, 'v1', '1001 parameters');
  const bigIndex = expectError(t, await req('GET', '/v1/billing/meters?expand[99999]=x'), 400, 'v1', 'array index 99999');
  t.equal(bigIndex.type, 'invalid_request_error');
  const proto = expectError(
    t,
    await postForm(
      '/v1/billing/meters',
      'display_name=x&event_name=wire_proto&default_aggregation[formula]=sum&__proto__[polluted]=1&constructor[prototype][polluted]=1',
    ),
    400,
    'v1',
    'prototype keys (v1)',
  );
  t.equal(proto.code, 'parameter_unknown');
  const protoV2 = expectError(
    t,
    await postJson('/v2/billing/meter_events', '{"__proto__":{"polluted":1},"event_name":"x","payload":{"a":"b"}}'),
    400,
    'v2',
    'prototype keys (v2)',
  );
  t.equal(protoV2.code, 'parameter_unknown');
  const after = await req('GET', '/v1/billing/meters?limit=1');
  t.equal(after.status, 200);
  t.equal(after.body.polluted, undefined, 'nothing was polluted');
  const wrongTypes: [string, string][] = [
    ['payload as a string', 'event_name=x&payload=abc'],
    ['event_name as an array', 'event_name[]=x&payload[stripe_customer_id]=c'],
    ['payload value as a hash', 'event_name=x&payload[stripe_customer_id][a]=c'],
    ['timestamp not an integer', 'event_name=x&payload[stripe_customer_id]=c&timestamp=soon'],
    ['scalar and hash', 'event_name=x&payload=1&payload[a]=2'],
  ];
  for (const [label, body] of wrongTypes) {
    const e = expectError(t, await postForm('/v1/billing/meter_events', body), 400, 'v1', label);
    t.equal(e.type, 'invalid_request_error', `${label}: type`);
    t.type(e.param, 'string', `${label}: names the param`);
  }
  t.ok(alive(server), 'still alive');
});

t.test('every error body seen was valid JSON with error.type (v1) or error.code (v2)', async (t) => {
  t.ok(seenErrors.length >= 80, `${seenErrors.length} error responses checked`);
  for (const { label, flavor, res } of seenErrors) {
    let body: any;
    try {
      body = JSON.parse(res.text);
    } catch {
      t.fail(`${label}: not JSON: ${res.text.slice(0, 100)}`);
      continue;
    }
    const ok = flavor === 'v1' ? typeof body?.error?.type === 'string' : typeof body?.error?.code === 'string';
    if (!ok) t.fail(`${label}: ${res.text.slice(0, 200)}`);
  }
  const v1Types = new Set(seenErrors.filter((e) => e.flavor === 'v1').map((e) => e.res.body?.error?.type));
  for (const type of v1Types)
    t.ok(['api_error', 'card_error', 'idempotency_error', 'invalid_request_error'].includes(type), `v1 type ${type} is one of Stripe's`);
});

t.test('after all the bad input the server is alive and serves good requests', async (t) => {
  t.equal(server.proc.exitCode, null, 'the process has not exited');
  t.equal(server.proc.signalCode, null, 'the process was not killed');
  const meter = await createMeter('wire_alive');
  await server.stripe().billing.meterEvents.create({ event_name: 'wire_alive', payload: { stripe_customer_id: 'cus_alive', value: '2.5' } });
  await server.stripe().v2.billing.meterEvents.create({ event_name: 'wire_alive', payload: { stripe_customer_id: 'cus_alive', value: '0.5' } });
  await eventually(async () => (await summaryValue(meter.id, 'cus_alive')) === 3, 20_000).catch(() => undefined);
  t.equal(await summaryValue(meter.id, 'cus_alive'), 3);
  t.equal(server.stderr.join('').match(/unhandled error|URIError|TypeError/g), null, 'no unhandled errors were logged');
});

t.test('malformed percent escapes in a path parameter: 4xx, not a crash', async (t) => {
  const meter = await createMeter('wire_path');
  const cases: [string, string, string?][] = [
    ['GET', '/v1/billing/meters/%zz'],
    ['GET', '/v1/billing/meters/mtr_%E0%A4%A'],
    ['GET', `/v1/billing/meters/%/event_summaries?customer=c&start_time=0&end_time=60`],
    ['POST', '/v1/billing/meters/%zz/deactivate', ''],
    ['POST', '/v1/billing/meters/%C3%28', 'display_name=x'],
  ];
  for (const [method, path, body] of cases) {
    const res = await req(method, path, body === undefined ? {} : { body, headers: FORM });
    t.ok(res.status === 400 || res.status === 404, `${method} ${path}: 400 or 404, got ${res.status} ${res.text.slice(0, 200)}`);
    if (res.status > 0) {
      const e = expectError(t, res, res.status, 'v1', `${method} ${path}`);
      t.equal(e.type, 'invalid_request_error');
    }
    if (res.status < 0) await new Promise((r) => setTimeout(r, 300)); // let a crashed process finish exiting
    t.ok(alive(server), `${method} ${path}: the server is still running`);
  }
  const ok = await req('GET', `/v1/billing/meters/${meter.id}`);
  t.equal(ok.status, 200, `a good request afterwards: ${ok.text.slice(0, 200)}`);
  t.equal(ok.body?.id, meter.id);
});
