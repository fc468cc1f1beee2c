import { isObject, type DowngradeContext, type VersionChange } from '../change';

/**
 * 2025-03-31.basil moved an invoice's payment out of the invoice (into InvoicePayment objects, `payments`) and removed
 * `paid`, `paid_out_of_band`, `charge`, `payment_intent`, `application_fee_amount`, `transfer_data` and the legacy
 * `discount` (stripe-node 18.0.0: "Remove support for application_fee_amount, charge, paid_out_of_band, paid,
 * payment_intent, … transfer_data on Invoice"; "Remove support for discount on Invoice and Subscription"; the single
 * `discount` was the whole Discount object, `discounts` a list of expandable ids). meterd
 * takes no card payments, so charge and payment intent were always null; `paid_out_of_band` is not recorded and is
 * rendered false.
 */
export const invoicePayments: VersionChange = {
  id: 'invoice-payment-fields',
  release: '2025-03-31.basil',
  description:
    "the invoice's `paid`, `paid_out_of_band`, `charge`, `payment_intent`, `application_fee_amount`, `transfer_data` and the single `discount` (invoices and subscriptions) are removed.",
  downgrade: {
    async invoice(inv, ctx) {
      inv.paid = inv.status === 'paid';
      inv.paid_out_of_band = false;
      inv.charge = null;
      inv.payment_intent = null;
      inv.application_fee_amount = null;
      inv.transfer_data = null;
      inv.discount = await firstDiscount(inv.discounts, ctx);
      delete inv.payments;
      delete inv.amount_overpaid;
    },
    async subscription(sub, ctx) {
      sub.discount = await firstDiscount(sub.discounts, ctx);
    },
  },
};

/**
 * Acacia's `discount` was the first discount as a whole object (not an expandable id), or null: the expanded one, or
 * the discount loaded and rendered in the same version.
 */
async function firstDiscount(discounts: unknown, ctx: DowngradeContext): Promise<unknown> {
  if (!Array.isArray(discounts) || discounts.length === 0) return null;
  const d: unknown = discounts[0];
  if (isObject(d)) return d;
  return typeof d === 'string' ? ctx.embed('discount', d) : null;
}
