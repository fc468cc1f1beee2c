/**
 * Discounts and promotion codes in older API versions, end to end with the official client pinned to an acacia, a
 * basil and the current release: before 2025-09-30.clover a discount's `coupon` and a promotion code's `coupon` were
 * the whole Coupon object (now `source.coupon` and `promotion.coupon`, ids), wherever the discount appears (a
 * customer's `discount`, a subscription's `discounts` expanded and acacia's single `discount`, an invoice's, an
 * event's data); a deleted coupon still shows on the discounts made from it; an older client creates a promotion
 * code with `coupon`.
 */
import t, { type Test } from 'tap';
import Stripe from 'stripe';
import { startServer } from './helpers/server';

const ACACIA = '2025-02-24.acacia';
const BASIL = '2025-08-27.basil';
const KEY = 'sk_test_verdisc_' + Math.random().toString(36).slice(2, 10);
const KEY_ACACIA = 'sk_test_verdisc_old_' + Math.random().toString(36).slice(2, 10);

type Obj = Record<string, any>;

t.test('discounts and promotion codes in older API versions', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY},${KEY_ACACIA}`, ACCOUNT_API_VERSIONS: `${KEY_ACACIA}=${ACACIA}` }, key: KEY });
  t.teardown(() => server.stop());
  const pinned = (version: string, key = KEY) =>
    new Stripe(key, { apiVersion: version as never, host: '127.0.0.1', port: server.port, protocol: 'http', telemetry: false, maxNetworkRetries: 2 });
  const current = server.stripe(KEY);
  const acacia = pinned(ACACIA);
  const basil = pinned(BASIL);

  const coupon = await current.coupons.create({ percent_off: 25, duration: 'forever', name: 'Quarter off' });
  const customer = await current.customers.create({ coupon: coupon.id } as Stripe.CustomerCreateParams);
  const product = await current.products.create({ name: 'Seats' });
  const seats = await current.prices.create({ currency: 'usd', product: product.id, unit_amount: 1000, recurring: { interval: 'month' } });
  const sub = await current.subscriptions.create({ customer: customer.id, items: [{ price: seats.id }], discounts: [{ coupon: coupon.id }] });
  const wholeCoupon = (t: Test, c: Obj, label: string) => {
    t.equal(c?.object, 'coupon', `${label}: the whole coupon`);
    t.equal(c?.id, coupon.id, `${label}: id`);
    t.equal(c?.percent_off, 25, `${label}: percent_off`);
    t.equal(c?.name, 'Quarter off', `${label}: name`);
    t.equal(c?.valid, true, `${label}: valid`);
  };

  await t.test("the current release: the discount's source.coupon is the coupon's id", async (t) => {
    const d = (await current.customers.retrieve(customer.id)) as unknown as Obj;
    t.same(d.discount.source, { coupon: coupon.id, type: 'coupon' });
    t.notOk('coupon' in d.discount, 'no top-level coupon');
  });

  for (const [name, client] of [
    ['acacia', acacia],
    ['basil', basil],
  ] as const) {
    await t.test(`${name}: discount.coupon is the whole coupon`, async (t) => {
      const c = (await client.customers.retrieve(customer.id)) as unknown as Obj;
      t.notOk('source' in c.discount, 'no source');
      wholeCoupon(t, c.discount.coupon, `${name} customer.discount`);
      const s = (await client.subscriptions.retrieve(sub.id, { expand: ['discounts'] })) as unknown as Obj;
      wholeCoupon(t, s.discounts[0].coupon, `${name} subscription.discounts[0]`);
      if (name === 'acacia') wholeCoupon(t, s.discount.coupon, 'acacia subscription.discount');
      const inv = (await client.invoices.retrieve(sub.latest_invoice as string, { expand: ['discounts'] })) as unknown as Obj;
      t.equal(inv.discounts.length, 1);
      wholeCoupon(t, inv.discounts[0].coupon, `${name} invoice.discounts[0]`);
    });
  }

  await t.test("events: an acacia account's discount events carry the whole coupon; the current version's the id", async (t) => {
    const old = pinned(ACACIA, KEY_ACACIA);
    const oldCoupon = await old.coupons.create({ amount_off: 300, currency: 'usd', duration: 'once' });
    const oldCustomer = await old.customers.create({ coupon: oldCoupon.id } as Stripe.CustomerCreateParams);
    const events = await old.events.list({ type: 'customer.discount.created' });
    const event = events.data.find((e) => (e.data.object as Obj).customer === oldCustomer.id)!;
    t.equal(event.api_version, ACACIA, 'recorded in the account default');
    const d = event.data.object as Obj;
    t.equal(d.coupon.object, 'coupon');
    t.equal(d.coupon.amount_off, 300);
    t.notOk('source' in d);
    const created = (await current.events.list({ type: 'customer.discount.created' })).data.find((e) => (e.data.object as Obj).customer === customer.id)!;
    t.same((created.data.object as Obj).source, { coupon: coupon.id, type: 'coupon' }, 'an event of the current version keeps source.coupon');
  });

  await t.test('promotion codes: acacia creates with coupon and reads the whole coupon; the current release reads promotion.coupon', async (t) => {
    const pc = (await acacia.promotionCodes.create({
      coupon: coupon.id,
      code: 'QUARTER' + Math.random().toString(36).slice(2, 6).toUpperCase(),
    } as never)) as unknown as Obj;
    wholeCoupon(t, pc.coupon, 'acacia promotion_code');
    t.notOk('promotion' in pc);
    const now = (await current.promotionCodes.retrieve(pc.id)) as unknown as Obj;
    t.same(now.promotion, { coupon: coupon.id, type: 'coupon' });
    t.notOk('coupon' in now);
    const listed = (await basil.promotionCodes.list({ coupon: coupon.id })) as unknown as Obj;
    t.same(
      listed.data.map((p: Obj) => [p.id, p.coupon.id]),
      [[pc.id, coupon.id]],
      'the basil list filter by coupon, each with its whole coupon',
    );
  });

  await t.test("acacia: a subscription's coupon parameter; a credit note's refund and tax_amounts", async (t) => {
    const other = await current.customers.create({ email: 'cn@example.com' });
    const made = (await acacia.subscriptions.create({ customer: other.id, items: [{ price: seats.id }], coupon: coupon.id } as never)) as unknown as Obj;
    t.equal(made.discounts.length, 1, "acacia's coupon became one discount");
    wholeCoupon(t, made.discount.coupon, 'acacia subscription.discount from the coupon parameter');
    const cleared = (await acacia.subscriptions.update(made.id, { coupon: '' } as never)) as unknown as Obj;
    t.same([cleared.discounts, cleared.discount], [[], null], "coupon='' removed it");

    await current.invoiceItems.create({ customer: other.id, amount: 800, currency: 'usd', description: 'Setup' });
    const draft = await current.invoices.create({ customer: other.id, pending_invoice_items_behavior: 'include' });
    const inv = await current.invoices.finalizeInvoice(draft.id);
    const note = (await acacia.creditNotes.create({ invoice: inv.id, amount: 300 })) as unknown as Obj;
    t.equal(note.refund, null, 'acacia: refund');
    t.notOk('refunds' in note, 'acacia: no refunds list');
    t.same(note.tax_amounts, [], 'acacia: tax_amounts');
    t.notOk('total_taxes' in note);
    const line = note.lines.data[0];
    t.same([line.amount, line.amount_excluding_tax, line.tax_amounts], [300, 300, []], 'acacia line: amount_excluding_tax, tax_amounts');
    t.notOk('taxes' in line);
    const lines = (await acacia.creditNotes.listLineItems(note.id)) as unknown as Obj;
    t.same(lines.data[0].tax_amounts, [], 'the line items list too');
    const now = (await current.creditNotes.retrieve(note.id)) as unknown as Obj;
    t.same([now.refunds, now.total_taxes, now.lines.data[0].taxes], [[], [], []], 'the current release: refunds, total_taxes, taxes');
    t.notOk('refund' in now || 'tax_amounts' in now);
  });

  await t.test('a deleted coupon still shows, no longer valid, on the discounts made from it', async (t) => {
    await current.coupons.del(coupon.id);
    const c = (await acacia.customers.retrieve(customer.id)) as unknown as Obj;
    t.equal(c.discount.coupon.id, coupon.id);
    t.equal(c.discount.coupon.percent_off, 25);
    t.equal(c.discount.coupon.valid, false);
    const d = (await current.customers.retrieve(customer.id)) as unknown as Obj;
    t.same(d.discount.source, { coupon: coupon.id, type: 'coupon' });
  });
});
