/**
 * End-to-end: customers (create, retrieve, update, delete, list with filters and pagination, search) through the
 * official stripe client against the real server, including metadata rules and account isolation.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';

const KEY_A = 'sk_test_cust_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_cust_b_' + Math.random().toString(36).slice(2, 10);
const KEY_C = 'sk_test_cust_c_' + Math.random().toString(36).slice(2, 10);

const nowS = () => Math.floor(Date.now() / 1000);
const INVALID = { type: 'StripeInvalidRequestError', statusCode: 400 };

t.test('customers end to end', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B},${KEY_C}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);
  const stripeC = server.stripe(KEY_C);

  await t.test('create with defaults and retrieve', async (t) => {
    const before = nowS();
    const c = await stripe.customers.create();
    t.match(c.id, /^cus_test_/);
    t.equal(c.object, 'customer');
    t.equal(c.address, null);
    t.equal(c.balance, 0);
    t.ok(c.created >= before - 1 && c.created <= nowS() + 1, 'created is now');
    t.equal(c.currency, null);
    t.equal(c.default_source, null);
    t.equal(c.delinquent, false);
    t.equal(c.description, null);
    t.equal(c.discount, null);
    t.equal(c.email, null);
    t.match(c.invoice_prefix, /^[A-Z0-9]{8}$/, 'invoice_prefix: 8 uppercase characters');
    t.same(c.invoice_settings, { custom_fields: null, default_payment_method: null, footer: null, rendering_options: null });
    t.equal(c.livemode, false);
    t.same(c.metadata, {});
    t.equal(c.name, null);
    t.equal(c.next_invoice_sequence, 1);
    t.equal(c.phone, null);
    t.same(c.preferred_locales, []);
    t.equal(c.shipping, null);
    t.equal(c.tax_exempt, 'none');
    t.equal(c.test_clock, null);
    const got = await stripe.customers.retrieve(c.id);
    t.same({ ...got }, { ...c }, 'retrieve returns the same object');
  });

  await t.test('create with fields, update, unset', async (t) => {
    const c = await stripe.customers.create({
      email: 'jenny@example.com',
      name: 'Jenny Rosen',
      phone: '+15555550100',
      description: 'VIP',
      balance: -500,
      address: { line1: '1 Main St', city: 'Springfield', country: 'US' },
      shipping: { name: 'Jenny', address: { line1: '2 Side St', postal_code: '12345' } },
      preferred_locales: ['en', 'fr'],
      tax_exempt: 'exempt',
      invoice_prefix: 'JENNY01',
      invoice_settings: { footer: 'Thanks' },
      metadata: { plan: 'gold', ref: '42' },
    });
    t.equal(c.email, 'jenny@example.com');
    t.equal(c.name, 'Jenny Rosen');
    t.equal(c.balance, -500);
    t.same(c.address, { city: 'Springfield', country: 'US', line1: '1 Main St', line2: null, postal_code: null, state: null });
    t.same(c.shipping, {
      address: { city: null, country: null, line1: '2 Side St', line2: null, postal_code: '12345', state: null },
      name: 'Jenny',
      phone: null,
    });
    t.same(c.preferred_locales, ['en', 'fr']);
    t.equal(c.tax_exempt, 'exempt');
    t.equal(c.invoice_prefix, 'JENNY01');
    t.equal(c.invoice_settings.footer, 'Thanks');
    t.same(c.metadata, { plan: 'gold', ref: '42' });

    const u = await stripe.customers.update(c.id, { name: 'Jenny R.', metadata: { plan: 'platinum', ref: '', extra: 'x' }, description: '' });
    t.equal(u.name, 'Jenny R.');
    t.same(u.metadata, { plan: 'platinum', extra: 'x' }, 'metadata merges; an empty value removes a key');
    t.equal(u.description, null, "description='' unsets it");
    t.equal(u.email, 'jenny@example.com', 'untouched fields stay');
    t.equal(u.created, c.created);
    const cleared = await stripe.customers.update(c.id, { metadata: '' as unknown as Stripe.MetadataParam, address: '' as unknown as Stripe.AddressParam });
    t.same(cleared.metadata, {}, "metadata='' removes every key");
    t.equal(cleared.address, null);
    t.same({ ...(await stripe.customers.retrieve(c.id)) }, { ...cleared }, 'retrieve sees the update');
  });

  await t.test('validation errors', async (t) => {
    await expectError(
      t,
      stripe.customers.create({ bogus: 1 } as unknown as Stripe.CustomerCreateParams),
      { ...INVALID, code: 'parameter_unknown', param: 'bogus' },
      'unknown param',
    );
    await expectError(t, stripe.customers.create({ name: 'x'.repeat(257) }), { ...INVALID, param: 'name' }, 'name too long');
    await expectError(t, stripe.customers.create({ balance: 1.5 as number }), { ...INVALID, param: 'balance' }, 'non-integer balance');
    await expectError(t, stripe.customers.create({ tax_exempt: 'sometimes' as 'none' }), { ...INVALID, param: 'tax_exempt' }, 'tax_exempt enum');
    await expectError(t, stripe.customers.create({ invoice_prefix: 'ab' }), { ...INVALID, param: 'invoice_prefix' }, 'invoice_prefix format');
    await expectError(t, stripe.customers.create({ metadata: { ['k'.repeat(41)]: 'v' } }), { ...INVALID, param: /^metadata\[k+\]$/ }, 'metadata key > 40');
    await expectError(t, stripe.customers.create({ metadata: { k: 'v'.repeat(501) } }), { ...INVALID, param: 'metadata[k]' }, 'metadata value > 500');
    const many: Record<string, string> = {};
    for (let i = 0; i < 51; i++) many[`k${i}`] = 'v';
    await expectError(t, stripe.customers.create({ metadata: many }), { ...INVALID, param: 'metadata' }, '51 metadata keys');
    await expectError(
      t,
      stripe.customers.create({ shipping: { address: { line1: 'x' } } as Stripe.CustomerCreateParams.Shipping }),
      { ...INVALID, param: 'shipping[name]' },
      'shipping without name',
    );
    await expectError(
      t,
      stripe.customers.retrieve('cus_nope'),
      { type: 'StripeInvalidRequestError', statusCode: 404, code: 'resource_missing', param: 'id' },
      'retrieve unknown',
    );
    await expectError(t, stripe.customers.update('cus_nope', { name: 'x' }), { statusCode: 404 }, 'update unknown');
  });

  await t.test('delete', async (t) => {
    const c = await stripe.customers.create({ email: 'gone@example.com' });
    const d = await stripe.customers.del(c.id);
    t.same({ ...d }, { id: c.id, object: 'customer', deleted: true });
    const got = await stripe.customers.retrieve(c.id);
    t.same({ ...got }, { id: c.id, object: 'customer', deleted: true }, 'retrieve answers the deleted customer, as Stripe');
    await expectError(t, stripe.customers.update(c.id, { name: 'x' }), { statusCode: 404, code: 'resource_missing' }, 'update a deleted customer');
    await expectError(t, stripe.customers.del(c.id), { statusCode: 404 }, 'delete twice');
    const listed = await stripe.customers.list({ email: 'gone@example.com' });
    t.same(listed.data, [], 'deleted customers are not listed');
  });

  await t.test('list: pagination, email and created filters (account C)', async (t) => {
    const made: Stripe.Customer[] = [];
    for (let i = 0; i < 5; i++)
      made.push(await stripeC.customers.create({ email: i % 2 === 0 ? 'even@example.com' : `odd${i}@example.com`, name: `List ${i}` }));
    const newestFirst = made.map((c) => c.id).reverse();
    const first = await stripeC.customers.list({ limit: 2 });
    t.equal(first.object, 'list');
    t.equal(first.url, '/v1/customers');
    t.same(
      first.data.map((c) => c.id),
      newestFirst.slice(0, 2),
    );
    t.equal(first.has_more, true);
    const second = await stripeC.customers.list({ limit: 2, starting_after: first.data[1].id });
    t.same(
      second.data.map((c) => c.id),
      newestFirst.slice(2, 4),
    );
    const back = await stripeC.customers.list({ limit: 2, ending_before: second.data[0].id });
    t.same(
      back.data.map((c) => c.id),
      newestFirst.slice(0, 2),
      'ending_before',
    );
    const all = await stripeC.customers.list({ limit: 2 }).autoPagingToArray({ limit: 100 });
    t.same(
      all.map((c) => c.id),
      newestFirst,
      'auto-pagination walks every customer',
    );
    const even = await stripeC.customers.list({ email: 'even@example.com' });
    t.same(
      even.data.map((c) => c.id),
      [made[4].id, made[2].id, made[0].id],
      'email filter',
    );
    const created = made[0].created;
    const none = await stripeC.customers.list({ created: { lt: created } });
    t.same(none.data, [], 'created[lt] before the first excludes all');
    const range = await stripeC.customers.list({ created: { gte: created, lte: nowS() + 5 } });
    t.equal(range.data.length, 5, 'created range includes all');
    const exact = await stripeC.customers.list({ created: created - 100 });
    t.same(exact.data, [], 'created as an exact second');
    await expectError(t, stripeC.customers.list({ limit: 0 }), { ...INVALID, param: 'limit' }, 'limit 0');
    await expectError(
      t,
      stripeC.customers.list({ created: { gt: 'x' as unknown as number } }),
      { ...INVALID, param: 'created[gt]' },
      'created[gt] not an integer',
    );
  });

  await t.test('search', async (t) => {
    const tag = uniqueName('srch');
    const a = await stripeB.customers.create({ email: `${tag}@example.com`, name: 'Alice Searchable', phone: '+100', metadata: { tag, n: '1' } });
    const b = await stripeB.customers.create({ email: `other_${tag}@example.com`, name: 'Bob Searchable', metadata: { tag, n: '2' } });
    const c = await stripeB.customers.create({ name: 'Carol', metadata: { tag } });
    const r1 = await stripeB.customers.search({ query: `email:"${tag}@example.com"` });
    t.equal(r1.object, 'search_result');
    t.equal(r1.url, '/v1/customers/search');
    t.same(
      r1.data.map((x) => x.id),
      [a.id],
      'exact email',
    );
    t.equal(r1.has_more, false);
    t.equal(r1.next_page, null);
    const r2 = await stripeB.customers.search({ query: `name~"searchable"` });
    t.same(
      r2.data.map((x) => x.id),
      [b.id, a.id],
      'substring on name, newest first',
    );
    const r3 = await stripeB.customers.search({ query: `metadata['tag']:'${tag}' AND -metadata['n']:'2'` });
    t.same(
      r3.data.map((x) => x.id),
      [c.id, a.id],
      'metadata with negation',
    );
    const r4 = await stripeB.customers.search({ query: `metadata['n']:'1' OR name:"carol"` });
    t.same(
      r4.data.map((x) => x.id),
      [c.id, a.id],
      'OR, case-insensitive exact',
    );
    const r5 = await stripeB.customers.search({ query: `email:null AND metadata['tag']:'${tag}'` });
    t.same(
      r5.data.map((x) => x.id),
      [c.id],
      'null email',
    );
    const r6 = await stripeB.customers.search({ query: `created>=${a.created} AND metadata['tag']:'${tag}'`, limit: 2 });
    t.same(
      r6.data.map((x) => x.id),
      [c.id, b.id],
      'first page',
    );
    t.equal(r6.has_more, true);
    t.type(r6.next_page, 'string');
    const r7 = await stripeB.customers.search({ query: `created>=${a.created} AND metadata['tag']:'${tag}'`, limit: 2, page: r6.next_page! });
    t.same(
      r7.data.map((x) => x.id),
      [a.id],
      'second page via next_page',
    );
    t.equal(r7.has_more, false);
    const every = await stripeB.customers.search({ query: `metadata['tag']:'${tag}'`, limit: 1 }).autoPagingToArray({ limit: 100 });
    t.same(
      every.map((x) => x.id),
      [c.id, b.id, a.id],
      'search auto-pagination',
    );
    const counted = await stripeB.customers.search({ query: `metadata['tag']:'${tag}'`, limit: 1, expand: ['total_count'] });
    t.equal(counted.total_count, 3, 'expand[]=total_count');
    await stripeB.customers.del(b.id);
    const afterDelete = await stripeB.customers.search({ query: `metadata['tag']:'${tag}'` });
    t.same(
      afterDelete.data.map((x) => x.id),
      [c.id, a.id],
      'deleted customers are not found',
    );

    await expectError(t, stripeB.customers.search({ query: 'email:jenny' }), { ...INVALID, param: 'query' }, 'unquoted string');
    await expectError(
      t,
      stripeB.customers.search({ query: 'colour:"red"' }),
      { ...INVALID, param: 'query', message: /unsupported search field/ },
      'unknown field',
    );
    await expectError(t, stripeB.customers.search({ query: 'name~"ab"' }), { ...INVALID, param: 'query' }, 'short substring');
    await expectError(t, stripeB.customers.search({ query: 'name:"a" AND email:"b" OR phone:"c"' }), { ...INVALID, param: 'query' }, 'mixed AND/OR');
    await expectError(
      t,
      stripeB.customers.search({} as Stripe.CustomerSearchParams),
      { ...INVALID, param: 'query', code: 'parameter_missing' },
      'missing query',
    );
    await expectError(t, stripeB.customers.search({ query: 'name:"a"', page: 'garbage' }), { ...INVALID, param: 'page' }, 'bad page');
  });

  await t.test('accounts are walls', async (t) => {
    const mine = await stripe.customers.create({ email: 'wall@example.com', metadata: { wall: 'yes' } });
    await expectError(t, stripeB.customers.retrieve(mine.id), { statusCode: 404 }, 'B cannot retrieve A’s customer');
    await expectError(t, stripeB.customers.update(mine.id, { name: 'hijack' }), { statusCode: 404 }, 'B cannot update it');
    await expectError(t, stripeB.customers.del(mine.id), { statusCode: 404 }, 'B cannot delete it');
    t.same((await stripeB.customers.list({ email: 'wall@example.com' })).data, [], 'B does not list it');
    t.same((await stripeB.customers.search({ query: `metadata['wall']:'yes'` })).data, [], 'B does not find it');
    t.equal((await stripe.customers.retrieve(mine.id)).id, mine.id, 'A still sees it');
    t.equal((await stripe.customers.search({ query: `metadata['wall']:'yes'` })).data[0]?.id, mine.id, 'A finds it');
  });
});
