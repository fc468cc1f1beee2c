import type { VersionChange } from '../change';

/**
 * 2025-03-31.basil moved an invoice's payment out of the invoice (into InvoicePayment objects, `payments`) and removed
 * `paid`, `paid_out_of_band`, `charge`, `payment_intent`, `application_fee_amount`, `transfer_data` and the legacy
 * `discount` (stripe-node 18.0.0: "Remove support for application_fee_amount, charge, paid_out_of_band, paid,
 * payment_intent, … transfer_data on Invoice"; "Remove support for discount on Invoice and Subscription"). meterd
 * takes no card payments, so charge and payment intent were always null; `paid_out_of_band` is not recorded and is
 * rendered false.
 */
export const invoicePayments: VersionChange = {
  id: 'invoice-payment-fields',
  release: '2025-03-31.basil',
  description:
    "the invoice's `paid`, `paid_out_of_band`, `charge`, `payment_intent`, `application_fee_amount`, `transfer_data` and the single `discount` (invoices and subscriptions) are removed.",
  downgrade: {
    invoice(inv) {
      inv.paid = inv.status === 'paid';
      inv.paid_out_of_band = false;
      inv.charge = null;
      inv.payment_intent = null;
      inv.application_fee_amount = null;
      inv.transfer_data = null;
      inv.discount = firstDiscount(inv.discounts);
      delete inv.payments;
      delete inv.amount_overpaid;
    },
    subscription(sub) {
      sub.discount = firstDiscount(sub.discounts);
    },
  },
};

/** Acacia's `discount` was the one discount object (expanded), or null. */
function firstDiscount(discounts: unknown): unknown {
  if (!Array.isArray(discounts) || discounts.length === 0) return null;
  const d = discounts[0];
  return typeof d === 'object' && d !== null ? d : null;
}
