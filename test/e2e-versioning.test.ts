/**
 * API versions end to end, with the official client pinned to an acacia, a basil and the current release: the same
 * flow (meter, prices, a subscription and its first invoice, an invoice item) reads in each release's documented
 * shape; the account's default version (DEFAULT_API_VERSION on first use, ACCOUNT_API_VERSIONS by the operator)
 * serves requests without Stripe-Version; unknown versions are refused as Stripe refuses them; older parameters are
 * accepted; a webhook endpoint pinned to acacia receives acacia payloads while an unpinned one receives the version
 * the event was created in.
 */
import t from 'tap';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { uniqueName } from './helpers/assertions';

const ACACIA = '2024-09-30.acacia';
const BASIL = '2025-03-31.basil';
const BASIL_DEFAULT = '2025-06-30.basil';
const CURRENT = '2026-10-28.endive';
const KEY = 'sk_test_ver_new_' + Math.random().toString(36).slice(2, 10);
const KEY_OLD = 'sk_test_ver_old_' + Math.random().toString(36).slice(2, 10);
const KEY_FRESH = 'sk_test_ver_fresh_' + Math.random().toString(36).slice(2, 10);
const dec = (s: string) => s as unknown as Stripe.Decimal;

type Obj = Record<string, any>;

async function receiver(): Promise<{ url: string; got: string[]; close: () => Promise<void> }> {
  const got: string[] = [];
  const srv = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      got.push(Buffer.concat(chunks).toString('utf8'));
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
  return {
    url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}/hook`,
    got,
    close: () => new Promise<void>((resolve) => srv.close(() => resolve())),
  };
}

t.test('API versions end to end', async (t) => {
  const server = await startServer({
    env: {
      API_KEYS: `${KEY},${KEY_OLD},${KEY_FRESH}`,
      DEFAULT_API_VERSION: BASIL_DEFAULT,
      ACCOUNT_API_VERSIONS: `${KEY_OLD}=${ACACIA}`,
      WEBHOOK_RETRY_BASE_MS: '200',
      WEBHOOK_POLL_MS: '200',
    },
    key: KEY,
  });
  t.teardown(() => server.stop());
  const pinned = (version: string, key = KEY) =>
    new Stripe(key, { apiVersion: version as never, host: '127.0.0.1', port: server.port, protocol: 'http', telemetry: false, maxNetworkRetries: 2 });
  const current = server.stripe(KEY);
  const acacia = pinned(ACACIA);
  const basil = pinned(BASIL);

  // The flow, built once with the current client.
  const meter = await current.billing.meters.create({ display_name: 'Calls', event_name: uniqueName('ver'), default_aggregation: { formula: 'sum' } });
  const product = await current.products.create({ name: 'Versioned' });
  const metered = await current.prices.create({
    currency: 'usd',
    product: product.id,
    unit_amount_decimal: dec('0.5'),
    recurring: { interval: 'month', usage_type: 'metered', meter: meter.id },
  });
  const seats = await current.prices.create({ currency: 'usd', product: product.id, unit_amount: 1000, recurring: { interval: 'month' } });
  const setup = await current.prices.create({ currency: 'usd', product: product.id, unit_amount: 2500 });
  const customer = await current.customers.create({ email: 'versions@example.com' });
  const sub = await current.subscriptions.create({ customer: customer.id, items: [{ price: seats.id, quantity: 2 }, { price: metered.id }] });
  const invoiceId = sub.latest_invoice as string;

  await t.test('the current release: periods on items, invoice parent, line pricing', async (t) => {
    const s = (await current.subscriptions.retrieve(sub.id)) as unknown as Obj;
    t.equal(s.lastResponse.apiVersion, CURRENT, 'the response names the version that rendered it');
    t.notOk('current_period_end' in s, 'no subscription-level period');
    t.type(s.items.data[0].current_period_end, 'number', 'the period is on the items');
    const inv = (await current.invoices.retrieve(invoiceId)) as unknown as Obj;
    t.equal(inv.parent.subscription_details.subscription, sub.id);
    t.notOk('paid' in inv);
    t.same(inv.total_taxes, []);
    const line = inv.lines.data[0];
    t.equal(line.pricing.price_details.price, seats.id);
    t.equal(line.parent.type, 'subscription_item_details');
    t.notOk('price' in line || 'type' in line || 'plan' in line);
    t.notOk('aggregate_usage' in ((await current.prices.retrieve(metered.id)) as unknown as Obj).recurring);
    t.notOk('subscription' in inv, 'no top-level subscription on the invoice (basil moved it into parent)');
    t.notOk('billing_thresholds' in s || 'billing_thresholds' in s.items.data[0], 'no billing_thresholds (removed by basil)');
    const expanded = (await current.invoices.retrieve(invoiceId, { expand: ['parent.subscription_details.subscription'] })) as unknown as Obj;
    t.equal(expanded.parent.subscription_details.subscription.id, sub.id, "the current path expands the invoice's subscription");
    t.notOk('subscription' in expanded);
    const listed = (await current.invoices.list({ subscription: sub.id, expand: ['data.parent.subscription_details.subscription'] })) as unknown as Obj;
    t.equal(listed.data[0].parent.subscription_details.subscription.object, 'subscription', 'and in a list');
  });

  await t.test('basil reads the same objects in the basil shape', async (t) => {
    const s = (await basil.subscriptions.retrieve(sub.id)) as unknown as Obj;
    t.equal(s.lastResponse.apiVersion, BASIL);
    t.notOk('current_period_end' in s);
    t.type(s.items.data[0].current_period_start, 'number');
    const inv = (await basil.invoices.retrieve(invoiceId)) as unknown as Obj;
    t.equal(inv.parent.subscription_details.subscription, sub.id);
    t.equal(inv.lines.data[0].pricing.price_details.price, seats.id);
    t.notOk('subscription' in inv || 'billing_thresholds' in s.items.data[0], 'basil has neither leftover');
  });

  await t.test('acacia reads the same objects in the acacia shape', async (t) => {
    const s = (await acacia.subscriptions.retrieve(sub.id)) as unknown as Obj;
    t.equal(s.lastResponse.apiVersion, ACACIA);
    const item = s.items.data[0];
    const basilItem = ((await basil.subscriptions.retrieve(sub.id)) as unknown as Obj).items.data[0];
    t.equal(s.current_period_start, basilItem.current_period_start, 'the period is back on the subscription');
    t.equal(s.current_period_end, basilItem.current_period_end);
    t.notOk('current_period_end' in item, 'and not on the items');
    t.equal(s.billing_thresholds, null);
    t.equal(item.billing_thresholds, null);
    const meteredItem = s.items.data.find((i: Obj) => i.price.id === metered.id);
    t.equal(meteredItem.price.recurring.aggregate_usage, 'sum', 'expanded-in-place prices are rendered too');
    const listed = (await acacia.subscriptions.list({ customer: customer.id })) as unknown as Obj;
    t.equal(listed.data[0].current_period_end, s.current_period_end, 'lists are rendered item by item');

    const inv = (await acacia.invoices.retrieve(invoiceId)) as unknown as Obj;
    t.equal(inv.subscription, sub.id, "the invoice's subscription is top-level again");
    t.notOk('parent' in inv);
    t.equal(inv.subscription_details?.metadata ?? null, null);
    t.equal(inv.paid, inv.status === 'paid');
    t.same(inv.total_tax_amounts, []);
    t.notOk('total_taxes' in inv);
    const line = inv.lines.data.find((l: Obj) => l.price?.id === seats.id);
    t.ok(line, 'the line item embeds its whole price');
    t.equal(line.price.object, 'price');
    t.equal(line.plan.object, 'plan');
    t.equal(line.plan.aggregate_usage, null, 'a licensed plan aggregates nothing');
    t.equal(line.type, 'subscription');
    t.equal(line.subscription_item, s.items.data.find((i: Obj) => i.price.id === seats.id).id);
    t.equal(line.proration, false);
    t.notOk('pricing' in line || 'parent' in line);
    const lines = (await acacia.invoices.listLineItems(invoiceId)) as unknown as Obj;
    t.equal(lines.data[0].type, 'subscription', "the invoice's line list too");

    const m = (await acacia.billing.meters.retrieve(meter.id)) as unknown as Obj;
    const { lastResponse: _a, ...acaciaMeter } = m;
    const { lastResponse: _c, ...currentMeter } = (await current.billing.meters.retrieve(meter.id)) as unknown as Obj;
    t.same(acaciaMeter, currentMeter, 'a meter is the same in every version');
  });

  await t.test("acacia's parameters: an invoice item with price and unit_amount", async (t) => {
    const ii = (await acacia.invoiceItems.create({ customer: customer.id, price: setup.id } as never)) as unknown as Obj;
    t.equal(ii.price.id, setup.id, 'acacia `price` accepted and rendered as an embedded price');
    t.equal(ii.unit_amount, 2500);
    t.equal(ii.amount, 2500);
    t.notOk('pricing' in ii);
    const same = (await current.invoiceItems.retrieve(ii.id)) as unknown as Obj;
    t.equal(same.pricing.price_details.price, setup.id, 'stored once, in the newest shape');
    const custom = (await acacia.invoiceItems.create({ customer: customer.id, currency: 'usd', unit_amount: 300, quantity: 2 } as never)) as unknown as Obj;
    t.equal(custom.amount, 600);
    t.equal(custom.unit_amount_decimal, '300');
    const refused = await current.invoiceItems.create({ customer: customer.id, price: setup.id } as never).catch((e: Stripe.errors.StripeError) => e);
    t.equal((refused as Stripe.errors.StripeError).statusCode, 400, 'the newest version takes pricing[price], not price');
    const plan = (await acacia.prices.create({
      currency: 'usd',
      product: product.id,
      unit_amount: 1,
      recurring: { interval: 'month', usage_type: 'metered', meter: meter.id, aggregate_usage: 'sum' },
    } as never)) as unknown as Obj;
    t.equal(plan.recurring.aggregate_usage, 'sum');
    const max = await acacia.prices
      .create({
        currency: 'usd',
        product: product.id,
        unit_amount: 1,
        recurring: { interval: 'month', usage_type: 'metered', meter: meter.id, aggregate_usage: 'max' },
      } as never)
      .catch((e: Stripe.errors.StripeError) => e);
    t.equal((max as Stripe.errors.StripeError).param, 'recurring[aggregate_usage]', 'usage-record aggregations are refused by name');
  });

  await t.test('the account default serves requests without Stripe-Version; unknown versions are refused', async (t) => {
    const old = await server.request('GET', `/v1/customers?limit=1`, { key: KEY_OLD });
    t.equal(old.status, 200);
    t.equal(old.headers.get('stripe-version'), ACACIA, 'ACCOUNT_API_VERSIONS set this account to acacia');
    const fresh = await server.request('GET', `/v1/customers?limit=1`, { key: KEY_FRESH });
    t.equal(fresh.headers.get('stripe-version'), BASIL_DEFAULT, 'a first use fixes DEFAULT_API_VERSION');
    const ours = await server.request('GET', `/v1/subscriptions/${sub.id}`);
    t.equal(ours.headers.get('stripe-version'), BASIL_DEFAULT, 'this account was first used (with a pinned client) after start: the default too');
    t.notOk('current_period_end' in ours.body);
    const override = await server.request('GET', `/v1/subscriptions/${sub.id}`, { headers: { 'Stripe-Version': ACACIA } });
    t.equal(override.headers.get('stripe-version'), ACACIA, 'the header overrides the default for that request');
    t.type(override.body.current_period_end, 'number');

    for (const bad of ['2025-13-45.banana', '2024-06-20', 'latest', '2025-03-31.acacia']) {
      const res = await server.request('GET', '/v1/customers', { headers: { 'Stripe-Version': bad } });
      t.equal(res.status, 400, bad);
      t.same(res.body, { error: { type: 'invalid_request_error', message: `Invalid Stripe API version: ${bad}` } });
      t.equal(res.headers.get('stripe-version'), CURRENT, 'an invalid version is not echoed');
    }
    const sdk = await pinned('2099-01-01.zinnia')
      .customers.list()
      .catch((e: Stripe.errors.StripeError) => e);
    t.ok(sdk instanceof Stripe.errors.StripeInvalidRequestError, 'the SDK raises its invalid request error');

    // v2: objects are unversioned, no account default applies; a sent version is still checked.
    const v2 = await server.request('POST', '/v2/billing/meter_event_session', { key: KEY_OLD, body: '{}', headers: { 'content-type': 'application/json' } });
    t.equal(v2.status, 200);
    t.equal(v2.headers.get('stripe-version'), CURRENT);
    const v2bad = await server.request('POST', '/v2/billing/meter_event_session', {
      body: '{}',
      headers: { 'content-type': 'application/json', 'Stripe-Version': 'nope' },
    });
    t.equal(v2bad.status, 400);
    t.equal(v2bad.body.error.message, 'Invalid Stripe API version: nope');
    const session = await current.v2.billing.meterEventSession.create();
    const streamed = (headers: Record<string, string>) =>
      server.request('POST', '/v2/billing/meter_event_stream', {
        key: session.authentication_token,
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ events: [{ event_name: meter.event_name, payload: { stripe_customer_id: customer.id, value: '1' } }] }),
      });
    const accepted = await streamed({ 'Stripe-Version': ACACIA });
    t.equal(accepted.status, 200, 'the stream takes any known version');
    t.equal(accepted.headers.get('stripe-version'), ACACIA);
    const refused = await streamed({ 'Stripe-Version': '2025-02-30.basil' });
    t.equal(refused.status, 400, 'and refuses an unknown one');
    t.equal(refused.body.error.message, 'Invalid Stripe API version: 2025-02-30.basil');
  });

  await t.test('webhook endpoints keep their version; events record the one they were created in', async (t) => {
    const old = await receiver();
    const plain = await receiver();
    t.teardown(() => Promise.all([old.close(), plain.close()]));
    const pinnedEndpoint = await current.webhookEndpoints.create({
      url: old.url,
      enabled_events: ['customer.subscription.created'],
      api_version: ACACIA as never,
    });
    t.equal(pinnedEndpoint.api_version, ACACIA);
    const unpinned = await current.webhookEndpoints.create({ url: plain.url, enabled_events: ['customer.subscription.created'] });
    t.equal(unpinned.api_version, null);
    const bad = await current.webhookEndpoints.create({ url: plain.url, enabled_events: ['*'], api_version: '2024-13-01.acacia' as never }).catch((e) => e);
    t.equal((bad as Stripe.errors.StripeError).param, 'api_version');

    const s2 = await current.subscriptions.create({ customer: customer.id, items: [{ price: seats.id }] });
    await eventually(async () => old.got.length > 0 && plain.got.length > 0, 30_000, 100);
    const oldEvent = JSON.parse(old.got[0]);
    t.equal(oldEvent.api_version, ACACIA, 'the pinned endpoint is told its version');
    t.equal(oldEvent.data.object.id, s2.id);
    t.type(oldEvent.data.object.current_period_end, 'number', 'and receives the acacia shape');
    t.notOk('current_period_end' in oldEvent.data.object.items.data[0]);
    const plainEvent = JSON.parse(plain.got[0]);
    t.equal(plainEvent.api_version, BASIL_DEFAULT, "the unpinned one gets the account's version at the event's creation");
    t.notOk('current_period_end' in plainEvent.data.object);

    // A renewal: the period moves on the items; acacia sees it move on the subscription.
    const DAY = 86400;
    const T0 = Math.floor(Date.now() / 1000 / 60) * 60 - 2 * DAY;
    const daily = await current.prices.create({ currency: 'usd', product: product.id, unit_amount: 100, recurring: { interval: 'day' } });
    const clock = await current.testHelpers.testClocks.create({ frozen_time: T0 });
    const clocked = await current.customers.create({ email: 'renewal@example.com', test_clock: clock.id });
    await current.webhookEndpoints.update(pinnedEndpoint.id, { enabled_events: ['customer.subscription.updated'] });
    const renewing = await current.subscriptions.create({ customer: clocked.id, items: [{ price: daily.id }] });
    await current.testHelpers.testClocks.advance(clock.id, { frozen_time: T0 + DAY + 60 });
    const renewalOf = (body: string) => {
      const e = JSON.parse(body);
      return e.type === 'customer.subscription.updated' && e.data.object.id === renewing.id && 'current_period_start' in (e.data.previous_attributes ?? {});
    };
    await eventually(async () => old.got.some(renewalOf), 30_000, 100);
    const renewal = JSON.parse(old.got.find(renewalOf)!);
    t.equal(renewal.data.previous_attributes.current_period_start, T0, "acacia's previous_attributes name the subscription's old period");
    t.equal(renewal.data.previous_attributes.current_period_end, T0 + DAY);
    t.equal(renewal.data.object.current_period_start, T0 + DAY);
    t.notOk('items' in renewal.data.previous_attributes, 'the items, equal in acacia, are not listed');
    const stored = await current.events.retrieve(renewal.id);
    t.ok('items' in (stored.data.previous_attributes ?? {}), 'the same event read in the version it was created in lists the items (basil: periods on items)');

    const listed = await acacia.events.retrieve(plainEvent.id);
    t.equal(listed.api_version, BASIL_DEFAULT, 'an event is a snapshot in its own version, whoever reads it');
    t.notOk('current_period_end' in (listed.data.object as unknown as Obj));
  });
});
