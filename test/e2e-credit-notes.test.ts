/**
 * End-to-end: credit notes with the official client. Pre-payment notes on an open invoice (by quantity and by amount,
 * with the line's discount credited in proportion), preview and preview lines, the limits (per line and per
 * invoice), void, a note that leaves nothing due (the invoice is paid), post-payment notes on a paid invoice crediting
 * the customer balance (a customer balance transaction) that the next invoice uses at finalization, out-of-band
 * amounts, Stripe's errors, events, and accounts as walls.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer } from './helpers/server';
import { expectError } from './helpers/assertions';

const KEY_A = 'sk_test_cn_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_cn_b_' + Math.random().toString(36).slice(2, 10);
const dec = (s: string) => s as unknown as Stripe.Decimal;

t.test('credit notes', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);

  const customer = await stripe.customers.create({ name: 'Credited' });
  await stripe.invoiceItems.create({ customer: customer.id, unit_amount_decimal: dec('250'), quantity: 4, currency: 'usd', description: 'A' });
  await stripe.invoiceItems.create({ customer: customer.id, amount: 500, currency: 'usd', description: 'B' });
  const tenPct = await stripe.coupons.create({ percent_off: 10 });
  let inv = await stripe.invoices.create({ customer: customer.id, pending_invoice_items_behavior: 'include', discounts: [{ coupon: tenPct.id }] });
  await expectError(
    t,
    stripe.creditNotes.create({ invoice: inv.id, amount: 10 }),
    { statusCode: 400, code: 'invoice_unexpected_state' },
    'a draft invoice takes no credit note',
  );
  inv = await stripe.invoices.finalizeInvoice(inv.id);
  t.equal(inv.total, 1350, '1500 - 10 %');
  t.equal(inv.amount_due, 1350);
  const lineA = inv.lines.data.find((l) => l.description === 'A')!;
  const lineB = inv.lines.data.find((l) => l.description === 'B')!;
  const discount = inv.discounts[0] as string;
  t.same(lineB.discount_amounts, [{ amount: 50, discount }], "line B's share of the 10 %");

  await t.test('preview and preview lines compute without storing', async (t) => {
    const params = { invoice: inv.id, lines: [{ type: 'invoice_line_item' as const, invoice_line_item: lineA.id, quantity: 2 }] };
    const pv = await stripe.creditNotes.preview(params);
    t.equal(pv.subtotal, 500, '2 x 250');
    t.equal(pv.discount_amount, 50, 'the line discount in proportion: 100 x 500 / 1000');
    t.same(pv.discount_amounts, [{ amount: 50, discount }]);
    t.equal(pv.total, 450);
    t.equal(pv.amount, 450);
    t.equal(pv.pre_payment_amount, 450);
    t.equal(pv.post_payment_amount, 0);
    t.equal(pv.type, 'pre_payment');
    const lines = await stripe.creditNotes.listPreviewLineItems(params);
    t.equal(lines.data.length, 1);
    t.equal(lines.data[0].invoice_line_item, lineA.id);
    t.equal(lines.data[0].quantity, 2);
    t.equal(lines.data[0].amount, 500);
    t.same((await stripe.creditNotes.list({ invoice: inv.id })).data, [], 'nothing stored');
    t.equal((await stripe.invoices.retrieve(inv.id)).amount_due, 1350);
  });

  let first: Stripe.CreditNote;
  await t.test('pre-payment notes reduce what is due, within the limits; void undoes them', async (t) => {
    first = await stripe.creditNotes.create({
      invoice: inv.id,
      lines: [{ type: 'invoice_line_item', invoice_line_item: lineA.id, quantity: 2 }],
      reason: 'order_change',
      memo: 'Two seats returned',
    });
    t.match(first.id, /^cn_test_/);
    t.equal(first.number, `${inv.number}-CN-01`);
    t.equal(first.status, 'issued');
    t.equal(first.total, 450);
    t.equal(first.customer_balance_transaction, null);
    let cur = await stripe.invoices.retrieve(inv.id);
    t.equal(cur.pre_payment_credit_notes_amount, 450);
    t.equal(cur.amount_due, 900);
    t.equal(cur.amount_remaining, 900);

    await expectError(
      t,
      stripe.creditNotes.create({ invoice: inv.id, lines: [{ type: 'invoice_line_item', invoice_line_item: lineA.id, amount: 501 }] }),
      { statusCode: 400, param: 'lines[0][amount]' },
      'more than is left on the line (1000 - 500)',
    );
    await expectError(t, stripe.creditNotes.create({ invoice: inv.id, amount: 901 }), { statusCode: 400, param: 'amount' }, 'more than is left on the invoice');
    await expectError(t, stripe.creditNotes.create({ invoice: inv.id, amount: 10, refund_amount: 10 }), { statusCode: 400, param: 'refund_amount' }, 'refunds');
    await expectError(
      t,
      stripe.creditNotes.create({ invoice: inv.id, lines: [{ type: 'invoice_line_item', invoice_line_item: 'il_nope' }] }),
      { statusCode: 400, param: 'lines[0][invoice_line_item]' },
      'a line of another invoice',
    );
    await expectError(t, stripe.creditNotes.create({ invoice: inv.id }), { statusCode: 400 }, 'nothing to credit');

    // The rest of line A (amount 500, discount 50), then line B whole (500, discount 50) with a custom line.
    const second = await stripe.creditNotes.create({
      invoice: inv.id,
      lines: [
        { type: 'invoice_line_item', invoice_line_item: lineA.id },
        { type: 'custom_line_item', description: 'Goodwill', quantity: 3, unit_amount: 10 },
      ],
    });
    t.equal(second.number, `${inv.number}-CN-02`);
    t.equal(second.subtotal, 530);
    t.equal(second.discount_amount, 50);
    t.equal(second.total, 480);
    cur = await stripe.invoices.retrieve(inv.id);
    t.equal(cur.amount_due, 420);

    const voided = await stripe.creditNotes.voidCreditNote(second.id);
    t.equal(voided.status, 'void');
    t.ok(voided.voided_at);
    await expectError(t, stripe.creditNotes.voidCreditNote(second.id), { statusCode: 400 }, 'void twice');
    cur = await stripe.invoices.retrieve(inv.id);
    t.equal(cur.amount_due, 900, 'voiding gives the amount back to the invoice');
    t.equal(cur.pre_payment_credit_notes_amount, 450);

    // A note for everything left: the invoice has nothing due and is paid.
    const rest = await stripe.creditNotes.create({ invoice: inv.id, amount: 900 });
    t.equal(rest.pre_payment_amount, 900);
    t.equal(rest.lines.data[0].type, 'custom_line_item');
    cur = await stripe.invoices.retrieve(inv.id);
    t.equal(cur.status, 'paid');
    t.equal(cur.amount_paid, 0);
    t.equal(cur.amount_remaining, 0);
    await expectError(t, stripe.creditNotes.voidCreditNote(rest.id), { statusCode: 400, code: 'invoice_unexpected_state' }, 'the invoice it settled is paid');
    await expectError(t, stripe.creditNotes.create({ invoice: inv.id, amount: 1 }), { statusCode: 400, param: 'amount' }, 'the invoice is fully credited');

    const listed = await stripe.creditNotes.list({ invoice: inv.id });
    t.same(
      listed.data.map((c) => c.id),
      [rest.id, second.id, first.id],
    );
    const lines = await stripe.creditNotes.listLineItems(second.id);
    t.same(
      lines.data.map((l) => [l.type, l.amount, l.discount_amount]),
      [
        ['invoice_line_item', 500, 50],
        ['custom_line_item', 30, 0],
      ],
    );
    const upd = await stripe.creditNotes.update(first.id, { memo: 'Seats returned', metadata: { ticket: '42' } });
    t.equal(upd.memo, 'Seats returned');
    t.same(upd.metadata, { ticket: '42' });
  });

  await t.test('post-payment notes credit the customer balance; the next invoice uses it', async (t) => {
    const c = await stripe.customers.create();
    await stripe.invoiceItems.create({ customer: c.id, amount: 2000, currency: 'usd' });
    let paid = await stripe.invoices.create({ customer: c.id, pending_invoice_items_behavior: 'include' });
    paid = await stripe.invoices.pay(paid.id);
    t.equal(paid.status, 'paid');
    await expectError(
      t,
      stripe.creditNotes.create({ invoice: paid.id, amount: 500, credit_amount: 400 }),
      { statusCode: 400, param: 'credit_amount' },
      'the parts must add up to the post-payment amount',
    );
    const cn = await stripe.creditNotes.create({ invoice: paid.id, amount: 500 });
    t.equal(cn.type, 'post_payment');
    t.equal(cn.post_payment_amount, 500);
    t.match(cn.customer_balance_transaction, /^cbtxn_test_/);
    const oob = await stripe.creditNotes.create({ invoice: paid.id, amount: 100, out_of_band_amount: 100 });
    t.equal(oob.out_of_band_amount, 100);
    t.equal(oob.customer_balance_transaction, null);
    t.equal((await stripe.invoices.retrieve(paid.id)).post_payment_credit_notes_amount, 600);
    const txns = await stripe.customers.listBalanceTransactions(c.id);
    t.same(
      txns.data.map((x) => [x.type, x.amount, x.credit_note, x.ending_balance]),
      [['credit_note', -500, cn.id, -500]],
    );
    t.equal(((await stripe.customers.retrieve(c.id)) as Stripe.Customer).balance, -500);
    await stripe.creditNotes.voidCreditNote(oob.id);
    t.equal((await stripe.invoices.retrieve(paid.id)).post_payment_credit_notes_amount, 500);

    await stripe.invoiceItems.create({ customer: c.id, amount: 800, currency: 'usd' });
    let next = await stripe.invoices.create({ customer: c.id, pending_invoice_items_behavior: 'include' });
    next = await stripe.invoices.finalizeInvoice(next.id);
    t.equal(next.starting_balance, -500);
    t.equal(next.ending_balance, 0);
    t.equal(next.amount_due, 300, 'the balance credit pays 500 of 800');
    t.equal(((await stripe.customers.retrieve(c.id)) as Stripe.Customer).balance, 0);
    const after = await stripe.customers.listBalanceTransactions(c.id);
    t.same(
      after.data.map((x) => [x.type, x.amount, x.invoice]),
      [
        ['applied_to_invoice', 500, next.id],
        ['credit_note', -500, paid.id],
      ],
    );
  });

  await t.test('events and walls', async (t) => {
    const events = await stripe.events.list({ limit: 100 });
    const mine = events.data.filter((e) => (e.data.object as { id?: string }).id === first.id).map((e) => e.type);
    t.same(mine, ['credit_note.updated', 'credit_note.created']);
    t.ok(events.data.some((e) => e.type === 'credit_note.voided'));
    await expectError(t, stripeB.creditNotes.retrieve(first.id), { statusCode: 404 }, "another account's credit note");
    await expectError(t, stripeB.creditNotes.create({ invoice: inv.id, amount: 1 }), { statusCode: 404, param: 'invoice' }, "another account's invoice");
  });
});
