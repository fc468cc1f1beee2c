/**
 * v1 invoice items: create, retrieve, update, delete, list. A pending item (invoice null) is swept onto the customer's
 * next subscription invoice or onto a manual invoice created with pending_invoice_items_behavior=include; created with
 * `invoice`, it is added to that draft at once. Amount: `amount` (integer minor units, may be negative), or
 * `pricing[price]` / `unit_amount_decimal` x `quantity`, priced with pricing.ts (one half-up rounding).
 * Items on a finalized invoice can no longer be changed or deleted.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, InvalidRequestError, MissingParamError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { formatScaled } from '../../shared/decimal';
import { readListParams } from '../meters';
import { expandBilling, expandParam, listEndpoint, nullableString, readCreatedRange, readMetadata, recordBillingEvent } from './common';
import { loadCustomer } from './customers';
import { loadPrice } from './prices';
import { parseQuantity, priceAmount } from './pricing';
import {
  addInvoiceItemLine,
  recomputeTotals,
  INVOICE_ITEM_TYPE,
  INVOICE_TYPE,
  loadInvoice,
  timeFor,
  type InvoiceItemObject,
  type InvoiceObject,
} from './invoices';

export async function loadInvoiceItem(store: StateStore, p: Principal, id: string): Promise<InvoiceItemObject> {
  const found = await store.getObject<InvoiceItemObject>(p.account, INVOICE_ITEM_TYPE, id);
  if (!found) throw new NotFoundError(`No such invoiceitem: '${id}'`);
  return found.data;
}

const DEC = /^\d+(\.\d{1,12})?$/;

async function createItem(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown([
    'customer',
    'amount',
    'currency',
    'description',
    'invoice',
    'metadata',
    'period',
    'pricing',
    'quantity',
    'unit_amount_decimal',
    'subscription',
    'discountable',
    'expand',
  ]);
  const customerId = r.string('customer', { required: true, maxLength: 5000 })!;
  const amountParam = r.integer('amount');
  let currency = r.string('currency', { maxLength: 3 })?.toLowerCase();
  const description = r.string('description', { maxLength: 5000 }) ?? null;
  const invoiceId = r.string('invoice', { maxLength: 5000 });
  const metadata = readMetadata(r) ?? {};
  const quantity = r.integer('quantity', { min: 0 }) ?? 1;
  const unitDec = r.string('unit_amount_decimal', { maxLength: 100 });
  const subscription = r.string('subscription', { maxLength: 5000 }) ?? null;
  const discountableParam = r.boolean('discountable');
  const pr = r.object('pricing');
  let priceId: string | undefined;
  if (pr) {
    pr.assertNoUnknown(['price']);
    priceId = pr.string('price', { maxLength: 5000 });
  }
  const per = r.object('period');
  let period: { start: number; end: number } | undefined;
  if (per) {
    per.assertNoUnknown(['start', 'end']);
    period = { start: per.integer('start', { required: true })!, end: per.integer('end', { required: true })! };
    if (period.end < period.start) throw new InvalidParamError('period[end]', 'period[end] must be on or after period[start].');
  }
  const given = [amountParam !== undefined, unitDec !== undefined, priceId !== undefined].filter(Boolean).length;
  if (given === 0) throw new MissingParamError('amount');
  if (given > 1)
    throw new InvalidRequestError('You may only specify one of these parameters: amount, pricing[price], unit_amount_decimal.', { param: 'amount' });
  if (unitDec !== undefined && !DEC.test(unitDec))
    throw new InvalidParamError('unit_amount_decimal', `Invalid decimal: ${unitDec}`, 'parameter_invalid_decimal');

  const ii = await s.state.transaction(async (tx) => {
    const customer = await loadCustomer(tx, p, customerId, 'customer');
    const now = await timeFor(s, tx, p, customer.test_clock);
    let amount = amountParam ?? 0;
    let unitAmountDecimal: string | null = null;
    let pricing: InvoiceItemObject['pricing'] = null;
    if (priceId !== undefined) {
      const price = await loadPrice(tx, p, priceId, 'pricing[price]');
      if (price.type !== 'one_time')
        throw new InvalidParamError('pricing[price]', 'The price specified is a recurring price; invoice items only accept one-time prices.');
      if (currency && currency !== price.currency)
        throw new InvalidParamError('currency', `The price's currency ${price.currency} does not match ${currency}.`);
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
    if (invoiceId) {
      inv = await loadInvoice(tx, p, invoiceId, 'invoice');
      if (inv.customer !== customer.id) throw new InvalidParamError('invoice', `The invoice ${inv.id} belongs to another customer.`);
      if (inv.status !== 'draft')
        throw new InvalidParamError('invoice', `You can only add invoice items to draft invoices; invoice ${inv.id} is ${inv.status}.`);
      if (inv.currency !== currency) throw new InvalidParamError('currency', `The invoice ${inv.id} is in ${inv.currency}.`);
    }
    const ii: InvoiceItemObject = {
      id: newId('ii', p.livemode),
      object: 'invoiceitem',
      amount,
      currency,
      customer: customer.id,
      date: now,
      description,
      // Stripe's default: discountable, except negative amounts.
      discountable: discountableParam ?? amount >= 0,
      discounts: [],
      invoice: inv ? inv.id : null,
      livemode: p.livemode,
      metadata,
      net_amount: amount,
      parent: subscription ? { type: 'subscription_details', subscription_details: { subscription } } : null,
      period: period ?? { start: now, end: now },
      pricing: pricing ?? { type: 'price_details', price_details: null, unit_amount_decimal: unitAmountDecimal },
      proration: false,
      quantity,
      quantity_decimal: String(quantity),
      tax_rates: [],
      test_clock: customer.test_clock,
      customer_account: null,
    };
    await tx.insertObject({ account: p.account, type: INVOICE_ITEM_TYPE, id: ii.id, createdMs: s.now(), data: ii });
    await recordBillingEvent(tx, p, 'invoiceitem.created', ii);
    if (inv) {
      addInvoiceItemLine(p, inv, ii);
      await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
    }
    return ii;
  });
  return json(200, await expandBilling(s.state, p, ii, expandParam(params)));
}

/** The draft invoice holding `ii`, or null when pending; throws when it is finalized. */
async function draftOf(tx: StateStore, p: Principal, ii: InvoiceItemObject, what: string): Promise<InvoiceObject | null> {
  if (!ii.invoice) return null;
  const inv = await loadInvoice(tx, p, ii.invoice, 'invoice');
  if (inv.status !== 'draft')
    throw new InvalidRequestError(`You cannot ${what} an invoice item that is attached to a finalized invoice (${inv.id}).`, { code: 'invoice_not_editable' });
  return inv;
}

export function registerInvoiceItemRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/invoiceitems',
    apiEndpoint(s, (p, _req, params) => createItem(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/invoiceitems',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'customer', 'invoice', 'pending', 'created', 'expand']);
      const page = readListParams(r);
      const where: Record<string, string | null> = {};
      const customer = r.string('customer', { maxLength: 5000 });
      if (customer) where.customer = customer;
      const invoice = r.string('invoice', { maxLength: 5000 });
      if (invoice) where.invoice = invoice;
      const pending = r.boolean('pending');
      const pred = pending === undefined ? undefined : (d: InvoiceItemObject) => (d.invoice === null) === pending;
      return listEndpoint<InvoiceItemObject>(
        s,
        p,
        '/v1/invoiceitems',
        INVOICE_ITEM_TYPE,
        page,
        { where, ...readCreatedRange(r) },
        pred,
        (d) => d,
        expandParam(params),
      );
    }),
  );

  http.route(
    'GET',
    '/v1/invoiceitems/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await expandBilling(s.state, p, await loadInvoiceItem(s.state, p, req.params[0]), expandParam(params)));
    }),
  );

  http.route(
    'POST',
    '/v1/invoiceitems/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['description', 'metadata', 'amount', 'quantity', 'expand']);
      const ii = await s.state.transaction(async (tx) => {
        const ii = await loadInvoiceItem(tx, p, req.params[0]);
        const before = structuredClone(ii);
        const inv = await draftOf(tx, p, ii, 'update');
        const description = nullableString(r, 'description', 5000);
        if (description !== undefined) ii.description = description;
        const amount = r.integer('amount');
        if (amount !== undefined) ii.amount = ii.net_amount = amount;
        const q = r.integer('quantity', { min: 0 });
        if (q !== undefined) {
          ii.quantity = q;
          ii.quantity_decimal = String(q);
        }
        const md = readMetadata(r, ii.metadata);
        if (md !== undefined) ii.metadata = md;
        await tx.updateObject(p.account, INVOICE_ITEM_TYPE, ii.id, ii);
        await recordBillingEvent(tx, p, 'invoiceitem.updated', ii, before as unknown as Record<string, unknown>);
        if (inv) {
          inv.lines.data = inv.lines.data.filter((l) => (l.parent?.invoice_item_details as { invoice_item?: string } | null)?.invoice_item !== ii.id);
          addInvoiceItemLine(p, inv, ii);
          await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
        }
        return ii;
      });
      return json(200, await expandBilling(s.state, p, ii, expandParam(params)));
    }),
  );

  http.route(
    'DELETE',
    '/v1/invoiceitems/:id',
    apiEndpoint(s, async (p, req) => {
      const id = req.params[0];
      await s.state.transaction(async (tx) => {
        const ii = await loadInvoiceItem(tx, p, id);
        const inv = await draftOf(tx, p, ii, 'delete');
        if (inv) {
          inv.lines.data = inv.lines.data.filter((l) => (l.parent?.invoice_item_details as { invoice_item?: string } | null)?.invoice_item !== ii.id);
          recomputeTotals(inv);
          await tx.updateObject(p.account, INVOICE_TYPE, inv.id, inv);
        }
        await tx.deleteObject(p.account, INVOICE_ITEM_TYPE, id);
        await recordBillingEvent(tx, p, 'invoiceitem.deleted', ii);
      });
      return json(200, { id, object: 'invoiceitem', deleted: true });
    }),
  );
}
