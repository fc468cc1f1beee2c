/**
 * Billing credits: credit grants (`/v1/billing/credit_grants`: create, retrieve, update, list, expire, void), the
 * credit balance summary (`/v1/billing/credit_balance_summary`) and credit balance transactions
 * (`/v1/billing/credit_balance_transactions`), and their application to invoices.
 *
 * A grant (type `billing.credit_grant`, id credgr_…) holds a monetary amount for one customer, scoped to metered prices
 * (`applicability_config.scope.price_type = metered`) or to a list of metered prices. Its remaining balance is kept in
 * `_available`; every movement is a credit balance transaction (type `billing.credit_balance_transaction`, dated at
 * the customer's time): a credit `credits_granted` when granted, debits `credits_applied` (one per invoice line),
 * `credits_expired`, `credits_voided`, and a credit `credits_application_invoice_voided` when an invoice that used
 * credits is voided. Each records billing.credit_balance_transaction.created.
 *
 * Application (at finalization, in the finalizing transaction, after discounts, before the customer balance): the
 * customer's grants in the invoice's currency that are effective (effective_at <= the invoice's finalization time),
 * not expired and not voided, in Stripe's order (allocation.creditOrder: priority, expiry, category, effective_at,
 * creation), each taking
 * min(its balance, what is left of a line after discounts) line by line over the lines in its scope: integers, no
 * rounding. The lines show it in `pretax_credit_amounts` (type credit_balance_transaction), the invoice in
 * `total_pretax_credit_amounts`, and total = subtotal - discounts - credits.
 *
 * Expiry: a grant whose expires_at has passed is written off (credits_expired for what is left) when its customer's
 * time moves (a test clock advance or the billing tick finalizing drafts), before credits are applied, or when it is
 * expired explicitly; the summary never counts it after expires_at whether or not that has happened yet.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { readListParams } from '../meters';
import { expandBilling, expandParam, listEndpoint, recordBillingEvent, type Metadata } from './common';
import { loadCustomer } from './customers';
import { loadPrice } from './prices';
import { finalizeHooks } from './invoice-transitions';
import { timeFor, type InvoiceObject } from './invoice-model';
import type { PretaxCreditAmount } from './invoice-totals';
import { allocateCredits, creditOrder } from './allocation';
import { defineResource, loadResource, P, whereOf } from './resource';

export const CREDIT_GRANT_TYPE = 'billing.credit_grant';
export const CREDIT_BALANCE_TRANSACTION_TYPE = 'billing.credit_balance_transaction';

interface Monetary {
  currency: string;
  value: number;
}

interface Scope {
  price_type?: 'metered';
  prices?: Array<{ id: string }>;
}

export interface CreditGrantObject {
  id: string;
  object: 'billing.credit_grant';
  amount: { monetary: Monetary; type: 'monetary' };
  applicability_config: { scope: Scope };
  category: 'paid' | 'promotional';
  created: number;
  customer: string;
  customer_account: null;
  effective_at: number;
  expires_at: number | null;
  livemode: boolean;
  metadata: Metadata;
  name: string | null;
  priority: number;
  test_clock: string | null;
  updated: number;
  voided_at: number | null;
  /** What is left to apply, in minor units. */
  _available: number;
}

type CreditType = 'credits_granted' | 'credits_application_invoice_voided';
type DebitType = 'credits_applied' | 'credits_expired' | 'credits_voided';

export interface CreditBalanceTransactionObject {
  id: string;
  object: 'billing.credit_balance_transaction';
  created: number;
  credit: {
    amount: { monetary: Monetary; type: 'monetary' };
    credits_application_invoice_voided: { invoice: string; invoice_line_item: string } | null;
    type: CreditType;
  } | null;
  credit_grant: string;
  debit: { amount: { monetary: Monetary; type: 'monetary' }; credits_applied: { invoice: string; invoice_line_item: string } | null; type: DebitType } | null;
  effective_at: number;
  livemode: boolean;
  test_clock: string | null;
  type: 'credit' | 'debit';
  /** The grant's customer, for listing by customer. */
  customer: string;
}

export function renderGrant(g: CreditGrantObject): Omit<CreditGrantObject, '_available'> {
  const { _available: _a, ...rest } = g;
  return rest;
}

function renderTxn(t: CreditBalanceTransactionObject): Omit<CreditBalanceTransactionObject, 'customer'> {
  const { customer: _c, ...rest } = t;
  return rest;
}

function loadGrant(store: StateStore, p: Principal, id: string, param = 'id'): Promise<CreditGrantObject> {
  return loadResource<CreditGrantObject>(store, p, { type: CREDIT_GRANT_TYPE, noun: 'credit grant' }, id, param);
}

/**
 * Stores the grant. With `before` (a change of the grant's own fields) `updated` moves and billing.credit_grant.updated
 * is recorded; without it (only its balance moved, which the transactions report) the served object is unchanged.
 */
async function saveGrant(tx: StateStore, p: Principal, g: CreditGrantObject, before: CreditGrantObject | null, at: number): Promise<void> {
  if (before) g.updated = at;
  await tx.updateObject(p.account, CREDIT_GRANT_TYPE, g.id, g);
  if (before) await recordBillingEvent(tx, p, 'billing.credit_grant.updated', renderGrant(g), renderGrant(before) as unknown as Record<string, unknown>);
}

/** Writes one credit balance transaction of grant `g` (and its event). */
async function recordTxn(
  tx: StateStore,
  p: Principal,
  g: CreditGrantObject,
  at: number,
  entry:
    | { credit: CreditType; amount: number; invoice?: { invoice: string; invoice_line_item: string } }
    | { debit: DebitType; amount: number; invoice?: { invoice: string; invoice_line_item: string } },
): Promise<CreditBalanceTransactionObject> {
  const amount = { monetary: { currency: g.amount.monetary.currency, value: entry.amount }, type: 'monetary' as const };
  const t: CreditBalanceTransactionObject = {
    id: newId('cbtxn', p.livemode),
    object: 'billing.credit_balance_transaction',
    created: at,
    credit: 'credit' in entry ? { amount, credits_application_invoice_voided: entry.invoice ?? null, type: entry.credit } : null,
    credit_grant: g.id,
    debit: 'debit' in entry ? { amount, credits_applied: entry.invoice ?? null, type: entry.debit } : null,
    effective_at: at,
    livemode: p.livemode,
    test_clock: g.test_clock,
    type: 'credit' in entry ? 'credit' : 'debit',
    customer: g.customer,
  };
  await tx.insertObject({ account: p.account, type: CREDIT_BALANCE_TRANSACTION_TYPE, id: t.id, createdMs: Date.now(), data: t });
  await recordBillingEvent(tx, p, 'billing.credit_balance_transaction.created', renderTxn(t));
  return t;
}

async function grantsOf(store: StateStore, p: Principal, customer: string): Promise<CreditGrantObject[]> {
  const out: CreditGrantObject[] = [];
  let cursor: string | undefined;
  for (;;) {
    const page = await store.listObjects<CreditGrantObject>(p.account, CREDIT_GRANT_TYPE, { limit: 100, startingAfter: cursor, where: { customer } });
    out.push(...page.data.map((o) => o.data));
    if (!page.hasMore || page.data.length === 0) return out;
    cursor = page.data[page.data.length - 1].id;
  }
}

/**
 * The customer's grants read again one by one inside the transaction: a read that feeds a write locks its row (the
 * PostgreSQL store reads FOR UPDATE), so an application never races an expire, a void or another application on a
 * stale balance (finalizations of one customer are also serialized by the customer's row, which numbers invoices).
 * Always in the list's order, so concurrent transactions lock in the same order.
 */
async function lockedGrantsOf(tx: StateStore, p: Principal, customer: string): Promise<CreditGrantObject[]> {
  const out: CreditGrantObject[] = [];
  for (const listed of await grantsOf(tx, p, customer)) {
    const found = await tx.getObject<CreditGrantObject>(p.account, CREDIT_GRANT_TYPE, listed.id);
    if (found) out.push(found.data);
  }
  return out;
}

function usable(g: CreditGrantObject, at: number): boolean {
  return g.voided_at === null && g.effective_at <= at && (g.expires_at === null || at < g.expires_at);
}

/** Writes off what is left of the customer's grants whose expires_at is at or before `now`. */
export async function expireDueGrants(tx: StateStore, p: Principal, customer: string, now: number): Promise<void> {
  for (const g of await lockedGrantsOf(tx, p, customer)) {
    if (g.voided_at !== null || g.expires_at === null || g.expires_at > now || g._available === 0) continue;
    await recordTxn(tx, p, g, g.expires_at, { debit: 'credits_expired', amount: g._available });
    g._available = 0;
    await saveGrant(tx, p, g, null, now);
  }
}

/** Does the grant's scope cover an invoice line (of `price`, metered or not)? */
function covers(scope: Scope, price: string | null, metered: boolean): boolean {
  if (!metered || price === null) return false;
  if (scope.price_type === 'metered') return true;
  return (scope.prices ?? []).some((x) => x.id === price);
}

/** finalizeHooks.applyCredits: see the header. */
async function applyCredits(tx: StateStore, p: Principal, inv: InvoiceObject, now: number): Promise<void> {
  await expireDueGrants(tx, p, inv.customer, now);
  const grants = creditOrder(
    (await lockedGrantsOf(tx, p, inv.customer)).filter((g) => g.amount.monetary.currency === inv.currency && g._available > 0 && usable(g, now)),
  );
  if (grants.length === 0) return;
  const metered = new Set((inv._usage ?? []).map((u) => u.line));
  const lines = inv.lines.data;
  const left = lines.map((l) => l.amount - (l.discount_amounts as Array<{ amount: number }>).reduce((a, d) => a + d.amount, 0));
  const alloc = allocateCredits(
    left,
    grants.map((g) => ({
      id: g.id,
      balance: g._available,
      eligible: (i: number) => covers(g.applicability_config.scope, lines[i].pricing?.price_details?.price ?? null, metered.has(lines[i].id)),
    })),
  );
  for (let k = 0; k < grants.length; k++) {
    const g = grants[k];
    let used = 0;
    for (let i = 0; i < lines.length; i++) {
      const amount = alloc[k][i];
      if (amount === 0) continue;
      const t = await recordTxn(tx, p, g, now, { debit: 'credits_applied', amount, invoice: { invoice: inv.id, invoice_line_item: lines[i].id } });
      (lines[i].pretax_credit_amounts as PretaxCreditAmount[]).push({ amount, credit_balance_transaction: t.id, type: 'credit_balance_transaction' });
      used += amount;
    }
    if (used > 0) {
      g._available -= used;
      await saveGrant(tx, p, g, null, now);
    }
  }
}

/** finalizeHooks.restoreCredits: a voided invoice gives its credits back to their grants. */
async function restoreCredits(tx: StateStore, p: Principal, inv: InvoiceObject, now: number): Promise<void> {
  for (const line of inv.lines.data) {
    for (const c of line.pretax_credit_amounts as PretaxCreditAmount[]) {
      if (c.type !== 'credit_balance_transaction' || !c.credit_balance_transaction) continue;
      const found = await tx.getObject<CreditBalanceTransactionObject>(p.account, CREDIT_BALANCE_TRANSACTION_TYPE, c.credit_balance_transaction);
      if (!found) continue;
      const g = await loadGrant(tx, p, found.data.credit_grant);
      await recordTxn(tx, p, g, now, {
        credit: 'credits_application_invoice_voided',
        amount: c.amount,
        invoice: { invoice: inv.id, invoice_line_item: line.id },
      });
      g._available += c.amount;
      if (g.voided_at !== null) {
        await recordTxn(tx, p, g, now, { debit: 'credits_voided', amount: c.amount });
        g._available -= c.amount;
      }
      await saveGrant(tx, p, g, null, now);
    }
  }
  await expireDueGrants(tx, p, inv.customer, now);
}

finalizeHooks.applyCredits = applyCredits;
finalizeHooks.restoreCredits = restoreCredits;
finalizeHooks.expireCredits = expireDueGrants;

async function readScope(tx: StateStore, p: Principal, r: ParamReader): Promise<Scope> {
  r.assertNoUnknown(['price_type', 'prices']);
  const priceType = r.string('price_type', { enum: ['metered'] });
  const prices = r.objectArray('prices', { maxItems: 100 });
  if ((priceType === undefined) === (prices === undefined)) {
    throw new InvalidParamError(r.param('price_type'), 'You must specify exactly one of price_type and prices.');
  }
  if (priceType) return { price_type: 'metered' };
  const out: Array<{ id: string }> = [];
  for (const pr of prices!) {
    pr.assertNoUnknown(['id']);
    const id = pr.string('id', { required: true, maxLength: 5000 })!;
    const price = await loadPrice(tx, p, id, pr.param('id'));
    if (price.recurring?.usage_type !== 'metered')
      throw new InvalidParamError(pr.param('id'), `The price ${id} is not a metered price; credit grants only apply to metered prices.`);
    out.push({ id });
  }
  if (out.length === 0) throw new InvalidParamError(r.param('prices'), 'You must specify at least one price.');
  return { prices: out };
}

function balanceOf(grants: CreditGrantObject[], at: number): Array<{ available_balance: unknown; ledger_balance: unknown }> {
  const byCurrency = new Map<string, number>();
  for (const g of grants) {
    const cur = g.amount.monetary.currency;
    byCurrency.set(cur, (byCurrency.get(cur) ?? 0) + (usable(g, at) ? g._available : 0));
  }
  return [...byCurrency].map(([currency, value]) => {
    const m = { monetary: { currency, value }, type: 'monetary' };
    return { available_balance: m, ledger_balance: m };
  });
}

const CREATE_PARAMS = {
  amount: P.custom((r, n) => {
    const amount = r.object(n, { required: true });
    amount.assertNoUnknown(['type', 'monetary']);
    amount.string('type', { required: true, enum: ['monetary'] });
    const monetary = amount.object('monetary', { required: true });
    monetary.assertNoUnknown(['currency', 'value']);
    const currency = monetary.string('currency', { required: true, maxLength: 3 }).toLowerCase();
    if (!/^[a-z]{3}$/.test(currency)) throw new InvalidParamError('amount[monetary][currency]', `Invalid currency: ${currency}`);
    return { currency, value: monetary.integer('value', { required: true, min: 1 }) };
  }),
  /** The scope is read in the transaction (its prices are loaded): the reader of `scope` is kept. */
  applicability_config: P.custom((r, n) => {
    const config = r.object(n, { required: true });
    config.assertNoUnknown(['scope']);
    return config.object('scope', { required: true });
  }),
  category: P.string({ enum: ['paid', 'promotional'] }),
  customer_account: P.custom<never>((r, n) => {
    if (r.has(n)) throw new InvalidParamError(n, 'Accounts v2 customers are not supported; use customer.');
    return undefined;
  }),
  customer: P.string({ required: true, maxLength: 5000 }),
  effective_at: P.integer({ min: 0 }),
  expires_at: P.integer({ min: 0 }),
  priority: P.integer({ min: 0, max: 100 }),
  name: P.string({ maxLength: 100 }),
  metadata: P.metadata(),
};

const UPDATE_PARAMS = {
  expires_at: P.custom((r, n) => {
    if (!r.has(n)) return undefined;
    return r.isUnset(n) ? null : r.integer(n, { min: 0 });
  }),
  metadata: P.metadata(),
};

export function registerCreditGrantRoutes(http: HttpServer, s: Services): void {
  defineResource(http, s, {
    path: '/v1/billing/credit_grants',
    type: CREDIT_GRANT_TYPE,
    noun: 'credit grant',
    render: renderGrant,
    expand: true,
    events: { created: 'billing.credit_grant.created', updated: 'billing.credit_grant.updated' },
    create: {
      params: CREATE_PARAMS,
      build: async ({ p, tx }, v): Promise<CreditGrantObject> => {
        const { currency, value } = v.amount!;
        const customer = await loadCustomer(tx, p, v.customer!, 'customer');
        const scope = await readScope(tx, p, v.applicability_config!);
        const now = await timeFor(s, tx, p, customer.test_clock);
        const effectiveAt = v.effective_at ?? now;
        const expiresAt = v.expires_at ?? null;
        if (expiresAt !== null && expiresAt <= effectiveAt) throw new InvalidParamError('expires_at', 'expires_at must be after effective_at.');
        return {
          id: newId('credgr', p.livemode),
          object: 'billing.credit_grant',
          amount: { monetary: { currency, value }, type: 'monetary' },
          applicability_config: { scope },
          category: (v.category ?? 'paid') as CreditGrantObject['category'],
          created: now,
          customer: customer.id,
          customer_account: null,
          effective_at: effectiveAt,
          expires_at: expiresAt,
          livemode: p.livemode,
          metadata: v.metadata?.({}) ?? {},
          name: v.name ?? null,
          priority: v.priority ?? 50,
          test_clock: customer.test_clock,
          updated: now,
          voided_at: null,
          _available: value,
        };
      },
      after: async ({ p, tx }, g) => {
        await recordTxn(tx, p, g, g.effective_at, { credit: 'credits_granted', amount: g.amount.monetary.value });
      },
    },
    list: {
      params: { customer: P.string({ maxLength: 5000 }), customer_account: P.custom<never>(() => undefined) },
      filter: (v) => ({ where: whereOf(v, ['customer']) }),
    },
    update: {
      params: UPDATE_PARAMS,
      apply: async ({ p, tx }, g, v) => {
        const now = await timeFor(s, tx, p, g.test_clock);
        const at = v.expires_at;
        if (at !== undefined) {
          if (g.voided_at !== null || (g.expires_at !== null && g.expires_at <= now)) {
            throw new InvalidRequestError('You cannot update the expiry of a credit grant that is voided or expired.', { param: 'expires_at' });
          }
          if (at !== null && (at <= now || at <= g.effective_at))
            throw new InvalidParamError('expires_at', 'expires_at must be in the future and after effective_at.');
          g.expires_at = at;
        }
        if (v.metadata) g.metadata = v.metadata(g.metadata);
        g.updated = now;
      },
    },
  });

  const endGrant = (how: 'expire' | 'void') =>
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const g = await s.state.transaction(async (tx) => {
        const g = await loadGrant(tx, p, req.params[0]);
        const now = await timeFor(s, tx, p, g.test_clock);
        if (g.voided_at !== null) throw new InvalidRequestError('This credit grant has already been voided.', { code: 'credit_grant_already_voided' });
        if (g.expires_at !== null && g.expires_at <= now)
          throw new InvalidRequestError('This credit grant has already expired.', { code: 'credit_grant_already_expired' });
        const before = structuredClone(g);
        if (how === 'expire') g.expires_at = now;
        else g.voided_at = now;
        if (g._available > 0) {
          await recordTxn(tx, p, g, now, { debit: how === 'expire' ? 'credits_expired' : 'credits_voided', amount: g._available });
          g._available = 0;
        }
        await saveGrant(tx, p, g, before, now);
        return g;
      });
      return json(200, await expandBilling(s.state, p, renderGrant(g), expandParam(params)));
    });
  http.route('POST', '/v1/billing/credit_grants/:id/expire', endGrant('expire'));
  http.route('POST', '/v1/billing/credit_grants/:id/void', endGrant('void'));

  http.route(
    'GET',
    '/v1/billing/credit_balance_summary',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['customer', 'customer_account', 'filter', 'expand']);
      const customerId = r.string('customer', { required: true, maxLength: 5000 })!;
      const filter = r.object('filter', { required: true })!;
      filter.assertNoUnknown(['type', 'applicability_scope', 'credit_grant']);
      const type = filter.string('type', { required: true, enum: ['applicability_scope', 'credit_grant'] });
      const customer = await loadCustomer(s.state, p, customerId, 'customer');
      const now = await timeFor(s, s.state, p, customer.test_clock);
      let grants = await grantsOf(s.state, p, customer.id);
      if (type === 'credit_grant') {
        const id = filter.string('credit_grant', { required: true, maxLength: 5000 })!;
        grants = grants.filter((g) => g.id === id);
        if (grants.length === 0) throw new NotFoundError(`No such credit grant: '${id}'`, 'filter[credit_grant]');
      } else {
        const sr = filter.object('applicability_scope', { required: true })!;
        sr.assertNoUnknown(['price_type', 'prices']);
        const priceType = sr.string('price_type', { enum: ['metered'] });
        const prices = (sr.objectArray('prices', { maxItems: 100 }) ?? []).map((x) => x.string('id', { required: true, maxLength: 5000 })!);
        if ((priceType === undefined) === (prices.length === 0))
          throw new InvalidParamError('filter[applicability_scope]', 'You must specify exactly one of price_type and prices.');
        grants = grants.filter((g) => {
          const scope = g.applicability_config.scope;
          if (priceType) return scope.price_type === 'metered';
          return scope.price_type === 'metered' || prices.some((id) => (scope.prices ?? []).some((x) => x.id === id));
        });
      }
      return json(200, {
        object: 'billing.credit_balance_summary',
        balances: balanceOf(grants, now),
        customer: customer.id,
        customer_account: null,
        livemode: p.livemode,
      });
    }),
  );

  http.route(
    'GET',
    '/v1/billing/credit_balance_transactions',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'customer', 'customer_account', 'credit_grant', 'expand']);
      const page = readListParams(r);
      const customer = r.string('customer', { required: true, maxLength: 5000 })!;
      const grant = r.string('credit_grant', { maxLength: 5000 });
      const where: Record<string, string> = { customer };
      if (grant) where.credit_grant = grant;
      return listEndpoint<CreditBalanceTransactionObject>(
        s,
        p,
        '/v1/billing/credit_balance_transactions',
        CREDIT_BALANCE_TRANSACTION_TYPE,
        page,
        { where },
        undefined,
        renderTxn,
        expandParam(params),
      );
    }),
  );

  http.route(
    'GET',
    '/v1/billing/credit_balance_transactions/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const found = await s.state.getObject<CreditBalanceTransactionObject>(p.account, CREDIT_BALANCE_TRANSACTION_TYPE, req.params[0]);
      if (!found) throw new NotFoundError(`No such credit balance transaction: '${req.params[0]}'`);
      return json(200, await expandBilling(s.state, p, renderTxn(found.data), expandParam(params)));
    }),
  );
}
