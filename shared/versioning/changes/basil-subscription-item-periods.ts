import { field, type ApiObject, type VersionChange } from '../change';

/**
 * 2025-03-31.basil moved the billing period from the subscription to its items
 * (docs.stripe.com/changelog/basil/2025-03-31/deprecate-subscription-current-period-start-and-end). Before it, the
 * subscription carried `current_period_start`/`current_period_end` and its items did not. All items of a meterd
 * subscription share one interval, so the first item's period is the subscription's.
 */
export const subscriptionItemPeriods: VersionChange = {
  id: 'subscription-item-billing-periods',
  release: '2025-03-31.basil',
  description: '`current_period_start`/`current_period_end` move from the subscription to its items.',
  downgrade: {
    subscription(sub) {
      const items = field(sub, 'items');
      const first = Array.isArray(items?.data) ? (items.data[0] as ApiObject | undefined) : undefined;
      sub.current_period_start = first?.current_period_start ?? null;
      sub.current_period_end = first?.current_period_end ?? null;
    },
    subscription_item(item) {
      delete item.current_period_start;
      delete item.current_period_end;
    },
  },
};
