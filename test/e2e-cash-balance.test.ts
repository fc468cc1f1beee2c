/**
 * End-to-end: customer cash balance (`stripe.customers.retrieveCashBalance` / `updateCashBalance`, cash balance
 * transactions, `stripe.testHelpers.customers.fundCashBalance`): funds per currency, manual and automatic
 * reconciliation paying whole open invoices oldest first (also invoices finalized after the funds arrived, on the
 * billing tick), the transactions and their events, signed webhooks, errors and account walls.
 */
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { expectError } from './helpers/assertions';
import { receiver } from './helpers/receiver';

const KEY_A = 'sk_test_cb_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_cb_b_' + Math.random().toString(36).slice(2, 10);

t.test('customer cash balance end to end', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}`, BILLING_TICK_MS: '300', WEBHOOK_POLL_MS: '200' }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const other = server.stripe(KEY_B);
  const verifier = new Stripe('sk_test_unused', { telemetry: false });
  const rx = await receiver();
  t.teardown(() => rx.close());
  const endpoint = await stripe.webhookEndpoints.create({
    url: rx.url,
    enabled_events: ['customer_cash_balance_transaction.created', 'cash_balance.funds_available', 'invoice.paid'],
  });

  const customer = await stripe.customers.create({ name: 'Cash' });
  const fresh = await stripe.customers.retrieveCashBalance(customer.id);
  t.same(
    fresh,
    {
      ...fresh,
      object: 'cash_balance',
      available: null,
      customer: customer.id,
      livemode: false,
      settings: { reconciliation_mode: 'automatic', using_merchant_default: true },
    },
    'no funds yet, automatic by the merchant default',
  );
  const manual = await stripe.customers.updateCashBalance(customer.id, { settings: { reconciliation_mode: 'manual' } });
  t.same(manual.settings, { reconciliation_mode: 'manual', using_merchant_default: false });

  const openInvoice = async (amount: number) => {
    await stripe.invoiceItems.create({ customer: customer.id, amount, currency: 'usd' });
    const draft = await stripe.invoices.create({ customer: customer.id, pending_invoice_items_behavior: 'include', auto_advance: false });
    return stripe.invoices.finalizeInvoice(draft.id);
  };
  const inv1 = await openInvoice(1500);
  t.equal(inv1.status, 'open');

  const f1 = await stripe.testHelpers.customers.fundCashBalance(customer.id, { amount: 1000, currency: 'usd', reference: 'REF-1' });
  t.match(f1.id, /^ccsbtxn_test_/);
  t.equal(f1.object, 'customer_cash_balance_transaction');
  t.equal(f1.type, 'funded');
  t.equal(f1.net_amount, 1000);
  t.equal(f1.ending_balance, 1000);
  t.equal(f1.funded?.bank_transfer.reference, 'REF-1');
  t.equal((await stripe.invoices.retrieve(inv1.id)).status, 'open', 'manual: the funds wait');
  await stripe.testHelpers.customers.fundCashBalance(customer.id, { amount: 700, currency: 'usd' });
  t.same((await stripe.customers.retrieveCashBalance(customer.id)).available, { usd: 1700 });

  // Automatic: the open invoice is paid from the balance.
  const auto = await stripe.customers.updateCashBalance(customer.id, { settings: { reconciliation_mode: 'automatic' } });
  t.same(auto.available, { usd: 200 }, 'the invoice took 1500');
  const paid = await stripe.invoices.retrieve(inv1.id);
  t.equal(paid.status, 'paid');
  t.equal(paid.amount_remaining, 0);
  const txns = await stripe.customers.listCashBalanceTransactions(customer.id, { limit: 10 });
  t.same(
    txns.data.map((x) => [x.type, x.net_amount, x.ending_balance]),
    [
      ['applied_to_payment', -1500, 200],
      ['funded', 700, 1700],
      ['funded', 1000, 1000],
    ],
    'newest first',
  );
  t.same(await stripe.customers.retrieveCashBalanceTransaction(customer.id, f1.id), f1, 'retrieve');

  // An invoice finalized later is paid on the billing tick; one larger than the balance stays open.
  const inv2 = await openInvoice(150);
  const inv3 = await openInvoice(5000);
  await eventually(async () => (await stripe.invoices.retrieve(inv2.id)).status === 'paid', 30_000, 100);
  t.same((await stripe.customers.retrieveCashBalance(customer.id)).available, { usd: 50 });
  t.equal((await stripe.invoices.retrieve(inv3.id)).status, 'open', 'not enough funds: stays open');

  // Events and their signed webhooks.
  const types = (await stripe.events.list({ limit: 100 })).data.map((e) => e.type);
  t.equal(types.filter((x) => x === 'customer_cash_balance_transaction.created').length, 4, 'one event per transaction');
  t.equal(types.filter((x) => x === 'cash_balance.funds_available').length, 2, 'funds left unapplied after each funding');
  await eventually(async () => rx.got.length >= 8, 30_000, 100);
  const delivered = rx.got.map((g) => verifier.webhooks.constructEvent(g.body, g.signature, endpoint.secret!).type);
  t.same(
    delivered.filter((x) => x !== 'invoice.paid').slice(0, 3),
    ['customer_cash_balance_transaction.created', 'cash_balance.funds_available', 'customer_cash_balance_transaction.created'],
    'delivered in order, signed',
  );
  t.equal(delivered.filter((x) => x === 'invoice.paid').length, 2, 'the paid invoices');

  // Their thin counterparts, for event destinations.
  const thin = async (type: string) => {
    const out: Array<{ related_object?: unknown }> = [];
    for await (const e of stripe.v2.core.events.list({ types: [type] })) out.push(e as { related_object?: unknown });
    return out;
  };
  const thinTxns = await thin('v1.customer_cash_balance_transaction.created');
  t.equal(thinTxns.length, 4, 'a thin event per transaction');
  t.same(
    thinTxns.at(-1)?.related_object,
    { id: f1.id, type: 'customer_cash_balance_transaction', url: `/v1/customers/${customer.id}/cash_balance_transactions/${f1.id}` },
    'related to the transaction',
  );
  const thinFunds = await thin('v1.cash_balance.funds_available');
  t.equal(thinFunds.length, 2);
  t.same(thinFunds[0].related_object, { type: 'cash_balance', url: `/v1/customers/${customer.id}/cash_balance` }, 'the cash balance, a singleton');

  // Errors and walls.
  await expectError(
    t,
    stripe.testHelpers.customers.fundCashBalance(customer.id, { amount: 0, currency: 'usd' }),
    { statusCode: 400, param: 'amount' },
    'amount > 0',
  );
  await expectError(t, stripe.testHelpers.customers.fundCashBalance('cus_nope', { amount: 5, currency: 'usd' }), { statusCode: 404 }, 'unknown customer');
  await expectError(
    t,
    stripe.customers.updateCashBalance(customer.id, { settings: { reconciliation_mode: 'sometimes' as 'manual' } }),
    { statusCode: 400 },
    'bad mode',
  );
  await expectError(t, other.customers.retrieveCashBalance(customer.id), { statusCode: 404 }, "another account's customer");
  await expectError(t, other.customers.retrieveCashBalanceTransaction(customer.id, f1.id), { statusCode: 404 }, "another account's transaction");
});
