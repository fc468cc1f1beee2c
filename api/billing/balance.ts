/**
 * The account balance (`GET /v1/balance`), balance transactions (`/v1/balance_transactions`, also under the old path
 * `/v1/balance/history`), and customer balance transactions (`/v1/customers/:customer/balance_transactions`).
 *
 * Account balance: one `balance_state` document per account holds the available amount per currency; it is moved
 * only by recordBalanceTransaction, in the caller's transaction, together with the `balance_transaction` it writes.
 * Funds are available at once (status `available`, available_on = created): there are no payouts or settlement delays
 * here. Like a fresh Stripe test account the balance always shows `usd` (0 when nothing moved it).
 *
 * Customer balance: recordCustomerBalanceTransaction writes the `customer_balance_transaction` and moves the
 * customer's `balance` (setting the customer's `currency` on first use) in one transaction; negative amounts are
 * credits, positive ones debits, as in Stripe. The REST endpoint creates `adjustment`s.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import { listEndpoint, readCreatedRange, readMetadata, recordBillingEvent, type Metadata } from './common';
import { CUSTOMER_TYPE, loadCustomer, type CustomerObject } from './customers';

export const BALANCE_STATE_TYPE = 'balance_state';
export const BALANCE_TRANSACTION_TYPE = 'balance_transaction';
export const CUSTOMER_BALANCE_TRANSACTION_TYPE = 'customer_balance_transaction';
const BALANCE_STATE_ID = 'balance';

interface BalanceState {
  id: string;
  /** currency -> available amount (minor units). */
  available: Record<string, number>;
}

export interface BalanceTransactionObject {
  id: string;
  object: 'balance_transaction';
  amount: number;
  available_on: number;
  balance_type: 'payments';
  created: number;
  currency: string;
  description: string | null;
  exchange_rate: number | null;
  fee: number;
  fee_details: Array<{ amount: number; application: string | null; currency: string; description: string | null; type: string }>;
  net: number;
  reporting_category: string;
  source: string | null;
  status: 'available' | 'pending';
  type: string;
}

export interface CustomerBalanceTransactionObject {
  id: string;
  object: 'customer_balance_transaction';
  amount: number;
  checkout_session: string | null;
  created: number;
  credit_note: string | null;
  currency: string;
  customer: string;
  customer_account: string | null;
  description: string | null;
  ending_balance: number;
  invoice: string | null;
  livemode: boolean;
  metadata: Metadata;
  type: string;
}

const REPORTING_CATEGORY: Record<string, string> = {
  charge: 'charge',
  payment: 'charge',
  refund: 'refund',
  payment_refund: 'refund',
  adjustment: 'other_adjustment',
  payout: 'payout',
  stripe_fee: 'fee',
  application_fee: 'platform_earning',
  transfer: 'transfer',
};

const CURRENCY_RE = /^[a-z]{3}$/;

/**
 * Records a balance transaction and moves the account's available balance by its net (amount − fee), atomically
 * with the caller's other writes: call it with the `tx` of the transaction that causes it (e.g. an invoice payment:
 * `{amount: invoice.amount_paid, currency: invoice.currency, type: 'charge', source: invoice.id, description: …}`).
 */
export async function recordBalanceTransaction(
  tx: StateStore,
  p: Principal,
  t: { amount: number; currency: string; type: string; source: string | null; description: string | null; fee?: number },
): Promise<BalanceTransactionObject> {
  if (!Number.isSafeInteger(t.amount)) throw new Error(`recordBalanceTransaction: amount must be an integer (minor units), got ${t.amount}`);
  const fee = t.fee ?? 0;
  if (!Number.isSafeInteger(fee) || fee < 0) throw new Error(`recordBalanceTransaction: fee must be a non-negative integer, got ${fee}`);
  const currency = t.currency.toLowerCase();
  const nowMs = Date.now();
  const now = Math.floor(nowMs / 1000);
  const txn: BalanceTransactionObject = {
    id: newId('txn', p.livemode),
    object: 'balance_transaction',
    amount: t.amount,
    available_on: now,
    balance_type: 'payments',
    created: now,
    currency,
    description: t.description,
    exchange_rate: null,
    fee,
    fee_details: fee > 0 ? [{ amount: fee, application: null, currency, description: 'Stripe processing fees', type: 'stripe_fee' }] : [],
    net: t.amount - fee,
    reporting_category: REPORTING_CATEGORY[t.type] ?? 'other_adjustment',
    source: t.source,
    status: 'available',
    type: t.type,
  };
  await tx.insertObject({ account: p.account, type: BALANCE_TRANSACTION_TYPE, id: txn.id, createdMs: nowMs, data: txn });
  const found = await tx.getObject<BalanceState>(p.account, BALANCE_STATE_TYPE, BALANCE_STATE_ID);
  const state: BalanceState = found?.data ?? { id: BALANCE_STATE_ID, available: {} };
  state.available[currency] = (state.available[currency] ?? 0) + txn.net;
  if (found) await tx.updateObject(p.account, BALANCE_STATE_TYPE, BALANCE_STATE_ID, state);
  else await tx.insertObject({ account: p.account, type: BALANCE_STATE_TYPE, id: BALANCE_STATE_ID, createdMs: nowMs, data: state });
  return txn;
}

/**
 * Writes a customer balance transaction and moves the customer's balance, in the caller's transaction. `amount` < 0
 * credits the customer, > 0 debits. For invoices: type `applied_to_invoice` / `unapplied_from_invoice` with
 * `invoice` set. Records `customer.updated` (previous balance).
 */
export async function recordCustomerBalanceTransaction(
  tx: StateStore,
  p: Principal,
  customerId: string,
  t: { amount: number; currency: string; type: string; description?: string | null; metadata?: Metadata; invoice?: string | null; credit_note?: string | null },
  param = 'customer',
): Promise<CustomerBalanceTransactionObject> {
  const c: CustomerObject = await loadCustomer(tx, p, customerId, param);
  const currency = t.currency.toLowerCase();
  if (c.currency !== null && c.currency !== currency) {
    throw new InvalidParamError('currency', `The currency of this transaction (${currency}) must match the customer's currency (${c.currency}).`);
  }
  const before = { balance: c.balance, currency: c.currency };
  c.balance += t.amount;
  if (!Number.isSafeInteger(c.balance)) throw new InvalidParamError('amount', 'The resulting customer balance is out of range.');
  c.currency = currency;
  const nowMs = Date.now();
  const txn: CustomerBalanceTransactionObject = {
    id: newId('cbtxn', p.livemode),
    object: 'customer_balance_transaction',
    amount: t.amount,
    checkout_session: null,
    created: Math.floor(nowMs / 1000),
    credit_note: t.credit_note ?? null,
    currency,
    customer: c.id,
    customer_account: null,
    description: t.description ?? null,
    ending_balance: c.balance,
    invoice: t.invoice ?? null,
    livemode: p.livemode,
    metadata: t.metadata ?? {},
    type: t.type,
  };
  await tx.insertObject({ account: p.account, type: CUSTOMER_BALANCE_TRANSACTION_TYPE, id: txn.id, createdMs: nowMs, data: txn });
  await tx.updateObject(p.account, CUSTOMER_TYPE, c.id, c);
  await recordBillingEvent(tx, p, 'customer.updated', c, before);
  return txn;
}

function renderBalance(p: Principal, state: BalanceState | null): Record<string, unknown> {
  const amounts: Record<string, number> = { usd: 0, ...(state?.available ?? {}) };
  const currencies = Object.keys(amounts).sort((a, b) => (a === 'usd' ? -1 : b === 'usd' ? 1 : a < b ? -1 : 1));
  return {
    object: 'balance',
    available: currencies.map((c) => ({ amount: amounts[c], currency: c, source_types: { card: amounts[c] } })),
    connect_reserved: currencies.map((c) => ({ amount: 0, currency: c })),
    livemode: p.livemode,
    pending: currencies.map((c) => ({ amount: 0, currency: c, source_types: { card: 0 } })),
  };
}

async function loadCustomerTxn(store: StateStore, p: Principal, customer: string, id: string): Promise<CustomerBalanceTransactionObject> {
  await loadCustomer(store, p, customer, 'customer');
  const found = await store.getObject<CustomerBalanceTransactionObject>(p.account, CUSTOMER_BALANCE_TRANSACTION_TYPE, id);
  if (!found || found.data.customer !== customer) throw new NotFoundError(`No such customer balance transaction: '${id}'`);
  return found.data;
}

export function registerBalanceRoutes(http: HttpServer, s: Services): void {
  http.route(
    'GET',
    '/v1/balance',
    apiEndpoint(s, async (p, _req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const found = await s.state.getObject<BalanceState>(p.account, BALANCE_STATE_TYPE, BALANCE_STATE_ID);
      return json(200, renderBalance(p, found?.data ?? null));
    }),
  );

  for (const base of ['/v1/balance_transactions', '/v1/balance/history']) {
    http.route(
      'GET',
      base,
      apiEndpoint(s, async (p, _req, params) => {
        const r = new ParamReader(params);
        r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'type', 'created', 'currency', 'source', 'payout', 'expand']);
        const page = readListParams(r);
        const where: Record<string, string> = {};
        const type = r.string('type', { maxLength: 100 });
        if (type !== undefined) where.type = type;
        const currency = r.string('currency', { maxLength: 3 });
        if (currency !== undefined) where.currency = currency.toLowerCase();
        const source = r.string('source', { maxLength: 5000 });
        if (source !== undefined) where.source = source;
        if (r.string('payout', { maxLength: 5000 }) !== undefined) {
          // No payouts exist here: nothing belongs to any payout.
          where.id = '';
        }
        return listEndpoint<BalanceTransactionObject>(s, p, base, BALANCE_TRANSACTION_TYPE, page, { where, ...readCreatedRange(r) }, undefined, (t) => t);
      }),
    );
    http.route(
      'GET',
      `${base}/:id`,
      apiEndpoint(s, async (p, req, params) => {
        new ParamReader(params).assertNoUnknown(['expand']);
        const id = req.params[0];
        const found = await s.state.getObject<BalanceTransactionObject>(p.account, BALANCE_TRANSACTION_TYPE, id);
        if (!found) throw new NotFoundError(`No such balance transaction: '${id}'`);
        return json(200, found.data);
      }),
    );
  }

  http.route(
    'POST',
    '/v1/customers/:customer/balance_transactions',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['amount', 'currency', 'description', 'metadata', 'expand']);
      const amount = r.integer('amount', { required: true })!;
      if (amount === 0) throw new InvalidParamError('amount', 'Invalid amount: it must be a non-zero integer.');
      const currency = r.string('currency', { required: true, maxLength: 3 })!.toLowerCase();
      if (!CURRENCY_RE.test(currency)) throw new InvalidParamError('currency', `Invalid currency: ${currency}.`);
      const description = r.string('description', { maxLength: 350 });
      const metadata = readMetadata(r) ?? {};
      const txn = await s.state.transaction((tx) =>
        recordCustomerBalanceTransaction(
          tx,
          p,
          req.params[0],
          { amount, currency, type: 'adjustment', description: description ?? null, metadata },
          'customer',
        ),
      );
      return json(200, txn);
    }),
  );

  http.route(
    'GET',
    '/v1/customers/:customer/balance_transactions',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'created', 'invoice', 'expand']);
      const page = readListParams(r);
      const customer = req.params[0];
      await loadCustomer(s.state, p, customer, 'customer');
      const where: Record<string, string> = { customer };
      const invoice = r.string('invoice', { maxLength: 5000 });
      if (invoice !== undefined) where.invoice = invoice;
      return listEndpoint<CustomerBalanceTransactionObject>(
        s,
        p,
        `/v1/customers/${customer}/balance_transactions`,
        CUSTOMER_BALANCE_TRANSACTION_TYPE,
        page,
        { where, ...readCreatedRange(r) },
        undefined,
        (t) => t,
      );
    }),
  );

  http.route(
    'GET',
    '/v1/customers/:customer/balance_transactions/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await loadCustomerTxn(s.state, p, req.params[0], req.params[1]));
    }),
  );

  http.route(
    'POST',
    '/v1/customers/:customer/balance_transactions/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['description', 'metadata', 'expand']);
      const txn = await s.state.transaction(async (tx) => {
        const t = await loadCustomerTxn(tx, p, req.params[0], req.params[1]);
        const description = r.string('description', { maxLength: 350, allowEmpty: true });
        if (description !== undefined) t.description = description === '' ? null : description;
        const metadata = readMetadata(r, t.metadata);
        if (metadata !== undefined) t.metadata = metadata;
        await tx.updateObject(p.account, CUSTOMER_BALANCE_TRANSACTION_TYPE, t.id, t);
        return t;
      });
      return json(200, txn);
    }),
  );
}
