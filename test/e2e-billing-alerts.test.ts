/**
 * End-to-end: billing alerts (`stripe.billing.alerts`): create/retrieve/list/expand and their errors, accounts as
 * walls; evaluation over the aggregated usage as it lands: usage streamed past the threshold fires
 * `billing.alert.triggered` (a signed v1 webhook, verified with the SDK) and the thin `v1.billing.alert.triggered`
 * (to an event destination, verified with parseEventNotification) once; more usage does not fire again; a second
 * customer fires separately; a deactivated alert does not fire (and does once activated); an archived one never does;
 * usage reported before an alert counts, but it fires only once the customer reports again; a customer with a metered
 * subscription is measured over its current period.
 */
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually, currentRange } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';
import { receiver } from './helpers/receiver';

const KEY_A = 'sk_test_al_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_al_b_' + Math.random().toString(36).slice(2, 10);
const INTERVAL_MS = 300;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface AlertTriggered {
  object: 'billing.alert_triggered';
  alert: Stripe.Billing.Alert;
  created: number;
  customer: string;
  external_customer_id: string;
  livemode: boolean;
  value: number;
}

t.test('billing alerts end to end', async (t) => {
  const server = await startServer({
    env: { API_KEYS: `${KEY_A},${KEY_B}`, BILLING_ALERT_INTERVAL_MS: String(INTERVAL_MS), WEBHOOK_POLL_MS: '200' },
    key: KEY_A,
  });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const other = server.stripe(KEY_B);
  const verifier = new Stripe('sk_test_unused', { telemetry: false });

  const meter = await stripe.billing.meters.create({ display_name: 'Calls', event_name: uniqueName('calls'), default_aggregation: { formula: 'sum' } });
  const session = await stripe.v2.billing.meterEventSession.create();
  const streamer = server.stripe(session.authentication_token);
  const stream = (customer: string, value: number) =>
    streamer.v2.billing.meterEventStream.create({
      events: [{ event_name: meter.event_name, payload: { stripe_customer_id: customer, value: String(value) } }],
    });
  const usage = async (customer: string) => {
    const { start, end } = currentRange(86400);
    const s = await stripe.billing.meters.listEventSummaries(meter.id, { customer, start_time: start, end_time: end });
    return s.data[0]?.aggregated_value ?? 0;
  };
  const landed = (customer: string, value: number) => eventually(async () => (await usage(customer)) === value, 30_000, 50);

  await t.test('create, retrieve, list, expand; errors; accounts are walls', async (t) => {
    const cus = await stripe.customers.create({ name: 'Alerted' });
    const a = await stripe.billing.alerts.create({
      alert_type: 'usage_threshold',
      title: 'Big user',
      usage_threshold: { gte: 1000, meter: meter.id, recurrence: 'one_time', filters: [{ type: 'customer', customer: cus.id }] },
    });
    t.match(a.id, /^alrt_test_/);
    t.same(
      { ...a, id: undefined },
      {
        id: undefined,
        object: 'billing.alert',
        alert_type: 'usage_threshold',
        livemode: false,
        status: 'active',
        title: 'Big user',
        usage_threshold: { filters: [{ type: 'customer', customer: cus.id }], gte: 1000, meter: meter.id, recurrence: 'one_time' },
      },
      'the billing.alert object',
    );
    t.same(await stripe.billing.alerts.retrieve(a.id), a, 'retrieve');
    const expanded = await stripe.billing.alerts.retrieve(a.id, { expand: ['usage_threshold.meter'] });
    t.equal((expanded.usage_threshold!.meter as Stripe.Billing.Meter).id, meter.id, 'usage_threshold.meter expands');
    const all = await stripe.billing.alerts.create({
      alert_type: 'usage_threshold',
      title: 'Everyone',
      usage_threshold: { gte: 5000, meter: meter.id, recurrence: 'one_time' },
    });
    t.equal(all.usage_threshold?.filters, null, 'no filter: every customer');
    const listed = await stripe.billing.alerts.list({ meter: meter.id, limit: 10 });
    t.same(
      listed.data.map((x) => x.id),
      [all.id, a.id],
      'listed newest first, filtered by meter',
    );
    const ids: string[] = [];
    for await (const x of stripe.billing.alerts.list({ limit: 1 })) ids.push(x.id);
    t.same(ids, [all.id, a.id], 'pagination');

    const ut = (extra: Record<string, unknown>) =>
      ({ gte: 10, meter: meter.id, recurrence: 'one_time', ...extra }) as Stripe.Billing.AlertCreateParams.UsageThreshold;
    const create = (u: Stripe.Billing.AlertCreateParams.UsageThreshold) =>
      stripe.billing.alerts.create({ alert_type: 'usage_threshold', title: 't', usage_threshold: u });
    await expectError(t, create(ut({ gte: 0 })), { statusCode: 400, param: 'usage_threshold[gte]' }, 'gte must be positive');
    await expectError(t, create(ut({ meter: 'mtr_nope' })), { statusCode: 400, code: 'resource_missing', param: 'usage_threshold[meter]' }, 'unknown meter');
    await expectError(t, create(ut({ recurrence: 'daily' })), { statusCode: 400, param: 'usage_threshold[recurrence]' }, 'recurrence is one_time');
    await expectError(
      t,
      create(ut({ filters: [{ type: 'customer', customer: 'cus_nope' }] })),
      { statusCode: 404, code: 'resource_missing', param: 'usage_threshold[filters][0][customer]' },
      'unknown customer',
    );
    await expectError(
      t,
      create(
        ut({
          filters: [
            { type: 'customer', customer: cus.id },
            { type: 'customer', customer: cus.id },
          ],
        }),
      ),
      { statusCode: 400, param: 'usage_threshold[filters]' },
      'one filter at most',
    );
    await expectError(
      t,
      stripe.billing.alerts.create({ alert_type: 'usage_threshold', title: 't' } as never),
      { statusCode: 400, code: 'parameter_missing' },
      'usage_threshold is required',
    );
    await expectError(t, stripe.billing.alerts.retrieve('alrt_nope'), { statusCode: 404, code: 'resource_missing' }, 'unknown alert');
    await expectError(t, other.billing.alerts.retrieve(a.id), { statusCode: 404 }, "another account's alert");
    await expectError(t, other.billing.alerts.deactivate(a.id), { statusCode: 404 }, 'cannot be changed from another account');
    t.same((await other.billing.alerts.list()).data, [], 'another account lists none');

    const off = await stripe.billing.alerts.deactivate(a.id);
    t.equal(off.status, 'inactive');
    t.equal((await stripe.billing.alerts.activate(a.id)).status, 'active');
    const archived = await stripe.billing.alerts.archive(a.id);
    t.equal(archived.status, 'archived');
    await expectError(t, stripe.billing.alerts.activate(a.id), { statusCode: 400 }, 'archive is final');
    t.equal((await stripe.billing.alerts.retrieve(a.id)).status, 'archived', 'still retrievable');
    t.notOk(
      (await stripe.billing.alerts.list({ limit: 100 })).data.some((x) => x.id === a.id),
      'archived alerts are not listed',
    );
    await stripe.billing.alerts.archive(all.id);
  });

  await t.test('usage past the threshold fires once per customer, with its webhook and thin event', async (t) => {
    const rx = await receiver();
    const rxThin = await receiver();
    t.teardown(() => Promise.all([rx.close(), rxThin.close()]));
    const endpoint = await stripe.webhookEndpoints.create({ url: rx.url, enabled_events: ['billing.alert.triggered'] });
    const dest = await stripe.v2.core.eventDestinations.create({
      name: 'alerts',
      type: 'webhook_endpoint',
      event_payload: 'thin',
      enabled_events: ['v1.billing.alert.triggered'],
      webhook_endpoint: { url: rxThin.url },
      include: ['webhook_endpoint.signing_secret'],
    });
    const triggered = () =>
      rx.got.map((g) => {
        const ev = verifier.webhooks.constructEvent(g.body, g.signature, endpoint.secret!);
        return ev.data.object as unknown as AlertTriggered & { evt: string };
      });
    const fired = (alert: string, customer: string) => triggered().filter((x) => x.alert.id === alert && x.customer === customer);

    const [cA, cB, cE] = ['A', 'B', 'E'].map((n) => uniqueName(`cus_${n}`));
    // Customer filters name existing customers; their usage is what the meter events report for that id.
    const cusC = (await stripe.customers.create({})).id;
    const cusD = (await stripe.customers.create({})).id;
    // Usage before the alert counts, but the alert fires only once the customer reports again.
    await stream(cE, 50);
    await landed(cE, 50);

    const alert = await stripe.billing.alerts.create({
      alert_type: 'usage_threshold',
      title: 'Ten calls',
      usage_threshold: { gte: 10, meter: meter.id, recurrence: 'one_time' },
    });
    const inactive = await stripe.billing.alerts.create({
      alert_type: 'usage_threshold',
      title: 'C',
      usage_threshold: { gte: 5, meter: meter.id, recurrence: 'one_time', filters: [{ type: 'customer', customer: cusC }] },
    });
    await stripe.billing.alerts.deactivate(inactive.id);
    const archived = await stripe.billing.alerts.create({
      alert_type: 'usage_threshold',
      title: 'D',
      usage_threshold: { gte: 5, meter: meter.id, recurrence: 'one_time', filters: [{ type: 'customer', customer: cusD }] },
    });
    await stripe.billing.alerts.archive(archived.id);

    // Below the threshold: nothing.
    await stream(cA, 4);
    await stream(cA, 4);
    await landed(cA, 8);
    await sleep(4 * INTERVAL_MS);
    t.same(fired(alert.id, cA), [], 'below the threshold: no alert');

    // Past it: one event, its webhook, its thin event.
    const crossedAt = Date.now();
    await stream(cA, 5);
    await eventually(async () => fired(alert.id, cA).length >= 1, 30_000, 50);
    const ms = Date.now() - crossedAt;
    t.comment(`usage past the threshold → signed webhook in ${ms} ms (BILLING_ALERT_INTERVAL_MS=${INTERVAL_MS}, FLUSH_INTERVAL_MS=250)`);
    const first = fired(alert.id, cA)[0];
    t.equal(first.object, 'billing.alert_triggered');
    t.equal(first.value, 13, 'the aggregated value that crossed the threshold');
    t.equal(first.external_customer_id, cA);
    t.equal(first.livemode, false);
    t.same(first.alert, alert, 'the alert as served');
    const events = await stripe.events.list({ type: 'billing.alert.triggered', limit: 10 });
    t.equal(events.data.filter((e) => (e.data.object as unknown as AlertTriggered).customer === cA).length, 1, 'one v1 event');

    await eventually(async () => rxThin.got.length >= 1, 30_000, 50);
    const note = stripe.parseEventNotification(rxThin.got[0].body, rxThin.got[0].signature, dest.webhook_endpoint!.signing_secret!) as unknown as {
      type: string;
      related_object: { id: string; type: string; url: string };
      fetchRelatedObject(): Promise<Stripe.Billing.Alert>;
    };
    t.equal(note.type, 'v1.billing.alert.triggered');
    t.same(note.related_object, { id: alert.id, type: 'billing.alert', url: `/v1/billing/alerts/${alert.id}` });
    t.equal((await note.fetchRelatedObject()).id, alert.id, 'the thin event leads to the alert');

    // More usage does not fire again; another customer fires on its own.
    await stream(cA, 20);
    await landed(cA, 33);
    await stream(cB, 12);
    await eventually(async () => fired(alert.id, cB).length >= 1, 30_000, 50);
    t.equal(fired(alert.id, cB)[0].value, 12);
    // Usage reported before the alert counts once the customer reports again.
    await sleep(3 * INTERVAL_MS);
    t.same(fired(alert.id, cE), [], 'no trigger from usage reported only before the alert');
    await stream(cE, 1);
    await eventually(async () => fired(alert.id, cE).length >= 1, 30_000, 50);
    // The new report's raw event lands just before its rollup: the evaluation may see the report before its value.
    t.ok([50, 51].includes(fired(alert.id, cE)[0].value), `earlier usage is part of the value (${fired(alert.id, cE)[0].value})`);

    // Inactive: no trigger; activated: it fires. Archived: never.
    await stream(cusC, 10);
    await stream(cusD, 10);
    await landed(cusC, 10);
    await landed(cusD, 10);
    await sleep(5 * INTERVAL_MS);
    t.same(fired(inactive.id, cusC), [], 'an inactive alert does not fire');
    await stripe.billing.alerts.activate(inactive.id);
    await eventually(async () => fired(inactive.id, cusC).length >= 1, 30_000, 50);
    await sleep(5 * INTERVAL_MS);
    t.same(fired(archived.id, cusD), [], 'an archived alert never fires');
    t.equal(fired(alert.id, cA).length, 1, 'still one event for the first crossing');
    t.equal(fired(alert.id, cB).length, 1, 'and one for the second customer');
    t.equal(fired(inactive.id, cusC).length, 1, 'and one for the activated alert');

    // A customer with a subscription item priced on the meter: the value is the current period's usage, as its
    // invoice will count it; usage before the period does not count.
    const product = await stripe.products.create({ name: uniqueName('Calls') });
    const price = await stripe.prices.create({
      currency: 'usd',
      product: product.id,
      unit_amount: 1,
      recurring: { interval: 'month', usage_type: 'metered', meter: meter.id },
    });
    const subscriber = (await stripe.customers.create({ name: 'Subscriber' })).id;
    const sub = await stripe.subscriptions.create({ customer: subscriber, items: [{ price: price.id }] });
    const periodStart = sub.items.data[0].current_period_start;
    const periodAlert = await stripe.billing.alerts.create({
      alert_type: 'usage_threshold',
      title: 'Period',
      usage_threshold: { gte: 10, meter: meter.id, recurrence: 'one_time', filters: [{ type: 'customer', customer: subscriber }] },
    });
    await streamer.v2.billing.meterEventStream.create({
      events: [
        {
          event_name: meter.event_name,
          timestamp: new Date((periodStart - 7200) * 1000).toISOString(),
          payload: { stripe_customer_id: subscriber, value: '50' },
        },
        { event_name: meter.event_name, payload: { stripe_customer_id: subscriber, value: '3' } },
      ],
    });
    await landed(subscriber, 53);
    await sleep(5 * INTERVAL_MS);
    t.same(fired(periodAlert.id, subscriber), [], 'usage before the period does not count');
    await stream(subscriber, 8);
    await eventually(async () => fired(periodAlert.id, subscriber).length >= 1, 30_000, 50);
    t.equal(fired(periodAlert.id, subscriber)[0].value, 11, "the current period's usage");
    // The all-customers alert fires in the same pass or the next one.
    await eventually(async () => fired(alert.id, subscriber).length >= 1, 30_000, 50);
    t.equal(fired(alert.id, subscriber)[0].value, 11, 'the all-customers alert measures the same period');
  });
});
