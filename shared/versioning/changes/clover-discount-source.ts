import { field, idOf, isObject, type VersionChange } from '../change';

/**
 * 2025-09-30.clover moved a discount's coupon under `source` (stripe-node 19.0.0: "Remove support for coupon on
 * Discount … Use Discount.source.coupon instead"; "Add support for source on Discount"). Before it, `coupon` held the
 * whole Coupon object (not an expandable id), so it is loaded and rendered in the same version: the coupon as it is
 * now, or, once deleted, as the discount recorded it. Discounts appear in customers' `discount`, expanded in
 * invoices' and subscriptions' `discounts`, in basil's single `discount` and in events' data.
 */
export const discountSource: VersionChange = {
  id: 'discount-source',
  release: '2025-09-30.clover',
  description: "a discount's `coupon` (the whole coupon) moves to `source.coupon` (its id).",
  downgrade: {
    async discount(discount, ctx) {
      const source = field(discount, 'source');
      delete discount.source;
      if (Object.hasOwn(discount, 'coupon')) return;
      // expand[]=source.coupon (a newer request's) already holds the object.
      if (isObject(source?.coupon)) {
        discount.coupon = source.coupon;
        return;
      }
      const couponId = idOf(source?.coupon);
      const coupon = typeof discount.id === 'string' ? await ctx.embed('discount_coupon', discount.id) : null;
      discount.coupon = coupon ?? (couponId === null ? null : await ctx.embed('coupon', couponId));
    },
  },
};
