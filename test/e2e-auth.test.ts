/**
 * End-to-end authentication tests against the real server: API keys over Bearer and Basic, redacted errors, meter event
 * session tokens (only on the stream, HMAC-protected, expiring), livemode from sk_live_ keys, and account isolation.
 */
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually, currentRange, type TestServer } from './helpers/server';
import { randomKey, expectStripeError } from './helpers/assertions';

type Res = Awaited<ReturnType<TestServer['request']>>;

const JSON_CT = { 'content-type': 'application/json' };
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const RFC3339_MS = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

const KEY_A = randomKey('sk_test_');
const KEY_B = randomKey('sk_test_');
const KEY_LIVE = randomKey('sk_live_');

let server: TestServer;

t.before(async () => {
  server = await startServer({ key: KEY_A, env: { API_KEYS: [KEY_A, KEY_B, KEY_LIVE].join(',') } });
});
t.teardown(() => server?.stop());

function clientFor(s: TestServer, key: string): Stripe {
  return new Stripe(key, { host: '127.0.0.1', port: s.port, protocol: 'http', telemetry: false, maxNetworkRetries: 0 });
}

const postJson = (s: TestServer, path: string, body: unknown, key?: string | null, headers: Record<string, string> = {}) =>
  s.request('POST', path, { body: JSON.stringify(body), headers: { ...JSON_CT, ...headers }, key });
const postForm = (s: TestServer, path: string, body: string, key?: string | null, headers: Record<string, string> = {}) =>
  s.request('POST', path, { body, headers: { ...FORM, ...headers }, key });

/** A 401 with a v1 (type) or v2 (code) error body. */
function expect401(t: tap.Test, res: Res, flavor: 'v1' | 'v2', label: string): Record<string, any> {
  t.equal(res.status, 401, `${label}: 401 (${res.text.slice(0, 200)})`);
  t.match(res.headers.get('content-type') ?? '', /^application\/json/, `${label}: JSON`);
  t.match(res.headers.get('request-id') ?? '', /^req_/, `${label}: Request-Id`);
  const error = (res.body?.error ?? {}) as Record<string, any>;
  if (flavor === 'v1') t.equal(error.type, 'invalid_request_error', `${label}: v1 type`);
  else t.equal(typeof error.code, 'string', `${label}: v2 code`);
  t.equal(typeof error.message, 'string', `${label}: message`);
  return error;
}

async function createSession(s: TestServer, key?: string): Promise<Record<string, any>> {
  const res = await postJson(s, '/v2/billing/meter_event_session', {}, key);
  if (res.status !== 200) throw new Error(`meter_event_session: ${res.status} ${res.text}`);
  return res.body;
}

const streamBody = (eventName: string, customer = 'cus_auth', value = '1') => ({
  events: [{ event_name: eventName, payload: { stripe_customer_id: customer, value } }],
});

// ---------------------------------------------------------------------------------------------------------------------

t.test('no Authorization header: 401 on v1 and v2', async (t) => {
  const cases: [string, string, 'v1' | 'v2', string | undefined][] = [
    ['GET', '/v1/billing/meters', 'v1', undefined],
    ['POST', '/v1/billing/meters', 'v1', 'display_name=x&event_name=auth_none&default_aggregation[formula]=sum'],
    ['POST', '/v1/billing/meter_events', 'v1', 'event_name=auth_none&payload[stripe_customer_id]=c&payload[value]=1'],
    ['GET', '/v1/billing/meters/mtr_test_x/event_summaries', 'v1', undefined],
    ['POST', '/v2/billing/meter_events', 'v2', '{}'],
    ['POST', '/v2/billing/meter_event_session', 'v2', '{}'],
    ['POST', '/v2/billing/meter_event_stream', 'v2', JSON.stringify(streamBody('auth_none'))],
    ['POST', '/v2/billing/meter_event_adjustments', 'v2', '{}'],
  ];
  for (const [method, path, flavor, body] of cases) {
    const res = await server.request(method, path, { key: null, body, headers: body ? (flavor === 'v2' ? JSON_CT : FORM) : {} });
    const e = expect401(t, res, flavor, `${method} ${path}`);
    t.match(e.message, /^You did not provide an API key\./, `${method} ${path}: Stripe's message`);
  }
  // The official client with an authenticator that adds nothing: no Authorization header at all.
  const anon = new Stripe('', {
    host: '127.0.0.1',
    port: server.port,
    protocol: 'http',
    telemetry: false,
    maxNetworkRetries: 0,
    authenticator: () => Promise.resolve(),
  } as any);
  await expectStripeError(t, anon.billing.meters.list(), Stripe.errors.StripeAuthenticationError, { statusCode: 401 }, 'client v1 without a key');
  await expectStripeError(
    t,
    anon.v2.billing.meterEvents.create({ event_name: 'auth_none', payload: { stripe_customer_id: 'c', value: '1' } }),
    Stripe.errors.StripeAuthenticationError,
    { statusCode: 401 },
    'client v2 without a key',
  );
  // Empty or unknown schemes are not credentials either.
  for (const authorization of ['Bearer', 'Bearer ', 'Basic ', 'Token ' + KEY_A, KEY_A]) {
    const res = await server.request('GET', '/v1/billing/meters', { key: null, headers: { authorization } });
    expect401(t, res, 'v1', `Authorization: ${JSON.stringify(authorization.replace(KEY_A, '<key>'))}`);
  }
});

t.test('an invalid key: 401 with the key redacted', async (t) => {
  const bad = 'sk_test_' + 'q'.repeat(20) + 'wxyz';
  const v1 = expect401(t, await server.request('GET', '/v1/billing/meters', { key: bad }), 'v1', 'bad key v1');
  t.equal(v1.message, 'Invalid API Key provided: sk_test_****wxyz');
  const v2 = expect401(t, await postJson(server, '/v2/billing/meter_events', { event_name: 'x', payload: { a: '1' } }, bad), 'v2', 'bad key v2');
  t.equal(v2.message, 'Invalid API Key provided: sk_test_****wxyz');
  const session = expect401(t, await postJson(server, '/v2/billing/meter_event_session', {}, bad), 'v2', 'bad key session');
  t.equal(session.message, 'Invalid API Key provided: sk_test_****wxyz');

  const badLive = 'sk_live_' + 'r'.repeat(20) + 'L1v3';
  const live = expect401(t, await server.request('GET', '/v1/billing/meters', { key: badLive }), 'v1', 'bad live key');
  t.equal(live.message, 'Invalid API Key provided: sk_live_****L1v3');
  // A near miss of a real key (one character changed) is still invalid and still redacted.
  const nearMiss = KEY_A.slice(0, -1) + (KEY_A.endsWith('a') ? 'b' : 'a');
  const near = expect401(t, await server.request('GET', '/v1/billing/meters', { key: nearMiss }), 'v1', 'near-miss key');
  t.equal(near.message, `Invalid API Key provided: sk_test_****${nearMiss.slice(-4)}`);
  for (const res of [v1, v2, live, near]) {
    t.notMatch(JSON.stringify(res), /q{20}|r{20}/, 'the full key is never echoed');
  }

  const err = await expectStripeError(
    t,
    clientFor(server, bad).billing.meters.list(),
    Stripe.errors.StripeAuthenticationError,
    { statusCode: 401 },
    'client v1',
  );
  t.equal(err?.message, 'Invalid API Key provided: sk_test_****wxyz');
  t.equal(err?.rawType, 'invalid_request_error');
  await expectStripeError(
    t,
    clientFor(server, bad).v2.billing.meterEvents.create({ event_name: 'x', payload: { stripe_customer_id: 'c', value: '1' } }),
    Stripe.errors.StripeAuthenticationError,
    { statusCode: 401, message: 'Invalid API Key provided: sk_test_****wxyz' },
    'client v2',
  );
  await expectStripeError(
    t,
    clientFor(server, bad).v2.billing.meterEventSession.create(),
    Stripe.errors.StripeAuthenticationError,
    { statusCode: 401 },
    'client session',
  );
});

t.test('Basic auth: base64(key:) like curl -u key:, and Basic <key>', async (t) => {
  const basic = (s: string) => ({ authorization: 'Basic ' + Buffer.from(s).toString('base64') });
  const list = await server.request('GET', '/v1/billing/meters', { key: null, headers: basic(`${KEY_A}:`) });
  t.equal(list.status, 200, `GET with Basic base64(key:): ${list.text.slice(0, 200)}`);
  t.equal(list.body.object, 'list');

  const created = await postForm(
    server,
    '/v1/billing/meters',
    'display_name=Basic&event_name=auth_basic&default_aggregation[formula]=sum',
    null,
    basic(`${KEY_A}:`),
  );
  t.equal(created.status, 200, created.text);
  const viaBearer = await server.request('GET', `/v1/billing/meters/${created.body.id}`);
  t.equal(viaBearer.status, 200, 'the meter belongs to the same account as the Bearer key');

  const session = await postJson(server, '/v2/billing/meter_event_session', {}, null, basic(`${KEY_A}:`));
  t.equal(session.status, 200, `v2 with Basic: ${session.text.slice(0, 200)}`);
  const lower = await server.request('GET', '/v1/billing/meters', {
    key: null,
    headers: { authorization: 'basic ' + Buffer.from(`${KEY_A}:`).toString('base64') },
  });
  t.equal(lower.status, 200, 'the scheme is case-insensitive');

  const badBasic = expect401(
    t,
    await server.request('GET', '/v1/billing/meters', { key: null, headers: basic('sk_test_nottherightkey9876:') }),
    'v1',
    'Basic with a bad key',
  );
  t.equal(badBasic.message, 'Invalid API Key provided: sk_test_****9876');
  expect401(t, await server.request('GET', '/v1/billing/meters', { key: null, headers: basic(`:${KEY_A}`) }), 'v1', 'Basic with the key as the password');

  // The spec's securitySchemes.basicAuth: "Authorization: Basic <api_key> | Authorization: Basic <base64 hash of `api_key:`>".
  const raw = await server.request('GET', '/v1/billing/meters', { key: null, headers: { authorization: `Basic ${KEY_A}` } });
  t.equal(raw.status, 200, `Basic <api_key> (unencoded) is accepted: got ${raw.status} ${raw.text.slice(0, 200)}`);
});

t.test('a meter event session token is not an API key', async (t) => {
  const session = await createSession(server);
  const token = session.authentication_token as string;
  const cases: [string, string, 'v1' | 'v2', string | undefined][] = [
    ['GET', '/v1/billing/meters', 'v1', undefined],
    ['POST', '/v1/billing/meters', 'v1', 'display_name=x&event_name=auth_tok&default_aggregation[formula]=sum'],
    ['POST', '/v1/billing/meter_events', 'v1', 'event_name=auth_tok&payload[stripe_customer_id]=c&payload[value]=1'],
    ['POST', '/v2/billing/meter_events', 'v2', JSON.stringify({ event_name: 'auth_tok', payload: { stripe_customer_id: 'c', value: '1' } })],
    ['POST', '/v2/billing/meter_event_session', 'v2', '{}'],
    ['POST', '/v2/billing/meter_event_adjustments', 'v2', JSON.stringify({ event_name: 'auth_tok', type: 'cancel', cancel: { identifier: 'x' } })],
  ];
  for (const [method, path, flavor, body] of cases) {
    const res = await server.request(method, path, { key: token, body, headers: body ? (flavor === 'v2' ? JSON_CT : FORM) : {} });
    const e = expect401(t, res, flavor, `token on ${method} ${path}`);
    t.notOk(e.message.includes(token), 'the token is not echoed');
  }
  await expectStripeError(
    t,
    clientFor(server, token).billing.meters.list(),
    Stripe.errors.StripeAuthenticationError,
    { statusCode: 401 },
    'client: token on meters.list',
  );
  // ... while the same token works on the stream.
  const ok = await postJson(server, '/v2/billing/meter_event_stream', streamBody('auth_tok'), token);
  t.equal(ok.status, 200, ok.text);
  t.equal(ok.text, '{}');
});

t.test('an API key is rejected on the meter event stream', async (t) => {
  for (const key of [KEY_A, KEY_LIVE]) {
    const e = expect401(
      t,
      await postJson(server, '/v2/billing/meter_event_stream', streamBody('auth_stream_key'), key),
      'v2',
      `API key ${key.slice(0, 8)} on the stream`,
    );
    t.not(e.type, 'temporary_session_expired', 'not reported as an expired session');
    t.notOk(e.message.includes(key), 'the key is not echoed');
  }
  const basic = await server.request('POST', '/v2/billing/meter_event_stream', {
    key: null,
    body: JSON.stringify(streamBody('auth_stream_key')),
    headers: { ...JSON_CT, authorization: 'Basic ' + Buffer.from(`${KEY_A}:`).toString('base64') },
  });
  expect401(t, basic, 'v2', 'API key over Basic on the stream');
  const err = await expectStripeError(
    t,
    clientFor(server, KEY_A).v2.billing.meterEventStream.create(streamBody('auth_stream_key')),
    Stripe.errors.StripeAuthenticationError,
    { statusCode: 401 },
    'client: API key on the stream',
  );
  t.notOk(err instanceof Stripe.errors.TemporarySessionExpiredError);
});

t.test('forged and garbled session tokens: 401', async (t) => {
  const session = await createSession(server);
  const token = session.authentication_token as string;
  const dot = token.lastIndexOf('.');
  t.ok(dot > 0, 'the token has a signature part');
  const payload = token.slice(0, dot);
  const sig = token.slice(dot + 1);
  const flip = (c: string) => (c === 'A' ? 'B' : 'A');
  const decodedPayload = Buffer.from(payload.replace(/^[a-z]+_/, ''), 'base64url').toString('utf8');
  const prefix = payload.slice(0, payload.length - payload.replace(/^[a-z]+_/, '').length);
  const farFuture = decodedPayload.replace(/\d+$/, '99999999999999');
  const otherAccount = decodedPayload.replace(/acct_[0-9a-f]+/, 'acct_000000000000000000000000');

  const other = await startServer({ env: { SESSION_TTL_SECONDS: '900' } });
  t.teardown(() => other.stop());
  const foreign = (await createSession(other)).authentication_token as string;

  const forged: [string, string][] = [
    ['garbage', 'mets_garbage'],
    ['prefix only', 'mets_'],
    ['random', 'mets_' + 'x'.repeat(64)],
    ['truncated', token.slice(0, token.length - 5)],
    ['no signature', payload],
    ['empty signature', payload + '.'],
    ['signature flipped', payload + '.' + flip(sig[0]) + sig.slice(1)],
    ['last signature char flipped', payload + '.' + sig.slice(0, -1) + flip(sig[sig.length - 1])],
    ['payload flipped', token.slice(0, prefix.length) + flip(token[prefix.length]) + token.slice(prefix.length + 1)],
    ['expiry extended', prefix + Buffer.from(farFuture).toString('base64url') + '.' + sig],
    ['other account', prefix + Buffer.from(otherAccount).toString('base64url') + '.' + sig],
    ['signed by another server', foreign],
    ['token twice', token + token],
    ['an id, not a token', session.id as string],
  ];
  for (const [label, bad] of forged) {
    const e = expect401(t, await postJson(server, '/v2/billing/meter_event_stream', streamBody('auth_forged'), bad), 'v2', label);
    t.not(e.type, 'temporary_session_expired', `${label}: not reported as expired`);
  }
  await expectStripeError(
    t,
    clientFor(server, 'mets_garbage').v2.billing.meterEventStream.create(streamBody('auth_forged')),
    Stripe.errors.StripeAuthenticationError,
    { statusCode: 401 },
    'client: garbled token',
  );
  // The genuine token still works after all those attempts.
  const ok = await postJson(server, '/v2/billing/meter_event_stream', streamBody('auth_forged'), token);
  t.equal(ok.status, 200, ok.text);
  const foreignOk = await postJson(other, '/v2/billing/meter_event_stream', streamBody('auth_forged'), foreign);
  t.equal(foreignOk.status, 200, 'the foreign token works on its own server');
});

t.test('session response shape', async (t) => {
  const before = Date.now();
  const res = await postJson(server, '/v2/billing/meter_event_session', {});
  const after = Date.now();
  t.equal(res.status, 200, res.text);
  const s = res.body;
  t.same(Object.keys(s).sort(), ['authentication_token', 'created', 'expires_at', 'id', 'livemode', 'object']);
  t.equal(s.object, 'v2.billing.meter_event_session');
  t.type(s.id, 'string');
  t.match(s.id, /^mes_test_/, 'a test-mode session id');
  t.type(s.authentication_token, 'string');
  t.ok(s.authentication_token.length >= 32, 'a long token');
  t.match(s.created, RFC3339_MS, 'created is RFC 3339 with milliseconds');
  t.match(s.expires_at, RFC3339_MS, 'expires_at is RFC 3339 with milliseconds');
  const created = Date.parse(s.created);
  t.ok(created >= before - 1000 && created <= after + 1000, 'created is now');
  t.equal(Date.parse(s.expires_at) - created, 900_000, 'expires_at = created + 15 minutes (the default TTL)');
  t.equal(s.livemode, false);

  const second = await createSession(server);
  t.not(second.id, s.id, 'every session has its own id');
  t.not(second.authentication_token, s.authentication_token, 'and its own token');

  // Through the official client, and its token through the official client.
  const viaClient = await server.stripe().v2.billing.meterEventSession.create();
  t.equal(viaClient.object, 'v2.billing.meter_event_session');
  t.equal(viaClient.livemode, false);
  t.equal(Date.parse(viaClient.expires_at as unknown as string) - Date.parse(viaClient.created as unknown as string), 900_000);
  const meter = await server.stripe().billing.meters.create({ display_name: 'Session', event_name: 'auth_session', default_aggregation: { formula: 'sum' } });
  await clientFor(server, viaClient.authentication_token).v2.billing.meterEventStream.create(streamBody('auth_session', 'cus_session', '4'));
  // Both earlier tokens stay valid: a new session does not revoke the previous ones.
  t.equal((await postJson(server, '/v2/billing/meter_event_stream', streamBody('auth_session', 'cus_session', '2'), s.authentication_token)).status, 200);
  const { start, end } = currentRange();
  const value = async () =>
    (await server.stripe().billing.meters.listEventSummaries(meter.id, { customer: 'cus_session', start_time: start, end_time: end })).data[0]
      ?.aggregated_value;
  await eventually(async () => (await value()) === 6, 20_000).catch(() => undefined);
  t.equal(await value(), 6, "events sent with session tokens are counted for the key's account");
});

t.test('an expired session token: 401 temporary_session_expired / TemporarySessionExpiredError', async (t) => {
  const short = await startServer({ env: { SESSION_TTL_SECONDS: '1' } });
  t.teardown(() => short.stop());
  const used = await createSession(short);
  t.equal(Date.parse(used.expires_at) - Date.parse(used.created), 1000, 'expires_at - created = SESSION_TTL_SECONDS');
  // Used once while (probably) fresh, so any cache of verified tokens holds it...
  await postJson(short, '/v2/billing/meter_event_stream', streamBody('auth_expired'), used.authentication_token);
  // ...and one never used before it expires.
  const unused = await createSession(short);
  const waitUntil = Math.max(Date.parse(used.expires_at), Date.parse(unused.expires_at)) + 500;
  await new Promise((r) => setTimeout(r, Math.max(0, waitUntil - Date.now())));

  for (const [label, token] of [
    ['used before expiry', used.authentication_token],
    ['never used before expiry', unused.authentication_token],
  ] as const) {
    const res = await postJson(short, '/v2/billing/meter_event_stream', streamBody('auth_expired'), token);
    t.equal(res.status, 401, `${label}: 401 (${res.text})`);
    t.equal(res.body?.error?.type, 'temporary_session_expired', `${label}: type`);
    t.equal(res.body?.error?.code, 'billing_meter_event_session_expired', `${label}: code`);
    t.type(res.body?.error?.message, 'string');
    t.type(res.body?.error?.doc_url, 'string', `${label}: doc_url (required by the spec)`);
    const err = await expectStripeError(
      t,
      clientFor(short, token).v2.billing.meterEventStream.create(streamBody('auth_expired')),
      Stripe.errors.TemporarySessionExpiredError,
      { statusCode: 401, code: 'billing_meter_event_session_expired' },
      `client, ${label}`,
    );
    t.equal(err?.type, 'TemporarySessionExpiredError');
  }
  // A fresh session works again (the key itself is unaffected).
  const fresh = await createSession(short);
  t.equal(fresh.object, 'v2.billing.meter_event_session');
  t.ok(Date.parse(fresh.expires_at) > Date.parse(unused.expires_at), 'a later expiry');
});

t.test('a live key yields livemode objects', async (t) => {
  const live = clientFor(server, KEY_LIVE);
  const meter = await live.billing.meters.create({ display_name: 'Live', event_name: 'auth_live', default_aggregation: { formula: 'sum' } });
  t.equal(meter.livemode, true);
  t.match(meter.id, /^mtr_(?!test_)/, 'a live id has no test_ segment');
  const ev = await live.billing.meterEvents.create({ event_name: 'auth_live', payload: { stripe_customer_id: 'cus_live', value: '3' } });
  t.equal(ev.livemode, true);
  const v2 = await live.v2.billing.meterEvents.create({ event_name: 'auth_live', payload: { stripe_customer_id: 'cus_live', value: '4' } });
  t.equal(v2.livemode, true);
  const adj = await live.billing.meterEventAdjustments.create({ event_name: 'auth_live', type: 'cancel', cancel: { identifier: 'nothing-to-cancel' } });
  t.equal(adj.livemode, true);
  const session = await live.v2.billing.meterEventSession.create();
  t.equal(session.livemode, true);
  t.notMatch(session.id, /_test_/, 'a live session id');
  await clientFor(server, session.authentication_token).v2.billing.meterEventStream.create(streamBody('auth_live', 'cus_live', '5'));
  const list = await live.billing.meters.list();
  t.same(
    list.data.map((m) => [m.id, m.livemode]),
    [[meter.id, true]],
    'the live account sees only its live meter',
  );
  const { start, end } = currentRange();
  const summary = async () => (await live.billing.meters.listEventSummaries(meter.id, { customer: 'cus_live', start_time: start, end_time: end })).data[0];
  await eventually(async () => (await summary())?.aggregated_value === 12, 20_000).catch(() => undefined);
  const s = await summary();
  t.equal(s?.aggregated_value, 12);
  t.equal(s?.livemode, true, 'summaries are livemode too');

  const testMeter = await clientFor(server, KEY_A).billing.meters.create({
    display_name: 'Test',
    event_name: 'auth_live_vs_test',
    default_aggregation: { formula: 'sum' },
  });
  t.equal(testMeter.livemode, false, 'a test key still yields test objects');
  t.match(testMeter.id, /^mtr_test_/);
});

t.test('two keys are two accounts that cannot see each other', async (t) => {
  const a = clientFor(server, KEY_A);
  const b = clientFor(server, KEY_B);
  const meterA = await a.billing.meters.create({ display_name: 'A', event_name: 'auth_iso', default_aggregation: { formula: 'sum' } });
  const onlyA = await a.billing.meters.create({ display_name: 'A only', event_name: 'auth_iso_only_a', default_aggregation: { formula: 'sum' } });

  const listB = await b.billing.meters.list({ limit: 100 });
  t.same(
    listB.data.map((m) => m.id),
    [],
    "B lists none of A's meters",
  );
  await expectStripeError(
    t,
    b.billing.meters.retrieve(meterA.id),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 404, code: 'resource_missing' },
    "B retrieves A's meter",
  );
  await expectStripeError(
    t,
    b.billing.meters.update(meterA.id, { display_name: 'hijacked' }),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 404 },
    "B updates A's meter",
  );
  await expectStripeError(t, b.billing.meters.deactivate(meterA.id), Stripe.errors.StripeInvalidRequestError, { statusCode: 404 }, "B deactivates A's meter");
  const { start, end } = currentRange();
  await expectStripeError(
    t,
    b.billing.meters.listEventSummaries(meterA.id, { customer: 'cus_iso', start_time: start, end_time: end }),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 404 },
    "B reads A's summaries",
  );
  await expectStripeError(
    t,
    b.billing.meterEvents.create({ event_name: 'auth_iso_only_a', payload: { stripe_customer_id: 'cus_iso', value: '1' } }),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400, code: 'no_meter' },
    "B cannot send events to A's meter",
  );
  const stillA = await a.billing.meters.retrieve(meterA.id);
  t.equal(stillA.display_name, 'A', "A's meter is unchanged");
  t.equal(stillA.status, 'active');

  // Event names are per account: B may use the same one.
  const meterB = await b.billing.meters.create({ display_name: 'B', event_name: 'auth_iso', default_aggregation: { formula: 'sum' } });
  t.not(meterB.id, meterA.id);
  await expectStripeError(
    t,
    a.billing.meters.create({ display_name: 'A again', event_name: 'auth_iso', default_aggregation: { formula: 'sum' } }),
    Stripe.errors.StripeInvalidRequestError,
    { statusCode: 400 },
    'within one account the event name is taken',
  );

  await a.billing.meterEvents.create({ event_name: 'auth_iso', identifier: 'iso-shared-id', payload: { stripe_customer_id: 'cus_iso', value: '1' } });
  // The same identifier in another account is another event.
  await b.billing.meterEvents.create({ event_name: 'auth_iso', identifier: 'iso-shared-id', payload: { stripe_customer_id: 'cus_iso', value: '10' } });
  const tokenB = (await b.v2.billing.meterEventSession.create()).authentication_token;
  await clientFor(server, tokenB).v2.billing.meterEventStream.create({
    events: [
      { event_name: 'auth_iso', payload: { stripe_customer_id: 'cus_iso', value: '100' } },
      { event_name: 'auth_iso_only_a', payload: { stripe_customer_id: 'cus_iso', value: '1000' } },
    ],
  });
  const sum = async (c: Stripe, id: string) =>
    (await c.billing.meters.listEventSummaries(id, { customer: 'cus_iso', start_time: start, end_time: end })).data[0]?.aggregated_value;
  await eventually(async () => (await sum(b, meterB.id)) === 110, 20_000).catch(() => undefined);
  t.equal(await sum(b, meterB.id), 110, 'B counts its own v1 and stream events');
  t.equal(await sum(a, meterA.id), 1, 'A counts only its own event');
  t.equal(await sum(a, onlyA.id), 0, "B's stream event for A's event name did not reach A");

  const listA = await a.billing.meters.list({ limit: 100 });
  t.notOk(
    listA.data.some((m) => m.id === meterB.id),
    "A does not list B's meter",
  );
  const sessionA = await a.v2.billing.meterEventSession.create();
  t.not(sessionA.authentication_token, tokenB);
});
