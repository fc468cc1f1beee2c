/**
 * Upgrading keeps the log readable: stream events that an earlier version wrote as msgpackr records (and did not yet
 * aggregate when it stopped) are counted after the upgrade, next to new stream events written as JSON records, with
 * dedup across the two formats and payload keys such as `__proto__` intact. Embedded only: the records are put into
 * the log the way the earlier version appended them, through the embedded log's own producer (the record format does
 * not depend on the log driver; test/stream-records.test.ts shows both formats decode to the same events).
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { startServer, tempDir, eventually, currentRange, DISTRIBUTED, type TestServer } from './helpers/server';
import { EmbeddedLog } from '../shared/log/embedded-log';
import { encodeRecord, RecordKind, type EventTuple } from '../shared/event-record';
import { accountForKey } from '../shared/http/auth';

const range = currentRange();

async function summary(server: TestServer, meterId: string, customer: string): Promise<number> {
  const q = new URLSearchParams({ customer, start_time: String(range.start), end_time: String(range.end) });
  const res = await server.request('GET', `/v1/billing/meters/${meterId}/event_summaries?${q}`);
  if (res.status !== 200) throw new Error(`event_summaries: ${res.status} ${res.text}`);
  return res.body.data[0].aggregated_value as number;
}

t.test('stream records written by the previous version are counted after the upgrade', { skip: DISTRIBUTED && 'embedded log only' }, async (t) => {
  const dataDir = tempDir('meterd-upgrade-');
  const key = `sk_test_upgrade${Math.random().toString(36).slice(2, 10)}`;
  let server = await startServer({ dataDir, key });
  t.teardown(async () => {
    await server.kill();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  const stripe = server.stripe();
  const plain = await stripe.billing.meters.create({ display_name: 'Upgrade', event_name: 'upgrade_sum', default_aggregation: { formula: 'sum' } });
  const proto = await stripe.billing.meters.create({
    display_name: 'Upgrade proto',
    event_name: 'upgrade_proto',
    default_aggregation: { formula: 'sum' },
    customer_mapping: { type: 'by_id', event_payload_key: '__proto__' },
  });
  await server.stop();

  // What the previous version appended for two stream requests: msgpackr records of event tuples, not validated.
  const receivedMs = Date.now();
  const old = (events: EventTuple[]) =>
    encodeRecord({ kind: RecordKind.Events, account: accountForKey(key), livemode: false, receivedMs, validated: false, events });
  const payload = (customer: string, value: string) => Object.assign(Object.create(null), { stripe_customer_id: customer, value });
  const log = await EmbeddedLog.open(path.join(dataDir, 'log'));
  const producer = log.producer();
  await producer.append(
    0,
    old([
      ['upgrade_sum', 'old-1', receivedMs, payload('cus_a', '5')],
      ['upgrade_sum', 'old-2', receivedMs - 1000, payload('cus_b', '7')],
      ['upgrade_proto', 'old-3', receivedMs, Object.assign(Object.create(null), { ['__proto__']: 'cus_p', value: '3' })],
    ]),
  );
  await producer.append(0, old([['upgrade_sum', 'old-4', receivedMs, payload('cus_a', '0.25')]]));
  await log.close();

  server = await startServer({ dataDir, key });
  const session = await server.request('POST', '/v2/billing/meter_event_session', { headers: { 'content-type': 'application/json' }, body: '{}' });
  t.equal(session.status, 200);
  const sent = await server.request('POST', '/v2/billing/meter_event_stream', {
    key: session.body.authentication_token,
    headers: { 'content-type': 'application/json' },
    body: `{"events":[${[
      '{"event_name":"upgrade_sum","identifier":"new-1","payload":{"stripe_customer_id":"cus_a","value":"100"}}',
      '{"event_name":"upgrade_sum","identifier":"old-1","payload":{"stripe_customer_id":"cus_a","value":"5"}}',
      '{"event_name":"upgrade_proto","identifier":"new-2","payload":{"__proto__":"cus_p","value":2}}',
    ].join(',')}]}`,
  });
  t.equal(sent.status, 200, 'new stream events are accepted');

  const expected: Array<[string, string, number]> = [
    [plain.id, 'cus_a', 105.25],
    [plain.id, 'cus_b', 7],
    [proto.id, 'cus_p', 5],
  ];
  await eventually(async () => {
    for (const [meter, customer, value] of expected) if ((await summary(server, meter, customer)) !== value) return false;
    return true;
  }, 30_000);
  for (const [meter, customer, value] of expected) {
    t.equal(await summary(server, meter, customer), value, `${customer}: old and new records counted once each, the resend of old-1 not again`);
  }
});
