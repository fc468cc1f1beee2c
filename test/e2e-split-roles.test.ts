/**
 * Distributed mode with the roles in separate processes: a meter created on the api process is usable on a gateway
 * and counted by an aggregator at once, without waiting for the periodic meter refresh.
 */
import t from 'tap';
import { DISTRIBUTED, eventually, currentRange } from './helpers/server';
import { Cluster } from './helpers/cluster';
import { parseExposition } from './helpers/prometheus';

t.test('a meter created on the api process is usable on a gateway at once', { skip: !DISTRIBUTED && 'distributed mode only' }, async (t) => {
  const cluster = new Cluster(t, 'split', {});
  t.teardown(() => cluster.stopAll());
  const api = await cluster.start('api', 'api');
  const gateway = await cluster.start('gateway', 'gateway');
  await cluster.start('aggregator', 'aggregator');
  const stripe = api.stripe();
  const onGateway = gateway.stripe();
  const meter = await stripe.billing.meters.create({ display_name: 'Split', event_name: 'split_roles', default_aggregation: { formula: 'sum' } });
  // No pause: the gateway and the aggregator learned nothing of this meter yet.
  const v1 = await onGateway.billing.meterEvents.create({ event_name: 'split_roles', payload: { stripe_customer_id: 'cus_split', value: '5' } });
  t.equal(v1.event_name, 'split_roles', 'the gateway validated the v1 event against the new meter');
  const session = await stripe.v2.billing.meterEventSession.create();
  await gateway.stripe(session.authentication_token).v2.billing.meterEventStream.create({
    events: Array.from({ length: 50 }, (_, i) => ({
      event_name: 'split_roles',
      identifier: `split-${i}`,
      payload: { stripe_customer_id: 'cus_split', value: '2' },
    })),
  });
  // Only the gateway role serves the stream, with or without gateway threads: elsewhere it is an unknown route.
  for (const other of [api, cluster.server('aggregator')]) {
    const res = await other.request('POST', '/v2/billing/meter_event_stream', {
      key: session.authentication_token,
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ events: [{ event_name: 'split_roles', identifier: 'not-here', payload: { stripe_customer_id: 'cus_split', value: '1000' } }] }),
    });
    t.equal(res.status, 404, `the ${other === api ? 'api' : 'aggregator'} process does not take stream events`);
    t.type(res.body?.error?.message, 'string', 'and says so with an error object');
  }
  const { start, end } = currentRange();
  await eventually(async () => {
    const s = await stripe.billing.meters.listEventSummaries(meter.id, { customer: 'cus_split', start_time: start, end_time: end });
    return s.data[0]?.aggregated_value === 105;
  }, 30_000);
  const events = await stripe.v2.core.events.list({ types: ['v1.billing.meter.no_meter_found'] } as never);
  t.equal(events.data.length, 0, 'no stream event was reported as naming no meter');
  // Every role answers /metrics with what it did; the dashboard is the api role's.
  const aggregator = cluster.server('aggregator');
  const scrape = async (server: typeof api) => parseExposition((await server.request('GET', '/metrics', { key: null })).text);
  const onGatewayMetrics = await scrape(gateway);
  t.equal(onGatewayMetrics.value('meterd_info', { role: 'gateway' }), 1);
  t.equal(onGatewayMetrics.value('meterd_events_accepted_total', { endpoint: 'v2_meter_event_stream', livemode: 'false' }), 50);
  t.equal(onGatewayMetrics.value('meterd_events_accepted_total', { endpoint: 'v1_meter_events', livemode: 'false' }), 1);
  const onAggregator = await scrape(aggregator);
  t.equal(onAggregator.value('meterd_info', { role: 'aggregator' }), 1);
  t.equal(onAggregator.sum('meterd_aggregator_events_stored_total'), 51);
  t.equal(onAggregator.sum('meterd_consumer_lag_records'), 0, 'the lag is reported by the aggregator and drained');
  t.equal((await scrape(api)).value('meterd_info', { role: 'api' }), 1);
  t.equal((await api.request('GET', '/dashboard', { key: null })).status, 200);
  t.equal((await gateway.request('GET', '/dashboard', { key: null })).status, 404);
  t.same(cluster.exits, [], 'no process exited on its own');
});
