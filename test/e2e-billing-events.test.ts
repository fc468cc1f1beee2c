/**
 * End-to-end: v1 events recorded for billing changes (customers, products, prices) with previous_attributes, the
 * events list/retrieve with type filters, webhook endpoints CRUD, and signed webhook deliveries (verified with the
 * official client's webhooks.constructEvent), in order, retried with backoff when the receiver fails.
 */
import t from 'tap';
import Stripe from 'stripe';
import { startServer, eventually, tempDir } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';
import { receiver } from './helpers/receiver';

const KEY_A = 'sk_test_evt_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_evt_b_' + Math.random().toString(36).slice(2, 10);
const KEY_C = 'sk_test_evt_c_' + Math.random().toString(36).slice(2, 10);
const RETRY_BASE_MS = 300;

t.test('events and webhooks end to end', async (t) => {
  const server = await startServer({
    env: { API_KEYS: `${KEY_A},${KEY_B},${KEY_C}`, WEBHOOK_RETRY_BASE_MS: String(RETRY_BASE_MS), WEBHOOK_POLL_MS: '200' },
    key: KEY_A,
  });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const verifier = new Stripe('sk_test_unused', { telemetry: false });

  await t.test('customer create/update/delete events with previous_attributes', async (t) => {
    const c = await stripe.customers.create({ name: 'Ada', email: 'ada@example.com', metadata: { tier: 'gold' } });
    const u = await stripe.customers.update(c.id, { name: 'Ada L.', metadata: { tier: 'platinum', extra: 'x' } });
    await stripe.customers.del(c.id);

    const created = await stripe.events.list({ type: 'customer.created', limit: 1 });
    t.equal(created.data.length, 1);
    const ce = created.data[0];
    t.match(ce.id, /^evt_test_/);
    t.equal(ce.object, 'event');
    t.equal(ce.type, 'customer.created');
    t.equal(ce.livemode, false);
    t.equal(ce.api_version, '2026-10-28.endive');
    t.same(ce.request, { id: null, idempotency_key: null });
    t.equal(ce.pending_webhooks, 0);
    t.same(ce.data.object, c, 'data.object is the customer as created');
    t.notOk('previous_attributes' in ce.data, 'no previous_attributes on create');

    const updated = await stripe.events.list({ type: 'customer.updated', limit: 1 });
    const ue = updated.data[0];
    t.same(ue.data.object, u, 'data.object is the updated customer');
    t.same(ue.data.previous_attributes, { name: 'Ada', metadata: { tier: 'gold', extra: null } }, 'only the changed attributes, old values');

    const deleted = await stripe.events.list({ type: 'customer.deleted', limit: 1 });
    t.equal((deleted.data[0].data.object as Stripe.Customer).id, c.id);
    t.equal((deleted.data[0].data.object as Stripe.Customer).name, 'Ada L.');

    const all = await stripe.events.list({ limit: 3 });
    t.same(
      all.data.map((e) => e.type),
      ['customer.deleted', 'customer.updated', 'customer.created'],
      'newest first',
    );
    t.ok(all.data[0].created >= all.data[2].created);

    const got = await stripe.events.retrieve(ue.id);
    t.same(got, ue, 'retrieve returns the listed event');
    await expectError(t, stripe.events.retrieve('evt_test_nope'), { statusCode: 404, code: 'resource_missing' }, 'unknown event');

    // An update that changes nothing records no event.
    const c2 = await stripe.customers.create({ name: 'Same' });
    await stripe.customers.update(c2.id, { name: 'Same' });
    const after = await stripe.events.list({ limit: 1 });
    t.equal(after.data[0].type, 'customer.created', 'no-op update: no customer.updated event');
  });

  await t.test('product and price events, type filters', async (t) => {
    const prod = await stripe.products.create({ name: uniqueName('Widget') });
    await stripe.products.update(prod.id, { description: 'A widget' });
    const price = await stripe.prices.create({ product: prod.id, unit_amount: 1200, currency: 'usd' });
    await stripe.prices.update(price.id, { nickname: 'standard' });
    const prod2 = await stripe.products.create({ name: uniqueName('Gone') });
    await stripe.products.del(prod2.id);

    const pu = (await stripe.events.list({ type: 'product.updated', limit: 1 })).data[0];
    t.equal((pu.data.object as Stripe.Product).description, 'A widget');
    // `updated` changes too when the update falls in a later second than the creation (Stripe reports it as well).
    const { updated, ...prevRest } = pu.data.previous_attributes as Record<string, unknown>;
    t.same(prevRest, { description: null });
    if (updated !== undefined) t.equal(updated, prod.updated, 'previous updated is the creation time');
    const pru = (await stripe.events.list({ type: 'price.updated', limit: 1 })).data[0];
    t.equal((pru.data.object as Stripe.Price).nickname, 'standard');
    t.same(pru.data.previous_attributes, { nickname: null });
    const pc = (await stripe.events.list({ type: 'price.created', limit: 1 })).data[0];
    t.equal((pc.data.object as Stripe.Price).id, price.id);
    t.equal((pc.data.object as Stripe.Price).unit_amount, 1200);
    const pd = (await stripe.events.list({ type: 'product.deleted', limit: 1 })).data[0];
    t.equal((pd.data.object as Stripe.Product).id, prod2.id);

    const products = await stripe.events.list({ type: 'product.*', limit: 10 });
    t.same(
      products.data.map((e) => e.type),
      ['product.deleted', 'product.created', 'product.updated', 'product.created'],
    );
    const several = await stripe.events.list({ types: ['price.created', 'product.deleted'], limit: 10 });
    t.same(
      several.data.map((e) => e.type),
      ['product.deleted', 'price.created'],
    );
    const none = await stripe.events.list({ type: 'invoice.paid' });
    t.same(none.data, []);

    // Pagination through the client.
    const ids: string[] = [];
    for await (const e of stripe.events.list({ limit: 2 })) ids.push(e.id);
    const page = await stripe.events.list({ limit: 100 });
    t.same(
      ids,
      page.data.map((e) => e.id),
      'auto-pagination walks the same newest-first order',
    );
    const created = await stripe.events.list({ created: { gte: Math.floor(Date.now() / 1000) + 3600 } });
    t.same(created.data, [], 'created filter in the future: nothing');

    // Accounts are walls.
    const other = await server.stripe(KEY_C).events.list({ type: 'product.*' });
    t.same(other.data, [], 'another account sees none of these events');
  });

  await t.test('webhook endpoints CRUD', async (t) => {
    const we = await stripe.webhookEndpoints.create({
      url: 'https://example.com/hook',
      enabled_events: ['customer.created', 'invoice.paid'],
      description: 'main',
      metadata: { k: 'v' },
    });
    t.match(we.id, /^we_test_/);
    t.equal(we.object, 'webhook_endpoint');
    t.match(we.secret!, /^whsec_[0-9A-Za-z]{32}$/);
    t.equal(we.status, 'enabled');
    t.equal(we.url, 'https://example.com/hook');
    t.same(we.enabled_events, ['customer.created', 'invoice.paid']);
    t.equal(we.description, 'main');
    t.same(we.metadata, { k: 'v' });
    t.equal(we.application, null);
    t.equal(we.api_version, null);
    const got = await stripe.webhookEndpoints.retrieve(we.id);
    t.equal(got.secret, undefined, 'the secret is only shown on create');
    t.equal(got.url, we.url);
    const up = await stripe.webhookEndpoints.update(we.id, { disabled: true, enabled_events: ['*'], url: 'https://example.com/other', description: '' });
    t.equal(up.status, 'disabled');
    t.same(up.enabled_events, ['*']);
    t.equal(up.url, 'https://example.com/other');
    t.equal(up.description, null);
    const list = await stripe.webhookEndpoints.list();
    t.same(
      list.data.map((e) => e.id),
      [we.id],
    );
    t.equal(list.data[0].secret, undefined);
    await expectError(t, stripe.webhookEndpoints.create({ url: 'not a url', enabled_events: ['*'] }), { statusCode: 400, param: 'url' }, 'bad url');
    await expectError(t, stripe.webhookEndpoints.create({ url: 'https://example.com', enabled_events: [] as any }), { statusCode: 400 }, 'no events');
    const del = await stripe.webhookEndpoints.del(we.id);
    t.same({ ...del }, { id: we.id, object: 'webhook_endpoint', deleted: true });
    await expectError(t, stripe.webhookEndpoints.retrieve(we.id), { statusCode: 404, code: 'resource_missing' }, 'deleted endpoint');
  });

  await t.test('signed deliveries, in order, only matching events', async (t) => {
    const sB = server.stripe(KEY_B);
    const rx = await receiver(() => 200);
    t.teardown(() => rx.close());
    const we = await sB.webhookEndpoints.create({ url: rx.url, enabled_events: ['customer.created', 'customer.updated'] });
    const c1 = await sB.customers.create({ name: 'one' });
    await sB.products.create({ name: 'not delivered' });
    await sB.customers.update(c1.id, { name: 'one b' });
    const c2 = await sB.customers.create({ name: 'two' });
    await sB.customers.update(c2.id, { metadata: { a: '1' } });
    await eventually(async () => rx.got.length >= 4, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    t.equal(rx.got.length, 4, 'exactly the four matching events');
    const events = rx.got.map((g) => verifier.webhooks.constructEvent(g.body, g.signature, we.secret!));
    t.same(
      events.map((e) => e.type),
      ['customer.created', 'customer.updated', 'customer.created', 'customer.updated'],
      'in event order',
    );
    t.same(
      events.map((e) => (e.data.object as Stripe.Customer).id),
      [c1.id, c1.id, c2.id, c2.id],
    );
    t.same(events[1].data.previous_attributes, { name: 'one' });
    for (const g of rx.got) t.match(g.signature, /^t=\d+,v1=[0-9a-f]{64}$/);
    const listed = (await sB.events.list({ types: ['customer.created', 'customer.updated'] })).data.reverse();
    t.same(
      events.map((e) => e.id),
      listed.map((e) => e.id),
      'delivered ids are the recorded events',
    );
    t.equal(events[0].pending_webhooks, 1, 'one delivery outstanding when sent');
    await eventually(async () => (await sB.events.retrieve(events[3].id)).pending_webhooks === 0, 5000);
    t.throws(() => verifier.webhooks.constructEvent(rx.got[0].body, rx.got[0].signature, 'whsec_wrong'), 'a wrong secret does not verify');
    t.throws(() => verifier.webhooks.constructEvent(rx.got[0].body + ' ', rx.got[0].signature, we.secret!), 'a changed body does not verify');

    // Disabled endpoints get nothing.
    await sB.webhookEndpoints.update(we.id, { disabled: true });
    await sB.customers.create({ name: 'three' });
    await new Promise((r) => setTimeout(r, 800));
    t.equal(rx.got.length, 4, 'no delivery to a disabled endpoint');
  });

  await t.test('a failing receiver gets retries with backoff, then the event', async (t) => {
    const sC = server.stripe(KEY_C);
    const rx = await receiver((n) => (n < 2 ? 500 : 200));
    t.teardown(() => rx.close());
    const we = await sC.webhookEndpoints.create({ url: rx.url, enabled_events: ['*'] });
    const c = await sC.customers.create({ name: 'retry me' });
    await sC.customers.update(c.id, { name: 'retry me 2' });
    await eventually(async () => rx.got.length >= 4, 20_000);
    const evs = rx.got.map((g) => verifier.webhooks.constructEvent(g.body, g.signature, we.secret!));
    t.same(
      evs.map((e) => e.type),
      ['customer.created', 'customer.created', 'customer.created', 'customer.updated'],
      'the first event is retried until accepted; the next one waits for it',
    );
    t.equal(evs[0].id, evs[1].id);
    t.equal(evs[1].id, evs[2].id);
    const gap1 = rx.got[1].at - rx.got[0].at;
    const gap2 = rx.got[2].at - rx.got[1].at;
    t.ok(gap1 >= RETRY_BASE_MS - 20, `first retry after the base delay (${gap1} ms)`);
    t.ok(gap2 >= 2 * RETRY_BASE_MS - 20, `second retry after twice the base delay (${gap2} ms)`);
    const ev = await sC.events.retrieve(evs[0].id);
    t.equal(ev.pending_webhooks, 0, 'delivered: nothing pending');
  });
});

t.test('pending deliveries survive a restart', async (t) => {
  const dataDir = tempDir('meterd-webhooks-');
  const env = { WEBHOOK_RETRY_BASE_MS: '500', WEBHOOK_POLL_MS: '200' };
  let server = await startServer({ dataDir, env, key: KEY_A });
  t.teardown(() => server.stop());
  let failing = true;
  const rx = await receiver(() => (failing ? 503 : 200));
  t.teardown(() => rx.close());
  const stripe = server.stripe();
  const we = await stripe.webhookEndpoints.create({ url: rx.url, enabled_events: ['customer.created'] });
  const c = await stripe.customers.create({ name: 'survivor' });
  await eventually(async () => rx.got.length >= 1, 10_000);
  await new Promise((r) => setTimeout(r, 200)); // let the failed attempt be recorded (its lease released)
  await server.stop();
  failing = false;
  const before = rx.got.length;
  server = await startServer({ dataDir, env, key: KEY_A });
  await eventually(async () => rx.got.length > before, 15_000);
  const last = rx.got[rx.got.length - 1];
  const ev = new Stripe('sk_test_unused', { telemetry: false }).webhooks.constructEvent(last.body, last.signature, we.secret!);
  t.equal(ev.type, 'customer.created');
  t.equal((ev.data.object as Stripe.Customer).id, c.id, 'the pending delivery was resumed after the restart');
  await eventually(async () => (await server.stripe().events.retrieve(ev.id)).pending_webhooks === 0, 5000);
  t.pass('pending_webhooks back to 0');
});
