/** Unit tests of the pure pieces of billing alerts and event destinations. */
import t from 'tap';
import { meteredPeriods } from '../api/billing/alert-evaluator';
import { thinNotification } from '../api/event-destinations';
import { destinationWants } from '../shared/event-destinations';
import type { SubscriptionObject } from '../api/billing/subscription-model';

function sub(customer: string, items: Array<{ meter: string | null; metered: boolean; start: number; end: number }>, extra: Partial<SubscriptionObject> = {}) {
  return {
    account: 'acct_1',
    data: {
      customer,
      status: 'active',
      test_clock: null,
      items: {
        data: items.map((i) => ({
          current_period_start: i.start,
          current_period_end: i.end,
          price: { recurring: { usage_type: i.metered ? 'metered' : 'licensed', meter: i.meter } },
        })),
      },
      ...extra,
    } as unknown as SubscriptionObject,
  };
}

t.test('meteredPeriods: the current period of metered items priced on a meter', async (t) => {
  const periods = meteredPeriods([
    sub('cus_a', [
      { meter: 'mtr_1', metered: true, start: 100, end: 200 },
      { meter: null, metered: false, start: 100, end: 200 },
    ]),
    sub('cus_a', [{ meter: 'mtr_1', metered: true, start: 150, end: 250 }]),
    sub('cus_b', [{ meter: 'mtr_1', metered: true, start: 100, end: 200 }], { test_clock: 'clock_1' }),
    sub('cus_c', [{ meter: 'mtr_1', metered: true, start: 100, end: 200 }], { status: 'canceled' }),
    sub('cus_d', [{ meter: 'mtr_2', metered: true, start: 10, end: 20 }]),
  ]);
  t.same(periods.get('acct_1\u0000cus_a\u0000mtr_1'), { start: 150, end: 250 }, 'the latest started item wins');
  t.notOk(periods.has('acct_1\u0000cus_b\u0000mtr_1'), 'a test clock sets no period');
  t.notOk(periods.has('acct_1\u0000cus_c\u0000mtr_1'), 'a canceled subscription sets no period');
  t.same(periods.get('acct_1\u0000cus_d\u0000mtr_2'), { start: 10, end: 20 }, 'per meter');
  t.equal(periods.size, 2);
});

t.test('destinationWants: enabled thin destinations, exact types or *', async (t) => {
  const d = { status: 'enabled' as const, event_payload: 'thin' as const, enabled_events: ['v1.billing.meter.created'] };
  t.ok(destinationWants(d, 'v1.billing.meter.created'));
  t.notOk(destinationWants(d, 'v1.billing.meter.updated'));
  t.notOk(destinationWants(d, 'v1.billing.meter'), 'no prefix matching');
  t.ok(destinationWants({ ...d, enabled_events: ['*'] }, 'v2.core.event_destination.ping'));
  t.notOk(destinationWants({ ...d, status: 'disabled' }, 'v1.billing.meter.created'), 'disabled');
  t.notOk(destinationWants({ ...d, event_payload: 'snapshot' }, 'v1.billing.meter.created'), 'snapshot');
});

t.test('thinNotification: the event without its data', async (t) => {
  const body = JSON.parse(
    thinNotification({
      id: 'evt_1',
      object: 'v2.core.event',
      type: 't.x',
      created: '2026-01-01T00:00:00.000Z',
      livemode: false,
      context: null,
      reason: null,
      related_object: null,
      data: { secret: 1 },
    }),
  );
  t.same(body, {
    id: 'evt_1',
    object: 'v2.core.event',
    type: 't.x',
    created: '2026-01-01T00:00:00.000Z',
    livemode: false,
    context: null,
    reason: null,
    related_object: null,
  });
});
