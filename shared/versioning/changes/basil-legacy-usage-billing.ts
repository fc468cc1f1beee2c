import { InvalidParamError } from '../../errors';
import { field, isObject, type VersionChange } from '../change';

/**
 * 2025-03-31.basil removed legacy usage-based billing (docs.stripe.com/changelog/basil/2025-03-31/deprecate-legacy-
 * usage-based-billing; stripe-node 18.0.0): usage records, `aggregate_usage` on prices' `recurring` and on plans, and
 * `billing_thresholds` on subscriptions and their items. meterd bills metered prices from their meter only, so for an
 * older version a metered price reads `aggregate_usage: "sum"` (Stripe's default), a licensed one null, and the
 * thresholds null. An older request may send `aggregate_usage=sum` (what a meter-backed price means); any other
 * aggregation needs usage records, which meterd does not serve, and is refused naming the parameter.
 */
export const legacyUsageBilling: VersionChange = {
  id: 'legacy-usage-based-billing',
  release: '2025-03-31.basil',
  description:
    '`aggregate_usage` is removed from prices (`recurring`) and plans, `billing_thresholds` from subscriptions and subscription items; usage records are gone.',
  downgrade: {
    price(price) {
      const recurring = field(price, 'recurring');
      if (recurring) recurring.aggregate_usage = recurring.usage_type === 'metered' ? 'sum' : null;
    },
    plan(plan) {
      plan.aggregate_usage = plan.usage_type === 'metered' ? 'sum' : null;
    },
    subscription(sub) {
      sub.billing_thresholds = null;
    },
    subscription_item(item) {
      item.billing_thresholds = null;
    },
  },
  upgradeParams({ method, path, params }) {
    if (method !== 'POST') return;
    if (path === '/v1/prices') {
      const recurring = params.recurring;
      if (isObject(recurring) && Object.hasOwn(recurring, 'aggregate_usage')) {
        acceptSum(recurring.aggregate_usage, 'recurring[aggregate_usage]');
        delete recurring.aggregate_usage;
      }
    } else if (path === '/v1/plans' && Object.hasOwn(params, 'aggregate_usage')) {
      acceptSum(params.aggregate_usage, 'aggregate_usage');
      delete params.aggregate_usage;
    }
  },
};

function acceptSum(value: unknown, param: string): void {
  if (value === 'sum' || value === '') return;
  throw new InvalidParamError(
    param,
    `${param} ${JSON.stringify(value)} is not supported: prices here are billed from their meter (recurring[meter]), whose formula aggregates the usage; only "sum" is accepted.`,
  );
}
