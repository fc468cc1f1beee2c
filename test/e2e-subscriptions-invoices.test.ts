/**
 * End-to-end: a usage-based billing cycle through the official stripe client. A meter (sum), metered prices bound to
 * it (per unit at 0.5 cents, graduated tiers with a flat fee) and a licensed daily price; a customer on a test clock
 * frozen two days ago; a subscription; usage streamed with the session token (timestamps inside the first day, one
 * before and one after it, one event cancelled by an adjustment); create_preview shows the usage; advancing the clock
 * past the period end produces the invoice with the exact quantity and amount; it auto-finalizes after the 1 h grace
 * period, is paid, and moves the balance. Plus test clocks, subscription items, invoice items and every invoice
 * transition with its error.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';

const DAY = 86400;
const nowS = () => Math.floor(Date.now() / 1000);
const iso = (unixSeconds: number) => new Date(unixSeconds * 1000).toISOString();
const dec = (s: string) => s as unknown as Stripe.Decimal;
const INVALID = { type: 'StripeInvalidRequestError', statusCode: 400 };

t.test('usage-based billing cycle on a test clock', async (t) => {
  const server = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();

  const T0 = Math.floor((nowS() - 2 * DAY) / 60) * 60;
  const meter = await stripe.billing.meters.create({ display_name: 'API calls', event_name: uniqueName('calls'), default_aggregation: { formula: 'sum' } });
  const product = await stripe.products.create({ name: 'API' });
  const perUnit = await stripe.prices.create({
    currency: 'usd',
    product: product.id,
    unit_amount_decimal: dec('0.5'),
    recurring: { interval: 'day', usage_type: 'metered', meter: meter.id },
  });
  const graduated = await stripe.prices.create({
    currency: 'usd',
    product: product.id,
    billing_scheme: 'tiered',
    tiers_mode: 'graduated',
    tiers: [
      { up_to: 10, unit_amount: 100, flat_amount: 200 },
      { up_to: 'inf', unit_amount: 50 },
    ],
    recurring: { interval: 'day', usage_type: 'metered', meter: meter.id },
  });
  const seat = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 1000, recurring: { interval: 'day' } });
  const monthly = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 1000, recurring: { interval: 'month' } });

  // Test clocks
  const clock = await stripe.testHelpers.testClocks.create({ frozen_time: T0, name: 'cycle' });
  t.match(clock.id, /^clock_/);
  t.equal(clock.object, 'test_helpers.test_clock');
  t.equal(clock.frozen_time, T0);
  t.equal(clock.status, 'ready');
  t.equal(clock.name, 'cycle');
  t.same(await stripe.testHelpers.testClocks.retrieve(clock.id), clock);
  t.ok(
    (await stripe.testHelpers.testClocks.list()).data.some((c) => c.id === clock.id),
    'listed',
  );
  const other = await stripe.testHelpers.testClocks.create({ frozen_time: T0 });
  t.same(await stripe.testHelpers.testClocks.del(other.id), { id: other.id, object: 'test_helpers.test_clock', deleted: true });
  await expectError(
    t,
    stripe.testHelpers.testClocks.retrieve(other.id),
    { type: 'StripeInvalidRequestError', statusCode: 404, code: 'resource_missing' },
    'deleted clock',
  );
  await expectError(t, stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: T0 - 10 }), { ...INVALID, param: 'frozen_time' }, 'advance backwards');

  const customer = await stripe.customers.create({ email: 'c@example.com', test_clock: clock.id });
  t.equal(customer.test_clock, clock.id);
  t.equal(customer.created, T0, 'a customer on a clock is created at its frozen time');
  await expectError(t, stripe.customers.create({ test_clock: 'clock_nope' }), { statusCode: 404, param: 'test_clock' }, 'unknown clock');

  // Subscriptions
  await expectError(
    t,
    stripe.subscriptions.create({ customer: customer.id, items: [{ price: perUnit.id, quantity: 2 }] }),
    { ...INVALID, param: 'items[0][quantity]' },
    'metered items take no quantity',
  );
  await expectError(
    t,
    stripe.subscriptions.create({ customer: customer.id, items: [{ price: seat.id }, { price: monthly.id }] }),
    { ...INVALID },
    'mixed intervals',
  );
  await expectError(
    t,
    stripe.subscriptions.create({ customer: 'cus_nope', items: [{ price: seat.id }] }),
    { statusCode: 404, param: 'customer' },
    'unknown customer',
  );
  const sub = await stripe.subscriptions.create({
    customer: customer.id,
    items: [{ price: perUnit.id }, { price: graduated.id }, { price: seat.id, quantity: 2 }],
    metadata: { plan: 'usage' },
  });
  t.match(sub.id, /^sub_/);
  t.equal(sub.status, 'active');
  t.equal(sub.customer, customer.id);
  t.equal(sub.currency, 'usd');
  t.equal(sub.start_date, T0);
  t.equal(sub.billing_cycle_anchor, T0);
  t.equal(sub.cancel_at_period_end, false);
  t.equal(sub.test_clock, clock.id);
  t.equal(sub.items.data.length, 3);
  for (const it of sub.items.data) {
    t.equal(it.current_period_start, T0, 'period start on the item');
    t.equal(it.current_period_end, T0 + DAY, 'a one-day period');
  }
  t.equal(sub.items.data[0].quantity, undefined, 'metered item without quantity');
  t.equal(sub.items.data[2].quantity, 2);
  const seatItem = sub.items.data[2];
  t.same(await stripe.subscriptionItems.retrieve(seatItem.id), seatItem);
  t.equal((await stripe.subscriptionItems.list({ subscription: sub.id })).data.length, 3);
  t.same(await stripe.subscriptions.retrieve(sub.id), sub);
  t.ok((await stripe.subscriptions.list({ customer: customer.id })).data.some((x) => x.id === sub.id));

  // The first invoice bills the seats in advance and is finalized at once.
  const first = await stripe.invoices.retrieve(sub.latest_invoice as string);
  t.equal(first.billing_reason, 'subscription_create');
  t.equal(first.status, 'open');
  t.equal(first.amount_due, 2000, '2 seats x 10.00');
  t.match(first.number, /^[A-Z0-9]+-0001$/);
  t.equal(first.lines.data.length, 1);
  t.same(first.lines.data[0].period, { start: T0, end: T0 + DAY });

  // Usage: inside the period, one cancelled, one before and one after the period.
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
    events: [
      ev(T0 + 60, '3'),
      ev(T0 + 3600, '4.5', cancelled),
      ev(T0 + 7200, '2.25'),
      ev(T0 + DAY - 120, '0.25'),
      ev(T0 - 120, '100'),
      ev(T0 + DAY + 120, '100'),
    ],
  });
  await stripe.billing.meterEventAdjustments.create({ event_name: meter.event_name, type: 'cancel', cancel: { identifier: cancelled } });

  // create_preview shows the usage of the current period (eventually consistent: wait for the adjustment).
  let preview: Stripe.Invoice | undefined;
  await eventually(
    async () => {
      preview = await stripe.invoices.createPreview({ customer: customer.id, subscription: sub.id });
      return String(preview.lines.data[0]?.quantity_decimal) === '5.5';
    },
    30_000,
    200,
  ).catch(() => undefined);
  t.equal(String(preview!.lines.data[0].quantity_decimal), '5.5', 'preview: 3 + 2.25 + 0.25 (4.5 cancelled)');
  t.equal(preview!.lines.data[0].quantity, 5, 'quantity truncated');
  t.equal(preview!.lines.data[0].amount, 3, '5.5 x 0.5 cents = 2.75 -> 3');
  t.equal(preview!.lines.data[1].amount, 750, 'graduated: 200 flat + 5.5 x 100');
  t.equal(preview!.lines.data[2].amount, 2000, 'seats for the next period');
  t.same(preview!.lines.data[2].period, { start: T0 + DAY, end: T0 + 2 * DAY });
  t.equal(preview!.total, 2753);
  t.equal(preview!.id, null, 'a preview has no id');

  // An invoice item swept onto the cycle invoice.
  const ii = await stripe.invoiceItems.create({ customer: customer.id, amount: 500, currency: 'usd', description: 'Setup' });
  t.match(ii.id, /^ii_/);
  t.equal(ii.invoice, null);
  t.equal(ii.date, T0, 'dated at the clock time');
  t.same(await stripe.invoiceItems.retrieve(ii.id), ii);

  // Advance past the period end: the cycle invoice appears as a draft.
  const advancing = await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: T0 + DAY + 60 });
  t.equal(advancing.frozen_time, T0 + DAY + 60);
  await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
  const cycle = (await stripe.invoices.list({ subscription: sub.id })).data.filter((i) => i.billing_reason === 'subscription_cycle');
  t.equal(cycle.length, 1, 'one cycle invoice');
  let inv = cycle[0];
  t.match(inv.id, /^in_/);
  t.equal(inv.status, 'draft');
  t.equal(inv.created, T0 + DAY);
  t.equal(inv.period_start, T0);
  t.equal(inv.period_end, T0 + DAY);
  t.equal(inv.automatically_finalizes_at, T0 + DAY + 3600, '1 hour grace period');
  t.equal(inv.lines.data.length, 4);
  const [l1, l2, l3, l4] = inv.lines.data;
  t.equal(String(l1.quantity_decimal), '5.5');
  t.equal(l1.quantity, 5);
  t.equal(l1.amount, 3);
  t.same(l1.period, { start: T0, end: T0 + DAY });
  t.equal(l1.pricing?.price_details?.price, perUnit.id);
  t.equal(l1.parent?.type, 'subscription_item_details');
  t.equal(l2.amount, 750);
  t.equal(l3.amount, 2000);
  t.equal(l3.quantity, 2);
  t.equal(l4.amount, 500, 'the pending invoice item');
  t.equal(inv.total, 3253);
  t.equal(inv.amount_due, 3253);
  t.equal((await stripe.invoiceItems.retrieve(ii.id)).invoice, inv.id, 'the item is now on the invoice');
  const subAfter = await stripe.subscriptions.retrieve(sub.id);
  t.equal(subAfter.items.data[0].current_period_start, T0 + DAY, 'the period rolled over');
  t.equal(subAfter.items.data[0].current_period_end, T0 + 2 * DAY);
  t.equal(subAfter.latest_invoice, inv.id);
  const lines = await stripe.invoices.listLineItems(inv.id, { limit: 2 });
  t.equal(lines.data.length, 2);
  t.equal(lines.has_more, true);
  t.equal(lines.data[0].id, l1.id);

  // Draft transitions and their errors.
  await expectError(t, stripe.invoices.voidInvoice(inv.id), { ...INVALID, code: 'invoice_unexpected_state' }, 'void a draft');
  await expectError(t, stripe.invoices.markUncollectible(inv.id), { ...INVALID, code: 'invoice_unexpected_state' }, 'uncollectible draft');
  await expectError(t, stripe.invoices.sendInvoice(inv.id), { ...INVALID, code: 'invoice_unexpected_state' }, 'send a draft');
  inv = await stripe.invoices.update(inv.id, { description: 'Day 1', metadata: { k: 'v' } });
  t.equal(inv.description, 'Day 1');
  t.same(inv.metadata, { k: 'v' });

  // Past the grace period the draft finalizes by itself.
  await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: T0 + DAY + 3600 + 60 });
  await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
  inv = await stripe.invoices.retrieve(inv.id);
  t.equal(inv.status, 'open', 'auto-finalized');
  t.equal(inv.status_transitions.finalized_at, T0 + DAY + 3600 + 60);
  t.match(inv.number, /-0002$/);
  t.equal(inv.total, 3253, 'usage unchanged at finalization');
  await expectError(t, stripe.invoices.finalizeInvoice(inv.id), { ...INVALID, code: 'invoice_unexpected_state' }, 're-finalize');
  await expectError(t, stripe.invoices.del(inv.id), { ...INVALID, code: 'invoice_unexpected_state' }, 'delete an open invoice');
  await expectError(t, stripe.invoiceItems.del(ii.id), { ...INVALID }, 'delete an item of a finalized invoice');
  t.equal((await stripe.invoices.sendInvoice(inv.id)).status, 'open', 'send an open invoice');

  // Pay: the balance moves by the amount paid.
  const balanceBefore = (await stripe.balance.retrieve()).available.find((b) => b.currency === 'usd')?.amount ?? 0;
  inv = await stripe.invoices.pay(inv.id);
  t.equal(inv.status, 'paid');
  t.equal(inv.amount_paid, 3253);
  t.equal(inv.amount_remaining, 0);
  t.equal(inv.status_transitions.paid_at, T0 + DAY + 3600 + 60);
  const balanceAfter = (await stripe.balance.retrieve()).available.find((b) => b.currency === 'usd')?.amount ?? 0;
  t.equal(balanceAfter - balanceBefore, 3253, 'the payment moved the balance');
  await expectError(t, stripe.invoices.pay(inv.id), { ...INVALID, code: 'invoice_unexpected_state' }, 'pay twice');
  // Every state change was recorded as an event, in order (newest first in the list).
  const events = (await stripe.events.list({ limit: 100 }).autoPagingToArray({ limit: 10_000 })).reverse();
  const forInvoice = events.filter((e) => (e.data.object as { id?: string }).id === inv.id).map((e) => e.type);
  t.same(
    forInvoice.filter((x) => ['invoice.created', 'invoice.finalized', 'invoice.paid'].includes(x)),
    ['invoice.created', 'invoice.finalized', 'invoice.paid'],
    'invoice events in order',
  );
  const types = events.map((e) => e.type);
  for (const ty of ['customer.subscription.created', 'customer.subscription.updated', 'test_helpers.test_clock.advancing', 'test_helpers.test_clock.ready']) {
    t.ok(types.includes(ty as Stripe.Event.Type), `event ${ty}`);
  }
  await expectError(t, stripe.invoices.voidInvoice(inv.id), { ...INVALID, code: 'invoice_unexpected_state' }, 'void a paid invoice');

  // The first invoice: void it; then it cannot be paid.
  t.equal((await stripe.invoices.voidInvoice(first.id)).status, 'void');
  await expectError(t, stripe.invoices.pay(first.id), { ...INVALID, code: 'invoice_unexpected_state' }, 'pay a void invoice');

  // Manual invoices from pending items; delete a draft; finalize; uncollectible; pay out of band.
  const ii2 = await stripe.invoiceItems.create({ customer: customer.id, currency: 'usd', unit_amount_decimal: dec('0.5'), quantity: 3 });
  t.equal(ii2.amount, 2, '3 x 0.5 cents = 1.5 -> 2');
  const empty = await stripe.invoices.create({ customer: customer.id });
  t.equal(empty.lines.data.length, 0, 'pending items are excluded by default');
  t.same(await stripe.invoices.del(empty.id), { id: empty.id, object: 'invoice', deleted: true });
  await expectError(t, stripe.invoices.retrieve(empty.id), { statusCode: 404 }, 'deleted draft');
  let manual = await stripe.invoices.create({ customer: customer.id, pending_invoice_items_behavior: 'include', auto_advance: false });
  t.equal(manual.total, 2);
  t.equal(manual.billing_reason, 'manual');
  manual = await stripe.invoices.finalizeInvoice(manual.id);
  t.equal(manual.status, 'open');
  manual = await stripe.invoices.markUncollectible(manual.id);
  t.equal(manual.status, 'uncollectible');
  t.equal(manual.status_transitions.marked_uncollectible_at, T0 + DAY + 3600 + 60);
  manual = await stripe.invoices.pay(manual.id, { paid_out_of_band: true });
  t.equal(manual.status, 'paid', 'an uncollectible invoice can still be paid');
  const found = await stripe.invoices.search({ query: `customer:'${customer.id}' AND status:'paid'` });
  t.same(found.data.map((i) => i.id).sort(), [inv.id, manual.id].sort(), 'search');
  t.equal((await stripe.invoices.list({ customer: customer.id, status: 'void' })).data.length, 1);

  // Cancel at period end: the last invoice bills the final period's usage only, and the subscription ends.
  const upd = await stripe.subscriptions.update(sub.id, { cancel_at_period_end: true, metadata: { more: '1' } });
  t.equal(upd.cancel_at_period_end, true);
  t.equal(upd.cancel_at, T0 + 2 * DAY);
  t.same(upd.metadata, { plan: 'usage', more: '1' });
  await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: T0 + 2 * DAY + 60 });
  await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
  const ended = await stripe.subscriptions.retrieve(sub.id);
  t.equal(ended.status, 'canceled');
  t.equal(ended.ended_at, T0 + 2 * DAY);
  const last = await stripe.invoices.retrieve(ended.latest_invoice as string);
  t.equal(last.lines.data.length, 2, 'metered lines only');
  t.equal(last.lines.data[0].quantity, 100, 'the event after the first period');
  t.equal(last.lines.data[0].amount, 50);
  t.equal(last.lines.data[1].amount, 200 + 10 * 100 + 90 * 50);
});

t.test('subscriptions without a clock; items; cancel', async (t) => {
  const server = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const product = await stripe.products.create({ name: 'Seats' });
  const a = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 700, recurring: { interval: 'month' } });
  const b = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 300, recurring: { interval: 'month' } });
  const oneTime = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 300 });
  const customer = await stripe.customers.create({});
  await expectError(
    t,
    stripe.subscriptions.create({ customer: customer.id, items: [{ price: oneTime.id }] }),
    { ...INVALID, param: 'items[0][price]' },
    'one-time price',
  );
  const before = nowS();
  const sub = await stripe.subscriptions.create({ customer: customer.id, items: [{ price: a.id, quantity: 3 }] });
  t.ok(sub.start_date >= before - 1 && sub.start_date <= nowS() + 1, 'real time without a clock');
  const end = sub.items.data[0].current_period_end;
  const d0 = new Date(sub.start_date * 1000);
  t.equal(
    end,
    Math.floor(
      Date.UTC(
        d0.getUTCFullYear(),
        d0.getUTCMonth() + 1,
        Math.min(d0.getUTCDate(), new Date(Date.UTC(d0.getUTCFullYear(), d0.getUTCMonth() + 2, 0)).getUTCDate()),
        d0.getUTCHours(),
        d0.getUTCMinutes(),
        d0.getUTCSeconds(),
      ) / 1000,
    ),
    'one calendar month',
  );
  const firstInv = await stripe.invoices.retrieve(sub.latest_invoice as string);
  t.equal(firstInv.total, 2100);

  const added = await stripe.subscriptionItems.create({ subscription: sub.id, price: b.id, quantity: 1 });
  t.equal(added.quantity, 1);
  t.equal(added.current_period_end, end);
  const changed = await stripe.subscriptionItems.update(added.id, { quantity: 4 });
  t.equal(changed.quantity, 4);
  t.equal((await stripe.subscriptionItems.list({ subscription: sub.id })).data.length, 2);
  t.same(await stripe.subscriptionItems.del(added.id), { id: added.id, object: 'subscription_item', deleted: true });
  await expectError(t, stripe.subscriptionItems.retrieve(added.id), { statusCode: 404 }, 'deleted item');
  const upd = await stripe.subscriptions.update(sub.id, { items: [{ id: sub.items.data[0].id, quantity: 5 }] });
  t.equal(upd.items.data[0].quantity, 5);

  const canceled = await stripe.subscriptions.cancel(sub.id);
  t.equal(canceled.status, 'canceled');
  t.ok(canceled.canceled_at !== null && canceled.ended_at !== null);
  await expectError(t, stripe.subscriptions.cancel(sub.id), { statusCode: 404 }, 'cancel twice');
  t.equal((await stripe.subscriptions.list({ customer: customer.id })).data.length, 0, 'canceled are not listed by default');
  t.equal((await stripe.subscriptions.list({ customer: customer.id, status: 'canceled' })).data.length, 1);
  await expectError(t, stripe.invoices.createPreview({ customer: customer.id }), { ...INVALID, code: 'invoice_upcoming_none' }, 'no upcoming invoice');

  // Invoice items on a draft: added, updated and deleted with the invoice's totals following.
  const draft = await stripe.invoices.create({ customer: customer.id, currency: 'usd' });
  t.equal(draft.status, 'draft');
  t.equal(draft.total, 0);
  const x = await stripe.invoiceItems.create({ customer: customer.id, currency: 'usd', amount: 1234, invoice: draft.id });
  const y = await stripe.invoiceItems.create({ customer: customer.id, currency: 'usd', amount: -234, invoice: draft.id, description: 'credit' });
  t.equal(x.invoice, draft.id);
  t.equal((await stripe.invoices.retrieve(draft.id)).total, 1000);
  await stripe.invoiceItems.update(x.id, { amount: 2234 });
  t.equal((await stripe.invoices.retrieve(draft.id)).total, 2000);
  t.same(await stripe.invoiceItems.del(y.id), { id: y.id, object: 'invoiceitem', deleted: true });
  const after = await stripe.invoices.retrieve(draft.id);
  t.equal(after.total, 2234);
  t.equal(after.lines.data.length, 1);
  t.same(
    (await stripe.invoiceItems.list({ invoice: draft.id })).data.map((i) => i.id),
    [x.id],
  );
  await expectError(t, stripe.invoiceItems.create({ customer: customer.id, currency: 'usd' }), { ...INVALID, code: 'parameter_missing' }, 'amount is required');
  const paid = await stripe.invoices.pay(draft.id, { paid_out_of_band: true });
  t.equal(paid.status, 'paid', 'paying a draft finalizes it first');
  t.ok(paid.number !== null);
  await expectError(
    t,
    stripe.invoiceItems.create({ customer: customer.id, currency: 'usd', amount: 1, invoice: draft.id }),
    { ...INVALID, param: 'invoice' },
    'no items on a paid invoice',
  );
});
