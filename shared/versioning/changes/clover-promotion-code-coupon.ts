import type { VersionChange } from '../change';
import { restoreWholeCoupon } from './clover-discount-source';

/**
 * 2025-09-30.clover moved a promotion code's `coupon` into the polymorphic `promotion` hash
 * (docs.stripe.com/changelog/clover/2025-09-30/polymorphic-coupon: `promotion.coupon`, not auto-expanded, with
 * `promotion.type` `coupon`). Before it, `coupon` held the whole Coupon object, so it is loaded and rendered in the
 * same version; older requests created a code with `coupon=<id>`.
 */
export const promotionCodeCoupon: VersionChange = {
  id: 'promotion-code-coupon',
  release: '2025-09-30.clover',
  description: "a promotion code's `coupon` (the whole coupon) moves to `promotion.coupon` (its id); requests' `coupon` becomes `promotion[coupon]`.",
  downgrade: {
    async promotion_code(code, ctx) {
      await restoreWholeCoupon(code, 'promotion', ctx, null);
    },
  },
  upgradeParams({ method, path, params }) {
    if (method !== 'POST' || path !== '/v1/promotion_codes') return;
    if (Object.hasOwn(params, 'coupon') && !Object.hasOwn(params, 'promotion')) {
      params.promotion = { type: 'coupon', coupon: params.coupon };
      delete params.coupon;
    }
  },
};
