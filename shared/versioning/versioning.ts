/**
 * API versions on the wire: which version a request is served in, the older parameters it may send, and the shape its
 * response (or a webhook's event) is rendered in.
 *
 * - v1: the request's `Stripe-Version` if it sends one (checked against the release table), else the account's
 *   default; the response's `Stripe-Version` names the version that rendered it.
 * - v2 (`/v2/...`): objects of the v2 namespace are not versioned (Stripe's thin events and v2 resources carry no
 *   API-versioned data), so no account default applies: a sent version is checked and echoed, none means the newest.
 */
import type { Principal } from '../http/auth';
import type { HttpRequest, HttpResult } from '../http/server';
import type { Params } from '../wire/form';
import type { ApiObject, EmbeddedType } from './change';
import type { AccountVersions } from './account-versions';
import { mayNeedRendering, renderInVersion, upgradeParams } from './chain';
import { loadCoupon, loadDiscount, loadDiscountCoupon } from './embedded-coupons';
import { CURRENT_API_VERSION, checkApiVersion } from './releases';

/** Loads an account's object in the newest shape, for changes that embed it (set by the billing layer). */
export type AccountObjectLoader = (account: string, type: 'price' | 'plan', id: string) => Promise<ApiObject | null>;

export class ApiVersioning {
  private loader: AccountObjectLoader = async () => null;

  constructor(readonly accounts: AccountVersions) {}

  setLoader(loader: AccountObjectLoader): void {
    this.loader = loader;
  }

  /** Picks the request's version and records it on the request (the response header names it). */
  async requestVersion(req: HttpRequest, p: Principal): Promise<string> {
    const sent = req.stripeVersion;
    let version = sent ? checkApiVersion(sent) : CURRENT_API_VERSION;
    // Every use of the account fixes its default on the first one, whatever this request sends.
    const accountDefault = await this.accounts.versionOf(p.account);
    if (!sent && req.flavor === 'v1') version = accountDefault;
    req.stripeVersion = version;
    return version;
  }

  /** The request's parameters as the newest version takes them. */
  upgradeParams(version: string, req: Pick<HttpRequest, 'method' | 'path' | 'flavor'>, params: Params): Params {
    if (req.flavor === 'v1') upgradeParams(version, { method: req.method, path: req.path, params });
    return params;
  }

  /** A successful v1 result rendered in `version` (error objects are not versioned). */
  async renderResult(result: HttpResult, version: string, account: string): Promise<HttpResult> {
    if (result.status !== 200 || !mayNeedRendering(result.body, version)) return result;
    const value = JSON.parse(result.body) as unknown;
    await renderInVersion(value, version, (type, id) => this.load(account, type, id));
    return { ...result, body: JSON.stringify(value) };
  }

  /** An object (an event for a webhook, say) rendered in `version`, in place. */
  async renderObject<T>(value: T, version: string, account: string): Promise<T> {
    await renderInVersion(value, version, (type, id) => this.load(account, type, id));
    return value;
  }

  /** An object of `account` that an older shape embeds (only that account's: accounts are walls). */
  private load(account: string, type: EmbeddedType, id: string): Promise<ApiObject | null> {
    const nowS = Math.floor(Date.now() / 1000);
    if (type === 'coupon') return loadCoupon(this.accounts.store, account, id, nowS);
    if (type === 'discount') return loadDiscount(this.accounts.store, account, id);
    if (type === 'discount_coupon') return loadDiscountCoupon(this.accounts.store, account, id, nowS);
    return this.loader(account, type, id);
  }
}
