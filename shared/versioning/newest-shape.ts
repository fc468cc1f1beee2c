/**
 * What the billing layer still renders from acacia and the newest release no longer has, removed before any version
 * is rendered (older versions' changes put it back): the invoice's top-level `subscription` (basil moved it to
 * `parent.subscription_details.subscription`) and `billing_thresholds` on subscriptions and their items (removed by
 * basil with legacy usage-based billing).
 *
 * Expanding the invoice's subscription is `expand[]=parent.subscription_details.subscription` in the newest release;
 * the billing layer expands the top-level field, so that path is asked of it as `subscription` and the expanded
 * subscription is moved into `parent` here. (`expand[]=subscription`, an older version's path, is accepted in every
 * version: Stripe refuses it after basil.)
 */
import type { ParamValue } from '../wire/form';
import { field, idOf, isObject, type ApiObject, type ParamsRequest } from './change';

/** Object types that may carry a leftover. */
export const LEFTOVER_TYPES: readonly string[] = ['invoice', 'subscription', 'subscription_item'];

const PARENT_SUBSCRIPTION = 'parent.subscription_details.subscription';

/** Removes the leftovers from every object of the tree, in place (events' data included). */
export function toNewestShape(node: unknown): void {
  if (Array.isArray(node)) {
    for (const x of node) toNewestShape(x);
    return;
  }
  if (!isObject(node)) return;
  if (node.object === 'invoice') moveInvoiceSubscription(node);
  else if ((node.object === 'subscription' || node.object === 'subscription_item') && Object.hasOwn(node, 'billing_thresholds')) {
    delete node.billing_thresholds;
  }
  for (const k of Object.keys(node)) toNewestShape(node[k]);
}

function moveInvoiceSubscription(inv: ApiObject): void {
  if (!Object.hasOwn(inv, 'subscription')) return;
  const expanded = inv.subscription;
  delete inv.subscription;
  const details = field(field(inv, 'parent'), 'subscription_details');
  if (details && isObject(expanded) && idOf(details.subscription) === idOf(expanded)) details.subscription = expanded;
}

/**
 * On the invoice endpoints, `expand[]=parent.subscription_details.subscription` (an invoice's, or each listed
 * invoice's with `data.`) is asked of the billing layer as the top-level `subscription` it expands.
 */
export function toNewestParams({ path, params }: ParamsRequest): void {
  if (!/^\/v1\/invoices(\/|$)/.test(path) || !Object.hasOwn(params, 'expand')) return;
  const asked = (p: ParamValue): ParamValue => (p === PARENT_SUBSCRIPTION ? 'subscription' : p === `data.${PARENT_SUBSCRIPTION}` ? 'data.subscription' : p);
  const expand = params.expand;
  if (Array.isArray(expand)) params.expand = expand.map(asked);
  else if (typeof expand === 'string') params.expand = asked(expand);
}
