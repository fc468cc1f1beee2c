/**
 * End-to-end: coupons and promotion codes (CRUD, lists, Stripe's validation errors), and discounts on invoices,
 * subscriptions and customers with the official client: amount_off split across lines and percent_off on what is
 * left (the hand-computed figures of test/allocation.test.ts), once / repeating / forever over test-clock periods,
 * events, and accounts as walls.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { expectError, uniqueName } from './helpers/assertions';

const KEY_A = 'sk_test_disc_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_disc_b_' + Math.random().toString(36).slice(2, 10);
const T0 = Date.UTC(2026, 0, 15) / 1000;
const FEB15 = Date.UTC(2026, 1, 15) / 1000;
const MAR15 = Date.UTC(2026, 2, 15) / 1000;

t.test('coupons, promotion codes and discounts', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);

  await t.test('coupons: create, validation, list, update, delete', async (t) => {
    const id = uniqueName('SAVE15');
    const pct = await stripe.coupons.create({ id, percent_off: 15, duration: 'forever', name: 'Fifteen' });
    t.equal(pct.id, id);
    t.equal(pct.object, 'coupon');
    t.equal(pct.percent_off, 15);
    t.equal(pct.amount_off, null);
    t.equal(pct.currency, null);
    t.equal(pct.duration, 'forever');
    t.equal(pct.valid, true);
    t.equal(pct.times_redeemed, 0);
    const amt = await stripe.coupons.create({ amount_off: 500, currency: 'usd', duration: 'repeating', duration_in_months: 3 });
    t.match(amt.id, /^[A-Za-z0-9]{8}$/);
    t.equal(amt.duration_in_months, 3);

    const bad = { type: 'StripeInvalidRequestError', statusCode: 400 };
    await expectError(t, stripe.coupons.create({ duration: 'once' }), bad, 'neither amount_off nor percent_off');
    await expectError(t, stripe.coupons.create({ amount_off: 5, percent_off: 5, currency: 'usd' }), { ...bad, param: 'percent_off' }, 'both');
    await expectError(t, stripe.coupons.create({ amount_off: 5 }), { ...bad, param: 'currency' }, 'amount_off without currency');
    await expectError(t, stripe.coupons.create({ percent_off: 101 }), { ...bad, param: 'percent_off' }, 'over 100 %');
    await expectError(
      t,
      stripe.coupons.create({ percent_off: 10, duration: 'repeating' }),
      { ...bad, param: 'duration_in_months' },
      'repeating without months',
    );
    await expectError(
      t,
      stripe.coupons.create({ percent_off: 10, duration_in_months: 2 }),
      { ...bad, param: 'duration_in_months' },
      'months without repeating',
    );
    await expectError(t, stripe.coupons.create({ id, percent_off: 10 }), { ...bad, code: 'resource_already_exists' }, 'duplicate id');
    await expectError(t, stripe.coupons.create({ percent_off: 10, redeem_by: 1000 }), { ...bad, param: 'redeem_by' }, 'redeem_by in the past');

    const list = await stripe.coupons.list({ limit: 2 });
    t.same(
      list.data.map((c) => c.id),
      [amt.id, pct.id],
      'newest first',
    );
    const upd = await stripe.coupons.update(pct.id, { name: 'Fifteen off', metadata: { a: '1' } });
    t.equal(upd.name, 'Fifteen off');
    t.same(upd.metadata, { a: '1' });
    await expectError(t, stripeB.coupons.retrieve(pct.id), { statusCode: 404, code: 'resource_missing' }, "another account's coupon");
    const del = await stripe.coupons.del(amt.id);
    t.same({ ...del }, { id: amt.id, object: 'coupon', deleted: true });
    await expectError(t, stripe.coupons.retrieve(amt.id), { statusCode: 404 }, 'deleted coupon');
    const events = await stripe.events.list({ limit: 20 });
    const types = events.data.filter((e) => (e.data.object as { id?: string }).id === amt.id).map((e) => e.type);
    t.same(types, ['coupon.deleted', 'coupon.created']);
    t.ok(events.data.some((e) => e.type === 'coupon.updated' && (e.data.previous_attributes as { name?: string }).name === 'Fifteen'));
  });

  await t.test('promotion codes', async (t) => {
    const coupon = await stripe.coupons.create({ percent_off: 10 });
    const code = uniqueName('WELCOME').toUpperCase();
    const pc = await stripe.promotionCodes.create({ promotion: { type: 'coupon', coupon: coupon.id }, code, max_redemptions: 1 });
    t.match(pc.id, /^promo_test_/);
    t.equal(pc.code, code);
    t.same(pc.promotion, { coupon: coupon.id, type: 'coupon' });
    t.equal(pc.active, true);
    t.equal(pc.restrictions.first_time_transaction, false);
    await expectError(
      t,
      stripe.promotionCodes.create({ promotion: { type: 'coupon', coupon: coupon.id }, code: code.toLowerCase() }),
      { statusCode: 400, param: 'code' },
      'an active code is unique, case-insensitively',
    );
    await expectError(
      t,
      stripe.promotionCodes.create({ promotion: { type: 'coupon', coupon: 'nope' } }),
      { statusCode: 404, param: 'promotion[coupon]' },
      'unknown coupon',
    );
    const found = await stripe.promotionCodes.list({ code: code.toLowerCase() });
    t.same(
      found.data.map((x) => x.id),
      [pc.id],
    );
    const off = await stripe.promotionCodes.update(pc.id, { active: false });
    t.equal(off.active, false);
    t.same((await stripe.promotionCodes.list({ coupon: coupon.id, active: true })).data, []);
    await stripe.promotionCodes.update(pc.id, { active: true });
    // Redeemed once (its max): no longer active, and a second redemption is refused.
    const c1 = await stripe.customers.create();
    await stripe.invoices.create({ customer: c1.id, discounts: [{ promotion_code: pc.id }] });
    t.equal((await stripe.promotionCodes.retrieve(pc.id)).times_redeemed, 1);
    t.equal((await stripe.promotionCodes.retrieve(pc.id)).active, false);
    t.equal((await stripe.coupons.retrieve(coupon.id)).times_redeemed, 1);
    await expectError(t, stripe.invoices.create({ customer: c1.id, discounts: [{ promotion_code: pc.id }] }), { statusCode: 400 }, 'fully redeemed code');
  });

  await t.test('invoice discounts: amount_off split across lines, then percent_off, rounded once', async (t) => {
    const customer = await stripe.customers.create();
    await stripe.invoiceItems.create({ customer: customer.id, amount: 1000, currency: 'usd', description: 'A' });
    await stripe.invoiceItems.create({ customer: customer.id, amount: 333, currency: 'usd', description: 'B' });
    await stripe.invoiceItems.create({ customer: customer.id, amount: 700, currency: 'usd', description: 'N', discountable: false });
    const five = await stripe.coupons.create({ amount_off: 500, currency: 'usd' });
    const fifteen = await stripe.coupons.create({ percent_off: 15, duration: 'forever' });
    let inv = await stripe.invoices.create({
      customer: customer.id,
      pending_invoice_items_behavior: 'include',
      discounts: [{ coupon: five.id }, { coupon: fifteen.id }],
    });
    t.equal(inv.subtotal, 2033);
    t.equal(inv.discounts.length, 2);
    const [d1, d2] = inv.discounts as string[];
    t.match(d1, /^di_test_/);
    t.same(inv.total_discount_amounts, [
      { amount: 500, discount: d1 },
      { amount: 125, discount: d2 },
    ]);
    t.equal(inv.total, 708 + 700, '1333 - 500 - 125, and 700 not discountable');
    t.same(Object.fromEntries(inv.lines.data.map((l) => [l.description, l.discountable])), { A: true, B: true, N: false });
    t.equal(inv.amount_due, 1408);
    const byDesc = Object.fromEntries(inv.lines.data.map((l) => [l.description, l]));
    t.same(byDesc.N.discount_amounts, [], 'a line that is not discountable takes no share');
    t.same(byDesc.A.discount_amounts, [
      { amount: 375, discount: d1 },
      { amount: 94, discount: d2 },
    ]);
    t.same(byDesc.B.discount_amounts, [
      { amount: 125, discount: d1 },
      { amount: 31, discount: d2 },
    ]);
    t.same(byDesc.A.pretax_credit_amounts, [
      { amount: 375, discount: d1, type: 'discount' },
      { amount: 94, discount: d2, type: 'discount' },
    ]);
    // Removing the discounts on the draft restores the amounts; the finalized invoice keeps what it has.
    inv = await stripe.invoices.update(inv.id, { discounts: '' });
    t.equal(inv.total, 2033);
    t.same(inv.total_discount_amounts, []);
    inv = await stripe.invoices.update(inv.id, { discounts: [{ discount: d2 }] });
    t.equal(inv.total, 2033 - 200, '15 % of the discountable 1333 = 199.95 -> 200');
    inv = await stripe.invoices.finalizeInvoice(inv.id);
    t.equal(inv.amount_due, 1833);
    await expectError(t, stripe.invoices.update(inv.id, { discounts: '' }), { statusCode: 400, param: 'discounts' }, 'discounts of a finalized invoice');
    await expectError(t, stripe.invoices.create({ customer: customer.id, discounts: [{ coupon: 'missing' }] }), { statusCode: 404 }, 'unknown coupon');
    const eur = await stripe.coupons.create({ amount_off: 100, currency: 'eur' });
    await expectError(t, stripe.invoices.create({ customer: customer.id, discounts: [{ coupon: eur.id }] }), { statusCode: 400 }, 'currency mismatch');
  });

  await t.test('customer discount: inherited by manual invoices, removable', async (t) => {
    const half = await stripe.coupons.create({ percent_off: 50, duration: 'forever' });
    const customer = await stripe.customers.create({ coupon: half.id } as Stripe.CustomerCreateParams);
    t.equal((customer.discount as Stripe.Discount).source.coupon, half.id);
    await stripe.invoiceItems.create({ customer: customer.id, amount: 1001, currency: 'usd' });
    const inv = await stripe.invoices.create({ customer: customer.id, pending_invoice_items_behavior: 'include' });
    t.equal(inv.total, 500, '1001 - round(500.5) = 500');
    t.same(inv.discounts, [(customer.discount as Stripe.Discount).id]);
    const removed = await stripe.customers.deleteDiscount(customer.id);
    t.equal(removed.deleted, true);
    t.equal(((await stripe.customers.retrieve(customer.id)) as Stripe.Customer).discount, null);
    const plain = await stripe.invoices.create({ customer: customer.id });
    t.same(plain.discounts, []);
    const events = (await stripe.events.list({ limit: 30 })).data.filter(
      (e) => (e.data.object as { customer?: string; id?: string }).customer === customer.id || (e.data.object as { id?: string }).id === customer.id,
    );
    t.same(
      events
        .map((e) => e.type)
        .reverse()
        .filter((ty) => ty.startsWith('customer.')),
      ['customer.created', 'customer.discount.created', 'customer.discount.deleted', 'customer.updated'],
      'discount events follow the customer event',
    );
  });

  await t.test('subscription discounts over billing periods: repeating and once', async (t) => {
    const clock = await stripe.testHelpers.testClocks.create({ frozen_time: T0 });
    const product = await stripe.products.create({ name: 'Seat' });
    const price = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 1000, recurring: { interval: 'month' } });
    const twoMonths = await stripe.coupons.create({ percent_off: 20, duration: 'repeating', duration_in_months: 2 });
    const onceCoupon = await stripe.coupons.create({ amount_off: 300, currency: 'usd', duration: 'once' });
    const promo = await stripe.promotionCodes.create({ promotion: { type: 'coupon', coupon: onceCoupon.id } });

    const c1 = await stripe.customers.create({ test_clock: clock.id });
    const s1 = await stripe.subscriptions.create({
      customer: c1.id,
      items: [{ price: price.id }],
      discounts: [{ coupon: twoMonths.id }],
      expand: ['latest_invoice'],
    });
    t.equal(s1.discounts.length, 1);
    t.equal((s1.latest_invoice as Stripe.Invoice).total, 800);
    const preview = await stripe.invoices.createPreview({ subscription: s1.id });
    t.equal(preview.total, 800, 'the preview of the next invoice shows the discount');
    t.same(preview.total_discount_amounts, [{ amount: 200, discount: s1.discounts[0] as string }]);
    const c2 = await stripe.customers.create({ test_clock: clock.id });
    const s2 = await stripe.subscriptions.create({
      customer: c2.id,
      items: [{ price: price.id }],
      discounts: [{ promotion_code: promo.id }],
      expand: ['latest_invoice'],
    });
    t.equal((s2.latest_invoice as Stripe.Invoice).total, 700);
    t.same(s2.discounts, [], 'a once discount is used up by the first invoice');
    const c3 = await stripe.customers.create({ test_clock: clock.id });
    const withCoupon = (await stripe.customers.update(c3.id, { coupon: twoMonths.id } as Stripe.CustomerUpdateParams)) as Stripe.Customer;
    t.equal(withCoupon.discount!.start, T0, "a customer's discount starts at its test clock's time");
    t.equal(withCoupon.discount!.end, MAR15);
    const expanded = await stripe.subscriptions.retrieve(s1.id, { expand: ['discounts'] });
    const d = expanded.discounts[0] as Stripe.Discount;
    t.equal(d.object, 'discount');
    t.equal(d.subscription, s1.id);
    t.same(d.source, { coupon: twoMonths.id, type: 'coupon' });
    t.equal(d.start, T0);
    t.equal(d.end, MAR15, 'repeating for two months from the start');
    t.notOk('_coupon' in d, 'internal fields are not served');
    const inv1 = await stripe.invoices.retrieve((s1.latest_invoice as Stripe.Invoice).id, { expand: ['discounts'] });
    t.equal((inv1.discounts[0] as Stripe.Discount).id, d.id);

    const advance = async (to: number) => {
      await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: to });
      await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
    };
    const cycleTotals = async (sub: string) =>
      (await stripe.invoices.list({ subscription: sub, limit: 10 })).data
        .filter((i) => i.billing_reason === 'subscription_cycle')
        .map((i) => [i.period_end, i.total])
        .reverse();
    await advance(FEB15 + 60);
    await advance(MAR15 + 60);
    t.same(
      await cycleTotals(s1.id),
      [
        [FEB15, 800],
        [MAR15, 1000],
      ],
      'the repeating discount covers the invoices of its two months, not the third',
    );
    t.same(await cycleTotals(s2.id), [
      [FEB15, 1000],
      [MAR15, 1000],
    ]);
    const removed = await stripe.subscriptions.deleteDiscount(s1.id);
    t.equal(removed.deleted, true);
    t.same((await stripe.subscriptions.retrieve(s1.id)).discounts, []);
  });
});
