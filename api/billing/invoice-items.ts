/**
 * v1 invoice items: create, retrieve, update, delete, list. A pending item (invoice null) is swept onto the customer's
 * next subscription invoice or onto a manual invoice created with pending_invoice_items_behavior=include; created with
 * `invoice`, it is added to that draft at once. Amount: `amount` (integer minor units, may be negative), or
 * `pricing[price]` / `unit_amount_decimal` x `quantity`, priced with pricing.ts (one half-up rounding).
 * Items on a finalized invoice can no longer be changed or deleted.
 */
import type { HttpServer } from '../../shared/http/server';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { InvalidParamError, InvalidRequestError, MissingParamError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { formatScaled } from '../../shared/decimal';
import { defineResource, loadResource, P, whereOf, type ParamValues, type ResourceContext } from './resource';
import { loadCustomer } from './customers';
import { loadPrice } from './prices';
import { parseQuantity, priceAmount } from './pricing';
import { addInvoiceItemLine } from './invoice-lines';
import { recomputeTotals } from './invoice-totals';
import { INVOICE_ITEM_TYPE, INVOICE_TYPE, loadInvoice, timeFor, type InvoiceItemObject, type InvoiceObject } from './invoice-model';

const ITEMS = { type: INVOICE_ITEM_TYPE, noun: 'invoiceitem' };

export function loadInvoiceItem(store: StateStore, p: Principal, id: string): Promise<InvoiceItemObject> {
  return loadResource<InvoiceItemObject>(store, p, ITEMS, id);
}

const DEC = /^\d+(\.\d{1,12})?$/;

const CREATE_PARAMS = {
  customer: P.string({ required: true, maxLength: 5000 }),
  amount: P.integer(),
  currency: P.custom((r, n) => r.string(n, { maxLength: 3 })?.toLowerCase()),
  description: P.string({ maxLength: 5000 }),
  invoice: P.string({ maxLength: 5000 }),
  metadata: P.metadata(),
  quantity: P.integer({ min: 0 }),
  unit_amount_decimal: P.string({ maxLength: 100 }),
  subscription: P.string({ maxLength: 5000 }),
  discountable: P.boolean(),
  pricing: P.custom((r, n) => {
    const pr = r.object(n);
    if (!pr) return undefined;
    pr.assertNoUnknown(['price']);
    return { price: pr.string('price', { maxLength: 5000 }) };
  }),
  period: P.custom((r, n) => {
    const per = r.object(n);
    if (!per) return undefined;
    per.assertNoUnknown(['start', 'end']);
    const period = { start: per.integer('start', { required: true }), end: per.integer('end', { required: true }) };
    if (period.end < period.start) throw new InvalidParamError('period[end]', 'period[end] must be on or after period[start].');
    return period;
  }),
};

async function newItem(s: Services, { p, tx }: ResourceContext, v: ParamValues<typeof CREATE_PARAMS>): Promise<InvoiceItemObject> {
  const amountParam = v.amount;
  const unitDec = v.unit_amount_decimal;
  const priceId = v.pricing?.price;
  const quantity = v.quantity ?? 1;
  let currency = v.currency;
  const given = [amountParam !== undefined, unitDec !== undefined, priceId !== undefined].filter(Boolean).length;
  if (given === 0) throw new MissingParamError('amount');
  if (given > 1)
    throw new InvalidRequestError('You may only specify one of these parameters: amount, pricing[price], unit_amount_decimal.', { param: 'amount' });
  if (unitDec !== undefined && !DEC.test(unitDec))
    throw new InvalidParamError('unit_amount_decimal', `Invalid decimal: ${unitDec}`, 'parameter_invalid_decimal');

  const customer = await loadCustomer(tx, p, v.customer!, 'customer');
  const now = await timeFor(s, tx, p, customer.test_clock);
  let amount = amountParam ?? 0;
  let unitAmountDecimal: string | null = null;
  let pricing: InvoiceItemObject['pricing'] = null;
  if (priceId !== undefined) {
    const price = await loadPrice(tx, p, priceId, 'pricing[price]');
    if (price.type !== 'one_time')
      throw new InvalidParamError('pricing[price]', 'The price specified is a recurring price; invoice items only accept one-time prices.');
    if (currency && currency !== price.currency) throw new InvalidParamError('currency', `The price's currency ${price.currency} does not match ${currency}.`);
    currency = price.currency;
    amount = priceAmount(price, parseQuantity(quantity)).amount;
    unitAmountDecimal = price.unit_amount_decimal;
    pricing = { type: 'price_details', price_details: { price: price.id, product: price.product }, unit_amount_decimal: unitAmountDecimal };
  } else if (unitDec !== undefined) {
    amount = priceAmount(
      { billing_scheme: 'per_unit', unit_amount_decimal: unitDec, tiers_mode: null, transform_quantity: null },
      parseQuantity(quantity),
    ).amount;
    unitAmountDecimal = unitDec;
    pricing = { type: 'price_details', price_details: null, unit_amount_decimal: unitDec };
  } else {
    unitAmountDecimal = quantity > 0 ? formatScaled((BigInt(amount) * 10n ** 15n) / BigInt(quantity)) : String(amount);
  }
  currency ??= customer.currency ?? undefined;
  if (!currency) throw new MissingParamError('currency');
  let inv: InvoiceObject | null = null;
  if (v.invoice) {
    inv = await loadInvoice(tx, p, v.invoice, 'invoice');
    if (inv.customer !== customer.id) throw new InvalidParamError('invoice', `The invoice ${inv.id} belongs to another customer.`);
    if (inv.status !== 'draft') throw new InvalidParamError('invoice', `You can only add invoice items to draft invoices; invoice ${inv.id} is ${inv.status}.`);
    if (inv.currency !== currency) throw new InvalidParamError('currency', `The invoice ${inv.id} is in ${inv.currency}.`);
  }
  const subscription = v.subscription ?? null;
  const ii: InvoiceItemObject = {
    id: newId('ii', p.livemode),
    object: 'invoiceitem',
    amount,
    currency,
    customer: customer.id,
    date: now,
    description: v.description ?? null,
    // Stripe's default: discountable, except negative amounts.
    discountable: v.discountable ?? amount >= 0,
    discounts: [],
    invoice: inv ? inv.id : null,
    livemode: p.livemode,
    metadata: v.metadata?.({}) ?? {},
    net_amount: amount,
    parent: subscription ? { type: 'subscription_details', subscription_details: { subscription } } : null,
    period: v.period ?? { start: now, end: now },
    pricing: pricing ?? { type: 'price_details', price_details: null, unit_amount_decimal: unitAmountDecimal },
    proration: false,
    quantity,
    quantity_decimal: String(quantity),
    tax_rates: [],
    test_clock: customer.test_clock,
    customer_account: null,
  };
  if (inv) {
    addInvoiceItemLine(p, inv, ii);
    await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
  }
  return ii;
}

/** The draft invoice holding `ii`, or null when pending; throws when it is finalized. */
async function draftOf(tx: StateStore, p: Principal, ii: InvoiceItemObject, what: string): Promise<InvoiceObject | null> {
  if (!ii.invoice) return null;
  const inv = await loadInvoice(tx, p, ii.invoice, 'invoice');
  if (inv.status !== 'draft')
    throw new InvalidRequestError(`You cannot ${what} an invoice item that is attached to a finalized invoice (${inv.id}).`, { code: 'invoice_not_editable' });
  return inv;
}

function withoutItemLine(inv: InvoiceObject, ii: InvoiceItemObject): void {
  inv.lines.data = inv.lines.data.filter((l) => (l.parent?.invoice_item_details as { invoice_item?: string } | null)?.invoice_item !== ii.id);
}

export function registerInvoiceItemRoutes(http: HttpServer, s: Services): void {
  defineResource(http, s, {
    ...ITEMS,
    path: '/v1/invoiceitems',
    expand: true,
    events: { created: 'invoiceitem.created', updated: 'invoiceitem.updated', deleted: 'invoiceitem.deleted' },
    create: { params: CREATE_PARAMS, build: (ctx, v) => newItem(s, ctx, v) },
    list: {
      params: { customer: P.string({ maxLength: 5000 }), invoice: P.string({ maxLength: 5000 }), pending: P.boolean(), created: P.created() },
      filter: (v) => {
        const pending = v.pending;
        return {
          where: whereOf(v, ['customer', 'invoice']),
          ...v.created,
          pred: pending === undefined ? undefined : (d) => (d.invoice === null) === pending,
        };
      },
    },
    update: {
      params: { description: P.nullableString(5000), metadata: P.metadata(), amount: P.integer(), quantity: P.integer({ min: 0 }) },
      apply: async ({ p, tx }, ii, v) => {
        const inv = await draftOf(tx, p, ii, 'update');
        if (v.description !== undefined) ii.description = v.description;
        if (v.amount !== undefined) ii.amount = ii.net_amount = v.amount;
        if (v.quantity !== undefined) {
          ii.quantity = v.quantity;
          ii.quantity_decimal = String(v.quantity);
        }
        if (v.metadata) ii.metadata = v.metadata(ii.metadata);
        if (inv) {
          withoutItemLine(inv, ii);
          addInvoiceItemLine(p, inv, ii);
          await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
        }
      },
    },
    remove: {
      check: async ({ p, tx }, ii) => {
        const inv = await draftOf(tx, p, ii, 'delete');
        if (inv) {
          withoutItemLine(inv, ii);
          recomputeTotals(inv);
          await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
        }
      },
    },
  });
}
