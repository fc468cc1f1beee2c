import t from 'tap';
import type { ApiObject, DowngradeContext, EmbeddedType } from '../shared/versioning/change';
import { CURRENT_API_VERSION, RELEASES, checkApiVersion, isBefore } from '../shared/versioning/releases';
import { VERSION_CHANGES, changesFor, mayNeedRendering, renderInVersion, upgradeParams } from '../shared/versioning/chain';
import { subscriptionItemPeriods } from '../shared/versioning/changes/basil-subscription-item-periods';
import { invoiceParent } from '../shared/versioning/changes/basil-invoice-parent';
import { invoicePayments } from '../shared/versioning/changes/basil-invoice-payments';
import { lineItemTaxes } from '../shared/versioning/changes/basil-line-item-taxes';
import { lineItemPricing } from '../shared/versioning/changes/basil-line-item-pricing';
import { invoiceItemPricing } from '../shared/versioning/changes/basil-invoice-item-pricing';
import { legacyUsageBilling } from '../shared/versioning/changes/basil-legacy-usage-billing';
import { discountSource } from '../shared/versioning/changes/clover-discount-source';
import { promotionCodeCoupon } from '../shared/versioning/changes/clover-promotion-code-coupon';
import { creditNoteRefunds } from '../shared/versioning/changes/basil-credit-note-refunds';
import { creditNoteTaxes } from '../shared/versioning/changes/basil-credit-note-taxes';
import { InvalidParamError, InvalidRequestError } from '../shared/errors';

const ACACIA = '2025-02-24.acacia';
const BASIL = '2025-08-27.basil';

const PRICES: Record<string, ApiObject> = {
  price_metered: { id: 'price_metered', object: 'price', type: 'recurring', recurring: { interval: 'month', usage_type: 'metered', meter: 'mtr_1' } },
  price_once: { id: 'price_once', object: 'price', type: 'one_time', recurring: null },
};

const COUPONS: Record<string, ApiObject> = {
  co_half: { id: 'co_half', object: 'coupon', percent_off: 50, amount_off: null, duration: 'forever', valid: true },
};
const DISCOUNTS: Record<string, ApiObject> = { di_half: { id: 'di_half', object: 'discount', source: { type: 'coupon', coupon: 'co_half' } } };
/** The coupon each discount was made from, as the versioning layer's loader gives it. */
const DISCOUNT_COUPONS: Record<string, ApiObject> = { di_half: COUPONS.co_half };

/** A context whose embedded objects come from PRICES and COUPONS, as the loaders would give them. */
function ctx(version = ACACIA): DowngradeContext {
  return {
    version,
    embed: async (type, id) => {
      if (type === 'coupon') return COUPONS[id] ? structuredClone(COUPONS[id]) : { id, object: 'coupon', deleted: true };
      if (type === 'discount') return DISCOUNTS[id] ? structuredClone(DISCOUNTS[id]) : null;
      if (type === 'discount_coupon') return DISCOUNT_COUPONS[id] ? structuredClone(DISCOUNT_COUPONS[id]) : null;
      const p = PRICES[id];
      if (!p) return null;
      if (type === 'price') return structuredClone(p);
      return p.type === 'recurring' ? { id, object: 'plan', usage_type: (p.recurring as ApiObject).usage_type } : null;
    },
  };
}

const loader = async (type: EmbeddedType, id: string) => (await ctx().embed(type, id)) as ApiObject | null;

t.test('the release table and Stripe-Version checks', async (t) => {
  t.equal(RELEASES[0], '2024-09-30.acacia');
  t.equal(CURRENT_API_VERSION, '2026-10-28.endive');
  t.same([...RELEASES].sort(), RELEASES, 'oldest first (dates sort)');
  for (const v of RELEASES) t.match(v, /^\d{4}-\d{2}-\d{2}\.(acacia|basil|clover|dahlia|endive)$/);
  t.equal(checkApiVersion('2024-09-30.acacia'), '2024-09-30.acacia');
  t.equal(checkApiVersion(' 2025-03-31.basil '), '2025-03-31.basil', 'surrounding spaces are not part of it');
  for (const bad of ['2025-03-31', '2025-03-31.acacia', 'banana', '2024-06-20', '2026-10-28.preview', '2025-3-31.basil']) {
    t.throws(() => checkApiVersion(bad), new InvalidRequestError(`Invalid Stripe API version: ${bad}`), bad);
  }
  t.ok(isBefore('2025-02-24.acacia', '2025-03-31.basil'));
  t.notOk(isBefore('2025-03-31.basil', '2025-03-31.basil'));
});

t.test('which changes apply to which version', async (t) => {
  t.same(changesFor(CURRENT_API_VERSION), [], 'the newest version is rendered as built');
  t.same(
    changesFor(BASIL).map((c) => c.id),
    ['discount-source', 'promotion-code-coupon'],
    'basil undoes only clover',
  );
  t.equal(changesFor('2024-09-30.acacia').length, VERSION_CHANGES.length, 'acacia undoes every change');
  const releases = VERSION_CHANGES.map((c) => c.release);
  t.same(releases, [...releases].sort().reverse(), 'the chain runs newest first');
  t.ok(mayNeedRendering('{"object":"subscription"}', ACACIA));
  t.notOk(mayNeedRendering('{"object":"billing.meter"}', ACACIA), 'meters are untouched by every change');
  t.notOk(mayNeedRendering('{"object":"price"}', CURRENT_API_VERSION));
  t.ok(mayNeedRendering('{"object":"subscription_item"}', CURRENT_API_VERSION), 'acacia leftovers are dropped in every version');
});

t.test('basil: billing periods move from the subscription to its items', async (t) => {
  const sub: ApiObject = {
    object: 'subscription',
    items: { object: 'list', data: [{ object: 'subscription_item', current_period_start: 100, current_period_end: 200 }] },
  };
  await subscriptionItemPeriods.downgrade.subscription(sub, ctx());
  await subscriptionItemPeriods.downgrade.subscription_item((sub.items as { data: ApiObject[] }).data[0], ctx());
  t.equal(sub.current_period_start, 100);
  t.equal(sub.current_period_end, 200);
  t.same((sub.items as { data: ApiObject[] }).data[0], { object: 'subscription_item' });
});

t.test("basil: the invoice's subscription moves into parent", async (t) => {
  const inv: ApiObject = {
    object: 'invoice',
    parent: { type: 'subscription_details', quote_details: null, subscription_details: { metadata: { a: '1' }, subscription: 'sub_1' } },
  };
  await invoiceParent.downgrade.invoice(inv, ctx());
  t.same(inv, { object: 'invoice', subscription: 'sub_1', subscription_details: { metadata: { a: '1' } }, quote: null });
  const oneOff: ApiObject = { object: 'invoice', parent: null };
  await invoiceParent.downgrade.invoice(oneOff, ctx());
  t.same(oneOff, { object: 'invoice', subscription: null, subscription_details: null, quote: null });
  const expanded: ApiObject = { object: 'invoice', subscription: { id: 'sub_1', object: 'subscription' }, parent: null };
  await invoiceParent.downgrade.invoice(expanded, ctx());
  t.same(expanded.subscription, { id: 'sub_1', object: 'subscription' }, 'an expanded subscription stays expanded');
});

t.test('basil: payment fields and the single discount return', async (t) => {
  const inv: ApiObject = { object: 'invoice', status: 'paid', discounts: [], payments: { object: 'list', data: [] }, amount_overpaid: 0 };
  await invoicePayments.downgrade.invoice(inv, ctx());
  t.same(inv, {
    object: 'invoice',
    status: 'paid',
    discounts: [],
    paid: true,
    paid_out_of_band: false,
    charge: null,
    payment_intent: null,
    application_fee_amount: null,
    transfer_data: null,
    discount: null,
  });
  const sub: ApiObject = { object: 'subscription', discounts: [{ id: 'di_1', object: 'discount' }] };
  await invoicePayments.downgrade.subscription(sub, ctx());
  t.same(sub.discount, { id: 'di_1', object: 'discount' });
  const open: ApiObject = { object: 'invoice', status: 'open', discounts: ['di_half'] };
  await invoicePayments.downgrade.invoice(open, ctx());
  t.equal(open.paid, false);
  t.same(open.discount, DISCOUNTS.di_half, 'an unexpanded discount id: the whole discount, loaded');
  const gone: ApiObject = { object: 'invoice', status: 'open', discounts: ['di_gone'] };
  await invoicePayments.downgrade.invoice(gone, ctx());
  t.equal(gone.discount, null, 'a discount that cannot be loaded');
});

t.test('basil: taxes back to tax_amounts', async (t) => {
  const line: ApiObject = {
    object: 'line_item',
    amount: 1234,
    pricing: { type: 'price_details', unit_amount_decimal: '12.34' },
    taxes: [{ amount: 100, tax_behavior: 'exclusive', tax_rate_details: { tax_rate: 'txr_1' }, taxability_reason: 'standard_rated', taxable_amount: 1234 }],
  };
  await lineItemTaxes.downgrade.line_item(line, ctx());
  t.same(line.tax_amounts, [{ amount: 100, inclusive: false, tax_rate: 'txr_1', taxability_reason: 'standard_rated', taxable_amount: 1234 }]);
  t.notOk('taxes' in line);
  t.equal(line.amount_excluding_tax, 1234);
  t.equal(line.unit_amount_excluding_tax, '12.34');
  const inv: ApiObject = { object: 'invoice', total_taxes: [] };
  await lineItemTaxes.downgrade.invoice(inv, ctx());
  t.same(inv, { object: 'invoice', total_tax_amounts: [], tax: null });
});

t.test("basil: a line item's price and origin come back out of pricing and parent", async (t) => {
  const line: ApiObject = {
    object: 'line_item',
    subscription: 'sub_1',
    pricing: { type: 'price_details', price_details: { price: 'price_metered', product: 'prod_1' }, unit_amount_decimal: '2' },
    parent: {
      type: 'subscription_item_details',
      invoice_item_details: null,
      subscription_item_details: {
        invoice_item: null,
        proration: false,
        proration_details: { credited_items: null },
        subscription: 'sub_1',
        subscription_item: 'si_1',
      },
    },
  };
  await lineItemPricing.downgrade.line_item(line, ctx());
  t.same(line, {
    object: 'line_item',
    subscription: 'sub_1',
    type: 'subscription',
    invoice_item: null,
    subscription_item: 'si_1',
    proration: false,
    proration_details: { credited_items: null },
    price: PRICES.price_metered,
    plan: { id: 'price_metered', object: 'plan', usage_type: 'metered' },
    tax_rates: [],
  });
  const fromItem: ApiObject = {
    object: 'line_item',
    subscription: null,
    pricing: { type: 'price_details', price_details: { price: 'price_once', product: 'prod_1' }, unit_amount_decimal: '5' },
    parent: {
      type: 'invoice_item_details',
      invoice_item_details: { invoice_item: 'ii_1', proration: false, subscription: null },
      subscription_item_details: null,
    },
  };
  await lineItemPricing.downgrade.line_item(fromItem, ctx());
  t.equal(fromItem.type, 'invoiceitem');
  t.equal(fromItem.invoice_item, 'ii_1');
  t.same(fromItem.price, PRICES.price_once);
  t.equal(fromItem.plan, null, 'a one-time price has no plan');
});

t.test("basil: an invoice item's price, unit amount and subscription, and the old parameters", async (t) => {
  const ii: ApiObject = {
    object: 'invoiceitem',
    pricing: { type: 'price_details', price_details: { price: 'price_once', product: 'prod_1' }, unit_amount_decimal: '250' },
    parent: { type: 'subscription_details', subscription_details: { subscription: 'sub_1' } },
  };
  await invoiceItemPricing.downgrade.invoiceitem(ii, ctx());
  t.same(ii, {
    object: 'invoiceitem',
    price: PRICES.price_once,
    plan: null,
    unit_amount: 250,
    unit_amount_decimal: '250',
    subscription: 'sub_1',
    subscription_item: null,
  });
  const fractional: ApiObject = { object: 'invoiceitem', pricing: { type: 'price_details', price_details: null, unit_amount_decimal: '0.5' }, parent: null };
  await invoiceItemPricing.downgrade.invoiceitem(fractional, ctx());
  t.equal(fractional.unit_amount, null, 'a fractional unit amount has no integer form');
  t.equal(fractional.price, null);

  const create = { method: 'POST', path: '/v1/invoiceitems', params: { customer: 'cus_1', price: 'price_once', quantity: '2' } as Record<string, unknown> };
  invoiceItemPricing.upgradeParams!(create as never);
  t.same(create.params, { customer: 'cus_1', pricing: { price: 'price_once' }, quantity: '2' });
  const update = { method: 'POST', path: '/v1/invoiceitems/ii_1', params: { unit_amount: '300' } as Record<string, unknown> };
  invoiceItemPricing.upgradeParams!(update as never);
  t.same(update.params, { unit_amount_decimal: '300' });
  const other = { method: 'POST', path: '/v1/prices', params: { price: 'x' } as Record<string, unknown> };
  invoiceItemPricing.upgradeParams!(other as never);
  t.same(other.params, { price: 'x' }, 'other endpoints are left alone');
});

t.test('basil: legacy usage-based billing fields and parameters', async (t) => {
  const metered: ApiObject = { object: 'price', recurring: { usage_type: 'metered', meter: 'mtr_1' } };
  const licensed: ApiObject = { object: 'price', recurring: { usage_type: 'licensed', meter: null } };
  const once: ApiObject = { object: 'price', recurring: null };
  for (const p of [metered, licensed, once]) await legacyUsageBilling.downgrade.price(p, ctx());
  t.equal((metered.recurring as ApiObject).aggregate_usage, 'sum');
  t.equal((licensed.recurring as ApiObject).aggregate_usage, null);
  t.equal(once.recurring, null);
  const plan: ApiObject = { object: 'plan', usage_type: 'metered' };
  await legacyUsageBilling.downgrade.plan(plan, ctx());
  t.equal(plan.aggregate_usage, 'sum');
  const sub: ApiObject = { object: 'subscription' };
  await legacyUsageBilling.downgrade.subscription(sub, ctx());
  t.equal(sub.billing_thresholds, null);

  const price = { method: 'POST', path: '/v1/prices', params: { recurring: { interval: 'month', usage_type: 'metered', aggregate_usage: 'sum' } } };
  legacyUsageBilling.upgradeParams!(price as never);
  t.same(price.params, { recurring: { interval: 'month', usage_type: 'metered' } });
  const max = { method: 'POST', path: '/v1/plans', params: { aggregate_usage: 'max' } };
  t.throws(() => legacyUsageBilling.upgradeParams!(max as never), InvalidParamError);
  try {
    legacyUsageBilling.upgradeParams!({ method: 'POST', path: '/v1/prices', params: { recurring: { aggregate_usage: 'last_during_period' } } } as never);
  } catch (err) {
    t.equal((err as InvalidParamError).param, 'recurring[aggregate_usage]');
  }
});

t.test("clover: a discount's coupon moves under source, and was the whole coupon", async (t) => {
  const d: ApiObject = { id: 'di_half', object: 'discount', source: { type: 'coupon', coupon: 'co_half' } };
  await discountSource.downgrade.discount(d, ctx(BASIL));
  t.same(d, { id: 'di_half', object: 'discount', coupon: COUPONS.co_half }, 'the coupon the discount was made from, loaded');
  const unknown: ApiObject = { id: 'di_other', object: 'discount', source: { type: 'coupon', coupon: 'co_half' } };
  await discountSource.downgrade.discount(unknown, ctx(BASIL));
  t.same(unknown.coupon, COUPONS.co_half, 'a discount the store does not know takes the coupon by its id');
  const expanded: ApiObject = { id: 'di_half', object: 'discount', source: { type: 'coupon', coupon: { id: 'co_x', object: 'coupon' } } };
  await discountSource.downgrade.discount(expanded, ctx(BASIL));
  t.same(expanded, { id: 'di_half', object: 'discount', coupon: { id: 'co_x', object: 'coupon' } }, 'an expanded source.coupon is kept');

  const customer = { id: 'cus_1', object: 'customer', discount: { id: 'di_half', object: 'discount', source: { type: 'coupon', coupon: 'co_half' } } };
  await renderInVersion(customer, ACACIA, loader);
  t.same(customer.discount, { id: 'di_half', object: 'discount', coupon: COUPONS.co_half }, "a customer's discount, through the chain");
  const sub: ApiObject = {
    id: 'sub_1',
    object: 'subscription',
    discounts: [{ id: 'di_half', object: 'discount', source: { type: 'coupon', coupon: 'co_half' } }],
  };
  await renderInVersion(sub, ACACIA, loader);
  t.same((sub.discount as ApiObject).coupon, COUPONS.co_half, "acacia's single discount carries the whole coupon");
  t.same(((sub.discounts as ApiObject[])[0] as ApiObject).coupon, COUPONS.co_half);
  const byId: ApiObject = { id: 'sub_2', object: 'subscription', discounts: ['di_half'] };
  await renderInVersion(byId, ACACIA, loader);
  t.same(byId.discount, { id: 'di_half', object: 'discount', coupon: COUPONS.co_half }, "acacia's single discount, loaded by id, in acacia's shape");
  t.same(byId.discounts, ['di_half'], 'discounts stay ids');
  const event = {
    id: 'evt_1',
    object: 'event',
    api_version: BASIL,
    data: { object: { id: 'di_half', object: 'discount', source: { type: 'coupon', coupon: 'co_half' } } },
  };
  await renderInVersion(event, CURRENT_API_VERSION, loader);
  t.same(event.data.object, { id: 'di_half', object: 'discount', coupon: COUPONS.co_half }, "a basil event's discount");
  const current = { id: 'di_half', object: 'discount', source: { type: 'coupon', coupon: 'co_half' } };
  await renderInVersion(current, CURRENT_API_VERSION, loader);
  t.same(current.source, { type: 'coupon', coupon: 'co_half' }, 'the current version keeps source.coupon');
});

t.test("clover: a promotion code's coupon moves into promotion, and was the whole coupon", async (t) => {
  const code: ApiObject = { id: 'promo_1', object: 'promotion_code', code: 'HALF', promotion: { type: 'coupon', coupon: 'co_half' } };
  await promotionCodeCoupon.downgrade.promotion_code(code, ctx(BASIL));
  t.same(code, { id: 'promo_1', object: 'promotion_code', code: 'HALF', coupon: COUPONS.co_half });
  const gone: ApiObject = { id: 'promo_2', object: 'promotion_code', promotion: { type: 'coupon', coupon: 'co_gone' } };
  await promotionCodeCoupon.downgrade.promotion_code(gone, ctx(BASIL));
  t.same(gone.coupon, { id: 'co_gone', object: 'coupon', deleted: true }, 'a deleted coupon reads as deleted');
  const list = { object: 'list', data: [{ id: 'promo_3', object: 'promotion_code', promotion: { type: 'coupon', coupon: 'co_half' } }] };
  await renderInVersion(list, ACACIA, loader);
  t.same((list.data[0] as ApiObject).coupon, COUPONS.co_half, 'through the chain, in a list');

  const create = { method: 'POST', path: '/v1/promotion_codes', params: { coupon: 'co_half', code: 'HALF' } as Record<string, unknown> };
  upgradeParams(BASIL, create as never);
  t.same(create.params, { promotion: { type: 'coupon', coupon: 'co_half' }, code: 'HALF' }, "basil's coupon becomes promotion[coupon]");
  const list2 = { method: 'GET', path: '/v1/promotion_codes', params: { coupon: 'co_half' } as Record<string, unknown> };
  upgradeParams(BASIL, list2 as never);
  t.same(list2.params, { coupon: 'co_half' }, 'the list filter `coupon` is unchanged');
  const newer = { method: 'POST', path: '/v1/promotion_codes', params: { coupon: 'co_half' } as Record<string, unknown> };
  upgradeParams(CURRENT_API_VERSION, newer as never);
  t.same(newer.params, { coupon: 'co_half' }, 'the current version takes no `coupon` (refused by the endpoint)');
});

t.test("basil: a credit note's refunds back to one refund", async (t) => {
  const note: ApiObject = { object: 'credit_note', refunds: [] };
  await creditNoteRefunds.downgrade.credit_note(note, ctx());
  t.same(note, { object: 'credit_note', refund: null });
  const refunded: ApiObject = { object: 'credit_note', refunds: [{ amount_refunded: 100, refund: 're_1' }] };
  await creditNoteRefunds.downgrade.credit_note(refunded, ctx());
  t.same(refunded, { object: 'credit_note', refund: 're_1' }, "the first refund's id");
});

t.test('basil: credit note taxes back to tax_amounts', async (t) => {
  const tax = { amount: 50, tax_behavior: 'inclusive', tax_rate_details: { tax_rate: 'txr_1' }, taxability_reason: null, taxable_amount: 500 };
  const note: ApiObject = {
    object: 'credit_note',
    total_taxes: [tax],
    lines: { object: 'list', data: [{ object: 'credit_note_line_item', amount: 500, unit_amount_decimal: '250', taxes: [tax] }] },
  };
  await renderInVersion(note, ACACIA, loader);
  const legacy = [{ amount: 50, inclusive: true, tax_rate: 'txr_1', taxability_reason: null, taxable_amount: 500 }];
  t.same(note.tax_amounts, legacy);
  t.notOk('total_taxes' in note);
  t.same((note.lines as { data: ApiObject[] }).data[0], {
    object: 'credit_note_line_item',
    amount: 500,
    unit_amount_decimal: '250',
    tax_amounts: legacy,
    amount_excluding_tax: 500,
    unit_amount_excluding_tax: '250',
  });
  t.notOk('refunds' in note, 'the refunds change ran too');
  const custom: ApiObject = { object: 'credit_note_line_item', amount: 300, unit_amount_decimal: null, taxes: [] };
  await creditNoteTaxes.downgrade.credit_note_line_item(custom, ctx());
  t.same([custom.tax_amounts, custom.amount_excluding_tax, custom.unit_amount_excluding_tax], [[], 300, null]);
  const basil: ApiObject = { object: 'credit_note', total_taxes: [], refunds: [] };
  await renderInVersion(basil, BASIL, loader);
  t.same(basil, { object: 'credit_note', total_taxes: [], refunds: [] }, 'basil keeps the new shape');
});

t.test("basil: subscriptions' coupon and promotion_code parameters become discounts", async (t) => {
  const run = (path: string, params: Record<string, unknown>, version = ACACIA) => {
    const req = { method: 'POST', path, params };
    upgradeParams(version, req as never);
    return req.params;
  };
  t.same(run('/v1/subscriptions', { customer: 'cus_1', coupon: 'co_1' }), { customer: 'cus_1', discounts: [{ coupon: 'co_1' }] });
  t.same(run('/v1/subscriptions/sub_1', { promotion_code: 'promo_1' }), { discounts: [{ promotion_code: 'promo_1' }] });
  t.same(run('/v1/subscriptions/sub_1', { coupon: '' }), { discounts: '' }, "coupon='' removes the discounts");
  t.same(
    run('/v1/subscriptions', { coupon: 'co_1', discounts: [{ coupon: 'co_2' }] }),
    { coupon: 'co_1', discounts: [{ coupon: 'co_2' }] },
    'with discounts: left for the endpoint to refuse',
  );
  t.same(run('/v1/subscriptions', { coupon: 'co_1' }, BASIL), { coupon: 'co_1' }, 'basil and later do not take coupon');
  t.same(run('/v1/customers', { coupon: 'co_1' }), { coupon: 'co_1' }, 'customers are not subscriptions');
});

t.test('acacia leftovers: dropped from the newest shape, back in acacia', async (t) => {
  const { toNewestShape, toNewestParams } = await import('../shared/versioning/newest-shape');
  const invoice = (subscription: unknown) => ({
    id: 'in_1',
    object: 'invoice',
    subscription,
    parent: { type: 'subscription_details', quote_details: null, subscription_details: { metadata: null, subscription: 'sub_1' } },
    discounts: [],
  });
  const sub = () => ({
    id: 'sub_1',
    object: 'subscription',
    billing_thresholds: null,
    discounts: [],
    items: { object: 'list', data: [{ id: 'si_1', object: 'subscription_item', billing_thresholds: null }] },
  });
  const current = { object: 'list', data: [invoice('sub_1'), sub()] };
  await renderInVersion(current, CURRENT_API_VERSION, loader);
  t.notOk('subscription' in current.data[0], "the invoice's top-level subscription is gone");
  t.notOk('billing_thresholds' in current.data[1]);
  t.notOk('billing_thresholds' in (current.data[1] as ApiObject & { items: { data: ApiObject[] } }).items.data[0]);

  const expanded = invoice({ id: 'sub_1', object: 'subscription' });
  toNewestShape(expanded);
  t.same(expanded.parent.subscription_details.subscription, { id: 'sub_1', object: 'subscription' }, 'an expanded subscription moves into parent');
  const other = invoice({ id: 'sub_2', object: 'subscription' });
  toNewestShape(other);
  t.equal(other.parent.subscription_details.subscription, 'sub_1', 'not when it is another subscription');

  const acacia = { object: 'list', data: [invoice({ id: 'sub_1', object: 'subscription' }), sub()] };
  await renderInVersion(acacia, ACACIA, loader);
  const inv = acacia.data[0] as ApiObject;
  t.match(inv.subscription, { id: 'sub_1', object: 'subscription', billing_thresholds: null }, 'acacia: top-level again, still expanded (and in acacia)');
  t.notOk('parent' in inv);
  const s = acacia.data[1] as ApiObject & { items: { data: ApiObject[] } };
  t.same([s.billing_thresholds, s.items.data[0].billing_thresholds], [null, null], 'acacia: billing_thresholds back');
  const event = { id: 'evt_1', object: 'event', api_version: CURRENT_API_VERSION, data: { object: invoice('sub_1') } };
  await renderInVersion(event, CURRENT_API_VERSION, loader);
  t.notOk('subscription' in event.data.object, "an event's data too");

  const req = (path: string, expand: unknown) => {
    const r = { method: 'GET', path, params: { expand } as Record<string, unknown> };
    toNewestParams(r as never);
    return r.params.expand;
  };
  t.same(req('/v1/invoices/in_1', ['parent.subscription_details.subscription', 'customer']), ['subscription', 'customer']);
  t.same(req('/v1/invoices', ['data.parent.subscription_details.subscription']), ['data.subscription']);
  t.same(req('/v1/invoices/in_1', 'parent.subscription_details.subscription'), 'subscription');
  t.same(req('/v1/subscriptions/sub_1', ['parent.subscription_details.subscription']), ['parent.subscription_details.subscription'], 'invoices only');
});

t.test('the chain over a whole response: lists, nesting, events in their own version', async (t) => {
  const subscription = () => ({
    id: 'sub_1',
    object: 'subscription',
    discounts: [],
    items: {
      object: 'list',
      data: [{ id: 'si_1', object: 'subscription_item', current_period_start: 1, current_period_end: 2, price: structuredClone(PRICES.price_metered) }],
    },
  });
  const list = { object: 'list', data: [subscription()] };
  await renderInVersion(list, ACACIA, loader);
  const sub = list.data[0] as ApiObject;
  t.equal(sub.current_period_end, 2, 'the subscription got its period from the item before the item lost it');
  const item = (sub.items as { data: ApiObject[] }).data[0];
  t.notOk('current_period_end' in item);
  t.equal(((item.price as ApiObject).recurring as ApiObject).aggregate_usage, 'sum', 'objects nested at any depth are rendered');

  const basil = subscription();
  await renderInVersion(basil, BASIL, loader);
  t.notOk('current_period_end' in basil, 'basil keeps the periods on the items');
  t.equal(basil.items.data[0].current_period_end, 2);

  const event = { id: 'evt_1', object: 'event', api_version: ACACIA, data: { object: subscription() } };
  await renderInVersion(event, CURRENT_API_VERSION, loader);
  t.equal((event.data.object as ApiObject).current_period_end, 2, "an event's data is rendered in the event's version, whatever the reader's");
  const events = { object: 'list', data: [{ id: 'evt_2', object: 'event', api_version: CURRENT_API_VERSION, data: { object: subscription() } }] };
  await renderInVersion(events, ACACIA, loader);
  t.notOk('current_period_end' in (events.data[0].data.object as ApiObject), 'and an endive event stays endive when an acacia client lists it');
});

t.test('request parameters of an older version', async (t) => {
  const req = { method: 'POST', path: '/v1/invoiceitems', params: { price: 'price_once', unit_amount: '5' } as Record<string, unknown> };
  upgradeParams(ACACIA, req as never);
  t.same(req.params, { pricing: { price: 'price_once' }, unit_amount_decimal: '5' });
  const basil = { method: 'POST', path: '/v1/invoiceitems', params: { price: 'price_once' } as Record<string, unknown> };
  upgradeParams(BASIL, basil as never);
  t.same(basil.params, { price: 'price_once' }, 'basil takes the new parameters only (the endpoint refuses `price`)');
});

t.test('configuration: DEFAULT_API_VERSION and ACCOUNT_API_VERSIONS', async (t) => {
  const { loadConfig, ConfigError } = await import('../shared/config');
  const base = { DATA_DIR: '/tmp/meterd-config-test' };
  t.equal(loadConfig(base).defaultApiVersion, CURRENT_API_VERSION, 'the newest release by default');
  t.same(loadConfig(base).accountApiVersions, []);
  const c = loadConfig({ ...base, DEFAULT_API_VERSION: ACACIA, ACCOUNT_API_VERSIONS: `acct_123=${BASIL}, sk_test_abcdefgh12=${ACACIA}` });
  t.equal(c.defaultApiVersion, ACACIA);
  t.same(c.accountApiVersions, [
    { account: 'acct_123', version: BASIL },
    { account: 'sk_test_abcdefgh12', version: ACACIA },
  ]);
  try {
    loadConfig({ ...base, DEFAULT_API_VERSION: '2025-03-31', ACCOUNT_API_VERSIONS: `acct_1=nope,sk_test_secretsecret=${BASIL}x,acct_2`, PORT: 'x' });
    t.fail('expected a configuration error');
  } catch (err) {
    t.ok(err instanceof ConfigError);
    const problems = (err as InstanceType<typeof ConfigError>).problems;
    t.equal(problems.length, 5, 'every problem at once');
    t.match(problems.join('\n'), /DEFAULT_API_VERSION="2025-03-31" is not valid/);
    t.notMatch(problems.join('\n'), /secretsecret/, 'a secret key is not printed whole');
  }
});

t.test("an account's default version: fixed on first use, changed by the operator", async (t) => {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { SqliteStateStore } = await import('../shared/state/sqlite-store');
  const { AccountVersions, readAccountVersion } = await import('../shared/versioning/account-versions');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-versions-'));
  const store = new SqliteStateStore(path.join(dir, 'state.sqlite'));
  await store.init();
  t.teardown(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const uncached = new AccountVersions(store, BASIL, 0);
  t.equal(await readAccountVersion(store, 'acct_a'), null, 'nothing before the first use');
  t.same(await Promise.all([uncached.versionOf('acct_a'), uncached.versionOf('acct_a')]), [BASIL, BASIL], 'concurrent first uses agree');
  t.equal(await readAccountVersion(store, 'acct_a'), BASIL, 'kept in the store');
  const later = new AccountVersions(store, CURRENT_API_VERSION, 0);
  t.equal(await later.versionOf('acct_a'), BASIL, 'a later default for new accounts does not move an existing one');
  t.equal(await later.versionOf('acct_b'), CURRENT_API_VERSION, 'a new account gets the default of its first use');
  await later.set('acct_a', ACACIA);
  t.equal(await uncached.versionOf('acct_a'), ACACIA, "the operator's change is seen by every reader");
  await later.set('acct_new', ACACIA);
  t.equal(await later.versionOf('acct_new'), ACACIA, 'an account can be set before its first use');
  const cached = new AccountVersions(store, BASIL, 60_000);
  t.equal(await cached.versionOf('acct_a'), ACACIA);
  await later.set('acct_a', BASIL);
  t.equal(await cached.versionOf('acct_a'), ACACIA, "another process's change shows once the cached value expires");
});

t.test("an event's previous_attributes are rendered in the event's version", async (t) => {
  const item = (start: number, end: number) => ({ id: 'si_1', object: 'subscription_item', current_period_start: start, current_period_end: end });
  const renewed = () => ({
    id: 'evt_1',
    object: 'event',
    api_version: ACACIA,
    type: 'customer.subscription.updated',
    data: {
      object: { id: 'sub_1', object: 'subscription', discounts: [], latest_invoice: 'in_2', items: { object: 'list', data: [item(200, 300)] } },
      previous_attributes: { latest_invoice: 'in_1', items: { data: [item(100, 200)] } },
    },
  });
  const acacia = renewed();
  await renderInVersion(acacia, CURRENT_API_VERSION, loader);
  t.same(
    acacia.data.previous_attributes,
    { latest_invoice: 'in_1', current_period_start: 100, current_period_end: 200 },
    'the period that moved is listed where acacia has it; the items, equal in acacia, are not',
  );
  t.equal((acacia.data.object as ApiObject).current_period_start, 200);
  const current = renewed();
  current.api_version = CURRENT_API_VERSION;
  await renderInVersion(current, ACACIA, loader);
  t.same(current.data.previous_attributes, { latest_invoice: 'in_1', items: { data: [item(100, 200)] } }, 'the newest version keeps what was recorded');
});

t.test('coupons older versions embed, read from the store: valid now, kept once deleted, one account only', async (t) => {
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { SqliteStateStore } = await import('../shared/state/sqlite-store');
  const { loadCoupon, loadDiscount, loadDiscountCoupon } = await import('../shared/versioning/embedded-coupons');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'meterd-coupons-'));
  const store = new SqliteStateStore(path.join(dir, 'state.sqlite'));
  await store.init();
  t.teardown(async () => {
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const coupon = { id: 'co_a', object: 'coupon', created: 100, percent_off: 20, redeem_by: 1000, max_redemptions: 2, times_redeemed: 1, valid: true };
  const insert = (type: string, id: string, data: object) => store.insertObject({ account: 'acct_a', type, id, createdMs: 0, data });
  await insert('coupon', 'co_a', coupon);
  await insert('discount', 'di_a', { id: 'di_a', object: 'discount', source: { type: 'coupon', coupon: 'co_a' }, _coupon: { ...coupon, times_redeemed: 0 } });

  t.same(await loadCoupon(store, 'acct_a', 'co_a', 500), coupon, 'the coupon as it is now');
  t.equal((await loadCoupon(store, 'acct_a', 'co_a', 1000)).valid, false, 'not valid once redeem_by has passed');
  t.same(await loadCoupon(store, 'acct_b', 'co_a', 500), { id: 'co_a', object: 'coupon', deleted: true }, "another account's coupon is not seen");
  t.same(await loadDiscountCoupon(store, 'acct_a', 'di_a', 500), coupon, "a discount's coupon as it is now (times_redeemed 1)");
  t.equal(await loadDiscountCoupon(store, 'acct_b', 'di_a', 500), null, "another account's discount is not seen");
  t.same(await loadDiscount(store, 'acct_a', 'di_a'), { id: 'di_a', object: 'discount', source: { type: 'coupon', coupon: 'co_a' } }, 'a discount as served');
  t.equal(await loadDiscount(store, 'acct_b', 'di_a'), null);

  await store.deleteObject('acct_a', 'coupon', 'co_a');
  t.same(
    await loadDiscountCoupon(store, 'acct_a', 'di_a', 500),
    { ...coupon, times_redeemed: 0, valid: false },
    'deleted: as the discount recorded it, no longer valid',
  );
  await insert('coupon', 'co_a', { ...coupon, created: 200, percent_off: 90, times_redeemed: 0 });
  t.equal(
    (await loadDiscountCoupon(store, 'acct_a', 'di_a', 500))?.percent_off,
    20,
    'a new coupon under the same id is not the one the discount was made from',
  );
});
