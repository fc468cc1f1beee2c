import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, eventually, currentRange, DISTRIBUTED } from './helpers/server';

t.test(
  'the embedded event log is bounded: consumed segments are reclaimed',
  { skip: DISTRIBUTED && 'Kafka retains by time, not by consumption' },
  async (t) => {
    const server = await startServer({ env: { LOG_SEGMENT_BYTES: '65536', SNAPSHOT_INTERVAL_S: '1', FLUSH_INTERVAL_MS: '50' } });
    t.teardown(() => server.stop());
    const stripe = server.stripe();
    const meter = await stripe.billing.meters.create({ display_name: 'Reclaim', event_name: 'reclaim', default_aggregation: { formula: 'sum' } });
    const session = await stripe.v2.billing.meterEventSession.create();
    const logDir = path.join(server.dataDir, 'log', 'p0');
    const segments = () => fs.readdirSync(logDir).filter((f) => f.endsWith('.seg'));

    let sent = 0;
    // Every segment file seen during the run: how fast the aggregator reclaims them depends on the machine's load.
    const seen = new Set<string>();
    const batches = 60;
    for (let b = 0; b < batches; b++) {
      const events = Array.from({ length: 100 }, (_, i) => ({
        event_name: 'reclaim',
        identifier: `reclaim-${b}-${i}`,
        payload: { stripe_customer_id: 'cus_reclaim', value: '1', padding: 'x'.repeat(60) },
      }));
      const res = await server.request('POST', '/v2/billing/meter_event_stream', {
        key: session.authentication_token,
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ events }),
      });
      t.equal(res.status, 200);
      sent += 100;
      for (const f of segments()) seen.add(f);
      // Give the aggregator time to flush, snapshot and commit now and then.
      if (b % 10 === 9) await new Promise((r) => setTimeout(r, 1200));
    }
    t.ok(seen.size > 3, `the run rolled over several segments (saw ${seen.size})`);
    const { start, end } = currentRange();
    await eventually(async () => {
      const s = await stripe.billing.meters.listEventSummaries(meter.id, { customer: 'cus_reclaim', start_time: start, end_time: end });
      return s.data[0]?.aggregated_value === sent;
    }, 20_000);
    // One more flush after a snapshot is due lets the consumer commit past everything.
    await new Promise((r) => setTimeout(r, 1200));
    await stripe.billing.meterEvents.create({ event_name: 'reclaim', payload: { stripe_customer_id: 'cus_other', value: '1' } });
    const firstBase = () => Number(segments().sort()[0].slice(0, 20));
    const ms = await eventually(async () => segments().length <= 2 && firstBase() > 0, 10_000, 100);
    t.pass(`consumed segments deleted within ${ms} ms; ${segments().length} left, oldest starts at offset ${firstBase()}`);
  },
);
