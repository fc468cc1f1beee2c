/**
 * v1 subscriptions and subscription items, and the billing cycle that turns their periods into invoices.
 *
 * Storage: one `subscription` document holding the Subscription object with its items (items.data, each a full
 * SubscriptionItem with its price). Each item also has a `subscription_item_ref` document (id = si_…, data =
 * {subscription}) so /v1/subscription_items/:id finds its subscription.
 *
 * Periods (basil shape): current_period_start/end live on the ITEMS; all items of a subscription share the interval
 * (Stripe's classic billing mode requires it), so they share one period. The period starts at the customer's time
 * (its test clock's frozen_time) at creation = billing_cycle_anchor; months/years keep the anchor's day of month
 * (clamped to the month's last day), days/weeks add exact seconds.
 *
 * Billing: at creation an invoice (billing_reason subscription_create) bills the licensed items for the first period
 * in advance; it is finalized at once (paid at once when it is 0, e.g. metered-only). At each period end reached by the
 * customer's time (today: when its test clock advances) one invoice (subscription_cycle, status draft, auto_advance,
 * automatically_finalizes_at = period end + 1 h) bills: metered items in arrears, quantity = the meter's aggregate for
 * the customer over exactly [period start, period end) (invoices.meteredUsage), and licensed items in advance for the
 * next period; pending invoice items of the customer are swept onto it. At finalization metered lines are measured
 * again (usage reported during the grace period counts). Mid-period changes of licensed items create proration invoice
 * items (proration.ts; proration_behavior create_prorations by default, none to skip) that the next invoice sweeps.
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
import { readListParams } from '../meters';
import { expandBilling, expandParam, listEndpoint, readCreatedRange, readMetadata, recordBillingEvent, type Metadata } from './common';
import { loadCustomer } from './customers';
import { loadPrice, type PriceObject } from './prices';
import { renderPlan } from './plans';
import { createProrations } from './proration';
import { inheritedDiscounts } from './discounts';
import { readDiscountsParam, renderDiscount, type DiscountObject } from './coupons';
import { finalizeIn } from './invoice-transitions';
import { insertInvoice, timeFor } from './invoice-model';
import { newInvoice } from './invoice-lines';
import { setInvoiceDiscounts } from './invoice-totals';
import { addInterval, periodOf, licensedLines, meteredLines } from './subscription-cycle';
import {
  SUBSCRIPTION_TYPE,
  SUBSCRIPTION_ITEM_REF,
  type SubscriptionItem,
  type SubscriptionObject,
  renderItem,
  renderSub,
  loadSubscription,
  saveSubscription,
} from './subscription-model';

// ---------------------------------------------------------------------------------------------------------------------
// Items

function makeItem(
  p: Principal,
  subId: string,
  price: PriceObject,
  quantity: number | undefined,
  created: number,
  start: number,
  end: number,
  metadata: Metadata,
): SubscriptionItem {
  return {
    id: newId('si', p.livemode),
    object: 'subscription_item',
    billing_thresholds: null,
    created,
    current_period_end: end,
    current_period_start: start,
    discounts: [],
    metadata,
    plan: renderPlan(price, []),
    price,
    ...(price.recurring?.usage_type === 'metered' ? {} : { quantity: quantity ?? 1 }),
    subscription: subId,
    tax_rates: [],
  };
}

async function readItemPrice(tx: StateStore, p: Principal, r: ParamReader, currency: string | null): Promise<PriceObject> {
  const priceId = r.string('price', { maxLength: 5000 }) ?? r.string('plan', { maxLength: 5000 });
  if (!priceId) throw new MissingParamError(r.param('price'));
  const price = await loadPrice(tx, p, priceId, r.param('price'));
  if (!price.recurring) {
    throw new InvalidParamError(
      r.param('price'),
      `The price specified is set to \`type=one_time\` but this field only accepts prices with \`type=recurring\`.`,
    );
  }
  if (!price.active) throw new InvalidParamError(r.param('price'), `The price specified is inactive. This field only accepts active prices.`);
  if (currency && price.currency !== currency) {
    throw new InvalidParamError(r.param('price'), `The price specified uses currency ${price.currency}, but the subscription uses ${currency}.`);
  }
  return price;
}

function readQuantity(r: ParamReader, price: PriceObject): number | undefined {
  const q = r.integer('quantity', { min: 0 });
  if (q !== undefined && price.recurring?.usage_type === 'metered') {
    throw new InvalidParamError(r.param('quantity'), 'Quantity should not be specified where usage_type is `metered`. Remove quantity from the request.');
  }
  return q;
}

function checkSameInterval(items: SubscriptionItem[]): void {
  const first = items[0]?.price.recurring;
  for (const it of items) {
    const r = it.price.recurring!;
    if (r.interval !== first!.interval || r.interval_count !== first!.interval_count) {
      throw new InvalidRequestError('All prices on a subscription must have the same `recurring.interval` and `recurring.interval_count`.', { param: 'items' });
    }
  }
}

function pick(params: Params, keys: string[]): Params {
  const out: Params = {};
  for (const k of keys) if (params[k] !== undefined) out[k] = params[k];
  return out;
}

// ---------------------------------------------------------------------------------------------------------------------
// Endpoints

const SUB_CREATE = [
  'customer',
  'items',
  'metadata',
  'description',
  'cancel_at_period_end',
  'cancel_at',
  'collection_method',
  'days_until_due',
  'billing_cycle_anchor',
  'proration_behavior',
  'payment_behavior',
  'discounts',
  'expand',
];

async function createSubscription(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown(SUB_CREATE);
  const customerId = r.string('customer', { required: true, maxLength: 5000 })!;
  const itemParams = r.objectArray('items', { required: true, maxItems: 20 })!;
  if (itemParams.length === 0) throw new MissingParamError('items');
  const metadata = readMetadata(r) ?? {};
  const description = r.string('description', { maxLength: 500 }) ?? null;
  const cancelAtPeriodEnd = r.boolean('cancel_at_period_end') ?? false;
  const collection = r.string('collection_method', { enum: ['charge_automatically', 'send_invoice'] }) ?? 'charge_automatically';
  const daysUntilDue = r.integer('days_until_due', { min: 0 }) ?? null;
  const anchorParam = r.integer('billing_cycle_anchor', { min: 0 });
  r.string('proration_behavior', { enum: ['always_invoice', 'create_prorations', 'none'] });
  r.string('payment_behavior', { enum: ['allow_incomplete', 'default_incomplete', 'error_if_incomplete', 'pending_if_incomplete'] });

  const sub = await s.state.transaction(async (tx) => {
    const customer = await loadCustomer(tx, p, customerId, 'customer');
    const now = await timeFor(s, tx, p, customer.test_clock);
    const id = newId('sub', p.livemode);
    const items: SubscriptionItem[] = [];
    let currency: string | null = null;
    const seen = new Set<string>();
    for (const ip of itemParams) {
      ip.assertNoUnknown(['price', 'plan', 'quantity', 'metadata']);
      const price = await readItemPrice(tx, p, ip, currency);
      if (seen.has(price.id)) throw new InvalidParamError(ip.param('price'), 'Cannot add multiple subscription items with the same price.');
      seen.add(price.id);
      currency = price.currency;
      items.push(makeItem(p, id, price, readQuantity(ip, price), now, now, 0, readMetadata(ip) ?? {}));
    }
    checkSameInterval(items);
    const rec = items[0].price.recurring!;
    const anchor = anchorParam ?? now;
    if (anchor < now) throw new InvalidParamError('billing_cycle_anchor', 'billing_cycle_anchor cannot be in the past.');
    const end = anchor > now ? anchor : addInterval(now, anchor, rec.interval, rec.interval_count);
    if (anchor > now && end - now > addInterval(now, now, rec.interval, rec.interval_count) - now) {
      throw new InvalidParamError('billing_cycle_anchor', 'billing_cycle_anchor cannot be later than next natural billing date for the plan.');
    }
    for (const it of items) it.current_period_end = end;
    const sub: SubscriptionObject = {
      id,
      object: 'subscription',
      application: null,
      application_fee_percent: null,
      automatic_tax: { disabled_reason: null, enabled: false, liability: null },
      billing_cycle_anchor: anchor,
      billing_cycle_anchor_config: null,
      billing_mode: { type: 'classic' },
      billing_thresholds: null,
      cancel_at: null,
      cancel_at_period_end: cancelAtPeriodEnd,
      canceled_at: null,
      cancellation_details: { comment: null, feedback: null, reason: null },
      collection_method: collection,
      created: now,
      currency: currency!,
      customer: customer.id,
      customer_account: null,
      days_until_due: daysUntilDue,
      default_payment_method: null,
      default_source: null,
      default_tax_rates: [],
      description,
      discounts: [],
      ended_at: null,
      invoice_settings: { account_tax_ids: null, issuer: { type: 'self' } },
      items: { object: 'list', data: items, has_more: false, total_count: items.length, url: `/v1/subscription_items?subscription=${id}` },
      latest_invoice: null,
      livemode: p.livemode,
      metadata,
      next_pending_invoice_item_invoice: null,
      on_behalf_of: null,
      pause_collection: null,
      payment_settings: { payment_method_options: null, payment_method_types: null, save_default_payment_method: 'off' },
      pending_invoice_item_interval: null,
      pending_setup_intent: null,
      pending_update: null,
      schedule: null,
      start_date: now,
      status: 'active',
      test_clock: customer.test_clock,
      transfer_data: null,
      trial_end: null,
      trial_settings: { end_behavior: { missing_payment_method: 'create_invoice' } },
      trial_start: null,
    };
    // The first invoice: licensed items in advance for the first period.
    const inv = newInvoice(p, customer, {
      created: now,
      currency: sub.currency,
      subscription: id,
      billingReason: 'subscription_create',
      periodStart: now,
      periodEnd: now,
      autoAdvance: false,
      lines: anchor > now ? [] : licensedLines(sub, now, end),
    });
    sub.discounts = ((await readDiscountsParam(tx, p, r, { customer: customer.id, subscription: id, currency: sub.currency }, now)) ?? []).map((d) => d.id);
    setInvoiceDiscounts(inv, await inheritedDiscounts(tx, p, customer, sub, now, true));
    sub.latest_invoice = inv.id;
    await tx.insertObject({ account: p.account, type: SUBSCRIPTION_TYPE, id, createdMs: now * 1000, data: sub });
    for (const it of items)
      await tx.insertObject({ account: p.account, type: SUBSCRIPTION_ITEM_REF, id: it.id, createdMs: now * 1000, data: { subscription: id } });
    await recordBillingEvent(tx, p, 'customer.subscription.created', renderSub(sub));
    await insertInvoice(tx, p, inv);
    inv.auto_advance = true;
    await finalizeIn(tx, p, inv, now);
    return sub;
  });
  return json(200, await expandBilling(s.state, p, renderSub(sub), expandParam(params)));
}

export async function updateSubscription(s: Services, p: Principal, id: string, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown(['items', 'metadata', 'description', 'cancel_at_period_end', 'cancel_at', 'proration_behavior', 'payment_behavior', 'discounts', 'expand']);
  const prorate = (r.string('proration_behavior', { enum: ['always_invoice', 'create_prorations', 'none'] }) ?? 'create_prorations') !== 'none';
  const sub = await s.state.transaction(async (tx) => {
    const sub = await loadSubscription(tx, p, id);
    if (sub.status === 'canceled') {
      throw new InvalidRequestError(`A canceled subscription can only update its cancellation_details and metadata.`, { param: r.keys()[0] });
    }
    const before = structuredClone(sub);
    const now = await timeFor(s, tx, p, sub.test_clock);
    const description = r.string('description', { maxLength: 500, allowEmpty: true });
    if (description !== undefined) sub.description = description || null;
    const cape = r.boolean('cancel_at_period_end');
    if (cape !== undefined) {
      sub.cancel_at_period_end = cape;
      sub.cancel_at = cape ? periodOf(sub).end : null;
      sub.canceled_at = cape ? now : null;
    }
    const metadata = readMetadata(r, sub.metadata);
    if (metadata !== undefined) sub.metadata = metadata;
    const discounts = await readDiscountsParam(tx, p, r, { customer: sub.customer, subscription: sub.id, currency: sub.currency }, now);
    if (discounts !== undefined) sub.discounts = discounts.map((d) => d.id);
    const itemParams = r.objectArray('items', { maxItems: 20 });
    if (itemParams) {
      await applyItemChanges(tx, p, sub, itemParams, now);
      if (prorate) await prorateChange(s, tx, p, before, sub, now);
    }
    await saveSubscription(tx, p, sub, 'customer.subscription.updated', before);
    return sub;
  });
  return json(200, await expandBilling(s.state, p, renderSub(sub), expandParam(params)));
}

/** Proration invoice items for a change of the subscription's items within its current period. */
async function prorateChange(s: Services, tx: StateStore, p: Principal, before: SubscriptionObject, after: SubscriptionObject, now: number): Promise<void> {
  const { start, end } = periodOf(before);
  await createProrations(tx, p, before, after, now, start, end, s.now());
}

/** items[]: {id, price, quantity, metadata, deleted}; the caller creates the prorations. */
async function applyItemChanges(tx: StateStore, p: Principal, sub: SubscriptionObject, itemParams: ParamReader[], now: number): Promise<void> {
  const { start, end } = periodOf(sub);
  for (const ip of itemParams) {
    ip.assertNoUnknown(['id', 'price', 'plan', 'quantity', 'metadata', 'deleted', 'clear_usage']);
    const itemId = ip.string('id', { maxLength: 5000 });
    if (itemId) {
      const it = sub.items.data.find((i) => i.id === itemId);
      if (!it) throw new InvalidParamError(ip.param('id'), `Invalid subscription item id: ${itemId}`);
      if (ip.boolean('deleted')) {
        sub.items.data = sub.items.data.filter((i) => i.id !== itemId);
        await tx.deleteObject(p.account, SUBSCRIPTION_ITEM_REF, itemId);
        continue;
      }
      if (ip.has('price') || ip.has('plan')) {
        const price = await readItemPrice(tx, p, ip, sub.currency);
        it.price = price;
        it.plan = renderPlan(price, []);
        if (price.recurring?.usage_type === 'metered') delete it.quantity;
        else it.quantity ??= 1;
      }
      const q = readQuantity(ip, it.price);
      if (q !== undefined) it.quantity = q;
      const md = readMetadata(ip, it.metadata);
      if (md !== undefined) it.metadata = md;
    } else {
      const price = await readItemPrice(tx, p, ip, sub.currency);
      if (sub.items.data.some((i) => i.price.id === price.id))
        throw new InvalidParamError(ip.param('price'), 'Cannot add multiple subscription items with the same price.');
      const it = makeItem(p, sub.id, price, readQuantity(ip, price), now, start, end, readMetadata(ip) ?? {});
      sub.items.data.push(it);
      await tx.insertObject({ account: p.account, type: SUBSCRIPTION_ITEM_REF, id: it.id, createdMs: now * 1000, data: { subscription: sub.id } });
    }
  }
  if (sub.items.data.length === 0) throw new InvalidParamError('items', 'A subscription must have at least one item.');
  checkSameInterval(sub.items.data);
  sub.items.total_count = sub.items.data.length;
}

export async function cancelSubscription(s: Services, p: Principal, id: string, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown(['invoice_now', 'prorate', 'cancellation_details', 'expand']);
  const invoiceNow = r.boolean('invoice_now') ?? false;
  r.boolean('prorate');
  const cd = r.object('cancellation_details');
  let comment: string | null = null;
  let feedback: string | null = null;
  if (cd) {
    cd.assertNoUnknown(['comment', 'feedback']);
    comment = cd.string('comment', { maxLength: 5000 }) ?? null;
    feedback =
      cd.string('feedback', {
        enum: ['customer_service', 'low_quality', 'missing_features', 'other', 'switched_service', 'too_complex', 'too_expensive', 'unused'],
      }) ?? null;
  }
  const pre = await loadSubscription(s.state, p, id);
  if (pre.status === 'canceled') throw new NotFoundError(`No such subscription: '${id}'`);
  const preNow = await timeFor(s, s.state, p, pre.test_clock);
  // Usage billed on the final invoice (invoice_now): the current period up to now.
  const metered = invoiceNow ? await meteredLines(s, p, pre, periodOf(pre).start, Math.max(periodOf(pre).start, preNow)) : [];
  const sub = await s.state.transaction(async (tx) => {
    const sub = await loadSubscription(tx, p, id);
    if (sub.status === 'canceled') throw new NotFoundError(`No such subscription: '${id}'`);
    const before = structuredClone(sub);
    const now = await timeFor(s, tx, p, sub.test_clock);
    sub.status = 'canceled';
    sub.canceled_at = now;
    sub.ended_at = now;
    sub.cancellation_details = { comment, feedback, reason: 'cancellation_requested' };
    if (invoiceNow && metered.some((l) => (l.quantity ?? 0n) > 0n)) {
      const customer = await loadCustomer(tx, p, sub.customer, 'customer');
      const inv = newInvoice(p, customer, {
        discounts: await inheritedDiscounts(tx, p, customer, sub, now, true),
        created: now,
        currency: sub.currency,
        subscription: sub.id,
        billingReason: 'subscription_cycle',
        periodStart: periodOf(sub).start,
        periodEnd: now,
        autoAdvance: true,
        lines: metered,
      });
      await insertInvoice(tx, p, inv);
      sub.latest_invoice = inv.id;
    }
    await saveSubscription(tx, p, sub, 'customer.subscription.deleted', before);
    return sub;
  });
  return json(200, await expandBilling(s.state, p, renderSub(sub), expandParam(params)));
}

export function registerSubscriptionRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/subscriptions',
    apiEndpoint(s, (p, _req, params) => createSubscription(s, p, params)),
  );
  http.route(
    'GET',
    '/v1/subscriptions',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'customer', 'price', 'status', 'test_clock', 'created', 'collection_method', 'expand']);
      const page = readListParams(r);
      const where: Record<string, string> = {};
      const customer = r.string('customer', { maxLength: 5000 });
      if (customer) where.customer = customer;
      const clock = r.string('test_clock', { maxLength: 5000 });
      if (clock) where.test_clock = clock;
      const status = r.string('status', {
        enum: ['active', 'all', 'canceled', 'ended', 'incomplete', 'incomplete_expired', 'past_due', 'paused', 'trialing', 'unpaid'],
      });
      const price = r.string('price', { maxLength: 5000 });
      r.string('collection_method', { enum: ['charge_automatically', 'send_invoice'] });
      const pred = (d: SubscriptionObject) =>
        (status === 'all' ? true : status === 'ended' ? d.status === 'canceled' : status ? d.status === status : d.status !== 'canceled') &&
        (!price || d.items.data.some((i) => i.price.id === price));
      return listEndpoint<SubscriptionObject>(
        s,
        p,
        '/v1/subscriptions',
        SUBSCRIPTION_TYPE,
        page,
        { where, ...readCreatedRange(r) },
        pred,
        renderSub,
        expandParam(params),
      );
    }),
  );
  http.route(
    'GET',
    '/v1/subscriptions/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await expandBilling(s.state, p, renderSub(await loadSubscription(s.state, p, req.params[0])), expandParam(params)));
    }),
  );
  http.route(
    'POST',
    '/v1/subscriptions/:id',
    apiEndpoint(s, (p, req, params) => updateSubscription(s, p, req.params[0], params)),
  );
  http.route(
    'DELETE',
    '/v1/subscriptions/:id',
    apiEndpoint(s, (p, req, params) => cancelSubscription(s, p, req.params[0], params)),
  );

  // Subscription items
  const findItem = async (store: StateStore, p: Principal, itemId: string) => {
    const ref = await store.getObject<{ subscription: string }>(p.account, SUBSCRIPTION_ITEM_REF, itemId);
    if (!ref) throw new NotFoundError(`No such subscription item: '${itemId}'`);
    const sub = await loadSubscription(store, p, ref.data.subscription);
    const item = sub.items.data.find((i) => i.id === itemId);
    if (!item) throw new NotFoundError(`No such subscription item: '${itemId}'`);
    return { sub, item };
  };
  http.route(
    'GET',
    '/v1/subscription_items',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['subscription', 'limit', 'starting_after', 'ending_before', 'expand']);
      const subId = r.string('subscription', { required: true, maxLength: 5000 })!;
      const page = readListParams(r);
      const sub = await loadSubscription(s.state, p, subId, 'subscription');
      let items = sub.items.data;
      if (page.startingAfter) items = items.slice(items.findIndex((i) => i.id === page.startingAfter) + 1);
      return json(
        200,
        await expandBilling(
          s.state,
          p,
          { object: 'list', data: items.slice(0, page.limit).map(renderItem), has_more: items.length > page.limit, url: '/v1/subscription_items' },
          expandParam(params),
        ),
      );
    }),
  );
  http.route(
    'GET',
    '/v1/subscription_items/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await expandBilling(s.state, p, renderItem((await findItem(s.state, p, req.params[0])).item), expandParam(params)));
    }),
  );
  http.route(
    'POST',
    '/v1/subscription_items',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['subscription', 'price', 'plan', 'quantity', 'metadata', 'proration_behavior', 'payment_behavior', 'expand']);
      const subId = r.string('subscription', { required: true, maxLength: 5000 })!;
      const item = await s.state.transaction(async (tx) => {
        const sub = await loadSubscription(tx, p, subId, 'subscription');
        const before = structuredClone(sub);
        const now = await timeFor(s, tx, p, sub.test_clock);
        const sent = new ParamReader(pick(params, ['price', 'plan', 'quantity', 'metadata']));
        await applyItemChanges(tx, p, sub, [sent], now);
        if (r.string('proration_behavior', { enum: ['always_invoice', 'create_prorations', 'none'] }) !== 'none')
          await prorateChange(s, tx, p, before, sub, now);
        await saveSubscription(tx, p, sub, 'customer.subscription.updated', before);
        return sub.items.data[sub.items.data.length - 1];
      });
      return json(200, await expandBilling(s.state, p, renderItem(item), expandParam(params)));
    }),
  );
  http.route(
    'POST',
    '/v1/subscription_items/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['price', 'plan', 'quantity', 'metadata', 'proration_behavior', 'payment_behavior', 'expand']);
      const item = await s.state.transaction(async (tx) => {
        const { sub } = await findItem(tx, p, req.params[0]);
        const before = structuredClone(sub);
        const now = await timeFor(s, tx, p, sub.test_clock);
        const sent = new ParamReader({ ...pick(params, ['price', 'plan', 'quantity', 'metadata']), id: req.params[0] });
        await applyItemChanges(tx, p, sub, [sent], now);
        if (r.string('proration_behavior', { enum: ['always_invoice', 'create_prorations', 'none'] }) !== 'none')
          await prorateChange(s, tx, p, before, sub, now);
        await saveSubscription(tx, p, sub, 'customer.subscription.updated', before);
        return sub.items.data.find((i) => i.id === req.params[0])!;
      });
      return json(200, await expandBilling(s.state, p, renderItem(item), expandParam(params)));
    }),
  );
  http.route(
    'DELETE',
    '/v1/subscription_items/:id',
    apiEndpoint(s, async (p, req, params) => {
      const id = req.params[0];
      await s.state.transaction(async (tx) => {
        const { sub } = await findItem(tx, p, id);
        const before = structuredClone(sub);
        const now = await timeFor(s, tx, p, sub.test_clock);
        await applyItemChanges(tx, p, sub, [new ParamReader({ id, deleted: 'true' })], now);
        if (params.proration_behavior !== 'none') await prorateChange(s, tx, p, before, sub, now);
        await saveSubscription(tx, p, sub, 'customer.subscription.updated', before);
      });
      return json(200, { id, object: 'subscription_item', deleted: true });
    }),
  );
}

/** DELETE /v1/subscriptions/:id/discount: removes the subscription's discounts (recorded as customer.subscription.updated). */
export async function deleteSubscriptionDiscounts(tx: StateStore, p: Principal, id: string): Promise<DiscountObject[]> {
  const sub = await loadSubscription(tx, p, id);
  const before = structuredClone(sub);
  const removed: DiscountObject[] = [];
  for (const did of sub.discounts ?? []) {
    const found = await tx.getObject<DiscountObject>(p.account, 'discount', did);
    if (found) removed.push(found.data);
  }
  if (removed.length === 0) return removed;
  sub.discounts = [];
  await saveSubscription(tx, p, sub, 'customer.subscription.updated', before);
  for (const d of removed) await recordBillingEvent(tx, p, 'customer.discount.deleted', renderDiscount(d));
  return removed;
}
