/**
 * Proration of licensed items on a test clock: a quantity change and a price change mid-period create proration
 * invoice items (credit for the unused time on the old, charge for the remaining time on the new);
 * proration_behavior none creates none; metered items are not prorated; the next cycle invoice sweeps them.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { uniqueName } from './helpers/assertions';

const DAY = 86400;
const nowS = () => Math.floor(Date.now() / 1000);

t.test('proration of licensed items', async (t) => {
  const server = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const T0 = Math.floor((nowS() - 2 * DAY) / 60) * 60;
  const product = await stripe.products.create({ name: 'Seats' });
  const basic = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 1000, recurring: { interval: 'day' } });
  const premium = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 2400, recurring: { interval: 'day' } });
  const meter = await stripe.billing.meters.create({ display_name: 'Calls', event_name: uniqueName('pr'), default_aggregation: { formula: 'sum' } });
  const metered = await stripe.prices.create({
    currency: 'usd',
    product: product.id,
    unit_amount: 1,
    recurring: { interval: 'day', usage_type: 'metered', meter: meter.id },
  });
  const clock = await stripe.testHelpers.testClocks.create({ frozen_time: T0 });
  const customer = await stripe.customers.create({ test_clock: clock.id });
  const sub = await stripe.subscriptions.create({ customer: customer.id, items: [{ price: basic.id, quantity: 2 }, { price: metered.id }] });
  const seat = sub.items.data[0];
  const advance = async (to: number) => {
    await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: to });
    await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
  };
  const pending = async () =>
    (await stripe.invoiceItems.list({ customer: customer.id, pending: true, limit: 100 })).data
      .filter((ii) => ii.proration)
      .sort((a, b) => a.amount - b.amount);

  // A quarter into the period: 2 -> 5 seats.
  await advance(T0 + DAY / 4);
  await stripe.subscriptions.update(sub.id, { items: [{ id: seat.id, quantity: 5 }] });
  let items = await pending();
  t.same(
    items.map((i) => [i.amount, i.quantity, i.period.start, i.period.end]),
    [
      [-1500, 2, T0 + DAY / 4, T0 + DAY],
      [3750, 5, T0 + DAY / 4, T0 + DAY],
    ],
    'credit 2 seats x 0.75 day, charge 5 seats x 0.75 day',
  );
  t.match(items[0].description, /^Unused time on 2 ×/);
  t.match(items[1].description, /^Remaining time on 5 ×/);
  t.equal(items[0].invoice, null);

  // Half-way: basic -> premium (through the subscription item endpoint).
  await advance(T0 + DAY / 2);
  await stripe.subscriptionItems.update(seat.id, { price: premium.id });
  items = await pending();
  t.same(
    items.map((i) => i.amount),
    [-2500, -1500, 3750, 6000],
    'credit 5 x 1000 x 0.5, charge 5 x 2400 x 0.5',
  );

  // proration_behavior none: no items; a metadata-only change: no items.
  await stripe.subscriptions.update(sub.id, { items: [{ id: seat.id, quantity: 6 }], proration_behavior: 'none' });
  await stripe.subscriptions.update(sub.id, { metadata: { a: 'b' } });
  t.equal((await pending()).length, 4, 'none and unrelated changes create no prorations');

  // The next cycle invoice sweeps them: 6 x 2400 for the next day + prorations (-1500 + 3750 - 2500 + 6000).
  await advance(T0 + DAY + 60);
  const inv = (await stripe.invoices.list({ subscription: sub.id })).data.find((i) => i.billing_reason === 'subscription_cycle')!;
  t.ok(inv, 'cycle invoice');
  const prorationLines = inv.lines.data.filter((l: Stripe.InvoiceLineItem) => l.parent?.type === 'invoice_item_details');
  t.equal(prorationLines.length, 4, 'the four proration items are on the invoice');
  t.equal(inv.total, 14400 + 5750);
  t.equal((await pending()).length, 0, 'no longer pending');
});
