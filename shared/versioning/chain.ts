/**
 * The chain of version changes and the one renderer every response and event payload goes through: objects are
 * built in the newest shape, then each change newer than the target version is undone, newest first, over the whole
 * tree (lists, expanded objects and all), so a change always sees the shape of the release right after it.
 *
 * A v1 event is a snapshot: its `data` is rendered in the event's own `api_version` (the version in effect when it
 * was created, or a webhook endpoint's pinned one at delivery), not in the version of the request that reads it.
 */
import { isObject, type ApiObject, type DowngradeContext, type EmbeddedType, type ParamsRequest, type VersionChange } from './change';
import { CURRENT_API_VERSION, isBefore, isKnownVersion } from './releases';
import { objectBefore, previousAttributes } from './previous-attributes';
import { LEFTOVER_TYPES, toNewestShape, toNewestParams } from './newest-shape';
import { subscriptionItemPeriods } from './changes/basil-subscription-item-periods';
import { invoiceParent } from './changes/basil-invoice-parent';
import { invoicePayments } from './changes/basil-invoice-payments';
import { lineItemTaxes } from './changes/basil-line-item-taxes';
import { lineItemPricing } from './changes/basil-line-item-pricing';
import { invoiceItemPricing } from './changes/basil-invoice-item-pricing';
import { legacyUsageBilling } from './changes/basil-legacy-usage-billing';
import { creditNoteRefunds } from './changes/basil-credit-note-refunds';
import { creditNoteTaxes } from './changes/basil-credit-note-taxes';
import { subscriptionDiscountParams } from './changes/basil-subscription-discount-params';
import { discountSource } from './changes/clover-discount-source';
import { promotionCodeCoupon } from './changes/clover-promotion-code-coupon';

/**
 * Newest release first; within a release, in the order they are undone (line-item taxes read `pricing` before the
 * pricing change removes it).
 */
export const VERSION_CHANGES: readonly VersionChange[] = [
  discountSource,
  promotionCodeCoupon,
  subscriptionItemPeriods,
  invoiceParent,
  invoicePayments,
  lineItemTaxes,
  lineItemPricing,
  invoiceItemPricing,
  legacyUsageBilling,
  creditNoteRefunds,
  creditNoteTaxes,
  subscriptionDiscountParams,
];

/** Loads an object of the account in the newest shape (for changes that embed what newer versions name by id). */
export type ObjectLoader = (type: EmbeddedType, id: string) => Promise<ApiObject | null>;

/** The changes to undo for `version`, in the order they are undone. */
export function changesFor(version: string): VersionChange[] {
  return VERSION_CHANGES.filter((c) => isBefore(version, c.release));
}

/**
 * Object types some change rewrites for `version`, plus events (whose data has its own version) and the types whose
 * acacia leftovers every version drops.
 */
function touchedTypes(version: string): string[] {
  const types = new Set<string>(['event', ...LEFTOVER_TYPES]);
  for (const c of changesFor(version)) for (const t of Object.keys(c.downgrade)) types.add(t);
  return [...types];
}

const touchedCache = new Map<string, string[]>();

/** Cheap pre-check on the serialized body: can any change apply? (`JSON.stringify` writes `"object":"x"`.) */
export function mayNeedRendering(body: string, version: string): boolean {
  let types = touchedCache.get(version);
  if (!types) touchedCache.set(version, (types = touchedTypes(version)));
  for (const t of types) if (body.includes(`"object":"${t}"`)) return true;
  return false;
}

/** Renders `value` (newest shape, rewritten in place) in `version`; returns it. */
export async function renderInVersion(value: unknown, version: string, load: ObjectLoader): Promise<unknown> {
  toNewestShape(value);
  await renderEvents(value, load);
  const changes = changesFor(version);
  if (changes.length === 0) return value;
  const ctx: DowngradeContext = {
    version,
    embed: async (type, id) => {
      const found = await load(type, id);
      return found ? ((await renderInVersion(found, version, load)) as ApiObject) : null;
    },
  };
  for (const change of changes) await undo(value, change, ctx);
  return value;
}

/** Each event's data in the event's own version (outermost events first; their data is not visited again). */
async function renderEvents(root: unknown, load: ObjectLoader): Promise<void> {
  const events: ApiObject[] = [];
  collectEvents(root, events);
  for (const event of events) {
    const version = typeof event.api_version === 'string' && isKnownVersion(event.api_version) ? event.api_version : CURRENT_API_VERSION;
    event.api_version = version;
    await renderEventData(event.data as ApiObject, version, load);
  }
}

/**
 * `data.object` in `version`; `previous_attributes` (recorded against the newest shape) are recomputed between the
 * object before and after the change, both rendered in `version`: a period that moved back to the subscription shows
 * there, as Stripe's older webhooks show it.
 */
async function renderEventData(data: ApiObject, version: string, load: ObjectLoader): Promise<void> {
  const after = data.object;
  const previous = data.previous_attributes;
  if (!isObject(after) || !isObject(previous) || changesFor(version).length === 0) {
    await renderInVersion(after, version, load);
    return;
  }
  const before = objectBefore(after, previous);
  await renderInVersion(before, version, load);
  await renderInVersion(after, version, load);
  data.previous_attributes = previousAttributes(before, after);
}

function collectEvents(node: unknown, out: ApiObject[]): void {
  if (Array.isArray(node)) {
    for (const x of node) collectEvents(x, out);
    return;
  }
  if (!isObject(node)) return;
  if (node.object === 'event' && isObject(node.data)) {
    out.push(node);
    return;
  }
  for (const k of Object.keys(node)) collectEvents(node[k], out);
}

/**
 * Undoes one change over the whole tree, parents before children; events were rendered already and are skipped. The
 * objects are found first (a synchronous walk), then rewritten in that order, awaiting only the rewrites that load.
 */
async function undo(root: unknown, change: VersionChange, ctx: DowngradeContext): Promise<void> {
  const found: ApiObject[] = [];
  collect(root, change.downgrade, found);
  for (const obj of found) {
    const done = change.downgrade[obj.object as string](obj, ctx);
    if (done) await done;
  }
}

function collect(node: unknown, types: VersionChange['downgrade'], out: ApiObject[]): void {
  if (Array.isArray(node)) {
    for (const x of node) collect(x, types, out);
    return;
  }
  if (!isObject(node) || node.object === 'event') return;
  if (typeof node.object === 'string' && Object.hasOwn(types, node.object)) out.push(node);
  for (const k of Object.keys(node)) collect(node[k], types, out);
}

/** Rewrites a request of `version` into the newest version's parameters, oldest change first. */
export function upgradeParams(version: string, req: ParamsRequest): void {
  const changes = changesFor(version);
  for (let i = changes.length - 1; i >= 0; i--) changes[i].upgradeParams?.(req);
  toNewestParams(req);
}
