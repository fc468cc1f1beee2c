import { field, isObject, type VersionChange } from '../change';
import { embeddedPrice } from './basil-line-item-pricing';

/**
 * 2025-03-31.basil (docs.stripe.com/changelog/basil/2025-03-31/invoice-pricing-configurations; stripe-node 18.0.0:
 * "Remove support for price on … InvoiceItemCreateParams, InvoiceItemUpdateParams, InvoiceItem"; "Remove support for
 * unit_amount on InvoiceItemCreateParams, InvoiceItemUpdateParams, and InvoiceItem"; "Remove support for subscription
 * and unit_amount_decimal on InvoiceItem"; "plan and subscription_item on InvoiceItem"): the invoice item's price and
 * unit amount moved to `pricing`, its subscription to `parent.subscription_details`. Older requests sent `price` and
 * `unit_amount` (`unit_amount_decimal` stayed a parameter).
 */
export const invoiceItemPricing: VersionChange = {
  id: 'invoice-item-pricing-and-parent',
  release: '2025-03-31.basil',
  description:
    "the invoice item's `price`, `plan`, `unit_amount`, `unit_amount_decimal` move to `pricing`, `subscription`/`subscription_item` to `parent.subscription_details`; requests' `price` and `unit_amount` become `pricing[price]` and `unit_amount_decimal`.",
  downgrade: {
    async invoiceitem(ii, ctx) {
      const pricing = field(ii, 'pricing');
      const { price, plan } = await embeddedPrice(field(pricing, 'price_details')?.price, ctx);
      const unitDecimal = typeof pricing?.unit_amount_decimal === 'string' ? pricing.unit_amount_decimal : null;
      const details = field(field(ii, 'parent'), 'subscription_details');
      ii.price = price;
      ii.plan = plan;
      ii.unit_amount = unitDecimal !== null && /^-?\d+$/.test(unitDecimal) ? Number(unitDecimal) : null;
      ii.unit_amount_decimal = unitDecimal;
      ii.subscription = details?.subscription ?? null;
      ii.subscription_item = details?.subscription_item ?? null;
      delete ii.pricing;
      delete ii.parent;
    },
  },
  upgradeParams({ method, path, params }) {
    if (method !== 'POST' || !/^\/v1\/invoiceitems(\/[^/]+)?$/.test(path)) return;
    if (Object.hasOwn(params, 'price') && !Object.hasOwn(params, 'pricing')) {
      params.pricing = { price: params.price };
      delete params.price;
    }
    if (Object.hasOwn(params, 'unit_amount') && !Object.hasOwn(params, 'unit_amount_decimal') && !isObject(params.unit_amount)) {
      params.unit_amount_decimal = params.unit_amount;
      delete params.unit_amount;
    }
  },
};
