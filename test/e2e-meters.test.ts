/**
 * End-to-end: the billing meter resource (create, retrieve, update, list, deactivate/reactivate) driven through the
 * official stripe client against the real server, including account isolation between two API keys.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer, eventually, currentRange } from './helpers/server';
import { uniqueName, expectError, type ExpectedError } from './helpers/assertions';

const KEY_A = 'sk_test_meters_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_meters_b_' + Math.random().toString(36).slice(2, 10);
const KEY_C = 'sk_test_meters_c_' + Math.random().toString(36).slice(2, 10);

const nowS = () => Math.floor(Date.now() / 1000);

t.test('billing meters end to end', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B},${KEY_C}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);
  const stripeC = server.stripe(KEY_C);

  await t.test('create with defaults', async (t) => {
    const eventName = uniqueName('defaults');
    const before = nowS();
    const m = await stripe.billing.meters.create({ display_name: 'API calls', event_name: eventName, default_aggregation: { formula: 'sum' } });
    const after = nowS();
    t.match(m.id, /^mtr_test_/, 'test-mode meter id');
    t.equal(m.object, 'billing.meter');
    t.equal(m.display_name, 'API calls');
    t.equal(m.event_name, eventName);
    t.same(m.default_aggregation, { formula: 'sum' });
    t.same(m.customer_mapping, { event_payload_key: 'stripe_customer_id', type: 'by_id' }, 'default customer_mapping');
    t.same(m.value_settings, { event_payload_key: 'value' }, 'default value_settings');
    t.equal(m.event_time_window, null, 'raw meters have event_time_window null');
    t.equal(m.status, 'active');
    t.same(m.status_transitions, { deactivated_at: null });
    t.equal(m.livemode, false);
    t.ok(Number.isInteger(m.created) && m.created >= before - 1 && m.created <= after + 1, `created is unix seconds now (${m.created})`);
    t.ok(Number.isInteger(m.updated) && m.updated >= m.created, 'updated is unix seconds, not before created');

    const got = await stripe.billing.meters.retrieve(m.id);
    t.same({ ...got }, { ...m }, 'retrieve returns the same object');
  });

  await t.test('create with custom keys, formulas and event_time_window', async (t) => {
    const cases: Array<{ formula: 'sum' | 'count' | 'last'; window?: 'hour' | 'day' }> = [
      { formula: 'count', window: 'hour' },
      { formula: 'last', window: 'day' },
      { formula: 'sum' },
    ];
    for (const c of cases) {
      const eventName = uniqueName(`custom_${c.formula}`);
      const params: Stripe.Billing.MeterCreateParams = {
        display_name: `Custom ${c.formula}`,
        event_name: eventName,
        default_aggregation: { formula: c.formula },
        customer_mapping: { type: 'by_id', event_payload_key: 'account_ref' },
        value_settings: { event_payload_key: 'tokens' },
      };
      if (c.window) params.event_time_window = c.window;
      const m = await stripe.billing.meters.create(params);
      t.same(m.default_aggregation, { formula: c.formula }, `${c.formula}: formula echoed`);
      t.same(m.customer_mapping, { event_payload_key: 'account_ref', type: 'by_id' }, `${c.formula}: customer_mapping echoed`);
      t.same(m.value_settings, { event_payload_key: 'tokens' }, `${c.formula}: value_settings echoed`);
      t.equal(m.event_time_window, c.window ?? null, `${c.formula}: event_time_window ${c.window ?? 'null'}`);
      const got = await stripe.billing.meters.retrieve(m.id);
      t.same({ ...got }, { ...m }, `${c.formula}: retrieve matches create`);
    }
  });

  await t.test('update display_name only', async (t) => {
    const eventName = uniqueName('update');
    const m = await stripe.billing.meters.create({ display_name: 'Before', event_name: eventName, default_aggregation: { formula: 'count' } });
    const u = await stripe.billing.meters.update(m.id, { display_name: 'After' });
    t.equal(u.id, m.id);
    t.equal(u.display_name, 'After', 'display_name changed');
    t.ok(u.updated >= m.updated, 'updated does not go backwards');
    const { display_name: _a, updated: _b, ...restBefore } = m;
    const { display_name: _c, updated: _d, ...restAfter } = u;
    t.same(restAfter, restBefore, 'nothing else changed');
    t.equal((await stripe.billing.meters.retrieve(m.id)).display_name, 'After', 'retrieve sees the new display_name');

    const forbidden: Array<[string, Record<string, unknown>, RegExp]> = [
      ['event_name', { event_name: uniqueName('renamed') }, /^event_name$/],
      ['default_aggregation', { default_aggregation: { formula: 'sum' } }, /^default_aggregation/],
      ['customer_mapping', { customer_mapping: { type: 'by_id', event_payload_key: 'x' } }, /^customer_mapping/],
      ['value_settings', { value_settings: { event_payload_key: 'x' } }, /^value_settings/],
      ['event_time_window', { event_time_window: 'hour' }, /^event_time_window$/],
    ];
    for (const [name, params, param] of forbidden) {
      await expectError(
        t,
        stripe.billing.meters.update(m.id, params as Stripe.Billing.MeterUpdateParams),
        { type: 'StripeInvalidRequestError', statusCode: 400, code: 'parameter_unknown', param },
        `update ${name}`,
      );
    }
    const after = await stripe.billing.meters.retrieve(m.id);
    t.equal(after.event_name, eventName, 'event_name unchanged by the rejected updates');
    t.same(after.default_aggregation, { formula: 'count' }, 'formula unchanged');
    t.equal(after.event_time_window, null, 'event_time_window unchanged');
    t.equal(after.display_name, 'After');
  });

  await t.test('list: limit, manual and automatic pagination, status filter (own account C)', async (t) => {
    const created: Stripe.Billing.Meter[] = [];
    for (let i = 0; i < 5; i++) {
      created.push(
        await stripeC.billing.meters.create({ display_name: `List ${i}`, event_name: uniqueName(`list${i}`), default_aggregation: { formula: 'sum' } }),
      );
    }
    const newestFirst = created.map((m) => m.id).reverse();

    const first = await stripeC.billing.meters.list({ limit: 2 });
    t.equal(first.object, 'list');
    t.equal(first.url, '/v1/billing/meters');
    t.same(
      first.data.map((m) => m.id),
      newestFirst.slice(0, 2),
      'first page: the two newest meters',
    );
    t.equal(first.has_more, true, 'has_more on the first page');
    const second = await stripeC.billing.meters.list({ limit: 2, starting_after: first.data[1].id });
    t.same(
      second.data.map((m) => m.id),
      newestFirst.slice(2, 4),
      'second page via starting_after',
    );
    t.equal(second.has_more, true);
    const third = await stripeC.billing.meters.list({ limit: 2, starting_after: second.data[1].id });
    t.same(
      third.data.map((m) => m.id),
      newestFirst.slice(4),
      'last page',
    );
    t.equal(third.has_more, false, 'no more after the last page');
    const back = await stripeC.billing.meters.list({ limit: 2, ending_before: third.data[0].id });
    t.same(
      back.data.map((m) => m.id),
      newestFirst.slice(2, 4),
      'ending_before goes back one page',
    );

    const all = await stripeC.billing.meters.list({ limit: 2 }).autoPagingToArray({ limit: 100 });
    t.same(
      all.map((m) => m.id),
      newestFirst,
      'autoPagingToArray walks every page, newest first',
    );
    const iterated: string[] = [];
    for await (const m of stripeC.billing.meters.list({ limit: 1 })) iterated.push(m.id);
    t.same(iterated, newestFirst, 'for await with limit 1 walks every meter once');

    const defaultList = await stripeC.billing.meters.list();
    t.equal(defaultList.data.length, 5, 'default limit (10) returns all 5');
    t.equal(defaultList.has_more, false);

    // status filter
    await stripeC.billing.meters.deactivate(created[1].id);
    await stripeC.billing.meters.deactivate(created[3].id);
    const inactive = await stripeC.billing.meters.list({ status: 'inactive' });
    t.same(
      inactive.data.map((m) => m.id),
      [created[3].id, created[1].id],
      'status=inactive lists only deactivated meters',
    );
    t.ok(inactive.data.every((m) => m.status === 'inactive'));
    const active = await stripeC.billing.meters.list({ status: 'active', limit: 1 }).autoPagingToArray({ limit: 100 });
    t.same(
      active.map((m) => m.id),
      [created[4].id, created[2].id, created[0].id],
      'status=active with auto-pagination',
    );

    await expectError(t, stripeC.billing.meters.list({ limit: 0 }), { type: 'StripeInvalidRequestError', statusCode: 400, param: 'limit' }, 'limit 0');
    await expectError(t, stripeC.billing.meters.list({ limit: 101 }), { type: 'StripeInvalidRequestError', statusCode: 400, param: 'limit' }, 'limit 101');
    await expectError(
      t,
      stripeC.billing.meters.list({ status: 'archived' as 'active' }),
      { type: 'StripeInvalidRequestError', statusCode: 400, param: 'status' },
      'unknown status',
    );
    await expectError(
      t,
      stripeC.billing.meters.list({ starting_after: 'mtr_test_doesnotexist' }),
      { type: 'StripeInvalidRequestError' },
      'starting_after an unknown id',
    );
  });

  await t.test('deactivate and reactivate', async (t) => {
    const eventName = uniqueName('lifecycle');
    const m = await stripe.billing.meters.create({ display_name: 'Lifecycle', event_name: eventName, default_aggregation: { formula: 'sum' } });
    const { start, end } = currentRange();
    const usage = async () =>
      (await stripe.billing.meters.listEventSummaries(m.id, { customer: 'cus_life', start_time: start, end_time: end })).data[0]?.aggregated_value;
    await stripe.billing.meterEvents.create({ event_name: eventName, payload: { stripe_customer_id: 'cus_life', value: '4' } });
    await eventually(async () => (await usage()) === 4, 10_000, 50);
    const before = nowS();
    const d = await stripe.billing.meters.deactivate(m.id);
    const after = nowS();
    t.equal(d.status, 'inactive');
    const at = d.status_transitions.deactivated_at;
    t.ok(typeof at === 'number' && Number.isInteger(at) && at >= before - 1 && at <= after + 1, `deactivated_at is now in unix seconds (${at})`);
    t.ok(d.updated >= m.updated);
    const got = await stripe.billing.meters.retrieve(m.id);
    t.equal(got.status, 'inactive', 'retrieve sees inactive');
    t.equal(got.status_transitions.deactivated_at, at);

    await expectError(
      t,
      stripe.billing.meterEvents.create({ event_name: eventName, payload: { stripe_customer_id: 'cus_life', value: '1' } }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'archived_meter' },
      'events for an inactive meter',
    );
    await expectError(t, stripe.billing.meters.deactivate(m.id), { type: 'StripeInvalidRequestError', statusCode: 400 }, 'deactivating twice');
    t.equal(await usage(), 4, 'the usage of an inactive meter stays readable');

    const r = await stripe.billing.meters.reactivate(m.id);
    t.equal(r.status, 'active');
    t.same(r.status_transitions, { deactivated_at: null }, 'reactivation resets deactivated_at');
    t.equal((await stripe.billing.meters.retrieve(m.id)).status, 'active');
    await expectError(t, stripe.billing.meters.reactivate(m.id), { type: 'StripeInvalidRequestError', statusCode: 400 }, 'reactivating an active meter');

    const ev = await stripe.billing.meterEvents.create({ event_name: eventName, payload: { stripe_customer_id: 'cus_life', value: '4' } });
    t.equal(ev.event_name, eventName, 'events accepted again after reactivation');
    await eventually(async () => (await usage()) === 8, 10_000, 50).catch(() => undefined);
    t.equal(await usage(), 8, 'the event sent after reactivation is counted');
  });

  await t.test('lifecycle changes are v2 thin events', async (t) => {
    const m = await stripe.billing.meters.create({ display_name: 'Thin', event_name: uniqueName('thin'), default_aggregation: { formula: 'sum' } });
    await stripe.billing.meters.update(m.id, { display_name: 'Thin 2' });
    await stripe.billing.meters.deactivate(m.id);
    await stripe.billing.meters.reactivate(m.id);
    const types: string[] = [];
    for await (const e of stripe.v2.core.events.list({ object_id: m.id, limit: 2 })) {
      t.equal(e.object, 'v2.core.event');
      t.equal((e as any).related_object?.id, m.id, `${e.type} relates to the meter`);
      t.match(e.created, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/, 'created is RFC 3339');
      types.push(e.type);
    }
    t.same(
      [...types].sort(),
      ['v1.billing.meter.created', 'v1.billing.meter.deactivated', 'v1.billing.meter.reactivated', 'v1.billing.meter.updated'],
      'one event per lifecycle change',
    );
    const onlyCreated = await stripe.v2.core.events.list({ object_id: m.id, types: ['v1.billing.meter.created'] });
    t.same(
      onlyCreated.data.map((e) => e.type),
      ['v1.billing.meter.created'],
      'types filter',
    );
    const one = await stripe.v2.core.events.retrieve(onlyCreated.data[0].id);
    t.equal(one.id, onlyCreated.data[0].id);
    t.equal(one.type, 'v1.billing.meter.created');
  });

  await t.test('duplicate event_name is rejected', async (t) => {
    const eventName = uniqueName('dup');
    const m = await stripe.billing.meters.create({ display_name: 'One', event_name: eventName, default_aggregation: { formula: 'sum' } });
    await expectError(
      t,
      stripe.billing.meters.create({ display_name: 'Two', event_name: eventName, default_aggregation: { formula: 'count' } }),
      { type: 'StripeInvalidRequestError', statusCode: 400, param: 'event_name' },
      'second meter with the same event_name',
    );
    const all = await stripe.billing.meters.list({ limit: 100 }).autoPagingToArray({ limit: 1000 });
    t.same(
      all.filter((x) => x.event_name === eventName).map((x) => x.id),
      [m.id],
      'only the first meter exists',
    );
  });

  await t.test('unknown meter ids are 404 resource_missing', async (t) => {
    const id = 'mtr_test_' + 'x'.repeat(24);
    const want = { type: 'StripeInvalidRequestError', statusCode: 404, code: 'resource_missing' };
    await expectError(t, stripe.billing.meters.retrieve(id), want, 'retrieve');
    await expectError(t, stripe.billing.meters.update(id, { display_name: 'x' }), want, 'update');
    await expectError(t, stripe.billing.meters.deactivate(id), want, 'deactivate');
    await expectError(t, stripe.billing.meters.reactivate(id), want, 'reactivate');
    const { start, end } = currentRange();
    await expectError(t, stripe.billing.meters.listEventSummaries(id, { customer: 'cus_x', start_time: start, end_time: end }), want, 'listEventSummaries');
  });

  await t.test('missing and invalid create params name the param', async (t) => {
    const base = { display_name: 'P', event_name: uniqueName('params'), default_aggregation: { formula: 'sum' as const } };
    const missing: Array<[string, Record<string, unknown>]> = [
      ['display_name', { event_name: base.event_name, default_aggregation: base.default_aggregation }],
      ['event_name', { display_name: 'P', default_aggregation: base.default_aggregation }],
      ['default_aggregation', { display_name: 'P', event_name: base.event_name }],
    ];
    for (const [param, params] of missing) {
      await expectError(
        t,
        stripe.billing.meters.create(params as unknown as Stripe.Billing.MeterCreateParams),
        { type: 'StripeInvalidRequestError', statusCode: 400, code: 'parameter_missing', param },
        `missing ${param}`,
      );
    }
    const invalid: Array<[string | RegExp, Record<string, unknown>, string?]> = [
      ['default_aggregation[formula]', { ...base, default_aggregation: { formula: 'max' } }],
      ['event_time_window', { ...base, event_time_window: 'week' }],
      ['customer_mapping[type]', { ...base, customer_mapping: { event_payload_key: 'k' } }, 'parameter_missing'],
      ['customer_mapping[event_payload_key]', { ...base, customer_mapping: { type: 'by_id' } }, 'parameter_missing'],
      ['customer_mapping[type]', { ...base, customer_mapping: { type: 'by_email', event_payload_key: 'k' } }],
      [/^value_settings\[(other|event_payload_key)\]$/, { ...base, value_settings: { other: 'x' } }],
      ['display_name', { ...base, display_name: 'd'.repeat(251) }],
      ['event_name', { ...base, event_name: 'e'.repeat(101) }],
      ['bogus', { ...base, bogus: '1' }, 'parameter_unknown'],
    ];
    for (const [param, params, code] of invalid) {
      const want: ExpectedError = { type: 'StripeInvalidRequestError', statusCode: 400, param };
      if (code) want.code = code;
      await expectError(t, stripe.billing.meters.create(params as unknown as Stripe.Billing.MeterCreateParams), want, `invalid ${String(param)}`);
    }
    const all = await stripe.billing.meters.list({ limit: 100 }).autoPagingToArray({ limit: 1000 });
    t.notOk(
      all.some((m) => m.event_name === base.event_name),
      'no meter was created by the rejected requests',
    );
    // And the name is still free.
    const ok = await stripe.billing.meters.create(base);
    t.equal(ok.event_name, base.event_name, 'the event_name can still be used');
  });

  await t.test('accounts are walls', async (t) => {
    const eventName = uniqueName('walls');
    const customer = 'cus_shared_walls';
    const mA = await stripe.billing.meters.create({ display_name: 'A', event_name: eventName, default_aggregation: { formula: 'sum' } });
    const notFound = { type: 'StripeInvalidRequestError', statusCode: 404, code: 'resource_missing' };

    await expectError(t, stripeB.billing.meters.retrieve(mA.id), notFound, "B retrieves A's meter");
    await expectError(t, stripeB.billing.meters.update(mA.id, { display_name: 'hijacked' }), notFound, "B renames A's meter");
    await expectError(t, stripeB.billing.meters.deactivate(mA.id), notFound, "B deactivates A's meter");
    const { start, end } = currentRange();
    await expectError(t, stripeB.billing.meters.listEventSummaries(mA.id, { customer, start_time: start, end_time: end }), notFound, "B reads A's summaries");
    const listB = await stripeB.billing.meters.list({ limit: 100 }).autoPagingToArray({ limit: 1000 });
    t.notOk(
      listB.some((m) => m.id === mA.id),
      "B's list does not include A's meter",
    );
    await expectError(
      t,
      stripeB.billing.meterEvents.create({ event_name: eventName, payload: { stripe_customer_id: customer, value: '1' } }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'no_meter' },
      "B sends an event for A's event_name",
    );
    await expectError(
      t,
      stripeB.billing.meterEventAdjustments.create({ event_name: eventName, type: 'cancel', cancel: { identifier: 'x' } }),
      { type: 'StripeInvalidRequestError', statusCode: 400, code: 'no_meter' },
      "B cancels on A's event_name",
    );
    const evB = await stripeB.v2.core.events.list({ object_id: mA.id });
    t.same(evB.data, [], "B sees none of A's thin events");
    const aAfter = await stripe.billing.meters.retrieve(mA.id);
    t.equal(aAfter.display_name, 'A', "A's meter was not renamed");
    t.equal(aAfter.status, 'active', "A's meter was not deactivated");

    // B may use the same event_name for its own meter; usage stays separate even for the same customer id and
    // the same event identifiers.
    const mB = await stripeB.billing.meters.create({ display_name: 'B', event_name: eventName, default_aggregation: { formula: 'sum' } });
    t.not(mB.id, mA.id, 'B gets its own meter');
    const sharedId = uniqueName('shared-identifier');
    await stripe.billing.meterEvents.create({ event_name: eventName, identifier: sharedId, payload: { stripe_customer_id: customer, value: '3' } });
    await stripeB.billing.meterEvents.create({ event_name: eventName, identifier: sharedId, payload: { stripe_customer_id: customer, value: '40' } });
    const session = await stripeB.v2.billing.meterEventSession.create();
    await server.stripe(session.authentication_token).v2.billing.meterEventStream.create({
      events: [{ event_name: eventName, payload: { stripe_customer_id: customer, value: '500' } }],
    });
    // B cancels "its" event with the shared identifier: A's event must survive.
    await stripeB.billing.meterEventAdjustments.create({ event_name: eventName, type: 'cancel', cancel: { identifier: sharedId } });
    await stripe.billing.meterEvents.create({ event_name: eventName, payload: { stripe_customer_id: customer, value: '0.5' } });

    const summaryValue = async (s: Stripe, id: string) =>
      (await s.billing.meters.listEventSummaries(id, { customer, start_time: start, end_time: end })).data[0]?.aggregated_value;
    await eventually(async () => (await summaryValue(stripeB, mB.id)) === 500, 10_000, 50).catch(() => undefined);
    await eventually(async () => (await summaryValue(stripe, mA.id)) === 3.5, 10_000, 50).catch(() => undefined);
    t.equal(await summaryValue(stripe, mA.id), 3.5, "A's summary counts only A's events (3 + 0.5), untouched by B's cancel");
    t.equal(await summaryValue(stripeB, mB.id), 500, "B's summary counts only B's events (40 cancelled + 500)");
    await expectError(t, stripe.billing.meters.listEventSummaries(mB.id, { customer, start_time: start, end_time: end }), notFound, "A reads B's summaries");

    // An A session token cannot reach B's meter either: with A's token the event goes to A's meter.
    const sessionA = await stripe.v2.billing.meterEventSession.create();
    await server.stripe(sessionA.authentication_token).v2.billing.meterEventStream.create({
      events: [{ event_name: eventName, payload: { stripe_customer_id: customer, value: '0.25' } }],
    });
    await eventually(async () => (await summaryValue(stripe, mA.id)) === 3.75, 10_000, 50).catch(() => undefined);
    t.equal(await summaryValue(stripe, mA.id), 3.75, "A's stream event lands on A's meter");
    t.equal(await summaryValue(stripeB, mB.id), 500, "and not on B's");
  });

  await t.test('authentication', async (t) => {
    await expectError(t, server.stripe('sk_test_notarealkey123').billing.meters.list(), { type: 'StripeAuthenticationError', statusCode: 401 }, 'unknown key');
    const session = await stripe.v2.billing.meterEventSession.create();
    await expectError(
      t,
      server.stripe(session.authentication_token).billing.meters.list(),
      { type: 'StripeAuthenticationError', statusCode: 401 },
      'a session token on a v1 endpoint',
    );
  });
});
