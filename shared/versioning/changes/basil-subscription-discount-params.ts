import type { VersionChange } from '../change';

/**
 * 2025-03-31.basil removed `coupon` and `promotion_code` from subscription creation and update (stripe-node 18.0.0:
 * "Remove support for coupon on … SubscriptionCreateParams … and SubscriptionUpdateParams"; "Remove support for
 * promotion_code on … SubscriptionCreateParams, and SubscriptionUpdateParams"): `discounts` took their place. An older
 * request's `coupon` / `promotion_code` becomes one `discounts` entry (replacing the subscription's discounts, as
 * the older parameter replaced its discount); `coupon=''` removes them. Sent together with `discounts`, they are left
 * for the endpoint to refuse.
 */
export const subscriptionDiscountParams: VersionChange = {
  id: 'subscription-discount-params',
  release: '2025-03-31.basil',
  description: "subscriptions' `coupon` and `promotion_code` parameters are replaced by `discounts`.",
  downgrade: {},
  upgradeParams({ method, path, params }) {
    if (method !== 'POST' || !/^\/v1\/subscriptions(\/[^/]+)?$/.test(path) || Object.hasOwn(params, 'discounts')) return;
    const coupon = Object.hasOwn(params, 'coupon') ? params.coupon : undefined;
    const promotionCode = Object.hasOwn(params, 'promotion_code') ? params.promotion_code : undefined;
    if (coupon !== undefined && promotionCode !== undefined) return;
    if (coupon !== undefined) params.discounts = coupon === '' ? '' : [{ coupon }];
    else if (promotionCode !== undefined) params.discounts = promotionCode === '' ? '' : [{ promotion_code: promotionCode }];
    else return;
    delete params.coupon;
    delete params.promotion_code;
  },
};
