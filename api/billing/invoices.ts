/**
 * v1 invoices: the invoice documents, their lines, the state machine, and the endpoints.
 *
 * Storage: one `invoice` document per invoice (the Invoice object with ALL its lines in `lines.data`, rendered up to
 * 10 lines embedded as Stripe does, the rest via GET /v1/invoices/:id/lines). Internal bookkeeping lives in `_usage`
 * (which metered lines to re-measure at finalization) and is stripped by renderInvoice.
 *
 * State machine (Stripe's): draft -> open (finalize; or automatically once the customer's time passes
 * automatically_finalizes_at = created + 1 hour, the finalization grace period) -> paid | void | uncollectible;
 * uncollectible -> paid | void. A draft can be deleted; paying a draft finalizes it first (as Stripe does). An invoice
 * finalized with amount_due 0 is paid at once.
 *
 * Time: a customer on a test clock lives at the clock's frozen_time (timeFor); everything else at s.now().
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint, listResult } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { METER_TYPE, type MeterObject } from '../../shared/meters';
import { formatScaled } from '../../shared/decimal';
import { computeWindows } from '../summaries';
import { readListParams } from '../meters';
import type { SearchFields } from '../../shared/search';
import {
  expandBilling,
  expandParam,
  listEndpoint,
  nullableString,
  pageOfArray,
  readCreatedRange,
  readMetadata,
  recordBillingEvent,
  searchEndpoint,
  type Metadata,
} from './common';
import { CUSTOMER_TYPE, loadCustomer, type CustomerObject } from './customers';
import { PRICE_TYPE, type PriceObject } from './prices';
import { priceAmount, truncatedQuantity } from './pricing';
import { recordBalanceTransaction, recordCustomerBalanceTransaction } from './balance';
import { allocateDiscounts, type DiscountRule } from './allocation';
import { appliedFrom, inheritedDiscounts, type AppliedDiscount } from './discounts';
import { readDiscountsParam, type DiscountObject } from './coupons';

export const INVOICE_TYPE = 'invoice';
export const INVOICE_ITEM_TYPE = 'invoiceitem';
export const TEST_CLOCK_TYPE = 'test_helpers.test_clock';
/** Stripe's finalization grace period for subscription invoices. */
export const GRACE_SECONDS = 3600;

export type InvoiceStatus = 'draft' | 'open' | 'paid' | 'uncollectible' | 'void';

export interface LineItem {
  id: string;
  object: 'line_item';
  amount: number;
  currency: string;
  description: string | null;
  discount_amounts: unknown[];
  discountable: boolean;
  discounts: unknown[];
  invoice: string | null;
  livemode: boolean;
  metadata: Metadata;
  parent: Record<string, unknown> | null;
  period: { start: number; end: number };
  pretax_credit_amounts: unknown[];
  pricing: { type: 'price_details'; price_details: { price: string; product: string } | null; unit_amount_decimal: string | null } | null;
  quantity: number | null;
  quantity_decimal: string | null;
  subscription: string | null;
  subtotal: number;
  taxes: unknown[];
}

/** A metered line to re-measure at finalization. */
export interface UsageRef {
  line: string;
  meter: string;
  price: string;
  start: number;
  end: number;
}

export interface InvoiceObject {
  id: string;
  object: 'invoice';
  customer: string;
  subscription: string | null;
  status: InvoiceStatus;
  test_clock: string | null;
  total: number;
  currency: string;
  created: number;
  number: string | null;
  metadata: Metadata;
  description: string | null;
  auto_advance: boolean;
  automatically_finalizes_at: number | null;
  amount_due: number;
  amount_paid: number;
  amount_remaining: number;
  subtotal: number;
  lines: { object: 'list'; data: LineItem[]; has_more: boolean; url: string };
  status_transitions: { finalized_at: number | null; marked_uncollectible_at: number | null; paid_at: number | null; voided_at: number | null };
  period_start: number;
  period_end: number;
  discounts: string[];
  pre_payment_credit_notes_amount: number;
  post_payment_credit_notes_amount: number;
  _usage?: UsageRef[];
  /** The invoice's discounts as applied (coupon terms kept), in order. */
  _discounts?: AppliedDiscount[];
  /** What the customer's balance paid (> 0: a credit used) or added (< 0: a debit) at finalization. */
  _balance_applied?: number;
  [k: string]: unknown;
}

export interface InvoiceItemObject {
  id: string;
  object: 'invoiceitem';
  amount: number;
  currency: string;
  customer: string;
  date: number;
  description: string | null;
  discountable: boolean;
  discounts: unknown[];
  invoice: string | null;
  livemode: boolean;
  metadata: Metadata;
  net_amount: number;
  parent: Record<string, unknown> | null;
  period: { start: number; end: number };
  pricing: LineItem['pricing'];
  proration: boolean;
  quantity: number;
  quantity_decimal: string;
  tax_rates: unknown[];
  test_clock: string | null;
  customer_account: null;
}

// ---------------------------------------------------------------------------------------------------------------------
// Time

/** The customer's time in seconds: its test clock's frozen_time, or real time. */
export async function timeFor(s: Services, store: StateStore, p: Principal, testClock: string | null): Promise<number> {
  if (testClock) {
    const clock = await store.getObject<{ frozen_time: number }>(p.account, TEST_CLOCK_TYPE, testClock);
    if (clock) return clock.data.frozen_time;
  }
  return Math.floor(s.now() / 1000);
}

// ---------------------------------------------------------------------------------------------------------------------
// Usage and lines

/**
 * The meter's aggregate for the customer over the period, exactly (computeWindows, adjustments applied). Boundaries
 * are floored to the minute (the rollup grain), so consecutive periods partition the events exactly: an event belongs
 * to the period holding its timestamp's minute.
 */
export async function meteredUsage(s: Services, p: Principal, meterId: string, customer: string, start: number, end: number): Promise<bigint> {
  const found = await s.state.getObject<MeterObject>(p.account, METER_TYPE, meterId);
  if (!found) return 0n;
  const a = Math.floor(start / 60) * 60;
  const b = Math.floor(end / 60) * 60;
  if (b <= a) return 0n;
  const values = await computeWindows(s, found.data, { account: p.account, meterId, customer, start: a, end: b, grouping: b - a });
  return values.get(0) ?? 0n;
}

export interface LineSpec {
  price: PriceObject | null;
  /** Scaled quantity (10^15); null for a plain amount. */
  quantity: bigint | null;
  amount?: number;
  description: string | null;
  period: { start: number; end: number };
  subscription?: string | null;
  subscriptionItem?: string | null;
  invoiceItem?: string | null;
  metadata?: Metadata;
}

export function makeLine(p: Principal, invoiceId: string | null, currency: string, spec: LineSpec): LineItem {
  let amount = spec.amount ?? 0;
  let quantity: number | null = null;
  let quantityDecimal: string | null = null;
  if (spec.quantity !== null) {
    const billed = spec.quantity < 0n ? 0n : spec.quantity;
    quantity = truncatedQuantity(billed);
    quantityDecimal = formatScaled(billed);
    if (spec.price && spec.amount === undefined) amount = priceAmount(spec.price, billed).amount;
  }
  const parent = spec.invoiceItem
    ? {
        type: 'invoice_item_details',
        invoice_item_details: {
          invoice_item: spec.invoiceItem,
          proration: false,
          proration_details: { credited_items: null },
          subscription: spec.subscription ?? null,
        },
        subscription_item_details: null,
      }
    : spec.subscriptionItem
      ? {
          type: 'subscription_item_details',
          invoice_item_details: null,
          subscription_item_details: {
            invoice_item: null,
            proration: false,
            proration_details: { credited_items: null },
            subscription: spec.subscription ?? null,
            subscription_item: spec.subscriptionItem,
          },
        }
      : null;
  return {
    id: newId('il', p.livemode),
    object: 'line_item',
    amount,
    currency,
    description: spec.description,
    discount_amounts: [],
    discountable: true,
    discounts: [],
    invoice: invoiceId,
    livemode: p.livemode,
    metadata: spec.metadata ?? {},
    parent,
    period: spec.period,
    pretax_credit_amounts: [],
    pricing: spec.price
      ? { type: 'price_details', price_details: { price: spec.price.id, product: spec.price.product }, unit_amount_decimal: spec.price.unit_amount_decimal }
      : null,
    quantity,
    quantity_decimal: quantityDecimal,
    subscription: spec.subscription ?? null,
    subtotal: amount,
    taxes: [],
  };
}

export interface PretaxCreditAmount {
  amount: number;
  type: 'discount' | 'credit_balance_transaction';
  discount?: string;
  credit_balance_transaction?: string;
}

function lineProduct(l: LineItem): string | null {
  return l.pricing?.price_details?.product ?? null;
}

/**
 * Subtotal, discounts (allocation.ts: each discount's total rounded once, split exactly across its lines), the billing
 * credits already applied (set at finalization), the customer balance used at finalization and pre-payment credit
 * notes: total = subtotal - discounts - credits; amount_due = total - balance used - pre-payment credit notes (>= 0).
 */
export function recomputeTotals(inv: InvoiceObject): void {
  const lines = inv.lines.data;
  const subtotal = lines.reduce((a, l) => a + l.amount, 0);
  const applied = inv._discounts ?? [];
  const rules: DiscountRule[] = applied.map((d) => ({
    id: d.id,
    percentOff: d.percent_off,
    amountOff: d.amount_off,
    eligible: (i: number) => d.products === null || d.products.includes(lineProduct(lines[i]) ?? ''),
  }));
  const alloc = allocateDiscounts(
    lines.map((l) => l.amount),
    lines.map((l) => l.discountable),
    rules,
  );
  let discountTotal = 0;
  let creditTotal = 0;
  const credits: PretaxCreditAmount[] = [];
  lines.forEach((l, i) => {
    const mine = rules.map((r, k) => ({ amount: alloc[k][i], discount: r.id })).filter((_x, k) => l.discountable && rules[k].eligible(i));
    l.discount_amounts = mine;
    const lineCredits = (l.pretax_credit_amounts as PretaxCreditAmount[]).filter((c) => c.type === 'credit_balance_transaction');
    l.pretax_credit_amounts = [
      ...mine.filter((m) => m.amount > 0).map((m) => ({ amount: m.amount, discount: m.discount, type: 'discount' as const })),
      ...lineCredits,
    ];
    for (const c of lineCredits) {
      creditTotal += c.amount;
      credits.push(c);
    }
  });
  inv.total_discount_amounts = rules.map((r, k) => {
    const amount = alloc[k].reduce((a, x) => a + x, 0);
    discountTotal += amount;
    return { amount, discount: r.id };
  });
  inv.total_pretax_credit_amounts = [
    ...(inv.total_discount_amounts as Array<{ amount: number; discount: string }>).filter((d) => d.amount > 0).map((d) => ({ ...d, type: 'discount' })),
    ...credits,
  ];
  inv.discounts = applied.map((d) => d.id);
  inv.subtotal = subtotal;
  inv.subtotal_excluding_tax = subtotal;
  inv.total = subtotal - discountTotal - creditTotal;
  inv.total_excluding_tax = inv.total;
  const due = Math.max(0, inv.total - (inv._balance_applied ?? 0) - (inv.pre_payment_credit_notes_amount ?? 0));
  inv.amount_due = due;
  inv.amount_remaining = Math.max(0, due - inv.amount_paid);
}

/** Sets the invoice's discounts (in order) and recomputes its amounts. */
export function setInvoiceDiscounts(inv: InvoiceObject, discounts: DiscountObject[]): void {
  inv._discounts = discounts.map(appliedFrom);
  recomputeTotals(inv);
}

export function newInvoice(
  p: Principal,
  customer: CustomerObject,
  o: {
    created: number;
    currency: string;
    subscription: string | null;
    billingReason: string;
    periodStart: number;
    periodEnd: number;
    autoAdvance: boolean;
    lines: LineSpec[];
    description?: string | null;
    metadata?: Metadata;
    discounts?: DiscountObject[];
  },
): InvoiceObject {
  const id = newId('in', p.livemode);
  const inv: InvoiceObject = {
    id,
    object: 'invoice',
    account_country: 'US',
    account_name: null,
    account_tax_ids: null,
    amount_due: 0,
    amount_overpaid: 0,
    amount_paid: 0,
    amount_remaining: 0,
    amount_shipping: 0,
    application: null,
    attempt_count: 0,
    attempted: false,
    auto_advance: o.autoAdvance,
    automatic_tax: { disabled_reason: null, enabled: false, liability: null, provider: null, status: null },
    automatically_finalizes_at: o.autoAdvance ? o.created + GRACE_SECONDS : null,
    billing_reason: o.billingReason,
    collection_method: 'charge_automatically',
    confirmation_secret: null,
    created: o.created,
    currency: o.currency,
    custom_fields: null,
    customer: customer.id,
    customer_account: null,
    customer_address: customer.address,
    customer_email: customer.email,
    customer_name: customer.name,
    customer_phone: customer.phone,
    customer_shipping: customer.shipping,
    customer_tax_exempt: customer.tax_exempt,
    customer_tax_ids: [],
    default_payment_method: null,
    default_source: null,
    default_tax_rates: [],
    description: o.description ?? null,
    discounts: [],
    due_date: null,
    effective_at: null,
    ending_balance: null,
    footer: null,
    from_invoice: null,
    hosted_invoice_url: null,
    invoice_pdf: null,
    issuer: { type: 'self' },
    last_finalization_error: null,
    latest_revision: null,
    lines: { object: 'list', data: [], has_more: false, url: `/v1/invoices/${id}/lines` },
    livemode: p.livemode,
    metadata: o.metadata ?? {},
    next_payment_attempt: null,
    number: null,
    on_behalf_of: null,
    parent: o.subscription
      ? { type: 'subscription_details', quote_details: null, subscription_details: { metadata: null, subscription: o.subscription } }
      : null,
    payment_settings: { default_mandate: null, payment_method_options: null, payment_method_types: null },
    period_end: o.periodEnd,
    period_start: o.periodStart,
    post_payment_credit_notes_amount: 0,
    pre_payment_credit_notes_amount: 0,
    receipt_number: null,
    rendering: null,
    shipping_cost: null,
    shipping_details: null,
    starting_balance: 0,
    statement_descriptor: null,
    status: 'draft',
    status_transitions: { finalized_at: null, marked_uncollectible_at: null, paid_at: null, voided_at: null },
    subscription: o.subscription,
    subtotal: 0,
    subtotal_excluding_tax: 0,
    test_clock: customer.test_clock,
    total: 0,
    total_discount_amounts: [],
    total_excluding_tax: 0,
    total_pretax_credit_amounts: [],
    total_taxes: [],
    webhooks_delivered_at: null,
    _usage: [],
    _discounts: (o.discounts ?? []).map(appliedFrom),
  };
  for (const spec of o.lines) addLine(p, inv, spec);
  recomputeTotals(inv);
  return inv;
}

export function addLine(p: Principal, inv: InvoiceObject, spec: LineSpec): LineItem {
  const line = makeLine(p, inv.id, inv.currency, spec);
  inv.lines.data.push(line);
  const meter = spec.price?.recurring?.usage_type === 'metered' ? spec.price.recurring.meter : null;
  if (meter && spec.price && spec.subscriptionItem) {
    (inv._usage ??= []).push({ line: line.id, meter, price: spec.price.id, start: spec.period.start, end: spec.period.end });
  }
  recomputeTotals(inv);
  return line;
}

export function renderInvoice(inv: InvoiceObject): Record<string, unknown> {
  const { _usage: _u, _discounts: _d, _balance_applied: _b, ...rest } = inv;
  return { ...rest, lines: { ...inv.lines, data: inv.lines.data.slice(0, 10), has_more: inv.lines.data.length > 10 } };
}

export async function insertInvoice(tx: StateStore, p: Principal, inv: InvoiceObject): Promise<void> {
  await tx.insertObject({ account: p.account, type: INVOICE_TYPE, id: inv.id, createdMs: inv.created * 1000, data: inv });
  await recordBillingEvent(tx, p, 'invoice.created', renderInvoice(inv));
}

export async function loadInvoice(store: StateStore, p: Principal, id: string, param = 'id'): Promise<InvoiceObject> {
  const found = await store.getObject<InvoiceObject>(p.account, INVOICE_TYPE, id);
  if (!found) throw new NotFoundError(`No such invoice: '${id}'`, param);
  return found.data;
}

export async function saveInvoice(tx: StateStore, p: Principal, inv: InvoiceObject, event: string | null, before?: InvoiceObject): Promise<void> {
  await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
  if (event) await recordBillingEvent(tx, p, event, renderInvoice(inv), before ? (renderInvoice(before) as Record<string, unknown>) : undefined);
}

// ---------------------------------------------------------------------------------------------------------------------
// Transitions

function badState(message: string): InvalidRequestError {
  return new InvalidRequestError(message, { code: 'invoice_unexpected_state' });
}

/** Re-measures metered lines (usage reported during the grace period counts). Outside any transaction. */
export async function refreshUsage(s: Services, p: Principal, inv: InvoiceObject): Promise<Map<string, bigint>> {
  const out = new Map<string, bigint>();
  for (const u of inv._usage ?? []) out.set(u.line, await meteredUsage(s, p, u.meter, inv.customer, u.start, u.end));
  return out;
}

async function applyUsage(tx: StateStore, p: Principal, inv: InvoiceObject, usage: Map<string, bigint>): Promise<void> {
  for (const u of inv._usage ?? []) {
    const q = usage.get(u.line);
    const idx = inv.lines.data.findIndex((l) => l.id === u.line);
    if (q === undefined || idx < 0) continue;
    const price = await tx.getObject<PriceObject>(p.account, PRICE_TYPE, u.price);
    if (!price) continue;
    const old = inv.lines.data[idx];
    const fresh = makeLine(p, inv.id, inv.currency, {
      price: price.data,
      quantity: q,
      description: old.description,
      period: old.period,
      subscription: old.subscription,
      subscriptionItem: (old.parent?.subscription_item_details as { subscription_item?: string } | undefined)?.subscription_item ?? null,
      metadata: old.metadata,
    });
    fresh.id = old.id;
    inv.lines.data[idx] = fresh;
  }
  recomputeTotals(inv);
}

/** draft -> open (-> paid when nothing is due). `usage` from refreshUsage, measured before the transaction. */
export async function finalizeIn(tx: StateStore, p: Principal, inv: InvoiceObject, now: number, usage?: Map<string, bigint>): Promise<InvoiceObject> {
  if (inv.status !== 'draft') throw badState("This invoice is already finalized, you can't re-finalize a non-draft invoice.");
  const before = structuredClone(inv);
  if (usage) await applyUsage(tx, p, inv, usage);
  const cust = await tx.getObject<CustomerObject>(p.account, CUSTOMER_TYPE, inv.customer);
  if (cust && !(cust.data as { deleted?: boolean }).deleted) {
    const seq = cust.data.next_invoice_sequence;
    inv.number = `${cust.data.invoice_prefix}-${String(seq).padStart(4, '0')}`;
    cust.data.next_invoice_sequence = seq + 1;
    await tx.updateObject(p.account, CUSTOMER_TYPE, cust.data.id, cust.data);
  }
  if (finalizeHooks.applyCredits) await finalizeHooks.applyCredits(tx, p, inv, now);
  recomputeTotals(inv);
  if (cust && !(cust.data as { deleted?: boolean }).deleted) await applyCustomerBalance(tx, p, inv, cust.data);
  inv.status = 'open';
  inv.status_transitions.finalized_at = now;
  inv.effective_at = now;
  inv.automatically_finalizes_at = null;
  inv.ending_balance ??= 0;
  await saveInvoice(tx, p, inv, 'invoice.finalized', before);
  if (inv.amount_due === 0) await markPaid(tx, p, inv, now);
  return inv;
}

/**
 * The customer's balance at finalization (Stripe's rule): a credit (< 0) pays the invoice up to its total, a debit
 * (> 0) is added to what is due; either way a customer balance transaction (`applied_to_invoice`) moves the balance.
 */
async function applyCustomerBalance(tx: StateStore, p: Principal, inv: InvoiceObject, customer: CustomerObject): Promise<void> {
  const balance = customer.balance;
  inv.starting_balance = balance;
  inv.ending_balance = balance;
  if (balance === 0 || (customer.currency !== null && customer.currency !== inv.currency)) return;
  const used = balance < 0 ? Math.min(-balance, Math.max(0, inv.total - (inv.pre_payment_credit_notes_amount ?? 0))) : -balance;
  if (used === 0) return;
  const txn = await recordCustomerBalanceTransaction(tx, p, customer.id, { amount: used, currency: inv.currency, type: 'applied_to_invoice', invoice: inv.id });
  inv.ending_balance = txn.ending_balance;
  inv._balance_applied = used;
  recomputeTotals(inv);
}

/** Hooks set by credit-grants.ts (avoids an import cycle): apply billing credits at finalization, give them back on void. */
export const finalizeHooks: {
  applyCredits?: (tx: StateStore, p: Principal, inv: InvoiceObject, now: number) => Promise<void>;
  restoreCredits?: (tx: StateStore, p: Principal, inv: InvoiceObject, now: number) => Promise<void>;
  expireCredits?: (tx: StateStore, p: Principal, customer: string, now: number) => Promise<void>;
} = {};

export async function markPaid(tx: StateStore, p: Principal, inv: InvoiceObject, now: number, outOfBand = false): Promise<void> {
  const before = structuredClone(inv);
  const paid = inv.amount_remaining;
  inv.amount_paid += paid;
  inv.amount_remaining = 0;
  inv.status = 'paid';
  inv.attempted = true;
  inv.status_transitions.paid_at = now;
  inv.auto_advance = false;
  await saveInvoice(tx, p, inv, 'invoice.paid', before);
  // The emulated charge moves the account balance; a payment made out of band does not.
  if (paid > 0 && !outOfBand) {
    await recordBalanceTransaction(tx, p, {
      amount: paid,
      currency: inv.currency,
      type: 'charge',
      source: inv.id,
      description: `Payment for invoice ${inv.number ?? inv.id}`,
    });
  }
}

export async function payIn(
  tx: StateStore,
  p: Principal,
  inv: InvoiceObject,
  now: number,
  usage?: Map<string, bigint>,
  outOfBand = false,
): Promise<InvoiceObject> {
  if (inv.status === 'paid') throw badState('Invoice is already paid');
  if (inv.status === 'void') throw badState('You can only pay an invoice in status open, draft or uncollectible; this invoice is void.');
  if (inv.status === 'draft') {
    await finalizeIn(tx, p, inv, now, usage);
    if ((inv.status as InvoiceStatus) !== 'open') return inv;
  }
  await markPaid(tx, p, inv, now, outOfBand);
  return inv;
}

/** Finalizes the customer's drafts whose grace period ended by `now` (auto_advance). */
export async function autoFinalize(s: Services, p: Principal, customerId: string, now: number): Promise<void> {
  const expire = finalizeHooks.expireCredits;
  if (expire) await s.state.transaction((tx) => expire(tx, p, customerId, now));
  const drafts = await s.state.listObjects<InvoiceObject>(p.account, INVOICE_TYPE, { limit: 100, where: { customer: customerId, status: 'draft' } });
  for (const d of drafts.data) {
    const at = d.data.automatically_finalizes_at;
    if (!d.data.auto_advance || at === null || at > now) continue;
    const usage = await refreshUsage(s, p, d.data);
    await s.state.transaction(async (tx) => {
      const inv = await loadInvoice(tx, p, d.id);
      if (inv.status === 'draft') await finalizeIn(tx, p, inv, now, usage);
    });
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Endpoints

async function pendingItems(store: StateStore, p: Principal, customer: string, subscription?: string | null): Promise<InvoiceItemObject[]> {
  const res = await store.listObjects<InvoiceItemObject>(p.account, INVOICE_ITEM_TYPE, { limit: 100, where: { customer, invoice: null } });
  return res.data
    .map((o) => o.data)
    .filter(
      (ii) =>
        subscription === undefined ||
        ((ii.parent?.subscription_details as { subscription?: string } | undefined)?.subscription ?? null) === (subscription ?? null) ||
        !ii.parent,
    )
    .reverse();
}

/** Moves the pending invoice items onto `inv` (lines) and marks them invoiced. */
export async function sweepPendingItems(tx: StateStore, p: Principal, inv: InvoiceObject, subscription?: string | null): Promise<void> {
  for (const ii of await pendingItems(tx, p, inv.customer, subscription)) {
    if (ii.currency !== inv.currency) continue;
    addInvoiceItemLine(p, inv, ii);
    ii.invoice = inv.id;
    await tx.updateObject(p.account, INVOICE_ITEM_TYPE, ii.id, ii);
  }
}

export function addInvoiceItemLine(p: Principal, inv: InvoiceObject, ii: InvoiceItemObject): void {
  const line = makeLine(p, inv.id, inv.currency, {
    price: null,
    quantity: null,
    amount: ii.amount,
    description: ii.description,
    period: ii.period,
    invoiceItem: ii.id,
    metadata: ii.metadata,
  });
  line.quantity = ii.quantity;
  line.quantity_decimal = ii.quantity_decimal;
  line.discountable = ii.discountable;
  line.pricing = ii.pricing;
  inv.lines.data.push(line);
  recomputeTotals(inv);
}

const INVOICE_SEARCH_FIELDS: SearchFields<InvoiceObject> = {
  created: { kind: 'number', get: (d) => d.created },
  currency: { kind: 'token', get: (d) => d.currency },
  customer: { kind: 'token', get: (d) => d.customer },
  metadata: { kind: 'metadata', get: (d) => d.metadata },
  number: { kind: 'token', get: (d) => d.number },
  status: { kind: 'token', get: (d) => d.status },
  subscription: { kind: 'token', get: (d) => d.subscription },
  total: { kind: 'number', get: (d) => d.total },
};

/** The subscription preview hook, set by subscriptions.ts (avoids an import cycle). */
export const previewHooks: {
  preview?: (s: Services, p: Principal, customer: CustomerObject, subscriptionId: string | undefined) => Promise<InvoiceObject>;
} = {};

async function createInvoice(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown([
    'customer',
    'auto_advance',
    'description',
    'metadata',
    'pending_invoice_items_behavior',
    'currency',
    'collection_method',
    'subscription',
    'discounts',
    'expand',
  ]);
  const customerId = r.string('customer', { required: true, maxLength: 5000 })!;
  const autoAdvance = r.boolean('auto_advance') ?? false;
  const description = r.string('description', { maxLength: 1500 }) ?? null;
  const metadata = readMetadata(r) ?? {};
  const behavior = r.string('pending_invoice_items_behavior', { enum: ['exclude', 'include'] }) ?? 'exclude';
  const currency = r.string('currency', { maxLength: 3 })?.toLowerCase();
  r.string('collection_method', { enum: ['charge_automatically', 'send_invoice'] });
  const subscription = r.string('subscription', { maxLength: 5000 }) ?? null;
  const inv = await s.state.transaction(async (tx) => {
    const customer = await loadCustomer(tx, p, customerId, 'customer');
    const now = await timeFor(s, tx, p, customer.test_clock);
    const inv = newInvoice(p, customer, {
      created: now,
      currency: currency ?? customer.currency ?? 'usd',
      subscription,
      billingReason: 'manual',
      periodStart: now,
      periodEnd: now,
      autoAdvance,
      lines: [],
      description,
      metadata,
    });
    const sent = await readDiscountsParam(tx, p, r, { customer: customer.id, invoice: inv.id, currency: inv.currency }, now);
    setInvoiceDiscounts(inv, sent ?? (await inheritedDiscounts(tx, p, customer, null, now, true)));
    if (behavior === 'include') await sweepPendingItems(tx, p, inv);
    await insertInvoice(tx, p, inv);
    return inv;
  });
  return json(200, await expandBilling(s.state, p, renderInvoice(inv), expandParam(params)));
}

async function transition(
  s: Services,
  p: Principal,
  id: string,
  params: Params,
  allowed: string[],
  fn: (tx: StateStore, inv: InvoiceObject, now: number, usage: Map<string, bigint> | undefined) => Promise<void>,
) {
  const r = new ParamReader(params);
  r.assertNoUnknown([...allowed, 'expand']);
  const pre = await loadInvoice(s.state, p, id);
  const usage = pre.status === 'draft' ? await refreshUsage(s, p, pre) : undefined;
  const inv = await s.state.transaction(async (tx) => {
    const inv = await loadInvoice(tx, p, id);
    const now = await timeFor(s, tx, p, inv.test_clock);
    await fn(tx, inv, now, usage);
    return inv;
  });
  return json(200, await expandBilling(s.state, p, renderInvoice(inv), expandParam(params)));
}

export function registerInvoiceRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/invoices',
    apiEndpoint(s, (p, _req, params) => createInvoice(s, p, params)),
  );

  http.route(
    'POST',
    '/v1/invoices/create_preview',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['customer', 'subscription', 'expand', 'preview_mode']);
      const subscription = r.string('subscription', { maxLength: 5000 });
      let customerId = r.string('customer', { maxLength: 5000 });
      if (!customerId && !subscription) throw new InvalidRequestError('You must specify either customer or subscription.', { param: 'customer' });
      if (!customerId && subscription) {
        const sub = await s.state.getObject<{ customer: string }>(p.account, 'subscription', subscription);
        if (!sub) throw new NotFoundError(`No such subscription: '${subscription}'`, 'subscription');
        customerId = sub.data.customer;
      }
      const customer = await loadCustomer(s.state, p, customerId!, 'customer');
      if (!previewHooks.preview) throw new InvalidRequestError('Previews are not available.');
      const inv = await previewHooks.preview(s, p, customer, subscription);
      const out = renderInvoice(inv);
      return json(200, { ...out, id: null, lines: { ...(out.lines as object), url: '/v1/invoices/upcoming/lines' } });
    }),
  );

  http.route(
    'GET',
    '/v1/invoices',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown([
        'limit',
        'starting_after',
        'ending_before',
        'customer',
        'subscription',
        'status',
        'collection_method',
        'created',
        'due_date',
        'expand',
      ]);
      const page = readListParams(r);
      const where: Record<string, string> = {};
      const customer = r.string('customer', { maxLength: 5000 });
      if (customer) where.customer = customer;
      const subscription = r.string('subscription', { maxLength: 5000 });
      if (subscription) where.subscription = subscription;
      const status = r.string('status', { enum: ['draft', 'open', 'paid', 'uncollectible', 'void'] });
      if (status) where.status = status;
      r.string('collection_method', { enum: ['charge_automatically', 'send_invoice'] });
      return listEndpoint<InvoiceObject>(
        s,
        p,
        '/v1/invoices',
        INVOICE_TYPE,
        page,
        { where, ...readCreatedRange(r) },
        undefined,
        renderInvoice,
        expandParam(params),
      );
    }),
  );

  http.route(
    'GET',
    '/v1/invoices/search',
    apiEndpoint(s, (p, _req, params) =>
      searchEndpoint<InvoiceObject>(s, p, params, {
        url: '/v1/invoices/search',
        type: INVOICE_TYPE,
        resource: 'invoices',
        fields: INVOICE_SEARCH_FIELDS,
        render: renderInvoice,
      }),
    ),
  );

  http.route(
    'GET',
    '/v1/invoices/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await expandBilling(s.state, p, renderInvoice(await loadInvoice(s.state, p, req.params[0])), expandParam(params)));
    }),
  );

  http.route(
    'GET',
    '/v1/invoices/:id/lines',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'expand']);
      const page = readListParams(r);
      const inv = await loadInvoice(s.state, p, req.params[0]);
      const res = pageOfArray(inv.lines.data, page);
      return listResult(`/v1/invoices/${inv.id}/lines`, res.data, res.hasMore);
    }),
  );

  http.route(
    'POST',
    '/v1/invoices/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['description', 'metadata', 'auto_advance', 'footer', 'discounts', 'expand']);
      const inv = await s.state.transaction(async (tx) => {
        const inv = await loadInvoice(tx, p, req.params[0]);
        const before = structuredClone(inv);
        const draftOnly = ['description', 'auto_advance', 'footer', 'discounts'].filter((k) => r.has(k));
        if (inv.status !== 'draft' && draftOnly.length > 0 && !(inv.status === 'open' && draftOnly.every((k) => k === 'auto_advance' || k === 'description'))) {
          throw new InvalidParamError(draftOnly[0], `You can only update ${draftOnly[0]} on a draft invoice; this invoice is ${inv.status}.`);
        }
        const description = nullableString(r, 'description', 1500);
        if (description !== undefined) inv.description = description;
        const footer = nullableString(r, 'footer', 5000);
        if (footer !== undefined) inv.footer = footer;
        const auto = r.boolean('auto_advance');
        if (auto !== undefined) {
          inv.auto_advance = auto;
          if (inv.status === 'draft') inv.automatically_finalizes_at = auto ? inv.created + GRACE_SECONDS : null;
        }
        const metadata = readMetadata(r, inv.metadata);
        if (metadata !== undefined) inv.metadata = metadata;
        const now = await timeFor(s, tx, p, inv.test_clock);
        const discounts = await readDiscountsParam(tx, p, r, { customer: inv.customer, invoice: inv.id, currency: inv.currency }, now);
        if (discounts !== undefined) setInvoiceDiscounts(inv, discounts);
        await saveInvoice(tx, p, inv, 'invoice.updated', before);
        return inv;
      });
      return json(200, await expandBilling(s.state, p, renderInvoice(inv), expandParam(params)));
    }),
  );

  http.route(
    'DELETE',
    '/v1/invoices/:id',
    apiEndpoint(s, async (p, req) => {
      const id = req.params[0];
      await s.state.transaction(async (tx) => {
        const inv = await loadInvoice(tx, p, id);
        if (inv.status !== 'draft') throw badState(`You can only delete draft invoices. This invoice is ${inv.status}.`);
        // Its invoice items become pending again.
        for (const l of inv.lines.data) {
          const ii = (l.parent?.invoice_item_details as { invoice_item?: string } | undefined)?.invoice_item;
          if (!ii) continue;
          const found = await tx.getObject<InvoiceItemObject>(p.account, INVOICE_ITEM_TYPE, ii);
          if (found) await tx.updateObject(p.account, INVOICE_ITEM_TYPE, ii, { ...found.data, invoice: null });
        }
        await tx.deleteObject(p.account, INVOICE_TYPE, id);
        await recordBillingEvent(tx, p, 'invoice.deleted', renderInvoice(inv));
      });
      return json(200, { id, object: 'invoice', deleted: true });
    }),
  );

  http.route(
    'POST',
    '/v1/invoices/:id/finalize',
    apiEndpoint(s, (p, req, params) =>
      transition(s, p, req.params[0], params, ['auto_advance'], async (tx, inv, now, usage) => {
        await finalizeIn(tx, p, inv, now, usage);
      }),
    ),
  );

  http.route(
    'POST',
    '/v1/invoices/:id/pay',
    apiEndpoint(s, (p, req, params) =>
      transition(
        s,
        p,
        req.params[0],
        params,
        ['paid_out_of_band', 'forgive', 'off_session', 'payment_method', 'source', 'mandate'],
        async (tx, inv, now, usage) => {
          const outOfBand = new ParamReader(params).boolean('paid_out_of_band') ?? false;
          await payIn(tx, p, inv, now, usage, outOfBand);
        },
      ),
    ),
  );

  http.route(
    'POST',
    '/v1/invoices/:id/void',
    apiEndpoint(s, (p, req, params) =>
      transition(s, p, req.params[0], params, [], async (tx, inv, now) => {
        if (inv.status !== 'open' && inv.status !== 'uncollectible') {
          throw badState(`You can only void an invoice in status open or uncollectible; this invoice is ${inv.status}.`);
        }
        const before = structuredClone(inv);
        if (finalizeHooks.restoreCredits) await finalizeHooks.restoreCredits(tx, p, inv, now);
        const used = inv._balance_applied ?? 0;
        if (used !== 0 && inv.amount_paid === 0) {
          // The balance this invoice used goes back to the customer, as Stripe does on void.
          await recordCustomerBalanceTransaction(tx, p, inv.customer, {
            amount: -used,
            currency: inv.currency,
            type: 'unapplied_from_invoice',
            invoice: inv.id,
          });
        }
        inv.status = 'void';
        inv.status_transitions.voided_at = now;
        inv.amount_remaining = 0;
        inv.auto_advance = false;
        await saveInvoice(tx, p, inv, 'invoice.voided', before);
      }),
    ),
  );

  http.route(
    'POST',
    '/v1/invoices/:id/mark_uncollectible',
    apiEndpoint(s, (p, req, params) =>
      transition(s, p, req.params[0], params, [], async (tx, inv, now) => {
        if (inv.status !== 'open') throw badState(`You can only mark an invoice in status open as uncollectible; this invoice is ${inv.status}.`);
        const before = structuredClone(inv);
        inv.status = 'uncollectible';
        inv.status_transitions.marked_uncollectible_at = now;
        inv.auto_advance = false;
        await saveInvoice(tx, p, inv, 'invoice.marked_uncollectible', before);
      }),
    ),
  );

  http.route(
    'POST',
    '/v1/invoices/:id/send',
    apiEndpoint(s, (p, req, params) =>
      transition(s, p, req.params[0], params, [], async (tx, inv) => {
        if (inv.status !== 'open') throw badState(`You can only send an invoice in status open; this invoice is ${inv.status}.`);
        await recordBillingEvent(tx, p, 'invoice.sent', renderInvoice(inv));
      }),
    ),
  );
}
