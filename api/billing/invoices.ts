/**
 * v1 invoice endpoints. The documents are in invoice-model.ts, their lines in invoice-lines.ts, their amounts in
 * invoice-totals.ts and the state machine in invoice-transitions.ts.
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
} from './common';
import { loadCustomer, type CustomerObject } from './customers';
import { recordCustomerBalanceTransaction } from './balance';
import { inheritedDiscounts } from './discounts';
import { readDiscountsParam } from './coupons';
import {
  GRACE_SECONDS,
  INVOICE_ITEM_TYPE,
  INVOICE_TYPE,
  insertInvoice,
  loadInvoice,
  renderInvoice,
  saveInvoice,
  timeFor,
  type InvoiceItemObject,
  type InvoiceObject,
} from './invoice-model';
import { setInvoiceDiscounts } from './invoice-totals';
import { newInvoice, refreshUsage, sweepPendingItems } from './invoice-lines';
import { badState, finalizeHooks, finalizeIn, payIn } from './invoice-transitions';

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
