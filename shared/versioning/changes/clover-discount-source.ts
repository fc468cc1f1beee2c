import { field, idOf, isObject, type ApiObject, type DowngradeContext, type VersionChange } from '../change';

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
      await restoreWholeCoupon(discount, 'source', ctx, typeof discount.id === 'string' ? discount.id : null);
    },
  },
};

/**
 * Clover's `<hash>.coupon` (an id, or the coupon when a newer request expanded it) back to the older top-level
 * `coupon`, the whole coupon: for a discount the one it was made from (`discountId`), else the coupon by its id.
 */
export async function restoreWholeCoupon(obj: ApiObject, hash: string, ctx: DowngradeContext, discountId: string | null): Promise<void> {
  const ref = field(obj, hash)?.coupon;
  delete obj[hash];
  if (Object.hasOwn(obj, 'coupon')) return;
  if (isObject(ref)) {
    obj.coupon = ref;
    return;
  }
  const couponId = idOf(ref);
  const recorded = discountId === null ? null : await ctx.embed('discount_coupon', discountId);
  obj.coupon = recorded ?? (couponId === null ? null : await ctx.embed('coupon', couponId));
}
