import { field, type VersionChange } from '../change';

/**
 * 2025-09-30.clover moved a discount's coupon under `source` (stripe-node 19.0.0: "Remove support for coupon on
 * Discount … Use Discount.source.coupon instead"; "Add support for source on Discount"). Discounts appear expanded in
 * invoices', subscriptions' and customers' `discounts`.
 */
export const discountSource: VersionChange = {
  id: 'discount-source',
  release: '2025-09-30.clover',
  description: "a discount's `coupon` moves to `source.coupon`.",
  downgrade: {
    discount(discount) {
      const source = field(discount, 'source');
      if (!Object.hasOwn(discount, 'coupon')) discount.coupon = source?.coupon ?? null;
      delete discount.source;
    },
  },
};
