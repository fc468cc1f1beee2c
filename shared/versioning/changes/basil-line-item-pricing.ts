import { field, type ApiObject, type DowngradeContext, type VersionChange } from '../change';

/**
 * 2025-03-31.basil (docs.stripe.com/changelog/basil/2025-03-31/invoice-pricing-configurations, and stripe-node
 * 18.0.0's list): invoice line items lost `price`, `plan`, `type`, `invoice_item`, `subscription_item`, `proration`,
 * `proration_details` and `tax_rates`; the price moved to `pricing.price_details.price` and the rest to
 * `parent.invoice_item_details` / `parent.subscription_item_details`. Acacia's line item embedded its whole price and
 * plan (not expandable ids), so they are loaded and rendered in the same version.
 */
export const lineItemPricing: VersionChange = {
  id: 'line-item-pricing-and-parent',
  release: '2025-03-31.basil',
  description:
    "the line item's `price`/`plan` move to `pricing.price_details.price`; `type`, `invoice_item`, `subscription_item`, `proration`, `proration_details` move into `parent`; `tax_rates` is removed.",
  downgrade: {
    async line_item(line, ctx) {
      const pricing = field(line, 'pricing');
      const priceId = field(pricing, 'price_details')?.price;
      const { price, plan } = await embeddedPrice(priceId, ctx);
      const parent = field(line, 'parent');
      const fromItem = field(parent, 'invoice_item_details');
      const fromSubscription = field(parent, 'subscription_item_details');
      const details = fromItem ?? fromSubscription;
      line.type = fromItem ? 'invoiceitem' : 'subscription';
      line.invoice_item = fromItem?.invoice_item ?? null;
      line.subscription_item = fromSubscription?.subscription_item ?? null;
      line.subscription = line.subscription ?? details?.subscription ?? null;
      line.proration = details?.proration ?? false;
      line.proration_details = details?.proration_details ?? { credited_items: null };
      line.price = price;
      line.plan = plan;
      line.tax_rates = [];
      delete line.pricing;
      delete line.parent;
    },
  },
};

/** The price (and, for a recurring one, its legacy plan) as acacia embedded them. */
export async function embeddedPrice(priceId: unknown, ctx: DowngradeContext): Promise<{ price: ApiObject | null; plan: ApiObject | null }> {
  if (typeof priceId !== 'string') return { price: null, plan: null };
  const price = await ctx.embed('price', priceId);
  const plan = price && price.type === 'recurring' ? await ctx.embed('plan', priceId) : null;
  return { price, plan };
}
