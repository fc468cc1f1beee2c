/**
 * End-to-end: meter events through every ingestion path (v1, v2, v2 session + stream), their synchronous and
 * asynchronous validation, identifier and Idempotency-Key deduplication, adjustments, the v2 core events that report
 * stream problems, and freshness. Driven with the official stripe client against the real server.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer, eventually, currentRange, type TestServer } from './helpers/server';
import { uniqueName, expectError, type ExpectedError } from './helpers/assertions';

const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/;
const DAY = 86400;
const nowS = () => Math.floor(Date.now() / 1000);
const iso = (unixSeconds: number) => new Date(unixSeconds * 1000).toISOString();
/** Wide enough for everything these tests send: 35 days back to 10 minutes ahead. */
const WIDE = () => currentRange(35 * DAY);
/** Value that marks "everything sent before it was aggregated". */
const SENTINEL = 1000;

t.test('meter events end to end', async (t) => {
  const server: TestServer = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();

  async function meter(prefix: string, extra: Partial<Stripe.Billing.MeterCreateParams> = {}): Promise<Stripe.Billing.Meter> {
    return stripe.billing.meters.create({
      display_name: prefix,
      event_name: uniqueName(prefix),
      default_aggregation: { formula: 'sum' },
      ...extra,
    });
  }

  async function summaryValue(meterId: string, customer: string): Promise<number | undefined> {
    const { start, end } = WIDE();
    const list = await stripe.billing.meters.listEventSummaries(meterId, { customer, start_time: start, end_time: end });
    return list.data.length === 1 ? list.data[0].aggregated_value : undefined;
  }

  /** Polls until the summary satisfies `done` (or a generous deadline passes) and returns the last value seen. */
  async function settle(meterId: string, customer: string, done: (v: number | undefined) => boolean, timeoutMs = 10_000): Promise<number | undefined> {
    let last: number | undefined;
    await eventually(async () => done((last = await summaryValue(meterId, customer))), timeoutMs, 50).catch(() => undefined);
    return last;
  }

  const sentinels = new Map<string, number>();
  let stalled = false;
  /**
   * For "not counted" checks: sends a sentinel event (v1, value SENTINEL) after the events under test and polls until
   * the customer's total is `expected` plus the sentinels, then reads it again one flush interval later, so a late
   * (wrongly counted) event still shows. Returns the total without the sentinels (undefined when the sentinel never
   * became visible).
   */
  async function totalBeforeSentinel(m: Stripe.Billing.Meter, customer: string, expected: number): Promise<number | undefined> {
    const key = m.id + '|' + customer;
    const k = (sentinels.get(key) ?? 0) + 1;
    sentinels.set(key, k);
    await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: customer, value: String(SENTINEL) } });
    const target = expected + k * SENTINEL;
    let v = await settle(m.id, customer, (x) => x === target, stalled ? 2000 : 10_000);
    if (v === target) {
      await new Promise((r) => setTimeout(r, 500));
      v = await summaryValue(m.id, customer);
    } else if (v === undefined || v < k * SENTINEL - 100) {
      // The sentinel never showed: the pipeline is stuck. Later checks fail fast instead of each waiting 10 s.
      stalled = true;
      return undefined;
    }
    return v === undefined ? undefined : Math.round((v - k * SENTINEL) * 1e9) / 1e9;
  }

  await t.test('v1 meter events: echoed fields, generated identifier, default timestamp', async (t) => {
    const m = await meter('v1echo');
    const ts = nowS() - 120;
    const before = nowS();
    const e = await stripe.billing.meterEvents.create({
      event_name: m.event_name,
      identifier: 'v1-echo-' + m.id,
      timestamp: ts,
      payload: { stripe_customer_id: 'cus_v1', value: '25', extra: 'kept' },
    });
    const after = nowS();
    t.equal(e.object, 'billing.meter_event');
    t.equal(e.event_name, m.event_name);
    t.equal(e.identifier, 'v1-echo-' + m.id);
    t.equal(e.timestamp, ts, 'timestamp echoed');
    t.same(e.payload, { stripe_customer_id: 'cus_v1', value: '25', extra: 'kept' }, 'payload echoed');
    t.equal(e.livemode, false);
    t.ok(Number.isInteger(e.created) && e.created >= before - 1 && e.created <= after + 1, 'created is now, unix seconds');
    t.notOk('id' in e && (e as any).id, 'a v1 meter event has no id');

    const g1 = await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_v1', value: '1' } });
    const g2 = await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_v1', value: '1' } });
    t.type(g1.identifier, 'string');
    t.ok(g1.identifier.length > 0, 'an identifier is generated');
    t.not(g1.identifier, g2.identifier, 'generated identifiers are unique');
    t.ok(Math.abs(g1.timestamp - nowS()) <= 5, `timestamp defaults to now (${g1.timestamp})`);
    t.equal(await settle(m.id, 'cus_v1', (v) => v === 27), 27, 'all three events are counted (25 + 1 + 1)');
  });

  await t.test('v2 meter events: RFC 3339 times', async (t) => {
    const m = await meter('v2echo');
    const ts = iso(nowS() - 300);
    const e = await stripe.v2.billing.meterEvents.create({
      event_name: m.event_name,
      identifier: 'v2-echo-' + m.id,
      timestamp: ts,
      payload: { stripe_customer_id: 'cus_v2', value: '7' },
    });
    t.equal(e.object, 'v2.billing.meter_event');
    t.equal(e.event_name, m.event_name);
    t.equal(e.identifier, 'v2-echo-' + m.id);
    t.match(e.created, RFC3339, 'created is RFC 3339');
    t.match(e.timestamp, RFC3339, 'timestamp is RFC 3339');
    t.equal(Date.parse(e.timestamp), Date.parse(ts), 'timestamp echoed');
    t.ok(Math.abs(Date.parse(e.created) - Date.now()) < 10_000, 'created is now');
    t.same(e.payload, { stripe_customer_id: 'cus_v2', value: '7' });
    t.equal(e.livemode, false);

    const g = await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_v2', value: '3' } });
    t.ok(typeof g.identifier === 'string' && g.identifier.length > 0, 'identifier generated');
    t.match(g.timestamp, RFC3339);
    t.ok(Math.abs(Date.parse(g.timestamp) - Date.now()) < 10_000, 'timestamp defaults to now');
    t.equal(await settle(m.id, 'cus_v2', (v) => v === 10), 10, 'both v2 events counted');
  });

  await t.test('v2 meter event session and stream', async (t) => {
    const m = await meter('stream');
    const session = await stripe.v2.billing.meterEventSession.create();
    t.equal(session.object, 'v2.billing.meter_event_session');
    t.ok(typeof session.id === 'string' && session.id.length > 0, 'session id');
    t.ok(typeof session.authentication_token === 'string' && session.authentication_token.length > 0, 'authentication token');
    t.match(session.created, RFC3339);
    t.match(session.expires_at, RFC3339);
    t.equal(Date.parse(session.expires_at) - Date.parse(session.created), 15 * 60 * 1000, 'token valid for 15 minutes');
    t.equal(session.livemode, false);

    const streamer = server.stripe(session.authentication_token);
    const res = await streamer.v2.billing.meterEventStream.create({
      events: [
        { event_name: m.event_name, payload: { stripe_customer_id: 'cus_s', value: '1' } },
        { event_name: m.event_name, identifier: uniqueName('sid'), payload: { stripe_customer_id: 'cus_s', value: '2' } },
        { event_name: m.event_name, timestamp: iso(nowS() - 60), payload: { stripe_customer_id: 'cus_s', value: '4' } },
      ],
    });
    t.ok(res === undefined || res === null || Object.keys(res as object).length === 0, 'the stream answers {} (void)');
    const raw = await server.request('POST', '/v2/billing/meter_event_stream', {
      key: session.authentication_token,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ events: [{ event_name: m.event_name, payload: { stripe_customer_id: 'cus_s', value: '8' } }] }),
    });
    t.equal(raw.status, 200);
    t.equal(raw.text, '{}', 'wire response is exactly {}');
    t.equal(await settle(m.id, 'cus_s', (v) => v === 15), 15, 'all streamed events counted (1 + 2 + 4 + 8)');

    await expectError(
      t,
      server.stripe().v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, payload: { stripe_customer_id: 'cus_s', value: '1' } }] }),
      { type: 'StripeAuthenticationError', statusCode: 401 },
      'the stream refuses an API key',
    );
    await expectError(
      t,
      streamer.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_s', value: '1' } }),
      { type: 'StripeAuthenticationError', statusCode: 401 },
      'a session token cannot be used on v1 meter events',
    );
    await expectError(
      t,
      server
        .stripe('mets_forged.token')
        .v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, payload: { stripe_customer_id: 'cus_s', value: '1' } }] }),
      { type: 'StripeAuthenticationError', statusCode: 401 },
      'a forged session token',
    );
    // Full batches: 5 requests of 100 events, summed exactly.
    for (let b = 0; b < 5; b++) {
      await streamer.v2.billing.meterEventStream.create({
        events: Array.from({ length: 100 }, () => ({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_bulk', value: '0.01' } })),
      });
    }
    t.equal(await settle(m.id, 'cus_bulk', (v) => v === 5), 5, '500 streamed events of 0.01 sum to exactly 5');
    const tooMany = Array.from({ length: 101 }, () => ({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_s', value: '1' } }));
    await expectError(
      t,
      streamer.v2.billing.meterEventStream.create({ events: tooMany }),
      { type: 'StripeInvalidRequestError', statusCode: 400 },
      '101 events',
    );
    await expectError(t, streamer.v2.billing.meterEventStream.create({ events: [] }), { type: 'StripeInvalidRequestError', statusCode: 400 }, 'no events');
    t.equal(await totalBeforeSentinel(m, 'cus_s', 15), 15, 'rejected stream requests counted nothing');
  });

  /** All error reports for a meter (or, with meterId null, the no_meter_found ones) until they name every identifier. */
  async function waitForReport(meterId: string | null, identifiers: string[], timeoutMs = 10_000) {
    let result = { events: [] as any[], codesByIdentifier: {} as Record<string, string[]> };
    const type = meterId ? 'v1.billing.meter.error_report_triggered' : 'v1.billing.meter.no_meter_found';
    const collect = async () => {
      const events: any[] = [];
      const codesByIdentifier: Record<string, string[]> = {};
      for await (const e of stripe.v2.core.events.list({ types: [type], limit: 20 })) {
        const ev = e as any;
        if (meterId && ev.related_object?.id !== meterId) continue;
        let relevant = false;
        for (const et of ev.data?.reason?.error_types ?? []) {
          for (const s of et.sample_errors ?? []) {
            const id = s.request?.identifier;
            if (identifiers.includes(id)) {
              relevant = true;
              (codesByIdentifier[id] ??= []).push(et.code);
            }
          }
        }
        if (relevant) events.push(ev);
      }
      result = { events, codesByIdentifier };
      return identifiers.every((id) => id in codesByIdentifier);
    };
    await eventually(collect, timeoutMs, 100).catch(() => undefined);
    return result;
  }

  await t.test('inactive meter rejects v1 and v2 events; streamed ones are reported', async (t) => {
    const m = await meter('inactive');
    await stripe.billing.meters.deactivate(m.id);
    const payload = { stripe_customer_id: 'cus_in', value: '5' };
    await expectError(
      t,
      stripe.billing.meterEvents.create({ event_name: m.event_name, payload }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'archived_meter' },
      'v1 on an inactive meter',
    );
    await expectError(
      t,
      stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'archived_meter' },
      'v2 on an inactive meter',
    );
    const session = await stripe.v2.billing.meterEventSession.create();
    const archivedId = uniqueName('archived');
    await server
      .stripe(session.authentication_token)
      .v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, identifier: archivedId, payload }] });
    const report = await waitForReport(m.id, [archivedId]);
    t.same(report.codesByIdentifier[archivedId], ['archived_meter'], 'the streamed event is reported as archived_meter');

    await stripe.billing.meters.reactivate(m.id);
    t.equal(await totalBeforeSentinel(m, 'cus_in', 0), 0, 'nothing sent while inactive was counted');
  });

  await t.test('synchronous validation errors (v1 and v2)', async (t) => {
    const m = await meter('sync');
    const custom = await meter('synccustom', { customer_mapping: { type: 'by_id', event_payload_key: 'acct' }, value_settings: { event_payload_key: 'qty' } });
    const bad = { type: 'StripeInvalidRequestError', statusCode: 400 };
    const cases: Array<{ what: string; event_name: string; payload: Record<string, string>; code: string; param?: string }> = [
      { what: 'no meter', event_name: uniqueName('nometer'), payload: { stripe_customer_id: 'cus_e', value: '1' }, code: 'no_meter', param: 'event_name' },
      { what: 'no customer', event_name: m.event_name, payload: { value: '1' }, code: 'payload_no_customer_defined', param: 'payload[stripe_customer_id]' },
      { what: 'empty customer', event_name: m.event_name, payload: { stripe_customer_id: '', value: '1' }, code: 'payload_no_customer_defined' },
      {
        what: 'customer under the default key of a custom meter',
        event_name: custom.event_name,
        payload: { stripe_customer_id: 'cus_e', qty: '1' },
        code: 'payload_no_customer_defined',
        param: 'payload[acct]',
      },
      { what: 'no value', event_name: m.event_name, payload: { stripe_customer_id: 'cus_e' }, code: 'payload_no_value_defined', param: 'payload[value]' },
      {
        what: 'value under the default key of a custom meter',
        event_name: custom.event_name,
        payload: { acct: 'cus_e', value: '1' },
        code: 'payload_no_value_defined',
        param: 'payload[qty]',
      },
      {
        what: 'non-numeric value',
        event_name: m.event_name,
        payload: { stripe_customer_id: 'cus_e', value: 'abc' },
        code: 'payload_invalid_value',
        param: 'payload[value]',
      },
      { what: 'exponent value', event_name: m.event_name, payload: { stripe_customer_id: 'cus_e', value: '1e3' }, code: 'payload_invalid_value' },
      { what: 'value with spaces', event_name: m.event_name, payload: { stripe_customer_id: 'cus_e', value: ' 5' }, code: 'payload_invalid_value' },
      {
        what: '16 significant digits',
        event_name: m.event_name,
        payload: { stripe_customer_id: 'cus_e', value: '1234567890123456' },
        code: 'payload_invalid_value',
      },
    ];
    for (const c of cases) {
      const v1want: ExpectedError = { ...bad, code: c.code };
      if (c.param) v1want.param = c.param;
      await expectError(t, stripe.billing.meterEvents.create({ event_name: c.event_name, payload: c.payload }), v1want, `v1 ${c.what}`);
      await expectError(t, stripe.v2.billing.meterEvents.create({ event_name: c.event_name, payload: c.payload }), { ...bad, code: c.code }, `v2 ${c.what}`);
    }
    await expectError(
      t,
      stripe.billing.meterEvents.create({ payload: { stripe_customer_id: 'cus_e', value: '1' } } as unknown as Stripe.Billing.MeterEventCreateParams),
      { ...bad, code: 'parameter_missing', param: 'event_name' },
      'v1 missing event_name',
    );
    await expectError(
      t,
      stripe.billing.meterEvents.create({ event_name: m.event_name } as unknown as Stripe.Billing.MeterEventCreateParams),
      { ...bad, code: 'parameter_missing', param: 'payload' },
      'v1 missing payload',
    );
    await expectError(
      t,
      stripe.v2.billing.meterEvents.create({ event_name: m.event_name } as unknown as Stripe.V2.Billing.MeterEventCreateParams),
      { ...bad },
      'v2 missing payload',
    );

    // Accepted edge values: negative and decimal values, 15 significant digits, a count meter without a value.
    for (const value of ['-2', '0.5', '123456789012345']) {
      const e = await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_ok', value } });
      t.equal(e.payload.value, value, `value ${value} accepted`);
    }
    const count = await meter('synccount', { default_aggregation: { formula: 'count' } });
    await stripe.billing.meterEvents.create({ event_name: count.event_name, payload: { stripe_customer_id: 'cus_ok' } });
    t.equal(await settle(count.id, 'cus_ok', (v) => v === 1), 1, 'a count meter accepts an event without value');
    t.equal(await totalBeforeSentinel(m, 'cus_e', 0), 0, 'no rejected event was counted');
    t.equal(await settle(m.id, 'cus_ok', (v) => v === 123456789012343.5), 123456789012343.5, 'accepted values summed exactly');
  });

  await t.test('timestamps: 35 days back, 5 minutes ahead', async (t) => {
    const m = await meter('ts');
    const bad = { type: 'StripeInvalidRequestError', statusCode: 400 };
    const payload = { stripe_customer_id: 'cus_ts', value: '1' };
    await expectError(
      t,
      stripe.billing.meterEvents.create({ event_name: m.event_name, payload, timestamp: nowS() - 36 * DAY }),
      { ...bad, code: 'timestamp_too_far_in_past', param: 'timestamp' },
      'v1 36 days ago',
    );
    await expectError(
      t,
      stripe.billing.meterEvents.create({ event_name: m.event_name, payload, timestamp: nowS() + 10 * 60 }),
      { ...bad, code: 'timestamp_in_future', param: 'timestamp' },
      'v1 10 minutes ahead',
    );
    await expectError(t, stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload, timestamp: iso(nowS() - 36 * DAY) }), bad, 'v2 36 days ago');
    await expectError(
      t,
      stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload, timestamp: iso(nowS() + 10 * 60) }),
      bad,
      'v2 10 minutes ahead',
    );
    await expectError(t, stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload, timestamp: 'yesterday' }), bad, 'v2 not a date-time');

    const oldTs = nowS() - 34 * DAY;
    const old = await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_ts', value: '2' }, timestamp: oldTs });
    t.equal(old.timestamp, oldTs, '34 days ago is accepted');
    await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_ts', value: '4' }, timestamp: nowS() + 4 * 60 });
    await stripe.v2.billing.meterEvents.create({
      event_name: m.event_name,
      payload: { stripe_customer_id: 'cus_ts', value: '8' },
      timestamp: iso(nowS() - 30 * DAY),
    });
    t.equal(await totalBeforeSentinel(m, 'cus_ts', 14), 14, 'in-range events counted (2 + 4 + 8), rejected ones not');
  });

  await t.test('Idempotency-Key retries count once', async (t) => {
    const m = await meter('idem');
    const payload = { stripe_customer_id: 'cus_idem', value: '6' };
    const k1 = uniqueName('idem-v1');
    const a = await stripe.billing.meterEvents.create({ event_name: m.event_name, payload }, { idempotencyKey: k1 });
    const b = await stripe.billing.meterEvents.create({ event_name: m.event_name, payload }, { idempotencyKey: k1 });
    t.equal(b.identifier, a.identifier, 'v1 retry replays the same event (same generated identifier)');
    t.equal(b.timestamp, a.timestamp);
    t.equal(b.lastResponse.headers['idempotent-replayed'], 'true', 'v1 retry is a replay');

    const k2 = uniqueName('idem-v2');
    const c = await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload }, { idempotencyKey: k2 });
    const d = await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload }, { idempotencyKey: k2 });
    t.equal(d.identifier, c.identifier, 'v2 retry replays the same event');

    const session = await stripe.v2.billing.meterEventSession.create();
    const streamer = server.stripe(session.authentication_token);
    const k3 = uniqueName('idem-stream');
    const body = {
      events: [
        { event_name: m.event_name, payload },
        { event_name: m.event_name, payload },
      ],
    };
    await streamer.v2.billing.meterEventStream.create(body, { idempotencyKey: k3 });
    await streamer.v2.billing.meterEventStream.create(body, { idempotencyKey: k3 });
    t.equal(await totalBeforeSentinel(m, 'cus_idem', 24), 24, 'v1 + v2 + a 2-event stream batch, each sent twice with one key: 6 + 6 + 12');

    await expectError(
      t,
      stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { ...payload, value: '7' } }, { idempotencyKey: k1 }),
      { type: 'StripeIdempotencyError', statusCode: 400 },
      'v1: same key, other parameters',
    );
    await expectError(
      t,
      stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload: { ...payload, value: '7' } }, { idempotencyKey: k2 }),
      { type: 'StripeIdempotencyError', statusCode: 400 },
      'v2: same key, other parameters',
    );
    t.equal(await totalBeforeSentinel(m, 'cus_idem', 24), 24, 'the mismatched reuses counted nothing');

    // A request that failed validation is not saved under its key: the corrected request may reuse it.
    const k4 = uniqueName('idem-invalid');
    await expectError(
      t,
      stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { value: '2' } }, { idempotencyKey: k4 }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'payload_no_customer_defined' },
      'invalid first attempt',
    );
    const fixed = await stripe.billing.meterEvents.create(
      { event_name: m.event_name, payload: { stripe_customer_id: 'cus_idem', value: '2' } },
      { idempotencyKey: k4 },
    );
    t.equal(fixed.payload.value, '2', 'the corrected request with the same key is executed');
    t.equal(await totalBeforeSentinel(m, 'cus_idem', 26), 26, 'and counted once');
  });

  await t.test('stream problems are not counted and are reported as v2 core events', async (t) => {
    const m = await meter('report');
    const session = await stripe.v2.billing.meterEventSession.create();
    const streamer = server.stripe(session.authentication_token);
    const ids = {
      noMeter: uniqueName('r-nometer'),
      noCustomer: uniqueName('r-nocustomer'),
      badValue: uniqueName('r-badvalue'),
      tooOld: uniqueName('r-tooold'),
      future: uniqueName('r-future'),
    };
    const unknownName = uniqueName('no_such_meter');
    await streamer.v2.billing.meterEventStream.create({
      events: [
        { event_name: unknownName, identifier: ids.noMeter, payload: { stripe_customer_id: 'cus_r', value: '100' } },
        { event_name: m.event_name, identifier: ids.noCustomer, payload: { customer: 'cus_r', value: '100' } },
        { event_name: m.event_name, identifier: ids.badValue, payload: { stripe_customer_id: 'cus_r', value: 'lots' } },
        { event_name: m.event_name, identifier: ids.tooOld, timestamp: iso(nowS() - 40 * DAY), payload: { stripe_customer_id: 'cus_r', value: '100' } },
        { event_name: m.event_name, identifier: ids.future, timestamp: iso(nowS() + 3600), payload: { stripe_customer_id: 'cus_r', value: '100' } },
        { event_name: m.event_name, payload: { stripe_customer_id: 'cus_r', value: '3' } },
      ],
    });
    t.equal(await totalBeforeSentinel(m, 'cus_r', 3), 3, 'only the valid streamed event is counted');

    const meterIds = [ids.noCustomer, ids.badValue, ids.tooOld, ids.future];
    const report = await waitForReport(m.id, meterIds);
    t.ok(report.events.length > 0, 'an error_report_triggered event exists for the meter');
    t.same(report.codesByIdentifier[ids.noCustomer], ['meter_event_no_customer_defined'], 'missing customer key');
    t.same(report.codesByIdentifier[ids.badValue], ['meter_event_invalid_value'], 'invalid value');
    t.same(report.codesByIdentifier[ids.tooOld], ['timestamp_too_far_in_past'], 'too old');
    t.same(report.codesByIdentifier[ids.future], ['timestamp_in_future'], 'too far ahead');
    for (const ev of report.events) {
      t.equal(ev.object, 'v2.core.event');
      t.equal(ev.type, 'v1.billing.meter.error_report_triggered');
      t.match(ev.id, /^evt_/);
      t.match(ev.created, RFC3339);
      t.equal(ev.livemode, false);
      t.same(ev.related_object, { id: m.id, type: 'billing.meter', url: `/v1/billing/meters/${m.id}` }, 'related_object is the meter');
      t.type(ev.data.developer_message_summary, 'string');
      t.match(ev.data.validation_start, RFC3339);
      t.match(ev.data.validation_end, RFC3339);
      const total = ev.data.reason.error_types.reduce((n: number, et: any) => n + et.error_count, 0);
      t.equal(ev.data.reason.error_count, total, 'error_count is the sum over error_types');
      for (const et of ev.data.reason.error_types) {
        for (const s of et.sample_errors) t.ok(typeof s.error_message === 'string' && s.error_message.length > 0, 'sample has a message');
      }
      const again = (await stripe.v2.core.events.retrieve(ev.id)) as any;
      t.equal(again.id, ev.id, 'retrievable by id');
      t.same(again.data, ev.data, 'retrieve returns the same data');
    }

    const nm = await waitForReport(null, [ids.noMeter]);
    t.same(nm.codesByIdentifier[ids.noMeter], ['no_meter'], 'an unknown event_name is reported as no_meter');
    for (const ev of nm.events) {
      t.equal(ev.type, 'v1.billing.meter.no_meter_found');
      t.notOk(ev.related_object, 'no_meter_found has no related object');
      t.ok(ev.data.reason.error_count >= 1);
    }
    await expectError(
      t,
      stripe.v2.core.events.retrieve('evt_test_doesnotexist'),
      { type: 'StripeInvalidRequestError', statusCode: 404 },
      'unknown core event id',
    );
  });

  await t.test('freshness: an accepted event is in its summary within 2 s', async (t) => {
    const m = await meter('fresh');
    const { start, end } = WIDE();
    const paths: Array<[string, () => Promise<unknown>, number]> = [
      ['v1', () => stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_f', value: '1' } }), 1],
      ['v2', () => stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload: { stripe_customer_id: 'cus_f', value: '2' } }), 3],
      [
        'stream',
        async () => {
          const session = await stripe.v2.billing.meterEventSession.create();
          const streamer = server.stripe(session.authentication_token);
          return streamer.v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, payload: { stripe_customer_id: 'cus_f', value: '4' } }] });
        },
        7,
      ],
    ];
    for (const [name, send, expected] of paths) {
      await send();
      const ms = await eventually(async () => {
        const list = await stripe.billing.meters.listEventSummaries(m.id, { customer: 'cus_f', start_time: start, end_time: end });
        return list.data[0]?.aggregated_value === expected;
      }, 10_000);
      t.ok(ms < 2000, `${name}: visible within 2 s (took ${ms} ms)`);
    }
  });
  await t.test('adjustments cancel events (v1, v2, before arrival, stream)', async (t) => {
    const m = await meter('adj');
    const p = (customer: string, value: string) => ({ stripe_customer_id: customer, value });

    const idA = uniqueName('cancel-v1');
    await stripe.billing.meterEvents.create({ event_name: m.event_name, identifier: idA, payload: p('cus_a1', '10') });
    await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: p('cus_a1', '1') });
    t.equal(await settle(m.id, 'cus_a1', (v) => v === 11), 11, 'both events counted before the cancel');
    const adj = await stripe.billing.meterEventAdjustments.create({ event_name: m.event_name, type: 'cancel', cancel: { identifier: idA } });
    t.equal(adj.object, 'billing.meter_event_adjustment');
    t.equal(adj.event_name, m.event_name);
    t.equal(adj.type, 'cancel');
    t.same(adj.cancel, { identifier: idA });
    t.ok(adj.status === 'pending' || adj.status === 'complete', `status ${adj.status}`);
    t.equal(adj.livemode, false);
    t.equal(await settle(m.id, 'cus_a1', (v) => v === 1), 1, 'v1 cancel removes the event from the summary');

    const idB = uniqueName('cancel-v2');
    await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, identifier: idB, payload: p('cus_a2', '20') });
    await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, payload: p('cus_a2', '2') });
    t.equal(await settle(m.id, 'cus_a2', (v) => v === 22), 22);
    const adj2 = await stripe.v2.billing.meterEventAdjustments.create({ event_name: m.event_name, type: 'cancel', cancel: { identifier: idB } });
    t.equal(adj2.object, 'v2.billing.meter_event_adjustment');
    t.ok(typeof adj2.id === 'string' && adj2.id.length > 0, 'v2 adjustment has an id');
    t.match(adj2.created, RFC3339);
    t.same(adj2.cancel, { identifier: idB });
    t.equal(adj2.type, 'cancel');
    t.equal(adj2.event_name, m.event_name);
    t.equal(await settle(m.id, 'cus_a2', (v) => v === 2), 2, 'v2 cancel removes the event');

    const idEarly = uniqueName('cancel-early');
    await stripe.billing.meterEventAdjustments.create({ event_name: m.event_name, type: 'cancel', cancel: { identifier: idEarly } });
    await stripe.billing.meterEvents.create({ event_name: m.event_name, identifier: idEarly, payload: p('cus_a3', '50') });
    await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: p('cus_a3', '3') });
    t.equal(await totalBeforeSentinel(m, 'cus_a3', 3), 3, 'a cancel sent before its event still cancels it');

    // Cancels on count and last meters (computed from raw events).
    const count = await meter('adjcount', { default_aggregation: { formula: 'count' } });
    const last = await meter('adjlast', { default_aggregation: { formula: 'last' } });
    const T = nowS() - 600;
    const idCount = uniqueName('cancel-count');
    const idLast = uniqueName('cancel-last');
    await stripe.billing.meterEvents.create({ event_name: count.event_name, identifier: idCount, payload: p('cus_a5', '1') });
    await stripe.billing.meterEvents.create({ event_name: count.event_name, payload: p('cus_a5', '1') });
    await stripe.billing.meterEvents.create({ event_name: last.event_name, payload: p('cus_a5', '6'), timestamp: T });
    await stripe.billing.meterEvents.create({ event_name: last.event_name, identifier: idLast, payload: p('cus_a5', '9'), timestamp: T + 60 });
    t.equal(await settle(count.id, 'cus_a5', (v) => v === 2), 2, 'count before the cancel');
    t.equal(await settle(last.id, 'cus_a5', (v) => v === 9), 9, 'last before the cancel');
    await stripe.billing.meterEventAdjustments.create({ event_name: count.event_name, type: 'cancel', cancel: { identifier: idCount } });
    await stripe.v2.billing.meterEventAdjustments.create({ event_name: last.event_name, type: 'cancel', cancel: { identifier: idLast } });
    t.equal(await settle(count.id, 'cus_a5', (v) => v === 1), 1, 'a cancelled event is not counted');
    t.equal(await settle(last.id, 'cus_a5', (v) => v === 6), 6, 'cancelling the latest event of a last meter falls back to the previous one');

    const idStream = uniqueName('cancel-stream');
    const session = await stripe.v2.billing.meterEventSession.create();
    await server.stripe(session.authentication_token).v2.billing.meterEventStream.create({
      events: [{ event_name: m.event_name, identifier: idStream, payload: p('cus_a4', '40') }],
    });
    await stripe.v2.billing.meterEventAdjustments.create({ event_name: m.event_name, type: 'cancel', cancel: { identifier: idStream } });
    // Cancelling twice and re-sending the cancelled identifier change nothing.
    await stripe.billing.meterEventAdjustments.create({ event_name: m.event_name, type: 'cancel', cancel: { identifier: idStream } });
    await stripe.billing.meterEvents.create({ event_name: m.event_name, identifier: idStream, payload: p('cus_a4', '40') }).catch(() => undefined);
    await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: p('cus_a4', '4') });
    t.equal(await totalBeforeSentinel(m, 'cus_a4', 4), 4, 'a streamed event is cancelled; a second cancel and a resend change nothing');

    const noMeter = uniqueName('adj-nometer');
    await expectError(
      t,
      stripe.billing.meterEventAdjustments.create({ event_name: noMeter, type: 'cancel', cancel: { identifier: idA } }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'no_meter' },
      'v1 adjustment for an event_name without meter',
    );
    await expectError(
      t,
      stripe.v2.billing.meterEventAdjustments.create({ event_name: noMeter, type: 'cancel', cancel: { identifier: idA } }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'no_meter' },
      'v2 adjustment for an event_name without meter',
    );
    await expectError(
      t,
      stripe.billing.meterEventAdjustments.create({ event_name: m.event_name, type: 'cancel' }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'invalid_cancel_configuration' },
      'v1 cancel without identifier',
    );
    await expectError(
      t,
      stripe.v2.billing.meterEventAdjustments.create({
        event_name: m.event_name,
        type: 'cancel',
      } as unknown as Stripe.V2.Billing.MeterEventAdjustmentCreateParams),
      { type: 'StripeInvalidRequestError', statusCode: 400 },
      'v2 cancel without cancel',
    );
    await expectError(
      t,
      stripe.billing.meterEventAdjustments.create({ event_name: m.event_name, type: 'refund' as 'cancel', cancel: { identifier: idA } }),
      { type: 'StripeInvalidRequestError', statusCode: 400, param: 'type' },
      'v1 unknown adjustment type',
    );
  });

  await t.test('a stream batch mixing a duplicate with a new event keeps the new event', async (t) => {
    const m = await meter('dupmix', { default_aggregation: { formula: 'last' } });
    const T = nowS() - 600;
    const idX = uniqueName('mix-x');
    await stripe.billing.meterEvents.create({
      event_name: m.event_name,
      identifier: idX,
      timestamp: T,
      payload: { stripe_customer_id: 'cus_mix', value: '1' },
    });
    t.equal(await settle(m.id, 'cus_mix', (v) => v === 1), 1, 'the first event is aggregated');
    const session = await stripe.v2.billing.meterEventSession.create();
    await server.stripe(session.authentication_token).v2.billing.meterEventStream.create({
      events: [
        { event_name: m.event_name, identifier: idX, timestamp: iso(T), payload: { stripe_customer_id: 'cus_mix', value: '1' } },
        { event_name: m.event_name, identifier: uniqueName('mix-y'), timestamp: iso(T + 60), payload: { stripe_customer_id: 'cus_mix', value: '2' } },
      ],
    });
    t.equal(await settle(m.id, 'cus_mix', (v) => v === 2), 2, 'the new event of the batch is aggregated (last = 2), the duplicate is dropped');
  });

  await t.test('identifier dedup: same identifier counts once (v1, v2, stream, mixed)', async (t) => {
    const m = await meter('dedup');
    const session = await stripe.v2.billing.meterEventSession.create();
    const streamer = server.stripe(session.authentication_token);
    const p = (customer: string, value: string) => ({ stripe_customer_id: customer, value });

    const idV1 = uniqueName('v1dup');
    const first = await stripe.billing.meterEvents.create({ event_name: m.event_name, identifier: idV1, payload: p('cus_d1', '5') });
    t.equal(first.identifier, idV1);
    await stripe.billing.meterEvents.create({ event_name: m.event_name, identifier: idV1, payload: p('cus_d1', '7') }).catch(() => undefined);
    t.equal(await totalBeforeSentinel(m, 'cus_d1', 5), 5, 'v1: the first event counts, the duplicate does not');

    const idV2 = uniqueName('v2dup');
    await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, identifier: idV2, payload: p('cus_d2', '5') });
    await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, identifier: idV2, payload: p('cus_d2', '7') }).catch(() => undefined);
    t.equal(await totalBeforeSentinel(m, 'cus_d2', 5), 5, 'v2: counted once');

    const idS = uniqueName('sdup');
    await streamer.v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, identifier: idS, payload: p('cus_d3', '5') }] });
    await streamer.v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, identifier: idS, payload: p('cus_d3', '7') }] });
    const idBatch = uniqueName('batchdup');
    await streamer.v2.billing.meterEventStream.create({
      events: [
        { event_name: m.event_name, identifier: idBatch, payload: p('cus_d3', '10') },
        { event_name: m.event_name, identifier: idBatch, payload: p('cus_d3', '20') },
      ],
    });
    t.equal(await totalBeforeSentinel(m, 'cus_d3', 15), 15, 'stream: counted once across requests and within one batch (5 + 10)');

    const idMix = uniqueName('mixdup');
    await stripe.billing.meterEvents.create({ event_name: m.event_name, identifier: idMix, payload: p('cus_d4', '3') });
    await stripe.v2.billing.meterEvents.create({ event_name: m.event_name, identifier: idMix, payload: p('cus_d4', '30') }).catch(() => undefined);
    await streamer.v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, identifier: idMix, payload: p('cus_d4', '300') }] });
    t.equal(await totalBeforeSentinel(m, 'cus_d4', 3), 3, 'mixed v1 / v2 / stream: only the first counts');

    // A duplicate for another customer must not count either (the identifier is what matters).
    const idCross = uniqueName('crossdup');
    await stripe.billing.meterEvents.create({ event_name: m.event_name, identifier: idCross, payload: p('cus_d5', '2') });
    await streamer.v2.billing.meterEventStream.create({ events: [{ event_name: m.event_name, identifier: idCross, payload: p('cus_d6', '9') }] });
    t.equal(await totalBeforeSentinel(m, 'cus_d5', 2), 2, 'first customer keeps its event');
    t.equal(await totalBeforeSentinel(m, 'cus_d6', 0), 0, 'the duplicate for another customer is not counted');
  });
});
