/**
 * The chain of version changes and the one renderer every response and event payload goes through: objects are
 * built in the newest shape, then each change newer than the target version is undone, newest first, over the whole
 * tree (lists, expanded objects and all), so a change always sees the shape of the release right after it.
 *
 * A v1 event is a snapshot: its `data` is rendered in the event's own `api_version` (the version in effect when it
 * was created, or a webhook endpoint's pinned one at delivery), not in the version of the request that reads it.
 */
import { isObject, type ApiObject, type DowngradeContext, type ParamsRequest, type VersionChange } from './change';
import { CURRENT_API_VERSION, isBefore, isKnownVersion } from './releases';
import { subscriptionItemPeriods } from './changes/basil-subscription-item-periods';
import { invoiceParent } from './changes/basil-invoice-parent';
import { invoicePayments } from './changes/basil-invoice-payments';
import { lineItemTaxes } from './changes/basil-line-item-taxes';
import { lineItemPricing } from './changes/basil-line-item-pricing';
import { invoiceItemPricing } from './changes/basil-invoice-item-pricing';
import { legacyUsageBilling } from './changes/basil-legacy-usage-billing';
import { discountSource } from './changes/clover-discount-source';

/**
 * Newest release first; within a release, in the order they are undone (line-item taxes read `pricing` before the
 * pricing change removes it).
 */
export const VERSION_CHANGES: readonly VersionChange[] = [
  discountSource,
  subscriptionItemPeriods,
  invoiceParent,
  invoicePayments,
  lineItemTaxes,
  lineItemPricing,
  invoiceItemPricing,
  legacyUsageBilling,
];

/** Loads an object of the account in the newest shape (for changes that embed what newer versions name by id). */
export type ObjectLoader = (type: 'price' | 'plan', id: string) => Promise<ApiObject | null>;

/** The changes to undo for `version`, in the order they are undone. */
export function changesFor(version: string): VersionChange[] {
  return VERSION_CHANGES.filter((c) => isBefore(version, c.release));
}

/** Object types some change rewrites for `version`, plus events (whose data has its own version). */
function touchedTypes(version: string): string[] {
  const types = new Set<string>(['event']);
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
async function renderEvents(node: unknown, load: ObjectLoader): Promise<void> {
  if (Array.isArray(node)) {
    for (const x of node) await renderEvents(x, load);
    return;
  }
  if (!isObject(node)) return;
  if (node.object === 'event' && isObject(node.data)) {
    const version = typeof node.api_version === 'string' && isKnownVersion(node.api_version) ? node.api_version : CURRENT_API_VERSION;
    node.api_version = version;
    await renderInVersion(node.data, version, load);
    return;
  }
  for (const k of Object.keys(node)) await renderEvents(node[k], load);
}

/** Undoes one change over the whole tree, parents before children; events were rendered already and are skipped. */
async function undo(node: unknown, change: VersionChange, ctx: DowngradeContext): Promise<void> {
  if (Array.isArray(node)) {
    for (const x of node) await undo(x, change, ctx);
    return;
  }
  if (!isObject(node) || node.object === 'event') return;
  const type = node.object;
  if (typeof type === 'string' && Object.hasOwn(change.downgrade, type)) await change.downgrade[type](node, ctx);
  for (const k of Object.keys(node)) await undo(node[k], change, ctx);
}

/** Rewrites a request of `version` into the newest version's parameters, oldest change first. */
export function upgradeParams(version: string, req: ParamsRequest): void {
  const changes = changesFor(version);
  for (let i = changes.length - 1; i >= 0; i--) changes[i].upgradeParams?.(req);
}
