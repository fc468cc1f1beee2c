import { field, type VersionChange } from '../change';

/**
 * 2025-03-31.basil replaced the invoice's `subscription`, `subscription_details` and `quote` with `parent`
 * (`parent.subscription_details.subscription`, `.metadata`; `parent.quote_details`), per stripe-node 18.0.0's list
 * of the basil changes ("Remove support for … quote, subscription, subscription_details … on Invoice"; "Add support
 * for parent on … Invoice").
 */
export const invoiceParent: VersionChange = {
  id: 'invoice-parent',
  release: '2025-03-31.basil',
  description: "the invoice's `subscription`, `subscription_details` and `quote` move into `parent`.",
  downgrade: {
    invoice(inv) {
      const parent = field(inv, 'parent');
      const details = field(parent, 'subscription_details');
      const quote = field(parent, 'quote_details');
      // An expanded `subscription` (expand[]=subscription) is kept as it was expanded.
      if (!Object.hasOwn(inv, 'subscription') || inv.subscription === null) inv.subscription = details?.subscription ?? null;
      inv.subscription_details = details ? { metadata: details.metadata ?? null } : null;
      inv.quote = quote?.quote ?? null;
      delete inv.parent;
    },
  },
};
