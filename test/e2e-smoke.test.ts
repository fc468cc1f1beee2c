import t from 'tap';
import { startServer, eventually, currentRange } from './helpers/server';

t.test('the official stripe client drives the whole pipeline', async (t) => {
  const server = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const meter = await stripe.billing.meters.create({ display_name: 'Smoke', event_name: 'smoke', default_aggregation: { formula: 'sum' } });
  t.match(meter.id, /^mtr_test_/);
  for (let i = 0; i < 10; i++) {
    await stripe.billing.meterEvents.create({ event_name: 'smoke', payload: { stripe_customer_id: 'cus_smoke', value: '0.1' } });
  }
  const { start, end } = currentRange();
  const ms = await eventually(async () => {
    const list = await stripe.billing.meters.listEventSummaries(meter.id, { customer: 'cus_smoke', start_time: start, end_time: end });
    return list.data.length === 1 && list.data[0].aggregated_value === 1;
  });
  t.ok(ms < 2000, `visible within 2 s (took ${ms} ms)`);
});
