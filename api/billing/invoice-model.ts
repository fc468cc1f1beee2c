/**
 * The invoice and invoice item documents: their types, the customer's time (test clocks), and loading, storing and
 * rendering an invoice (the `invoice.*` events of a state change are recorded by saveInvoice).
 *
 * Storage: one `invoice` document per invoice (the Invoice object with ALL its lines in `lines.data`, rendered up to
 * 10 lines embedded as Stripe does, the rest via GET /v1/invoices/:id/lines). Internal bookkeeping lives in `_usage`
 * (which metered lines to re-measure at finalization) and is stripped by renderInvoice.
 */
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { recordBillingEvent, type Metadata } from './common';
import type { AppliedDiscount } from './discounts';
import { loadResource } from './resource';

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
// Storage

export function renderInvoice(inv: InvoiceObject): Record<string, unknown> {
  const { _usage: _u, _discounts: _d, _balance_applied: _b, ...rest } = inv;
  return { ...rest, lines: { ...inv.lines, data: inv.lines.data.slice(0, 10), has_more: inv.lines.data.length > 10 } };
}

export async function insertInvoice(tx: StateStore, p: Principal, inv: InvoiceObject): Promise<void> {
  await tx.insertObject({ account: p.account, type: INVOICE_TYPE, id: inv.id, createdMs: inv.created * 1000, data: inv });
  await recordBillingEvent(tx, p, 'invoice.created', renderInvoice(inv));
}

export function loadInvoice(store: StateStore, p: Principal, id: string, param = 'id'): Promise<InvoiceObject> {
  return loadResource<InvoiceObject>(store, p, { type: INVOICE_TYPE, noun: 'invoice' }, id, param);
}

export async function saveInvoice(tx: StateStore, p: Principal, inv: InvoiceObject, event: string | null, before?: InvoiceObject): Promise<void> {
  await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
  if (event) await recordBillingEvent(tx, p, event, renderInvoice(inv), before ? (renderInvoice(before) as Record<string, unknown>) : undefined);
}
