/**
 * End-to-end, the full flow with the official client: a meter and a metered daily price next to a licensed
 * one, a subscription with a 10 % coupon, billing credit grants (priorities, expiry, a price-scoped grant, one not yet
 * effective, one voided), usage reported, the test clock advanced, the cycle invoice finalized. Its totals, discount
 * amounts, credits applied and credit balance transactions equal the figures computed by hand below; then expiry by
 * the clock, the balance summary with its filters, voiding the invoice (the credits come back), Stripe's validation
 * errors, events, and accounts as walls.
 *
 * Hand computation of the cycle invoice (period [T0, T0 + 1 day)):
 *   metered line: 1000 units x 2.5 cents = 2500; licensed line (next period, in advance): 100; subtotal 2600.
 *   10 % discount: 260, split 2500 : 100 -> 250 and 10.
 *   credits on the metered line (2250 left), in Stripe's order:
 *     gP (priority 10, scoped to the metered price): 150 -> 2100 left
 *     gA (priority 50, expires first): 200 -> 1900 left
 *     gB (priority 50, no expiry): 1900 of 5000 -> gB keeps 3100
 *     gE (priority 90) gets nothing; gX is not effective yet; gV was voided.
 *   total = 2600 - 260 - 2250 = 90 = amount_due.
 */
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { expectError, uniqueName } from './helpers/assertions';
import { startWebhookReceiver } from './helpers/webhook-receiver';

const DAY = 86400;
const KEY_A = 'sk_test_cred_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_cred_b_' + Math.random().toString(36).slice(2, 10);
const dec = (s: string) => s as unknown as Stripe.Decimal;

t.test('billing credits applied to metered lines at finalization', async (t) => {
  const receiver = await startWebhookReceiver(t);
  const got = receiver.got;
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}`, WEBHOOK_POLL_MS: '200' }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);
  const we = await stripe.webhookEndpoints.create({
    url: receiver.url,
    enabled_events: ['billing.credit_grant.created', 'billing.credit_grant.updated', 'billing.credit_balance_transaction.created', 'customer.discount.created'],
  });

  const T0 = Math.floor((Date.now() / 1000 - 2 * DAY) / 60) * 60;
  const meter = await stripe.billing.meters.create({ display_name: 'Tokens', event_name: uniqueName('credits'), default_aggregation: { formula: 'sum' } });
  const product = await stripe.products.create({ name: 'API' });
  const metered = await stripe.prices.create({
    currency: 'usd',
    product: product.id,
    unit_amount_decimal: dec('2.5'),
    recurring: { interval: 'day', usage_type: 'metered', meter: meter.id },
  });
  const licensed = await stripe.prices.create({ currency: 'usd', product: product.id, unit_amount: 100, recurring: { interval: 'day' } });
  const clock = await stripe.testHelpers.testClocks.create({ frozen_time: T0 });
  const customer = await stripe.customers.create({ test_clock: clock.id });
  const coupon = await stripe.coupons.create({ percent_off: 10, duration: 'forever' });
  const sub = await stripe.subscriptions.create({
    customer: customer.id,
    items: [{ price: metered.id }, { price: licensed.id }],
    discounts: [{ coupon: coupon.id }],
    expand: ['latest_invoice'],
  });
  t.equal((sub.latest_invoice as Stripe.Invoice).total, 90, 'first invoice: licensed 100 less 10 %, no metered line to credit');

  const grant = (value: number, extra: Partial<Stripe.Billing.CreditGrantCreateParams> = {}) =>
    stripe.billing.creditGrants.create({
      customer: customer.id,
      amount: { type: 'monetary', monetary: { currency: 'usd', value } },
      applicability_config: { scope: { price_type: 'metered' } },
      category: 'promotional',
      ...extra,
    });
  const gB = await grant(5000, { name: 'B' });
  const gA = await grant(200, { name: 'A', expires_at: T0 + 3 * DAY });
  const gP = await grant(150, { name: 'P', priority: 10, applicability_config: { scope: { prices: [{ id: metered.id }] } } });
  const gE = await grant(70, { name: 'E', priority: 90, expires_at: T0 + 2 * DAY });
  const gX = await grant(1000, { name: 'X', priority: 0, effective_at: T0 + 5 * DAY });
  const gV = await grant(100, { name: 'V', priority: 0 });

  t.match(gB.id, /^credgr_test_/);
  t.equal(gB.object, 'billing.credit_grant');
  t.equal(gB.priority, 50, 'default priority');
  t.equal(gB.effective_at, T0, "effective from the customer's time");
  t.equal(gB.test_clock, clock.id);
  t.same(gP.applicability_config, { scope: { prices: [{ id: metered.id }] } });

  await t.test('validation and walls', async (t) => {
    const bad = { statusCode: 400, type: 'StripeInvalidRequestError' };
    await expectError(
      t,
      grant(10, { applicability_config: { scope: { prices: [{ id: licensed.id }] } } }),
      { ...bad, param: 'applicability_config[scope][prices][0][id]' },
      'a licensed price',
    );
    await expectError(
      t,
      grant(10, { applicability_config: { scope: { price_type: 'metered', prices: [{ id: metered.id }] } } }),
      bad,
      'both price_type and prices',
    );
    await expectError(t, grant(0), { ...bad, param: 'amount[monetary][value]' }, 'zero value');
    await expectError(t, grant(10, { priority: 101 }), { ...bad, param: 'priority' }, 'priority above 100');
    await expectError(t, grant(10, { effective_at: T0 + 100, expires_at: T0 + 100 }), { ...bad, param: 'expires_at' }, 'expiry not after effective_at');
    await expectError(t, stripeB.billing.creditGrants.retrieve(gB.id), { statusCode: 404 }, "another account's grant");
    await expectError(
      t,
      stripeB.billing.creditBalanceSummaries.retrieve({
        customer: customer.id,
        filter: { type: 'applicability_scope', applicability_scope: { price_type: 'metered' } },
      }),
      { statusCode: 404, param: 'customer' },
      "another account's customer",
    );
    t.same((await stripeB.billing.creditGrants.list()).data, []);
  });

  const voided = await stripe.billing.creditGrants.voidGrant(gV.id);
  t.equal(voided.voided_at, T0);
  await expectError(t, stripe.billing.creditGrants.voidGrant(gV.id), { statusCode: 400 }, 'void twice');
  const summary = (filter: Stripe.Billing.CreditBalanceSummaryRetrieveParams.Filter) =>
    stripe.billing.creditBalanceSummaries.retrieve({ customer: customer.id, filter });
  const metredScope = { type: 'applicability_scope' as const, applicability_scope: { price_type: 'metered' as const } };
  let sum = await summary(metredScope);
  t.same(
    sum.balances,
    [
      {
        available_balance: { monetary: { currency: 'usd', value: 5270 }, type: 'monetary' },
        ledger_balance: { monetary: { currency: 'usd', value: 5270 }, type: 'monetary' },
      },
    ],
    'B + A + E (X not effective yet, V voided, P is price-scoped)',
  );

  // Usage: 1000 units in the first period, 7 after it.
  for (const [ts, value] of [
    [T0 + 60, '600'],
    [T0 + 3600, '400'],
    [T0 + DAY + 30, '7'],
  ] as const) {
    await stripe.billing.meterEvents.create({ event_name: meter.event_name, timestamp: ts, payload: { stripe_customer_id: customer.id, value } });
  }
  await eventually(
    async () => {
      const preview = await stripe.invoices.createPreview({ customer: customer.id, subscription: sub.id });
      return preview.lines.data.some((l) => String(l.quantity_decimal) === '1000');
    },
    30_000,
    200,
  );

  const advance = async (to: number) => {
    await stripe.testHelpers.testClocks.advance(clock.id, { frozen_time: to });
    await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock.id)).status === 'ready', 30_000, 100);
  };
  await advance(T0 + DAY + 60);
  const draft = (await stripe.invoices.list({ subscription: sub.id })).data.find((i) => i.billing_reason === 'subscription_cycle')!;
  t.equal(draft.status, 'draft');
  t.equal(draft.total, 2340, 'no credits on a draft: 2600 - 260');
  let inv = await stripe.invoices.finalizeInvoice(draft.id);
  const mLine = inv.lines.data.find((l) => l.pricing?.price_details?.price === metered.id)!;
  const lLine = inv.lines.data.find((l) => l.pricing?.price_details?.price === licensed.id)!;
  const discount = inv.discounts[0] as string;
  t.equal(mLine.amount, 2500);
  t.equal(lLine.amount, 100);
  t.equal(inv.subtotal, 2600);
  t.same(inv.total_discount_amounts, [{ amount: 260, discount }]);
  t.same(mLine.discount_amounts, [{ amount: 250, discount }]);
  t.same(lLine.discount_amounts, [{ amount: 10, discount }]);
  const credits = (mLine.pretax_credit_amounts ?? []).filter((c) => c.type === 'credit_balance_transaction');
  t.same(
    credits.map((c) => c.amount),
    [150, 200, 1900],
    'gP, then gA, then gB',
  );
  t.same(lLine.pretax_credit_amounts, [{ amount: 10, discount, type: 'discount' }], 'credits never touch the licensed line');
  t.equal(inv.total, 90);
  t.equal(inv.amount_due, 90);
  t.equal(inv.status, 'open');
  t.same(
    (inv.total_pretax_credit_amounts ?? []).map((c) => [c.type, c.amount]),
    [
      ['discount', 260],
      ['credit_balance_transaction', 150],
      ['credit_balance_transaction', 200],
      ['credit_balance_transaction', 1900],
    ],
  );
  const txns = await stripe.billing.creditBalanceTransactions.list({ customer: customer.id, limit: 100 });
  const applied = txns.data.filter((x) => x.debit?.type === 'credits_applied');
  t.same(applied.map((x) => [x.credit_grant, x.debit!.amount.monetary!.value, x.debit!.credits_applied]).reverse(), [
    [gP.id, 150, { invoice: inv.id, invoice_line_item: mLine.id }],
    [gA.id, 200, { invoice: inv.id, invoice_line_item: mLine.id }],
    [gB.id, 1900, { invoice: inv.id, invoice_line_item: mLine.id }],
  ]);
  t.same(
    credits.map((c) => c.credit_balance_transaction),
    applied.map((x) => x.id).reverse(),
    'the lines name the transactions',
  );
  t.equal(txns.data.filter((x) => x.credit?.type === 'credits_granted').length, 6);
  t.same(
    txns.data.filter((x) => x.debit?.type === 'credits_voided').map((x) => [x.credit_grant, x.debit!.amount.monetary!.value]),
    [[gV.id, 100]],
  );
  const one = await stripe.billing.creditBalanceTransactions.retrieve(applied[0].id);
  t.equal(one.object, 'billing.credit_balance_transaction');
  t.equal(one.test_clock, clock.id);
  t.equal((await stripe.billing.creditGrants.retrieve(gB.id)).updated, T0, 'spending a grant is not an update of the grant');
  sum = await summary(metredScope);
  t.equal(sum.balances[0].available_balance.monetary!.value, 3100 + 70, 'B 3100 + E 70');
  t.equal((await summary({ type: 'credit_grant', credit_grant: gP.id })).balances[0].available_balance.monetary!.value, 0);

  // The clock passes gE's expiry: what is left of it is written off.
  await advance(T0 + 2 * DAY + 120);
  const expired = (await stripe.billing.creditBalanceTransactions.list({ customer: customer.id, credit_grant: gE.id })).data;
  t.same(
    expired.map((x) => [x.type, x.debit?.type ?? x.credit?.type, (x.debit ?? x.credit)!.amount.monetary!.value]),
    [
      ['debit', 'credits_expired', 70],
      ['credit', 'credits_granted', 70],
    ],
  );
  sum = await summary(metredScope);
  t.equal(sum.balances[0].available_balance.monetary!.value, 3100);

  // Voiding the invoice gives its credits back.
  inv = await stripe.invoices.voidInvoice(inv.id);
  t.equal(inv.status, 'void');
  const back = (await stripe.billing.creditBalanceTransactions.list({ customer: customer.id, limit: 100 })).data.filter(
    (x) => x.credit?.type === 'credits_application_invoice_voided',
  );
  t.same(
    back.map((x) => x.credit!.amount.monetary!.value).sort((a, b) => a - b),
    [150, 200, 1900],
  );
  t.equal((await summary(metredScope)).balances[0].available_balance.monetary!.value, 5000 + 200);
  t.equal(
    (await summary({ type: 'applicability_scope', applicability_scope: { prices: [{ id: metered.id }] } })).balances[0].available_balance.monetary!.value,
    5350,
  );

  // Update, expire, events.
  const upd = await stripe.billing.creditGrants.update(gB.id, { expires_at: T0 + 10 * DAY, metadata: { k: 'v' } });
  t.equal(upd.expires_at, T0 + 10 * DAY);
  const exp = await stripe.billing.creditGrants.expire(gB.id);
  t.equal(exp.expires_at, T0 + 2 * DAY + 120);
  await expectError(t, stripe.billing.creditGrants.expire(gB.id), { statusCode: 400 }, 'expire twice');
  t.equal((await summary(metredScope)).balances[0].available_balance.monetary!.value, 200);
  const listed = await stripe.billing.creditGrants.list({ customer: customer.id, limit: 100 });
  t.equal(listed.data.length, 6);
  const events = await stripe.events.list({ limit: 100 });
  const types = new Set<string>(events.data.map((e) => e.type));
  for (const ty of ['billing.credit_grant.created', 'billing.credit_grant.updated', 'billing.credit_balance_transaction.created']) t.ok(types.has(ty), ty);

  // The same events reach the webhook endpoint, signed.
  const verifier = new Stripe('sk_test_unused', { telemetry: false });
  const delivered = () => got.map((g) => verifier.webhooks.constructEvent(g.body, g.signature, we.secret!));
  await eventually(
    async () => delivered().some((e) => e.type === 'billing.credit_grant.updated' && (e.data.object as { id: string }).id === gB.id),
    30_000,
    100,
  );
  const hooks = delivered();
  t.equal(hooks.filter((e) => e.type === 'billing.credit_grant.created').length, 6);
  t.ok(hooks.some((e) => e.type === 'customer.discount.created' && (e.data.object as { subscription?: string }).subscription === sub.id));
  const appliedHooks = hooks.filter(
    (e) =>
      e.type === 'billing.credit_balance_transaction.created' && (e.data.object as Stripe.Billing.CreditBalanceTransaction).debit?.type === 'credits_applied',
  );
  t.same(
    appliedHooks.map((e) => (e.data.object as Stripe.Billing.CreditBalanceTransaction).debit!.amount.monetary!.value),
    [150, 200, 1900],
    'in the order they were applied',
  );
  t.notOk(
    hooks.some((e) => e.type.startsWith('invoice.')),
    'only the enabled events',
  );
  void gX;

  await t.test('two invoices of one customer finalized at once never spend a grant twice', async (t) => {
    const clock2 = await stripe.testHelpers.testClocks.create({ frozen_time: T0 });
    const c2 = await stripe.customers.create({ test_clock: clock2.id });
    const subs = await Promise.all([1, 2].map(() => stripe.subscriptions.create({ customer: c2.id, items: [{ price: metered.id }] })));
    const small = await grant(300, { customer: c2.id });
    await stripe.billing.meterEvents.create({ event_name: meter.event_name, timestamp: T0 + 120, payload: { stripe_customer_id: c2.id, value: '100' } });
    await eventually(
      async () =>
        (await stripe.invoices.createPreview({ customer: c2.id, subscription: subs[0].id })).lines.data.some((l) => String(l.quantity_decimal) === '100'),
      30_000,
      200,
    );
    await stripe.testHelpers.testClocks.advance(clock2.id, { frozen_time: T0 + DAY + 60 });
    await eventually(async () => (await stripe.testHelpers.testClocks.retrieve(clock2.id)).status === 'ready', 30_000, 100);
    const drafts = (await stripe.invoices.list({ customer: c2.id, status: 'draft' })).data;
    t.equal(drafts.length, 2);
    const finals = await Promise.all(drafts.map((d) => stripe.invoices.finalizeInvoice(d.id)));
    const creditOf = (i: Stripe.Invoice) =>
      i.lines.data.flatMap((l) => l.pretax_credit_amounts ?? []).reduce((a, c) => a + (c.type === 'credit_balance_transaction' ? c.amount : 0), 0);
    t.same(
      finals.map((i) => i.subtotal),
      [250, 250],
    );
    t.equal(
      finals.map(creditOf).reduce((a, x) => a + x, 0),
      300,
      'exactly the grant, split 250 + 50 in some order',
    );
    t.same(
      finals.map(creditOf).sort((a, b) => a - b),
      [50, 250],
    );
    t.equal(
      (await stripe.billing.creditBalanceSummaries.retrieve({ customer: c2.id, filter: { type: 'credit_grant', credit_grant: small.id } })).balances[0]
        .available_balance.monetary!.value,
      0,
    );
  });
});
