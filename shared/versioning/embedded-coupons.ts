/**
 * Coupons and discounts as older versions embed them (a discount's and a promotion code's `coupon` was the whole
 * Coupon object before 2025-09-30.clover, invoices' and subscriptions' `discount` the whole Discount before
 * 2025-03-31.basil), read from the state store in the newest shape. The billing layer stores a coupon as its
 * Coupon object (type `coupon`) and a discount as its Discount object (type `discount`) with a snapshot of the coupon
 * it was made from (`_coupon`); those type names are the billing layer's, which shared/ may not import.
 */
import type { StateStore } from '../state-store';
import type { ApiObject } from './change';

const COUPON_TYPE = 'coupon';
const DISCOUNT_TYPE = 'discount';

interface StoredCoupon extends ApiObject {
  id: string;
  created?: number;
  redeem_by?: number | null;
  max_redemptions?: number | null;
  times_redeemed?: number;
}

interface StoredDiscount {
  source?: { coupon?: unknown } | null;
  _coupon?: StoredCoupon;
}

/** `valid` is computed when served, as the coupon endpoints compute it: false once redeem_by or max_redemptions is reached. */
function served(c: StoredCoupon, nowS: number): ApiObject {
  const expired = typeof c.redeem_by === 'number' && c.redeem_by <= nowS;
  const exhausted = typeof c.max_redemptions === 'number' && (c.times_redeemed ?? 0) >= c.max_redemptions;
  return { ...c, valid: !expired && !exhausted };
}

/** What Stripe answers for an object that no longer exists. */
function deletedCoupon(id: string): ApiObject {
  return { id, object: 'coupon', deleted: true };
}

/** The account's coupon as served now, or a deleted coupon once it is gone. */
export async function loadCoupon(store: StateStore, account: string, id: string, nowS: number): Promise<ApiObject> {
  const found = await store.getObject<StoredCoupon>(account, COUPON_TYPE, id);
  return found ? served(found.data, nowS) : deletedCoupon(id);
}

/** The account's discount as served (without what the billing layer keeps for itself), or null. */
export async function loadDiscount(store: StateStore, account: string, id: string): Promise<ApiObject | null> {
  const found = await store.getObject<ApiObject>(account, DISCOUNT_TYPE, id);
  if (!found) return null;
  const served: ApiObject = {};
  for (const key of Object.keys(found.data)) if (!key.startsWith('_')) served[key] = found.data[key];
  return served;
}

/**
 * The coupon a discount was made from: as it is now while it exists, else as the discount recorded it (no longer
 * valid), as Stripe keeps showing a deleted coupon on the discounts already made from it. Null for an unknown discount.
 */
export async function loadDiscountCoupon(store: StateStore, account: string, discountId: string, nowS: number): Promise<ApiObject | null> {
  const discount = await store.getObject<StoredDiscount>(account, DISCOUNT_TYPE, discountId);
  if (!discount) return null;
  const recorded = discount.data._coupon;
  const couponId = typeof discount.data.source?.coupon === 'string' ? discount.data.source.coupon : recorded?.id;
  if (typeof couponId !== 'string') return null;
  const current = await store.getObject<StoredCoupon>(account, COUPON_TYPE, couponId);
  // A coupon deleted and made again under the same id is another coupon: the discount keeps the one it was made from.
  if (current && (!recorded || recorded.created === undefined || current.data.created === recorded.created)) return served(current.data, nowS);
  return recorded ? { ...recorded, valid: false } : deletedCoupon(couponId);
}
