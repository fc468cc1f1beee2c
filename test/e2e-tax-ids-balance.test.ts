/**
 * End-to-end: customer and account tax IDs (type list, value checks, Stripe's tax_id_invalid error), the account
 * balance and balance transactions, and customer balance transactions (ending_balance, the customer's balance moved
 * atomically, description/metadata updates).
 */
import t from 'tap';
import type Stripe from 'stripe';
import path from 'node:path';
import { startServer, tempDir, serverEnv, DISTRIBUTED } from './helpers/server';
import type { StateStore } from '../shared/state-store';
import { accountForKey } from '../shared/http/auth';
import { recordBalanceTransaction, recordCustomerBalanceTransaction } from '../api/billing/balance';
import { expectError } from './helpers/assertions';

const KEY_A = 'sk_test_txb_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_txb_b_' + Math.random().toString(36).slice(2, 10);
const INVALID_VALUE = { type: 'StripeInvalidRequestError', statusCode: 400, code: 'tax_id_invalid', param: 'value' };

t.test('tax ids and balances end to end', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);

  await t.test('customer tax ids: create, retrieve, list, delete', async (t) => {
    const c = await stripe.customers.create({ name: 'Taxed' });
    const vat = await stripe.customers.createTaxId(c.id, { type: 'eu_vat', value: 'DE123456789' });
    t.match(vat.id, /^txi_test_/);
    t.equal(vat.object, 'tax_id');
    t.equal(vat.country, 'DE');
    t.equal(vat.customer, c.id);
    t.equal(vat.type, 'eu_vat');
    t.equal(vat.value, 'DE123456789');
    t.equal(vat.livemode, false);
    t.same(vat.owner, { customer: c.id, customer_account: null, type: 'customer' });
    t.same(vat.verification, { status: 'pending', verified_address: null, verified_name: null });

    const ein = await stripe.customers.createTaxId(c.id, { type: 'us_ein', value: '12-3456789' });
    t.equal(ein.country, 'US');
    t.equal(ein.verification!.status, 'unavailable');
    const gb = await stripe.customers.createTaxId(c.id, { type: 'gb_vat', value: 'GB123456789' });
    t.equal(gb.country, 'GB');
    const abn = await stripe.customers.createTaxId(c.id, { type: 'au_abn', value: '12345678912' });
    t.equal(abn.country, 'AU');
    const gst = await stripe.customers.createTaxId(c.id, { type: 'in_gst', value: '12ABCDE3456FGZH' });
    t.equal(gst.country, 'IN');
    const other = await stripe.customers.createTaxId(c.id, { type: 'kz_bin', value: 'anything' });
    t.equal(other.country, 'KZ');
    const gr = await stripe.customers.createTaxId(c.id, { type: 'eu_vat', value: 'EL123456789' });
    t.equal(gr.country, 'GR', 'EL prefix is Greece');

    const got = await stripe.customers.retrieveTaxId(c.id, vat.id);
    t.same(got, vat);
    const list = await stripe.customers.listTaxIds(c.id, { limit: 100 });
    t.same(
      list.data.map((x) => x.id),
      [gr.id, other.id, gst.id, abn.id, gb.id, ein.id, vat.id],
      'newest first',
    );

    const del = await stripe.customers.deleteTaxId(c.id, ein.id);
    t.same({ ...del }, { id: ein.id, object: 'tax_id', deleted: true });
    await expectError(t, stripe.customers.retrieveTaxId(c.id, ein.id), { statusCode: 404, code: 'resource_missing' }, 'deleted tax id');
    t.equal((await stripe.customers.listTaxIds(c.id)).data.length, 6);

    // Another customer's tax id is not reachable through this customer.
    const c2 = await stripe.customers.create();
    await expectError(t, stripe.customers.retrieveTaxId(c2.id, vat.id), { statusCode: 404 }, 'tax id of another customer');
    await expectError(
      t,
      stripe.customers.createTaxId('cus_test_missing', { type: 'eu_vat', value: 'DE123456789' }),
      { statusCode: 404, code: 'resource_missing' },
      'unknown customer',
    );
    await expectError(t, stripeB.customers.retrieveTaxId(c.id, vat.id), { statusCode: 404 }, 'other account');

    const events = await stripe.events.list({ type: 'customer.tax_id.*', limit: 100 });
    t.same(
      events.data.slice(0, 2).map((e) => e.type),
      ['customer.tax_id.deleted', 'customer.tax_id.created'],
    );
    t.equal((events.data[0].data.object as Stripe.TaxId).id, ein.id);
  });

  await t.test('invalid values get tax_id_invalid', async (t) => {
    const c = await stripe.customers.create();
    const bad: Array<[Stripe.CustomerCreateTaxIdParams.Type, string]> = [
      ['eu_vat', 'DE1'],
      ['eu_vat', 'US123456789'],
      ['gb_vat', 'GB12345'],
      ['gb_vat', '123456789'],
      ['us_ein', '1234-56789'],
      ['us_ein', '12345678'],
      ['au_abn', '1234567891'],
      ['in_gst', '12ABCDE3456FGXH'],
      ['ca_bn', 'abc'],
    ];
    for (const [type, value] of bad) {
      const err = await expectError(t, stripe.customers.createTaxId(c.id, { type, value }), INVALID_VALUE, `${type} ${value}`);
      t.equal(err?.message, `Invalid value for ${type}.`);
    }
    await expectError(t, stripe.customers.createTaxId(c.id, { type: 'xx_nope' as any, value: '1' }), { statusCode: 400, param: 'type' }, 'unknown type');
    await expectError(
      t,
      stripe.customers.createTaxId(c.id, { type: 'eu_vat' } as any),
      { statusCode: 400, code: 'parameter_missing', param: 'value' },
      'missing value',
    );
    t.equal((await stripe.customers.listTaxIds(c.id)).data.length, 0, 'nothing was created');
    const ok = await stripe.customers.createTaxId(c.id, { type: 'us_ein', value: '123456789' });
    t.equal(ok.value, '123456789', 'EIN without the dash is valid');
  });

  await t.test('account-level tax ids', async (t) => {
    const self = await stripe.taxIds.create({ type: 'gb_vat', value: 'GB123456789012' });
    t.same(self.owner, { customer_account: null, type: 'self' });
    t.equal(self.customer, null);
    t.equal(self.country, 'GB');
    const c = await stripe.customers.create();
    const owned = await stripe.taxIds.create({ type: 'au_abn', value: '98765432109', owner: { type: 'customer', customer: c.id } });
    t.same(owned.owner, { customer: c.id, customer_account: null, type: 'customer' });
    t.equal(owned.customer, c.id);

    const selfList = await stripe.taxIds.list();
    t.same(
      selfList.data.map((x) => x.id),
      [self.id],
      "default list: the account's own tax ids",
    );
    const custList = await stripe.taxIds.list({ owner: { type: 'customer', customer: c.id } });
    t.same(
      custList.data.map((x) => x.id),
      [owned.id],
    );
    t.same(
      (await stripe.customers.listTaxIds(c.id)).data.map((x) => x.id),
      [owned.id],
      'visible under the customer too',
    );
    t.same(await stripe.taxIds.retrieve(self.id), self);
    await expectError(t, stripe.taxIds.create({ type: 'us_ein', value: 'x' }), INVALID_VALUE, 'invalid account tax id');
    await expectError(
      t,
      stripe.taxIds.create({ type: 'us_ein', value: '12-3456789', owner: { type: 'customer', customer: 'cus_test_missing' } }),
      { statusCode: 404 },
      'unknown owner customer',
    );
    const del = await stripe.taxIds.del(self.id);
    t.equal(del.deleted, true);
    t.same((await stripe.taxIds.list()).data, []);
    const events = await stripe.events.list({ types: ['tax_id.created', 'tax_id.deleted'] });
    t.same(
      events.data.map((e) => e.type),
      ['tax_id.deleted', 'tax_id.created'],
    );
  });

  await t.test('account balance and balance transactions', async (t) => {
    const bal = await stripe.balance.retrieve();
    t.same(
      { ...bal },
      {
        object: 'balance',
        available: [{ amount: 0, currency: 'usd', source_types: { card: 0 } }],
        connect_reserved: [{ amount: 0, currency: 'usd' }],
        livemode: false,
        pending: [{ amount: 0, currency: 'usd', source_types: { card: 0 } }],
      },
      'a fresh account: usd 0, like Stripe',
    );
    const list = await stripe.balanceTransactions.list();
    t.same(list.data, []);
    await expectError(t, stripe.balanceTransactions.retrieve('txn_test_missing'), { statusCode: 404, code: 'resource_missing' }, 'unknown balance transaction');
    // Balance transactions are created by payments (recordBalanceTransaction); their movement is covered where
    // invoices are paid. The list filters are accepted:
    t.same((await stripe.balanceTransactions.list({ type: 'charge', created: { gte: 0 } })).data, []);
  });

  await t.test('customer balance transactions', async (t) => {
    const c = await stripe.customers.create({ name: 'Credit' });
    const credit = await stripe.customers.createBalanceTransaction(c.id, {
      amount: -1500,
      currency: 'usd',
      description: 'Goodwill credit',
      metadata: { ticket: 'T-1' },
    });
    t.match(credit.id, /^cbtxn_test_/);
    t.equal(credit.object, 'customer_balance_transaction');
    t.equal(credit.amount, -1500);
    t.equal(credit.currency, 'usd');
    t.equal(credit.customer, c.id);
    t.equal(credit.description, 'Goodwill credit');
    t.equal(credit.ending_balance, -1500);
    t.equal(credit.type, 'adjustment');
    t.equal(credit.invoice, null);
    t.equal(credit.credit_note, null);
    t.same(credit.metadata, { ticket: 'T-1' });
    let cust = (await stripe.customers.retrieve(c.id)) as Stripe.Customer;
    t.equal(cust.balance, -1500, 'customer balance moved');
    t.equal(cust.currency, 'usd', 'customer currency set by the first transaction');

    const debit = await stripe.customers.createBalanceTransaction(c.id, { amount: 400, currency: 'usd' });
    t.equal(debit.ending_balance, -1100);
    cust = (await stripe.customers.retrieve(c.id)) as Stripe.Customer;
    t.equal(cust.balance, -1100);

    await expectError(
      t,
      stripe.customers.createBalanceTransaction(c.id, { amount: 100, currency: 'eur' }),
      { statusCode: 400, param: 'currency' },
      'other currency',
    );
    await expectError(t, stripe.customers.createBalanceTransaction(c.id, { amount: 0, currency: 'usd' }), { statusCode: 400, param: 'amount' }, 'zero amount');
    await expectError(
      t,
      stripe.customers.createBalanceTransaction('cus_test_missing', { amount: 5, currency: 'usd' }),
      { statusCode: 404 },
      'unknown customer',
    );
    cust = (await stripe.customers.retrieve(c.id)) as Stripe.Customer;
    t.equal(cust.balance, -1100, 'failed requests moved nothing');

    const list = await stripe.customers.listBalanceTransactions(c.id);
    t.same(
      list.data.map((x) => [x.id, x.ending_balance]),
      [
        [debit.id, -1100],
        [credit.id, -1500],
      ],
    );
    const got = await stripe.customers.retrieveBalanceTransaction(c.id, credit.id);
    t.same(got, credit);
    const up = await stripe.customers.updateBalanceTransaction(c.id, credit.id, { description: 'Renamed', metadata: { ticket: '', more: 'y' } });
    t.equal(up.description, 'Renamed');
    t.same(up.metadata, { more: 'y' });
    t.equal(up.amount, -1500, 'amount is immutable');
    await expectError(
      t,
      stripe.customers.updateBalanceTransaction(c.id, credit.id, { amount: 5 } as any),
      { statusCode: 400, code: 'parameter_unknown' },
      'amount cannot be updated',
    );

    const other = await stripe.customers.create();
    await expectError(t, stripe.customers.retrieveBalanceTransaction(other.id, credit.id), { statusCode: 404 }, 'transaction of another customer');

    const ev = (await stripe.events.list({ type: 'customer.updated', limit: 1 })).data[0];
    t.equal((ev.data.object as Stripe.Customer).balance, -1100);
    t.same(ev.data.previous_attributes, { balance: -1500 }, 'customer.updated with the previous balance');
  });
});

/** The server's own state store for a data dir (stopped server), the way main.ts opens it. */
async function openStore(dataDir: string): Promise<StateStore> {
  if (DISTRIBUTED) {
    const env = serverEnv(dataDir);
    const { PostgresStateStore } = await import('../shared/state/postgres-store');
    const store = new PostgresStateStore({ url: env.DATABASE_URL!, schema: env.DATABASE_SCHEMA });
    await store.init();
    return store;
  }
  const { SqliteStateStore } = await import('../shared/state/sqlite-store');
  const store = new SqliteStateStore(path.join(dataDir, 'state.sqlite'));
  await store.init();
  return store;
}

t.test('recordBalanceTransaction moves the balance (as invoice payments will)', async (t) => {
  const dataDir = tempDir('meterd-balance-');
  let server = await startServer({ dataDir, key: KEY_A });
  t.teardown(() => server.stop());
  const cus = await server.stripe().customers.create({ name: 'payer' });
  await server.stop();

  const p = { account: accountForKey(KEY_A), livemode: false };
  const store = await openStore(dataDir);
  const charge = await store.transaction((tx) =>
    recordBalanceTransaction(tx, p, { amount: 2000, currency: 'USD', type: 'charge', source: 'in_test_1', description: 'Invoice 1', fee: 88 }),
  );
  t.equal(charge.net, 1912);
  t.same(charge.fee_details, [{ amount: 88, application: null, currency: 'usd', description: 'Stripe processing fees', type: 'stripe_fee' }]);
  await store.transaction((tx) => recordBalanceTransaction(tx, p, { amount: 500, currency: 'eur', type: 'charge', source: 'in_test_2', description: null }));
  const refund = await store.transaction((tx) =>
    recordBalanceTransaction(tx, p, { amount: -300, currency: 'usd', type: 'refund', source: 're_test_1', description: 'Refund' }),
  );
  // A failing transaction moves nothing.
  await t.rejects(
    store.transaction(async (tx) => {
      await recordBalanceTransaction(tx, p, { amount: 999, currency: 'usd', type: 'charge', source: null, description: null });
      throw new Error('rolled back');
    }),
  );
  const applied = await store.transaction((tx) =>
    recordCustomerBalanceTransaction(tx, p, cus.id, { amount: 700, currency: 'usd', type: 'applied_to_invoice', invoice: 'in_test_1' }),
  );
  t.equal(applied.ending_balance, 700);
  await store.close();

  server = await startServer({ dataDir, key: KEY_A });
  const stripe = server.stripe();
  const bal = await stripe.balance.retrieve();
  t.same(
    bal.available,
    [
      { amount: 1612, currency: 'usd', source_types: { card: 1612 } },
      { amount: 500, currency: 'eur', source_types: { card: 500 } },
    ],
    'available per currency: usd 2000 − 88 − 300, eur 500',
  );
  t.same(bal.pending, [
    { amount: 0, currency: 'usd', source_types: { card: 0 } },
    { amount: 0, currency: 'eur', source_types: { card: 0 } },
  ]);
  const list = await stripe.balanceTransactions.list();
  t.same(
    list.data.map((x) => [x.type, x.amount, x.net, x.currency]),
    [
      ['refund', -300, -300, 'usd'],
      ['charge', 500, 500, 'eur'],
      ['charge', 2000, 1912, 'usd'],
    ],
  );
  t.equal(list.data[2].reporting_category, 'charge');
  t.equal(list.data[0].reporting_category, 'refund');
  t.equal(list.data[2].status, 'available');
  t.equal(list.data[2].source, 'in_test_1');
  t.same(
    (await stripe.balanceTransactions.list({ type: 'refund' })).data.map((x) => x.id),
    [refund.id],
  );
  t.same(await stripe.balanceTransactions.retrieve(charge.id), charge);
  const cbt = await stripe.customers.listBalanceTransactions(cus.id);
  t.same(
    cbt.data.map((x) => [x.type, x.amount, x.invoice, x.ending_balance]),
    [['applied_to_invoice', 700, 'in_test_1', 700]],
  );
  t.equal(((await stripe.customers.retrieve(cus.id)) as Stripe.Customer).balance, 700);
});
