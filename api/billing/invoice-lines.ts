/**
 * Building an invoice's lines: from prices and quantities, from subscriptions' metered items (measured from the
 * meter's summaries, re-measured at finalization) and from pending invoice items; and a new invoice document.
 */
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { newId } from '../../shared/ids';
import { METER_TYPE, type MeterObject } from '../../shared/meters';
import { formatScaled } from '../../shared/decimal';
import { computeWindows } from '../summaries';
import type { Metadata } from './common';
import type { CustomerObject } from './customers';
import { PRICE_TYPE, type PriceObject } from './prices';
import { priceAmount, truncatedQuantity } from './pricing';
import { appliedFrom } from './discounts';
import type { DiscountObject } from './coupons';
import { GRACE_SECONDS, INVOICE_ITEM_TYPE, type InvoiceItemObject, type InvoiceObject, type LineItem } from './invoice-model';
import { recomputeTotals } from './invoice-totals';

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

// ---------------------------------------------------------------------------------------------------------------------
// Usage at finalization

/** Re-measures metered lines (usage reported during the grace period counts). Outside any transaction. */
export async function refreshUsage(s: Services, p: Principal, inv: InvoiceObject): Promise<Map<string, bigint>> {
  const out = new Map<string, bigint>();
  for (const u of inv._usage ?? []) out.set(u.line, await meteredUsage(s, p, u.meter, inv.customer, u.start, u.end));
  return out;
}

export async function applyUsage(tx: StateStore, p: Principal, inv: InvoiceObject, usage: Map<string, bigint>): Promise<void> {
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

// ---------------------------------------------------------------------------------------------------------------------
// Pending invoice items

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
