/**
 * The end-to-end proof in one test, with the official stripe client: a meter, a metered daily price, a
 * customer on a test clock frozen two days ago, a subscription; a webhook endpoint (all events) whose receiver is a
 * local HTTP server; usage streamed (one event cancelled by an adjustment); the clock advanced past the period end and
 * past the 1 h finalization grace; the cycle invoice has the right quantity and amount, finalizes, is paid, moves the
 * balance; the receiver got the signed events (each verified with webhooks.constructEvent) in order.
 */
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { uniqueName } from './helpers/assertions';
import { startWebhookReceiver } from './helpers/webhook-receiver';

const DAY = 86400;
const nowS = () => Math.floor(Date.now() / 1000);
const iso = (unixSeconds: number) => new Date(unixSeconds * 1000).toISOString();
const dec = (s: string) => s as unknown as Stripe.Decimal;

t.test('usage -> invoice -> finalize -> pay -> balance, with signed webhooks in order', async (t) => {
  const { url, got } = await startWebhookReceiver(t);

  const server = await startServer({ env: { WEBHOOK_RETRY_BASE_MS: '200', WEBHOOK_POLL_MS: '200' } });
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const verifier = new Stripe('sk_test_unused', { telemetry: false });

  const we = await stripe.webhookEndpoints.create({ url, enabled_events: ['*'] });
  t.match(we.secret, /^whsec_/);

  const T0 = Math.floor((nowS() - 2 * DAY) / 60) * 60;
  const meter = await stripe.billing.meters.create({ display_name: 'Calls', event_name: uniqueName('flow'), default_aggregation: { formula: 'sum' } });
  const product = await stripe.products.create({ name: 'Metered API' });
  const price = await stripe.prices.create({
    currency: 'usd',
    product: product.id,
    unit_amount_decimal: dec('2.5'),
    recurring: { interval: 'day', usage_type: 'metered', meter: meter.id },
  });
  const clock = await stripe.testHelpers.testClocks.create({ frozen_time: T0 });
  const customer = await stripe.customers.create({ email: 'flow@example.com', test_clock: clock.id });
  const sub = await stripe.subscriptions.create({ customer: customer.id, items: [{ price: price.id }] });
  t.equal(sub.status, 'active');
  t.equal(sub.items.data[0].current_period_end, T0 + DAY);

  // Usage: 10 + 7 + 3 inside the period, 7 cancelled by an adjustment, one event outside the period.
  const session = await stripe.v2.billing.meterEventSession.create();
  const streamer = server.stripe(session.authentication_token);
  const ev = (ts: number, value: string, identifier?: string) => ({
    event_name: meter.event_name,
    timestamp: iso(ts),
    ...(identifier ? { identifier } : {}),
    payload: { stripe_customer_id: customer.id, value },
  });
  const cancelled = uniqueName('cancel');
  await streamer.v2.billing.meterEventStream.create({
    events: [ev(T0 + 60, '10'), ev(T0 + 600, '7', cancelled), ev(T0 + 3600, '3'), ev(T0 + DAY + 300, '1000')],
  });
  await stripe.billing.meterEventAdjustments.create({ event_name: meter.event_name, type: 'cancel', cancel: { identifier: cancelled } });
  await eventually(
    async () => {
      const preview = await stripe.invoices.createPreview({ customer: customer.id, subscription: sub.id });
      return String(preview.lines.data[0]?.quantity_decimal) === '13';
    },
    30_000,
    200,
  );

  // Past the period end: a draft cycle invoice with the exact usage.
  await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: T0 + DAY + 60 });
  await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
  const cycle = (await stripe.invoices.list({ subscription: sub.id })).data.filter((i) => i.billing_reason === 'subscription_cycle');
  t.equal(cycle.length, 1, 'one cycle invoice');
  let inv = cycle[0];
  t.equal(inv.status, 'draft');
  t.equal(inv.period_start, T0);
  t.equal(inv.period_end, T0 + DAY);
  t.equal(inv.lines.data.length, 1);
  t.equal(String(inv.lines.data[0].quantity_decimal), '13', '10 + 3 (7 cancelled, outside-period usage excluded)');
  t.equal(inv.lines.data[0].quantity, 13);
  t.equal(inv.lines.data[0].amount, 33, '13 x 2.5 cents = 32.5 -> 33');
  t.equal(inv.amount_due, 33);

  // Past the grace period: finalized automatically.
  await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: T0 + DAY + 3600 + 60 });
  await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
  inv = await stripe.invoices.retrieve(inv.id);
  t.equal(inv.status, 'open', 'auto-finalized after the grace period');
  t.equal(inv.amount_due, 33);

  // Paid: the balance moves by the amount.
  const usd = async () => (await stripe.balance.retrieve()).available.find((b) => b.currency === 'usd')?.amount ?? 0;
  const before = await usd();
  inv = await stripe.invoices.pay(inv.id);
  t.equal(inv.status, 'paid');
  t.equal(inv.amount_paid, 33);
  t.equal((await usd()) - before, 33, 'the payment moved the balance');

  // Signed events, in order.
  await eventually(async () => got.some((g) => g.body.includes('"invoice.paid"') && g.body.includes(`"id": "${inv.id}"`)), 30_000, 100);
  const events = got.map((g) => verifier.webhooks.constructEvent(g.body, g.signature, we.secret!));
  t.equal(events.length, got.length, 'every delivery verifies');
  t.throws(() => verifier.webhooks.constructEvent(got[0].body, got[0].signature, 'whsec_wrong'), 'a wrong secret does not verify');
  const types = events.map((e) => e.type);
  const order = ['customer.created', 'customer.subscription.created', 'invoice.created', 'invoice.finalized', 'invoice.paid'];
  let last = -1;
  for (const type of order) {
    const i = types.findIndex((x, k) => k > last && x === type && (!type.startsWith('invoice.') || (events[k].data.object as { id?: string }).id === inv.id));
    t.ok(i > last, `${type} after the previous one`);
    if (i > last) last = i;
  }
  const created = events.map((e) => e.created);
  t.same(
    created,
    [...created].sort((a, b) => a - b),
    'delivered in creation order',
  );
  const paidEv = events.find((e) => e.type === 'invoice.paid' && (e.data.object as Stripe.Invoice).id === inv.id)!;
  t.equal((paidEv.data.object as Stripe.Invoice).amount_paid, 33);
});

/**
 * Billing on real time (no test clock): the periodic billing job (BILLING_TICK_MS) bills a subscription whose period
 * ended, exactly once. The period end is arranged with a billing_cycle_anchor a few seconds ahead. Auto-finalization
 * on real time runs the same code but its 1 h grace period cannot be waited out in a test; it is covered on a clock.
 */
t.test('the billing job bills subscriptions not on a test clock on real time', async (t) => {
  const server = await startServer({ env: { BILLING_TICK_MS: '250' } });
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const product = await stripe.products.create({ name: 'Seats' });
  const seat = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 1000, recurring: { interval: 'day' } });
  const customer = await stripe.customers.create({ email: 'realtime@example.com' });
  const anchor = nowS() + 4;
  const sub = await stripe.subscriptions.create({ customer: customer.id, items: [{ price: seat.id, quantity: 3 }], billing_cycle_anchor: anchor });
  t.equal(sub.items.data[0].current_period_end, anchor, 'first period ends at the anchor');

  await eventually(async () => (await stripe.invoices.list({ subscription: sub.id })).data.some((i) => i.billing_reason === 'subscription_cycle'), 20_000, 200);
  await new Promise((r) => setTimeout(r, 1500)); // several more ticks: still one invoice for the period
  const cycle = (await stripe.invoices.list({ subscription: sub.id })).data.filter((i) => i.billing_reason === 'subscription_cycle');
  t.equal(cycle.length, 1, 'the period is billed once');
  const inv = cycle[0];
  t.equal(inv.status, 'draft');
  t.equal(inv.period_end, anchor);
  t.equal(inv.created, anchor);
  t.equal(inv.automatically_finalizes_at, anchor + 3600);
  t.equal(inv.amount_due, 3000, '3 seats for the next day');
  const after = await stripe.subscriptions.retrieve(sub.id);
  t.equal(after.items.data[0].current_period_start, anchor, 'the period rolled over');
  t.equal(after.items.data[0].current_period_end, anchor + DAY);
  t.equal(after.latest_invoice, inv.id);
});
