/**
 * Customer cash balance: `GET/POST /v1/customers/:id/cash_balance`, `GET /v1/customers/:id/cash_balance_transactions`
 * (and `/:transaction`), and the test helper `POST /v1/test_helpers/customers/:id/fund_cash_balance` that simulates an
 * incoming bank transfer.
 *
 * Funds are kept per currency. With `reconciliation_mode: automatic` (the default, the merchant default here) funds are
 * applied to the customer's open invoices of that currency, oldest first, each one only when the balance covers what
 * it still owes (the invoice is paid; an `applied_to_payment` transaction takes the amount out): when funds arrive,
 * when the mode becomes automatic, and on every billing tick (BILLING_TICK_MS), which pays invoices finalized later.
 * With `manual` the funds wait. Each transaction records `customer_cash_balance_transaction.created`; funds left
 * unapplied after a funding record `cash_balance.funds_available` (each with its thin `v1.` counterpart).
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
import { recordThinEvent } from '../../shared/core-events';
import { readListParams } from '../meters';
import { listEndpoint, recordBillingEvent } from './common';
import { loadCustomer } from './customers';
import { INVOICE_TYPE, timeFor, type InvoiceObject } from './invoice-model';
import { payIn } from './invoice-transitions';

export const CASH_BALANCE_TYPE = 'cash_balance';
export const CASH_TRANSACTION_TYPE = 'customer_cash_balance_transaction';

type Mode = 'automatic' | 'manual';

interface StoredCashBalance {
  object: 'cash_balance';
  available: Record<string, number>;
  customer: string;
  livemode: boolean;
  settings: { reconciliation_mode: Mode; using_merchant_default: boolean };
}

interface CashTransaction {
  id: string;
  object: 'customer_cash_balance_transaction';
  created: number;
  currency: string;
  customer: string;
  ending_balance: number;
  livemode: boolean;
  net_amount: number;
  type: 'funded' | 'applied_to_payment';
  funded?: { bank_transfer: { reference: string; type: string } };
  applied_to_payment?: { payment_intent: null; invoice: string };
}

function render(b: StoredCashBalance): Record<string, unknown> {
  return { ...b, available: Object.keys(b.available).length === 0 ? null : { ...b.available } };
}

function bankTransferType(currency: string): string {
  return currency === 'eur' ? 'eu_bank_transfer' : currency === 'gbp' ? 'gb_bank_transfer' : currency === 'jpy' ? 'jp_bank_transfer' : 'us_bank_transfer';
}

async function loadBalance(store: StateStore, p: Principal, customer: string): Promise<StoredCashBalance> {
  const found = await store.getObject<StoredCashBalance>(p.account, CASH_BALANCE_TYPE, customer);
  return (
    found?.data ?? {
      object: 'cash_balance',
      available: {},
      customer,
      livemode: p.livemode,
      settings: { reconciliation_mode: 'automatic', using_merchant_default: true },
    }
  );
}

async function saveBalance(tx: StateStore, p: Principal, b: StoredCashBalance, nowMs: number): Promise<void> {
  if (!(await tx.updateObject(p.account, CASH_BALANCE_TYPE, b.customer, b))) {
    await tx.insertObject({ account: p.account, type: CASH_BALANCE_TYPE, id: b.customer, createdMs: nowMs, data: b });
  }
}

async function addTransaction(tx: StateStore, p: Principal, t: CashTransaction, nowMs: number): Promise<void> {
  await tx.insertObject({ account: p.account, type: CASH_TRANSACTION_TYPE, id: t.id, createdMs: nowMs, data: t });
  await recordBillingEvent(tx, p, 'customer_cash_balance_transaction.created', t);
  const url = `/v1/customers/${t.customer}/cash_balance_transactions/${t.id}`;
  await recordThinEvent(tx, p, 'v1.customer_cash_balance_transaction.created', { id: t.id, type: 'customer_cash_balance_transaction', url }, nowMs);
}

/** In `tx`: pays the customer's open invoices from the balance (automatic mode), oldest first; saves the balance. */
async function reconcile(s: Services, tx: StateStore, p: Principal, b: StoredCashBalance, nowMs: number): Promise<void> {
  if (b.settings.reconciliation_mode !== 'automatic' || Object.values(b.available).every((v) => v <= 0)) return;
  const open: InvoiceObject[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await tx.listObjects<InvoiceObject>(p.account, INVOICE_TYPE, {
      limit: 100,
      startingAfter: cursor,
      where: { customer: b.customer, status: 'open' },
    });
    open.push(...page.data.map((o) => o.data));
    if (!page.hasMore || page.data.length === 0) break;
    cursor = page.data[page.data.length - 1].id;
  }
  open.sort((a, c) => a.created - c.created || (a.id < c.id ? -1 : 1));
  for (const inv of open) {
    const owed = inv.amount_remaining;
    const have = b.available[inv.currency] ?? 0;
    if (owed <= 0 || owed > have) continue;
    await payIn(tx, p, inv, await timeFor(s, tx, p, inv.test_clock));
    b.available[inv.currency] = have - owed;
    await addTransaction(
      tx,
      p,
      {
        id: newId('ccsbtxn', p.livemode),
        object: 'customer_cash_balance_transaction',
        created: Math.floor(nowMs / 1000),
        currency: inv.currency,
        customer: b.customer,
        ending_balance: b.available[inv.currency],
        livemode: p.livemode,
        net_amount: -owed,
        type: 'applied_to_payment',
        applied_to_payment: { payment_intent: null, invoice: inv.id },
      },
      nowMs,
    );
  }
  await saveBalance(tx, p, b, nowMs);
}

/** The billing tick's pass: applies waiting funds to invoices finalized since they arrived. */
export async function reconcileCashBalances(s: Services, stopped: () => boolean): Promise<void> {
  for (const o of await s.state.scanType<StoredCashBalance>(CASH_BALANCE_TYPE)) {
    if (stopped()) return;
    if (o.data.settings.reconciliation_mode !== 'automatic' || Object.values(o.data.available).every((v) => v <= 0)) continue;
    const p: Principal = { account: o.account, livemode: o.data.livemode };
    await s.state.transaction(async (tx) => reconcile(s, tx, p, await loadBalance(tx, p, o.id), s.now()));
  }
}

export function registerCashBalanceRoutes(http: HttpServer, s: Services): void {
  http.route(
    'GET',
    '/v1/customers/:id/cash_balance',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const c = await loadCustomer(s.state, p, req.params[0], 'customer');
      return json(200, render(await loadBalance(s.state, p, c.id)));
    }),
  );

  http.route(
    'POST',
    '/v1/customers/:id/cash_balance',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['settings', 'expand']);
      const settings = r.object('settings');
      settings?.assertNoUnknown(['reconciliation_mode']);
      const mode = settings?.string('reconciliation_mode', { enum: ['automatic', 'manual', 'merchant_default'] });
      const b = await s.state.transaction(async (tx) => {
        const c = await loadCustomer(tx, p, req.params[0], 'customer');
        const b = await loadBalance(tx, p, c.id);
        if (mode !== undefined) {
          b.settings = { reconciliation_mode: mode === 'manual' ? 'manual' : 'automatic', using_merchant_default: mode === 'merchant_default' };
        }
        const nowMs = s.now();
        await saveBalance(tx, p, b, nowMs);
        await reconcile(s, tx, p, b, nowMs);
        return b;
      });
      return json(200, render(b));
    }),
  );

  http.route(
    'GET',
    '/v1/customers/:id/cash_balance_transactions',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'expand']);
      const c = await loadCustomer(s.state, p, req.params[0], 'customer');
      return listEndpoint<CashTransaction>(
        s,
        p,
        `/v1/customers/${c.id}/cash_balance_transactions`,
        CASH_TRANSACTION_TYPE,
        readListParams(r),
        { where: { customer: c.id } },
        undefined,
        (t) => t,
      );
    }),
  );

  http.route(
    'GET',
    '/v1/customers/:id/cash_balance_transactions/:txn',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const found = await s.state.getObject<CashTransaction>(p.account, CASH_TRANSACTION_TYPE, req.params[1]);
      if (!found || found.data.customer !== req.params[0]) throw new NotFoundError(`No such customer cash balance transaction: '${req.params[1]}'`);
      return json(200, found.data);
    }),
  );

  http.route(
    'POST',
    '/v1/test_helpers/customers/:id/fund_cash_balance',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['amount', 'currency', 'reference', 'expand']);
      const amount = r.integer('amount', { required: true, min: 1 });
      const currency = r.string('currency', { required: true, maxLength: 3 }).toLowerCase();
      if (!/^[a-z]{3}$/.test(currency)) throw new InvalidParamError('currency', `Invalid currency: ${currency}`);
      const reference = r.string('reference', { maxLength: 140 });
      const funded = await s.state.transaction(async (tx) => {
        const c = await loadCustomer(tx, p, req.params[0], 'customer');
        const b = await loadBalance(tx, p, c.id);
        const nowMs = s.now();
        b.available[currency] = (b.available[currency] ?? 0) + amount;
        const t: CashTransaction = {
          id: newId('ccsbtxn', p.livemode),
          object: 'customer_cash_balance_transaction',
          created: Math.floor(nowMs / 1000),
          currency,
          customer: c.id,
          ending_balance: b.available[currency],
          livemode: p.livemode,
          net_amount: amount,
          type: 'funded',
          funded: { bank_transfer: { reference: reference ?? `REF-${Math.floor(nowMs / 1000)}`, type: bankTransferType(currency) } },
        };
        await addTransaction(tx, p, t, nowMs);
        await saveBalance(tx, p, b, nowMs);
        await reconcile(s, tx, p, b, nowMs);
        if ((b.available[currency] ?? 0) > 0) {
          await recordBillingEvent(tx, p, 'cash_balance.funds_available', render(b));
          await recordThinEvent(tx, p, 'v1.cash_balance.funds_available', { type: 'cash_balance', url: `/v1/customers/${c.id}/cash_balance` }, nowMs);
        }
        return t;
      });
      return json(200, funded);
    }),
  );
}
