/**
 * End-to-end: GET /metrics after a real stream of events (HTTP stream on the gateway threads, a WebSocket batch, v1
 * events with an idempotent retry, a rejected request, a duplicate, a cancellation, an event naming no meter, a
 * webhook delivery): every counter equals what was sent, histograms count every answer, the consumer lag drains to
 * 0, the gateway threads' values reach the one answer, and METRICS_TOKEN guards the endpoint.
 */
import t from 'tap';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import WebSocket from 'ws';
import { startServer, eventually } from './helpers/server';
import { parseExposition, type Exposition } from './helpers/prometheus';
import { uniqueName } from './helpers/assertions';

const TOKEN = 'metrics-' + Math.random().toString(36).slice(2);

t.test('GET /metrics counts what a stream of events did', async (t) => {
  const hooks: string[] = [];
  const receiver = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      hooks.push(String(req.url));
      res.writeHead(200).end('{}');
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => new Promise<void>((resolve) => receiver.close(() => resolve())));

  const server = await startServer({ env: { GATEWAY_THREADS: '2', METRICS_TOKEN: TOKEN, WEBHOOK_POLL_MS: '200' } });
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  const scrape = async (): Promise<Exposition> => {
    const res = await server.request('GET', '/metrics', { key: TOKEN });
    t.equal(res.status, 200, 'scrape answered');
    return parseExposition(res.text);
  };

  await t.test('METRICS_TOKEN guards the endpoint', async (t) => {
    const none = await server.request('GET', '/metrics', { key: null });
    t.equal(none.status, 401);
    t.equal(none.headers.get('www-authenticate'), 'Bearer realm="meterd metrics"');
    t.equal(none.body.error.type, 'invalid_request_error');
    const apiKey = await server.request('GET', '/metrics');
    t.equal(apiKey.status, 401, 'an API key is not the metrics token');
    const ok = await server.request('GET', '/metrics', { key: TOKEN });
    t.equal(ok.status, 200);
    t.equal(ok.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
  });

  const meter = await stripe.billing.meters.create({
    display_name: 'Metrics',
    event_name: uniqueName('metrics'),
    default_aggregation: { formula: 'sum' },
  });
  await stripe.webhookEndpoints.create({ url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`, enabled_events: ['customer.created'] });

  // HTTP stream: 3 requests of 10 events, one of them a duplicate of an earlier identifier, one naming no meter.
  const session = await stripe.v2.billing.meterEventSession.create();
  const streamer = server.stripe(session.authentication_token);
  const sent: string[] = [];
  for (let r = 0; r < 3; r++) {
    const events = Array.from({ length: 10 }, (_, i) => {
      const identifier = r === 2 && i === 0 ? sent[0] : `m-${r}-${i}`;
      sent.push(identifier);
      return { event_name: meter.event_name, identifier, payload: { stripe_customer_id: 'cus_m', value: '2' } };
    });
    await streamer.v2.billing.meterEventStream.create({ events });
  }
  await streamer.v2.billing.meterEventStream.create({ events: [{ event_name: 'no_such_meter_here', payload: { stripe_customer_id: 'cus_m', value: '1' } }] });

  // A WebSocket batch of 5 events, acknowledged.
  await new Promise<void>((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/v2/billing/meter_event_stream?encoding=json`, [
      'meterd.stream.v1',
      `bearer.${session.authentication_token}`,
    ]);
    ws.on('error', reject);
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data));
      if (msg.type === 'ready') {
        const events = Array.from({ length: 5 }, (_, i) => ({
          event_name: meter.event_name,
          identifier: `ws-${i}`,
          payload: { stripe_customer_id: 'cus_m', value: '1' },
        }));
        ws.send(JSON.stringify({ id: 'batch-1', events }));
      } else if (msg.type === 'ack') {
        ws.close();
        resolve();
      } else reject(new Error(`unexpected ${String(data)}`));
    });
  });

  // v1: one event sent twice with one Idempotency-Key (counted once, replayed once), one rejected, one cancellation.
  const key = uniqueName('idem');
  for (let i = 0; i < 2; i++) {
    await stripe.billing.meterEvents.create(
      { event_name: meter.event_name, identifier: 'v1-once', payload: { stripe_customer_id: 'cus_m', value: '7' } },
      { idempotencyKey: key },
    );
  }
  await t.rejects(stripe.billing.meterEvents.create({ event_name: meter.event_name, payload: { value: '1' } }), {
    code: 'payload_no_customer_defined',
  } as never);
  await stripe.billing.meterEventAdjustments.create({ event_name: meter.event_name, type: 'cancel', cancel: { identifier: 'm-0-1' } });
  await stripe.customers.create({ name: 'Webhook' });

  // 29 unique stream events + 5 WebSocket + 1 v1, minus the cancelled one; the duplicate and the invalid are dropped.
  let m!: Exposition;
  await eventually(async () => {
    m = await scrape();
    return (
      m.sum('meterd_aggregator_events_stored_total') >= 35 &&
      m.sum('meterd_aggregator_cancellations_total') >= 1 &&
      m.sum('meterd_aggregator_validation_errors_total') >= 1 &&
      m.sum('meterd_webhook_deliveries_total', { outcome: 'delivered' }) >= 1 &&
      m.sum('meterd_consumer_lag_records') === 0 &&
      m.samples.some((s) => s.name === 'meterd_consumer_lag_records')
    );
  }, 60_000);

  await t.test('ingest counters equal what was sent, by endpoint and mode', async (t) => {
    t.equal(m.value('meterd_events_accepted_total', { endpoint: 'v2_meter_event_stream', livemode: 'false' }), 31);
    t.equal(m.value('meterd_batches_accepted_total', { endpoint: 'v2_meter_event_stream', livemode: 'false' }), 4);
    t.equal(m.value('meterd_events_accepted_total', { endpoint: 'v2_meter_event_stream_ws', livemode: 'false' }), 5);
    t.equal(m.value('meterd_batches_accepted_total', { endpoint: 'v2_meter_event_stream_ws', livemode: 'false' }), 1);
    t.equal(m.value('meterd_events_accepted_total', { endpoint: 'v1_meter_events', livemode: 'false' }), 1, 'the idempotent retry is not counted again');
    t.equal(m.value('meterd_events_accepted_total', { endpoint: 'v1_meter_event_adjustments', livemode: 'false' }), 1);
    t.equal(m.value('meterd_idempotency_replays_total', { store: 'memory' }), 1);
    t.equal(m.value('meterd_requests_rejected_total', { endpoint: 'v1_meter_events', code: 'payload_no_customer_defined' }), 1);
    t.equal(m.value('meterd_ack_latency_seconds_count', { endpoint: 'v2_meter_event_stream' }), 4);
    t.equal(m.value('meterd_ack_latency_seconds_bucket', { endpoint: 'v2_meter_event_stream', le: '+Inf' }), 4);
    t.equal(m.value('meterd_ack_latency_seconds_count', { endpoint: 'v2_meter_event_stream_ws' }), 1);
    t.ok(m.value('meterd_ack_latency_seconds_sum', { endpoint: 'v2_meter_event_stream' })! > 0);
    t.equal(m.types.get('meterd_ack_latency_seconds'), 'histogram');
    t.equal(m.types.get('meterd_events_accepted_total'), 'counter');
  });

  await t.test('log, aggregator and webhook counters', async (t) => {
    t.ok(m.sum('meterd_log_appends_total') >= 7, 'one append per request or batch and partition');
    t.ok(m.sum('meterd_log_append_bytes_total') > 0);
    t.equal(m.sum('meterd_log_append_seconds_count'), m.sum('meterd_log_appends_total'), 'every append timed');
    t.ok(m.sum('meterd_log_group_commit_records_count') >= 1, 'durable writes counted');
    t.ok(m.sum('meterd_log_sync_seconds_count') >= 1);
    t.equal(m.sum('meterd_aggregator_events_stored_total'), 35);
    t.equal(m.sum('meterd_aggregator_dedup_hits_total'), 1);
    t.equal(m.sum('meterd_aggregator_cancellations_total'), 1);
    t.equal(m.value('meterd_aggregator_validation_errors_total', { code: 'no_meter' }), 1);
    t.equal(m.value('meterd_aggregator_flush_rows_total', { table: 'meter_events' }), 35);
    t.ok(m.sum('meterd_aggregator_flush_seconds_count') >= 1);
    t.ok(m.sum('meterd_aggregator_freshness_seconds_count') >= 1);
    t.ok(
      m.samples.some((s) => s.name === 'meterd_aggregator_stored_offset'),
      'stored watermark per partition',
    );
    // One per stored event (the cancelled one's included: its identifier stays taken); the duplicate adds none.
    const identifiers = m.sum('meterd_dedup_index_identifiers');
    t.equal(identifiers, m.sum('meterd_aggregator_events_stored_total'), 'the dedup index holds the identifiers stored');
    t.ok(m.sum('meterd_dedup_index_bytes') >= identifiers * 24, 'and reports the memory of its tables');
    t.ok(m.sum('meterd_webhook_attempts_total', { result: 'success' }) >= 1);
    t.equal(m.sum('meterd_clickhouse_errors_total'), 0);
    t.equal(m.sum('meterd_log_errors_total'), 0);
    t.ok(hooks.length >= 1, 'the receiver got the delivery');
  });

  await t.test('process, event loop and thread metrics', async (t) => {
    t.ok(m.value('process_cpu_user_seconds_total')! > 0);
    t.ok(m.value('process_resident_memory_bytes')! > 0);
    t.ok(m.samples.some((s) => s.name === 'nodejs_eventloop_lag_seconds'));
    t.ok(m.value('meterd_event_loop_busy_seconds_total', { thread: 'main' })! > 0);
    t.ok(m.value('meterd_event_loop_busy_seconds_total', { thread: 'gateway-0' })! > 0, "a gateway thread's values reach the main thread's answer");
    t.ok(m.value('meterd_event_loop_busy_seconds_total', { thread: 'gateway-1' }) !== undefined);
    t.equal(m.value('meterd_info', { role: 'all' }), 1);
    for (const name of m.types.keys()) t.ok(m.help.get(name), `${name} has a HELP line`);
  });
});
