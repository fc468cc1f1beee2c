/**
 * Distributed mode, roles in separate processes, two API processes evaluating the same alerts and running the same
 * delivery workers over one store: every customer's alert fires exactly once (one v1 event, one webhook delivery, one
 * thin event delivered to an event destination), and a streamed invalid event's error report, recorded by the
 * aggregator process, reaches the destination once.
 */
import t from 'tap';
import Stripe from 'stripe';
import { DISTRIBUTED, eventually } from './helpers/server';
import { Cluster } from './helpers/cluster';
import { receiver } from './helpers/receiver';

const CUSTOMERS = 10;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

t.test('two API processes fire each alert once', { skip: !DISTRIBUTED && 'distributed mode only' }, async (t) => {
  const cluster = new Cluster(t, 'alerts', { BILLING_ALERT_INTERVAL_MS: '100', WEBHOOK_POLL_MS: '100' });
  t.teardown(() => cluster.stopAll());
  const api1 = await cluster.start('api1', 'api');
  const api2 = await cluster.start('api2', 'api');
  const gateway = await cluster.start('gateway', 'gateway');
  await cluster.start('aggregator', 'aggregator');
  const stripe = api1.stripe();
  const verifier = new Stripe('sk_test_unused', { telemetry: false });

  const rx = await receiver();
  const rxThin = await receiver();
  t.teardown(() => Promise.all([rx.close(), rxThin.close()]));
  const endpoint = await stripe.webhookEndpoints.create({ url: rx.url, enabled_events: ['billing.alert.triggered'] });
  const dest = await api2.stripe().v2.core.eventDestinations.create({
    name: 'alerts and errors',
    type: 'webhook_endpoint',
    event_payload: 'thin',
    enabled_events: ['v1.billing.alert.triggered', 'v1.billing.meter.error_report_triggered'],
    webhook_endpoint: { url: rxThin.url },
    include: ['webhook_endpoint.signing_secret'],
  });
  const meter = await stripe.billing.meters.create({ display_name: 'Once', event_name: 'alerts_once', default_aggregation: { formula: 'sum' } });
  const alert = await api2.stripe().billing.alerts.create({
    alert_type: 'usage_threshold',
    title: 'Five',
    usage_threshold: { gte: 5, meter: meter.id, recurrence: 'one_time' },
  });

  const session = await stripe.v2.billing.meterEventSession.create();
  const streamer = gateway.stripe(session.authentication_token);
  await eventually(
    async () => {
      try {
        await streamer.v2.billing.meterEventStream.create({
          events: Array.from({ length: CUSTOMERS }, (_, i) => ({
            event_name: 'alerts_once',
            identifier: `once-${i}`,
            payload: { stripe_customer_id: `cus_once_${i}`, value: '6' },
          })),
        });
        return true;
      } catch {
        return false;
      }
    },
    30_000,
    200,
  );
  await streamer.v2.billing.meterEventStream.create({
    events: [{ event_name: 'alerts_once', identifier: 'once-bad', payload: { stripe_customer_id: 'cus_once_0', value: 'lots' } }],
  });

  try {
    await eventually(async () => rx.got.length >= CUSTOMERS, 60_000, 100);
    await eventually(async () => rxThin.got.length >= CUSTOMERS + 1, 60_000, 100);
  } catch (err) {
    // Failed once in CI (2026-12-07) and never here: what arrived, and what each process logged, say where it stopped.
    t.comment(`webhooks received ${rx.got.length} of ${CUSTOMERS}; thin events ${rxThin.got.length} of ${CUSTOMERS + 1}`);
    cluster.dumpLogs();
    throw err;
  }
  await sleep(2000); // many more evaluation passes and delivery polls on both API processes
  const events = rx.got.map((g) => verifier.webhooks.constructEvent(g.body, g.signature, endpoint.secret!));
  const customers = events.map((e) => (e.data.object as unknown as { customer: string; alert: { id: string } }).customer).sort();
  t.same(customers, Array.from({ length: CUSTOMERS }, (_, i) => `cus_once_${i}`).sort(), 'one webhook per customer, none twice');
  t.ok(
    events.every((e) => (e.data.object as unknown as { alert: { id: string } }).alert.id === alert.id),
    'all for the alert',
  );
  const listed = await stripe.events.list({ type: 'billing.alert.triggered', limit: 100 });
  t.equal(listed.data.length, CUSTOMERS, 'one v1 event per customer');
  const thin = rxThin.got.map(
    (g) => stripe.parseEventNotification(g.body, g.signature, dest.webhook_endpoint!.signing_secret!) as unknown as { id: string; type: string },
  );
  t.equal(new Set(thin.map((n) => n.id)).size, thin.length, 'each thin event delivered once');
  t.equal(thin.filter((n) => n.type === 'v1.billing.alert.triggered').length, CUSTOMERS);
  t.equal(thin.filter((n) => n.type === 'v1.billing.meter.error_report_triggered').length, 1, "the aggregator's error report");
  t.same(cluster.exits, [], 'no process exited on its own');
});
