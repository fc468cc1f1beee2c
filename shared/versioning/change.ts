/**
 * One Stripe API change, undone for clients on older versions. Responses are built in the newest shape; a change
 * turns the shape of the release it belongs to back into the shape of the release before it (`downgrade`, one
 * function per object type it touches), and turns the older request parameters into the newer ones (`upgradeParams`).
 */
import type { Params } from '../wire/form';

export type ApiObject = Record<string, unknown>;

/**
 * What older shapes embed whole where newer ones name it by id: a price, plan, coupon or discount (by its id), or the
 * coupon of a discount (by the discount's id: the coupon as it is now, or as the discount recorded it once the coupon
 * is deleted).
 */
export type EmbeddedType = 'price' | 'plan' | 'coupon' | 'discount' | 'discount_coupon';

/** What a change may need besides the object itself. */
export interface DowngradeContext {
  /** The version being rendered. */
  readonly version: string;
  /**
   * Another object of the same account, rendered in `version` (older shapes sometimes embed what newer ones name by
   * id, e.g. acacia's invoice line items carry their whole price). Null when it no longer exists.
   */
  embed(type: EmbeddedType, id: string): Promise<ApiObject | null>;
}

export interface ParamsRequest {
  method: string;
  path: string;
  params: Params;
}

export interface VersionChange {
  /** Short name, used in the README's list and in tests. */
  readonly id: string;
  /** The release that introduced the change: versions before it get the older shape. */
  readonly release: string;
  /** What changed, one sentence, with where it is documented. */
  readonly description: string;
  /** By object type (the `object` field): rewrites the object in place from the newer to the older shape. */
  readonly downgrade: Readonly<Record<string, (obj: ApiObject, ctx: DowngradeContext) => void | Promise<void>>>;
  /** Rewrites, in place, a request of the older version into the parameters the newer version takes. */
  readonly upgradeParams?: (req: ParamsRequest) => void;
}

export function isObject(v: unknown): v is ApiObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** An own field that is itself an object, else null. */
export function field(obj: unknown, key: string): ApiObject | null {
  if (!isObject(obj) || !Object.hasOwn(obj, key)) return null;
  const v = obj[key];
  return isObject(v) ? v : null;
}

/** An id whether the field holds it or (expanded) the object. */
export function idOf(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.id === 'string') return v.id;
  return null;
}
