/**
 * The subscription documents: one `subscription` document holding the Subscription object with its items
 * (items.data, each a full SubscriptionItem with its price). Each item also has a `subscription_item_ref` document
 * (id = si_…, data = {subscription}) so /v1/subscription_items/:id finds its subscription.
 */
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { recordBillingEvent, type Metadata } from './common';
import { renderPrice, type PriceObject } from './prices';
import { loadResource } from './resource';

export const SUBSCRIPTION_TYPE = 'subscription';
export const SUBSCRIPTION_ITEM_REF = 'subscription_item_ref';

export interface SubscriptionItem {
  id: string;
  object: 'subscription_item';
  billing_thresholds: null;
  created: number;
  current_period_end: number;
  current_period_start: number;
  discounts: unknown[];
  metadata: Metadata;
  plan: unknown;
  price: PriceObject;
  quantity?: number;
  subscription: string;
  tax_rates: unknown[];
}

export interface SubscriptionObject {
  id: string;
  object: 'subscription';
  customer: string;
  status: 'active' | 'canceled' | 'incomplete' | 'past_due' | 'trialing' | 'unpaid' | 'paused' | 'incomplete_expired';
  test_clock: string | null;
  currency: string;
  created: number;
  start_date: number;
  billing_cycle_anchor: number;
  cancel_at_period_end: boolean;
  cancel_at: number | null;
  canceled_at: number | null;
  ended_at: number | null;
  latest_invoice: string | null;
  metadata: Metadata;
  description: string | null;
  items: { object: 'list'; data: SubscriptionItem[]; has_more: boolean; total_count: number; url: string };
  discounts: string[];
  [k: string]: unknown;
}

/** Items keep their full price (tiers included, for pricing); rendered without tiers, as Stripe does. */
export function renderItem(it: SubscriptionItem): SubscriptionItem {
  return { ...it, price: renderPrice(it.price, []) };
}

export function renderSub(sub: SubscriptionObject): SubscriptionObject {
  return { ...sub, items: { ...sub.items, data: sub.items.data.map(renderItem) } };
}

export function loadSubscription(store: StateStore, p: Principal, id: string, param = 'id'): Promise<SubscriptionObject> {
  return loadResource<SubscriptionObject>(store, p, { type: SUBSCRIPTION_TYPE, noun: 'subscription' }, id, param);
}

export async function saveSubscription(tx: StateStore, p: Principal, sub: SubscriptionObject, event: string, before?: SubscriptionObject): Promise<void> {
  await tx.updateObject(p.account, SUBSCRIPTION_TYPE, sub.id, sub);
  await recordBillingEvent(tx, p, event, renderSub(sub), before ? (renderSub(before) as unknown as Record<string, unknown>) : undefined);
}
