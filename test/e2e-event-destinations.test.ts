/**
 * End-to-end: v2 event destinations (`stripe.v2.core.eventDestinations`): create/retrieve/update/list/delete,
 * enable/disable, ping, v2 errors, accounts as walls; thin events (meter created, the error report of a streamed
 * invalid event, pings) delivered to a local receiver that verifies them with the SDK's parseEventNotification, in
 * order, retried after a failed attempt, and not delivered while the destination is disabled.
 */
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';
import { receiver } from './helpers/receiver';

/** What the tests read of a parsed thin event notification. */
interface Notification {
  id: string;
  type: string;
  related_object?: { id: string; type: string; url: string } | null;
  fetchEvent(): Promise<unknown>;
  fetchRelatedObject(): Promise<unknown>;
}

interface ErrorReportEvent {
  id: string;
  data: { reason: { error_types: Array<{ code: string; sample_errors: Array<{ request: { identifier: string } }> }> } };
}

const KEY_A = 'sk_test_ed_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_ed_b_' + Math.random().toString(36).slice(2, 10);

t.test('event destinations end to end', async (t) => {
  const server = await startServer({
    env: { API_KEYS: `${KEY_A},${KEY_B}`, WEBHOOK_RETRY_BASE_MS: '300', WEBHOOK_POLL_MS: '200' },
    key: KEY_A,
  });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const other = server.stripe(KEY_B);

  await t.test('create, retrieve, update, list, delete; v2 errors; accounts are walls', async (t) => {
    const created = await stripe.v2.core.eventDestinations.create({
      name: 'Meter errors',
      type: 'webhook_endpoint',
      event_payload: 'thin',
      enabled_events: ['v1.billing.meter.error_report_triggered'],
      description: 'errors',
      metadata: { team: 'billing' },
      webhook_endpoint: { url: 'http://127.0.0.1:9/hook' },
      include: ['webhook_endpoint.signing_secret', 'webhook_endpoint.url'],
    });
    t.match(created.id, /^ed_test_/);
    t.equal(created.object, 'v2.core.event_destination');
    t.equal(created.status, 'enabled');
    t.equal(created.type, 'webhook_endpoint');
    t.equal(created.event_payload, 'thin');
    t.same(created.events_from, ['@self']);
    t.equal(created.livemode, false);
    t.same(created.metadata, { team: 'billing' });
    t.match(created.created, /^\d{4}-\d\d-\d\dT/);
    t.equal(created.webhook_endpoint?.url, 'http://127.0.0.1:9/hook');
    t.match(created.webhook_endpoint?.signing_secret ?? '', /^whsec_/, 'the signing secret, when included at creation');

    const plain = await stripe.v2.core.eventDestinations.retrieve(created.id);
    t.same(plain.webhook_endpoint, {}, 'url and secret are not served unless included');
    const withUrl = await stripe.v2.core.eventDestinations.retrieve(created.id, { include: ['webhook_endpoint.url'] });
    t.same(withUrl.webhook_endpoint, { url: 'http://127.0.0.1:9/hook' });

    const updated = await stripe.v2.core.eventDestinations.update(created.id, {
      name: 'Renamed',
      enabled_events: ['v1.billing.meter.error_report_triggered', 'v1.billing.meter.created'],
      metadata: { team: null as unknown as string, owner: 'ops' },
    });
    t.equal(updated.name, 'Renamed');
    t.same(updated.enabled_events, ['v1.billing.meter.error_report_triggered', 'v1.billing.meter.created']);
    t.same(updated.metadata, { owner: 'ops' }, 'a key sent as null is removed');

    const second = await stripe.v2.core.eventDestinations.create({
      name: 'Second',
      type: 'webhook_endpoint',
      event_payload: 'thin',
      enabled_events: ['v1.billing.meter.created'],
      webhook_endpoint: { url: 'http://127.0.0.1:9/other' },
    });
    const ids: string[] = [];
    for await (const d of stripe.v2.core.eventDestinations.list({ limit: 1 })) ids.push(d.id);
    t.same(ids, [second.id, created.id], 'v2 pagination (next_page_url) walks every destination, newest first');

    await expectError(
      t,
      stripe.v2.core.eventDestinations.create({ type: 'webhook_endpoint', event_payload: 'thin', enabled_events: ['x.y'] } as never),
      { statusCode: 400, code: 'parameter_missing' },
      'name is required',
    );
    await expectError(
      t,
      stripe.v2.core.eventDestinations.create({
        name: 'eb',
        type: 'amazon_eventbridge',
        event_payload: 'thin',
        enabled_events: ['x.y'],
        amazon_eventbridge: { aws_account_id: '1', aws_region: 'us-east-1' },
      }),
      { statusCode: 400, code: 'parameter_invalid' },
      'only webhook endpoints',
    );
    await expectError(
      t,
      stripe.v2.core.eventDestinations.create({
        name: 'u',
        type: 'webhook_endpoint',
        event_payload: 'thin',
        enabled_events: ['v1.billing.meter.created'],
        webhook_endpoint: { url: 'ftp://example.com' },
      }),
      { statusCode: 400, code: 'url_invalid' },
      'an http(s) URL',
    );
    const raw = await server.request('POST', '/v2/core/event_destinations', {
      body: JSON.stringify({
        name: 'n',
        type: 'webhook_endpoint',
        event_payload: 'thin',
        snapshot_api_version: '2026-10-28.endive',
        enabled_events: ['v1.billing.meter.created'],
        webhook_endpoint: { url: 'http://127.0.0.1:9/' },
      }),
      headers: { 'content-type': 'application/json' },
    });
    t.equal(raw.status, 400);
    t.equal(raw.body.error.code, 'parameter_invalid', 'v2 error object');
    t.notOk('param' in raw.body.error, 'v2 errors carry no param');

    await expectError(t, other.v2.core.eventDestinations.retrieve(created.id), { statusCode: 404 }, "another account's destination");
    const otherIds: string[] = [];
    for await (const d of other.v2.core.eventDestinations.list()) otherIds.push(d.id);
    t.same(otherIds, [], 'another account lists none');
    await expectError(t, other.v2.core.eventDestinations.del(created.id), { statusCode: 404 }, 'nor deletes it');

    const deleted = await stripe.v2.core.eventDestinations.del(second.id);
    t.equal(deleted.id, second.id);
    await expectError(t, stripe.v2.core.eventDestinations.retrieve(second.id), { statusCode: 404 }, 'deleted');
    await stripe.v2.core.eventDestinations.del(created.id);
  });

  await t.test('thin events delivered, signed, in order, retried; ping; disable and enable', async (t) => {
    // The first attempt fails: the delivery is retried after the backoff, and later events wait behind it.
    const rx = await receiver((n) => (n === 0 ? 500 : 200));
    const rxOther = await receiver();
    t.teardown(() => Promise.all([rx.close(), rxOther.close()]));
    const dest = await stripe.v2.core.eventDestinations.create({
      name: 'All meter events',
      type: 'webhook_endpoint',
      event_payload: 'thin',
      enabled_events: ['v1.billing.meter.created', 'v1.billing.meter.error_report_triggered', 'v1.billing.meter.no_meter_found'],
      webhook_endpoint: { url: rx.url },
      include: ['webhook_endpoint.signing_secret'],
    });
    const secret = dest.webhook_endpoint!.signing_secret!;
    const destOther = await other.v2.core.eventDestinations.create({
      name: 'B',
      type: 'webhook_endpoint',
      event_payload: 'thin',
      enabled_events: ['*'],
      webhook_endpoint: { url: rxOther.url },
    });

    const m = await stripe.billing.meters.create({ display_name: 'ED', event_name: uniqueName('ed'), default_aggregation: { formula: 'sum' } });
    const session = await stripe.v2.billing.meterEventSession.create();
    const badId = uniqueName('bad');
    await server.stripe(session.authentication_token).v2.billing.meterEventStream.create({
      events: [{ event_name: m.event_name, identifier: badId, payload: { stripe_customer_id: 'cus_ed', value: 'lots' } }],
    });

    const verified = () =>
      rx.got.flatMap((g) => {
        try {
          return [stripe.parseEventNotification(g.body, g.signature, secret) as unknown as Notification];
        } catch {
          return [];
        }
      });
    await eventually(async () => new Set(verified().map((n) => n.id)).size >= 2, 60_000, 100);
    t.ok(rx.got.length >= 3, 'the first attempt failed and was retried');
    const notes = verified();
    t.equal(notes.length, rx.got.length, 'every delivery verifies with the SDK');
    t.same(
      notes.slice(1).map((n) => n.type),
      ['v1.billing.meter.created', 'v1.billing.meter.error_report_triggered'],
      'in order: the retried meter.created first, then the error report',
    );
    t.equal(notes[0].id, notes[1].id, 'the retry carries the same event');
    const report = notes[2];
    t.same(report.related_object, { id: m.id, type: 'billing.meter', url: `/v1/billing/meters/${m.id}` });
    t.notOk('data' in JSON.parse(rx.got[2].body), 'a thin notification carries no data');
    const full = (await report.fetchEvent()) as ErrorReportEvent;
    t.equal(full.id, report.id, 'fetchEvent reads the event from /v2/core/events');
    t.equal(full.data.reason.error_types[0].code, 'meter_event_invalid_value');
    t.equal(full.data.reason.error_types[0].sample_errors[0].request.identifier, badId, 'the streamed invalid event');
    const related = (await report.fetchRelatedObject()) as Stripe.Billing.Meter;
    t.equal(related.id, m.id, 'fetchRelatedObject reads the meter');
    t.throws(() => stripe.parseEventNotification(rx.got[2].body, rx.got[2].signature, 'whsec_wrong'), 'a wrong secret does not verify');

    // Ping: recorded, answered with the event, delivered to that destination.
    const ping = (await stripe.v2.core.eventDestinations.ping(dest.id)) as unknown as Notification;
    t.equal(ping.type, 'v2.core.event_destination.ping');
    t.same(ping.related_object, { id: dest.id, type: 'v2.core.event_destination', url: `/v2/core/event_destinations/${dest.id}` });
    await eventually(async () => verified().some((n) => n.id === ping.id), 30_000, 100);

    // Disabled: nothing is delivered; enabled again: later events are.
    const disabled = await stripe.v2.core.eventDestinations.disable(dest.id);
    t.equal(disabled.status, 'disabled');
    t.same(disabled.status_details, { disabled: { reason: 'user' } });
    const whileDisabled = await stripe.billing.meters.create({ display_name: 'off', event_name: uniqueName('off'), default_aggregation: { formula: 'sum' } });
    const enabled = await stripe.v2.core.eventDestinations.enable(dest.id);
    t.equal(enabled.status, 'enabled');
    const afterEnable = await stripe.billing.meters.create({ display_name: 'on', event_name: uniqueName('on'), default_aggregation: { formula: 'sum' } });
    await eventually(async () => verified().some((n) => n.related_object?.id === afterEnable.id), 30_000, 100);
    t.notOk(
      verified().some((n) => n.related_object?.id === whileDisabled.id),
      'the event recorded while disabled was not delivered',
    );

    // A snapshot destination receives the v1 events, as a v1 webhook endpoint does.
    const rxSnap = await receiver();
    t.teardown(() => rxSnap.close());
    const snap = await stripe.v2.core.eventDestinations.create({
      name: 'snapshots',
      type: 'webhook_endpoint',
      event_payload: 'snapshot',
      enabled_events: ['customer.*'],
      snapshot_api_version: '2026-10-28.endive',
      webhook_endpoint: { url: rxSnap.url },
      include: ['webhook_endpoint.signing_secret'],
    });
    t.equal(snap.snapshot_api_version, '2026-10-28.endive', 'snapshot events rendered in the pinned version');
    const cus = await stripe.customers.create({ name: 'Snap' });
    await stripe.products.create({ name: uniqueName('not-a-customer-event') });
    await stripe.customers.update(cus.id, { name: 'Snap 2' });
    await eventually(async () => rxSnap.got.length >= 2, 30_000, 100);
    const verifier = new Stripe('sk_test_unused', { telemetry: false });
    const snapEvents = rxSnap.got.map((g) => verifier.webhooks.constructEvent(g.body, g.signature, snap.webhook_endpoint!.signing_secret!));
    t.same(
      snapEvents.map((e) => e.type),
      ['customer.created', 'customer.updated'],
      'the matching v1 events, in order, verified with constructEvent',
    );
    t.equal((snapEvents[0].data.object as Stripe.Customer).id, cus.id);
    await eventually(async () => (await stripe.events.retrieve(snapEvents[1].id)).pending_webhooks === 0, 30_000, 100);

    // Accounts are walls: B's destination saw none of A's events, only B's own ping.
    const pingB = await other.v2.core.eventDestinations.ping(destOther.id);
    await eventually(async () => rxOther.got.length >= 1, 30_000, 100);
    t.same(
      rxOther.got.map((g) => JSON.parse(g.body).id),
      [pingB.id],
      "another account's destination receives only its own events",
    );
  });
});
