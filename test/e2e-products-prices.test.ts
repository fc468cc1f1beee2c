/**
 * End-to-end: products, prices (per-unit, decimal, tiered graduated/volume, metered bound to a billing meter,
 * transform_quantity, lookup keys) and plans (the legacy view of recurring prices) through the official stripe client,
 * including validation errors with their params and account isolation.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';

const KEY_A = 'sk_test_catalog_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_catalog_b_' + Math.random().toString(36).slice(2, 10);

const nowS = () => Math.floor(Date.now() / 1000);
const INVALID = { type: 'StripeInvalidRequestError', statusCode: 400 };
/** Decimal params as plain strings (the client sends them as-is; its types want its Decimal class). */
const dec = (s: string) => s as unknown as Stripe.Decimal;

t.test('products, prices and plans end to end', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);

  const meter = (name = 'API calls') =>
    stripe.billing.meters.create({ display_name: name, event_name: uniqueName('calls'), default_aggregation: { formula: 'sum' } });

  await t.test('products: create, retrieve, update, list, delete', async (t) => {
    const before = nowS();
    const p = await stripe.products.create({ name: 'Widget' });
    t.match(p.id, /^prod_test_/);
    t.equal(p.object, 'product');
    t.equal(p.active, true);
    t.ok(p.created >= before - 1 && p.created <= nowS() + 1);
    t.equal(p.updated, p.created);
    t.equal(p.default_price, null);
    t.equal(p.description, null);
    t.same(p.images, []);
    t.equal(p.livemode, false);
    t.same(p.marketing_features, []);
    t.same(p.metadata, {});
    t.equal(p.name, 'Widget');
    t.equal(p.package_dimensions, null);
    t.equal(p.shippable, null);
    t.equal(p.statement_descriptor, null);
    t.equal(p.tax_code, null);
    t.equal(p.type, 'service');
    t.equal(p.unit_label, null);
    t.equal(p.url, null);
    t.same({ ...(await stripe.products.retrieve(p.id)) }, { ...p }, 'retrieve matches');

    const full = await stripe.products.create({
      id: 'prod_custom_widget',
      name: 'Custom',
      description: 'A custom id',
      images: ['https://example.com/a.png'],
      marketing_features: [{ name: 'Fast' }],
      metadata: { sku: 'W-1' },
      shippable: true,
      statement_descriptor: 'WIDGETCO',
      unit_label: 'seat',
      url: 'https://example.com',
    });
    t.equal(full.id, 'prod_custom_widget', 'a chosen id is kept');
    t.same(full.marketing_features, [{ name: 'Fast' }]);
    t.equal(full.shippable, true);
    t.equal(full.unit_label, 'seat');
    await expectError(
      t,
      stripe.products.create({ id: 'prod_custom_widget', name: 'Again' }),
      { ...INVALID, code: 'resource_already_exists', param: 'id' },
      'duplicate id',
    );
    await expectError(
      t,
      stripe.products.create({} as Stripe.ProductCreateParams),
      { ...INVALID, code: 'parameter_missing', param: 'name' },
      'name is required',
    );
    await expectError(t, stripe.products.create({ name: 'x', unit_label: 'much-too-long-label' }), { ...INVALID, param: 'unit_label' }, 'unit_label > 12');
    await expectError(
      t,
      stripe.products.create({ name: 'x', statement_descriptor: '12345' }),
      { ...INVALID, param: 'statement_descriptor' },
      'descriptor without a letter',
    );

    const u = await stripe.products.update(full.id, { name: 'Renamed', description: '', active: false, metadata: { sku: '', color: 'red' } });
    t.equal(u.name, 'Renamed');
    t.equal(u.description, null);
    t.equal(u.active, false);
    t.same(u.metadata, { color: 'red' });
    t.ok(u.updated >= full.updated);
    await expectError(
      t,
      stripe.products.update(full.id, { type: 'good' } as Stripe.ProductUpdateParams),
      { ...INVALID, code: 'parameter_unknown', param: 'type' },
      'type cannot be updated',
    );

    const activeOnly = await stripe.products.list({ active: false });
    t.same(
      activeOnly.data.map((x) => x.id),
      [full.id],
      'active=false filter',
    );
    const byIds = await stripe.products.list({ ids: [p.id, full.id] });
    t.same(
      byIds.data.map((x) => x.id),
      [full.id, p.id],
      'ids filter',
    );
    const all = await stripe.products.list({ limit: 1 }).autoPagingToArray({ limit: 100 });
    t.same(
      all.map((x) => x.id),
      [full.id, p.id],
      'auto-pagination',
    );

    const d = await stripe.products.del(p.id);
    t.same({ ...d }, { id: p.id, object: 'product', deleted: true });
    await expectError(t, stripe.products.retrieve(p.id), { statusCode: 404, code: 'resource_missing' }, 'deleted product is gone');
  });

  await t.test('products: search', async (t) => {
    const tag = uniqueName('ptag');
    const a = await stripe.products.create({ name: 'Gold support', description: 'Priority help', metadata: { tag } });
    const b = await stripe.products.create({ name: 'Silver support', active: false, metadata: { tag } });
    t.same(
      (await stripe.products.search({ query: `active:'true' AND metadata['tag']:'${tag}'` })).data.map((x) => x.id),
      [a.id],
    );
    t.same(
      (await stripe.products.search({ query: `name~"support" AND metadata['tag']:'${tag}'` })).data.map((x) => x.id),
      [b.id, a.id],
    );
    t.same(
      (await stripe.products.search({ query: `description:"priority help"` })).data.map((x) => x.id),
      [a.id],
    );
    await expectError(t, stripe.products.search({ query: `currency:"usd"` }), { ...INVALID, param: 'query' }, 'currency is not a product search field');
  });

  await t.test('prices: per unit, decimal, one-time and recurring', async (t) => {
    const prod = await stripe.products.create({ name: 'Seats' });
    const p1 = await stripe.prices.create({
      currency: 'USD',
      product: prod.id,
      unit_amount: 1200,
      recurring: { interval: 'month' },
      nickname: 'Monthly',
      metadata: { a: '1' },
    });
    t.match(p1.id, /^price_test_/);
    t.equal(p1.object, 'price');
    t.equal(p1.active, true);
    t.equal(p1.billing_scheme, 'per_unit');
    t.equal(p1.currency, 'usd', 'currency lowercased');
    t.equal(p1.custom_unit_amount, null);
    t.equal(p1.livemode, false);
    t.equal(p1.lookup_key, null);
    t.same(p1.metadata, { a: '1' });
    t.equal(p1.nickname, 'Monthly');
    t.equal(p1.product, prod.id);
    t.same(p1.recurring, { interval: 'month', interval_count: 1, meter: null, trial_period_days: null, usage_type: 'licensed' });
    t.equal(p1.tax_behavior, 'unspecified');
    t.equal(p1.tiers_mode, null);
    t.equal(p1.transform_quantity, null);
    t.equal(p1.type, 'recurring');
    t.equal(p1.unit_amount, 1200);
    t.equal(String(p1.unit_amount_decimal), '1200');
    t.notOk('tiers' in p1, 'per-unit prices have no tiers');
    t.same({ ...(await stripe.prices.retrieve(p1.id)) }, { ...p1 }, 'retrieve matches');

    const once = await stripe.prices.create({ currency: 'eur', product: prod.id, unit_amount_decimal: dec('0.0125') });
    t.equal(once.type, 'one_time');
    t.equal(once.recurring, null);
    t.equal(once.unit_amount, null, 'fractional decimal: unit_amount is null');
    t.equal(String(once.unit_amount_decimal), '0.0125', 'decimal kept exactly');
    const integral = await stripe.prices.create({ currency: 'eur', product: prod.id, unit_amount_decimal: dec('250') });
    t.equal(integral.unit_amount, 250);
    const wire = await server.request('GET', `/v1/prices/${once.id}`);
    t.equal(wire.body.unit_amount_decimal, '0.0125', 'on the wire the decimal is the exact string');
    t.equal(typeof wire.body.unit_amount_decimal, 'string');

    const tq = await stripe.prices.create({
      currency: 'usd',
      product: prod.id,
      unit_amount: 100,
      transform_quantity: { divide_by: 1000, round: 'up' },
      recurring: { interval: 'year', interval_count: 2 },
    });
    t.same(tq.transform_quantity, { divide_by: 1000, round: 'up' });
    t.equal(tq.recurring!.interval_count, 2);

    const withData = await stripe.prices.create({ currency: 'usd', unit_amount: 5, product_data: { name: 'Inline product', metadata: { k: 'v' } } });
    const inline = await stripe.products.retrieve(withData.product as string);
    t.equal(inline.name, 'Inline product', 'product_data creates the product');
    t.same(inline.metadata, { k: 'v' });

    await expectError(
      t,
      stripe.prices.create({ product: prod.id, unit_amount: 1 } as Stripe.PriceCreateParams),
      { ...INVALID, code: 'parameter_missing', param: 'currency' },
      'currency required',
    );
    await expectError(t, stripe.prices.create({ currency: 'us', product: prod.id, unit_amount: 1 }), { ...INVALID, param: 'currency' }, 'currency format');
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', unit_amount: 1 }),
      { ...INVALID, code: 'parameter_missing', param: 'product' },
      'product required',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: 'prod_nope', unit_amount: 1 }),
      { ...INVALID, code: 'resource_missing', param: 'product' },
      'unknown product',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, product_data: { name: 'x' }, unit_amount: 1 }),
      { ...INVALID, param: 'product_data' },
      'product and product_data',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id }),
      { ...INVALID, code: 'parameter_missing', param: 'unit_amount' },
      'amount required',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, unit_amount_decimal: dec('1') }),
      { ...INVALID, param: 'unit_amount_decimal' },
      'both amounts',
    );
    await expectError(t, stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: -1 }), { ...INVALID, param: 'unit_amount' }, 'negative amount');
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount_decimal: dec('1.1234567890123') }),
      { ...INVALID, param: 'unit_amount_decimal' },
      '13 decimal places',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, recurring: { interval: 'fortnight' as 'week' } }),
      { ...INVALID, param: 'recurring[interval]' },
      'interval enum',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, recurring: { interval: 'month', interval_count: 37 } }),
      { ...INVALID, param: 'recurring[interval_count]' },
      'more than three years',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, transform_quantity: { divide_by: 0, round: 'up' } }),
      { ...INVALID, param: 'transform_quantity[divide_by]' },
      'divide_by 0',
    );
    await expectError(
      t,
      stripe.prices.create({
        currency: 'usd',
        product: prod.id,
        unit_amount: 1,
        transform_quantity: { divide_by: 10 } as Stripe.PriceCreateParams.TransformQuantity,
      }),
      { ...INVALID, param: 'transform_quantity[round]' },
      'round required',
    );
  });

  await t.test('prices: tiered graduated and volume', async (t) => {
    const prod = await stripe.products.create({ name: 'Tiered' });
    const g = await stripe.prices.create({
      currency: 'usd',
      product: prod.id,
      billing_scheme: 'tiered',
      tiers_mode: 'graduated',
      recurring: { interval: 'month' },
      tiers: [
        { up_to: 1000, unit_amount: 0, flat_amount: 500 },
        { up_to: 10000, unit_amount_decimal: dec('0.5') },
        { up_to: 'inf', unit_amount: 1 },
      ],
      expand: ['tiers'],
    });
    t.equal(g.billing_scheme, 'tiered');
    t.equal(g.tiers_mode, 'graduated');
    t.equal(g.unit_amount, null);
    t.equal(g.unit_amount_decimal, null);
    t.same(g.tiers, [
      { flat_amount: 500, flat_amount_decimal: dec('500'), unit_amount: 0, unit_amount_decimal: dec('0'), up_to: 1000 },
      { flat_amount: null, flat_amount_decimal: null, unit_amount: null, unit_amount_decimal: dec('0.5'), up_to: 10000 },
      { flat_amount: null, flat_amount_decimal: null, unit_amount: 1, unit_amount_decimal: dec('1'), up_to: null },
    ]);
    const gw = await server.request('GET', `/v1/prices/${g.id}?expand[]=tiers`);
    t.strictSame(
      gw.body.tiers,
      [
        { flat_amount: 500, flat_amount_decimal: '500', unit_amount: 0, unit_amount_decimal: '0', up_to: 1000 },
        { flat_amount: null, flat_amount_decimal: null, unit_amount: null, unit_amount_decimal: '0.5', up_to: 10000 },
        { flat_amount: null, flat_amount_decimal: null, unit_amount: 1, unit_amount_decimal: '1', up_to: null },
      ],
      'tiers on the wire (strict)',
    );
    const plain = await stripe.prices.retrieve(g.id);
    t.notOk('tiers' in plain, 'tiers are only rendered when expanded (as Stripe)');
    const expanded = await stripe.prices.retrieve(g.id, { expand: ['tiers'] });
    t.same(expanded.tiers, g.tiers, 'expand[]=tiers on retrieve');
    const listed = await stripe.prices.list({ product: prod.id, expand: ['data.tiers'] });
    t.same(listed.data[0].tiers, g.tiers, 'expand[]=data.tiers on list');

    const v = await stripe.prices.create({
      currency: 'usd',
      product: prod.id,
      billing_scheme: 'tiered',
      tiers_mode: 'volume',
      tiers: [
        { up_to: 10, unit_amount: 100 },
        { up_to: 'inf', unit_amount: 80 },
      ],
    });
    t.equal(v.tiers_mode, 'volume');
    t.equal(v.type, 'one_time');

    const base = { currency: 'usd', product: prod.id, billing_scheme: 'tiered' as const, tiers_mode: 'volume' as const };
    await expectError(
      t,
      stripe.prices.create({ ...base, tiers: [{ up_to: 10, unit_amount: 1 }] }),
      { ...INVALID, param: 'tiers[0][up_to]' },
      'last tier must be inf',
    );
    await expectError(
      t,
      stripe.prices.create({
        ...base,
        tiers: [
          { up_to: 'inf', unit_amount: 1 },
          { up_to: 'inf', unit_amount: 1 },
        ],
      }),
      { ...INVALID, param: 'tiers[0][up_to]' },
      'inf only last',
    );
    await expectError(
      t,
      stripe.prices.create({
        ...base,
        tiers: [
          { up_to: 10, unit_amount: 1 },
          { up_to: 5, unit_amount: 1 },
          { up_to: 'inf', unit_amount: 1 },
        ],
      }),
      { ...INVALID, param: 'tiers[1][up_to]' },
      'increasing up_to',
    );
    await expectError(t, stripe.prices.create({ ...base, tiers: [{ up_to: 'inf' }] }), { ...INVALID, param: 'tiers[0][unit_amount]' }, 'tier without amounts');
    await expectError(
      t,
      stripe.prices.create({ ...base, tiers: [{ up_to: 'inf', unit_amount: 1, unit_amount_decimal: dec('1') }] }),
      { ...INVALID, param: 'tiers[0][unit_amount_decimal]' },
      'tier with both amounts',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, billing_scheme: 'tiered', tiers: [{ up_to: 'inf', unit_amount: 1 }] }),
      { ...INVALID, code: 'parameter_missing', param: 'tiers_mode' },
      'tiers_mode required',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, billing_scheme: 'tiered', tiers_mode: 'graduated' }),
      { ...INVALID, code: 'parameter_missing', param: 'tiers' },
      'tiers required',
    );
    await expectError(
      t,
      stripe.prices.create({ ...base, unit_amount: 5, tiers: [{ up_to: 'inf', unit_amount: 1 }] }),
      { ...INVALID, param: 'unit_amount' },
      'unit_amount with tiers',
    );
    await expectError(
      t,
      stripe.prices.create({ ...base, transform_quantity: { divide_by: 2, round: 'up' }, tiers: [{ up_to: 'inf', unit_amount: 1 }] }),
      { ...INVALID, param: 'transform_quantity' },
      'transform_quantity with tiers',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, tiers: [{ up_to: 'inf', unit_amount: 1 }] }),
      { ...INVALID, param: 'tiers' },
      'tiers on a per-unit price',
    );
  });

  await t.test('prices: metered prices are bound to an active meter', async (t) => {
    const prod = await stripe.products.create({ name: 'API' });
    const m = await meter();
    const metered = await stripe.prices.create({
      currency: 'usd',
      product: prod.id,
      unit_amount_decimal: dec('0.25'),
      recurring: { interval: 'month', usage_type: 'metered', meter: m.id },
      transform_quantity: { divide_by: 100, round: 'down' },
    });
    t.same(metered.recurring, { interval: 'month', interval_count: 1, meter: m.id, trial_period_days: null, usage_type: 'metered' });
    const tieredMetered = await stripe.prices.create({
      currency: 'usd',
      product: prod.id,
      billing_scheme: 'tiered',
      tiers_mode: 'graduated',
      tiers: [
        { up_to: 100, unit_amount: 0 },
        { up_to: 'inf', unit_amount: 2 },
      ],
      recurring: { interval: 'month', usage_type: 'metered', meter: m.id },
    });
    t.equal(tieredMetered.recurring!.meter, m.id);

    const byMeter = await stripe.prices.list({ recurring: { meter: m.id } } as Stripe.PriceListParams);
    t.same(
      byMeter.data.map((x) => x.id),
      [tieredMetered.id, metered.id],
      'list by recurring[meter]',
    );
    const meteredList = await stripe.prices.list({ product: prod.id, recurring: { usage_type: 'metered' } });
    t.equal(meteredList.data.length, 2);

    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, recurring: { interval: 'month', usage_type: 'metered' } }),
      { ...INVALID, param: 'recurring[meter]' },
      'metered without a meter',
    );
    await expectError(
      t,
      stripe.prices.create({
        currency: 'usd',
        product: prod.id,
        unit_amount: 1,
        recurring: { interval: 'month', usage_type: 'metered', meter: 'mtr_test_nope' },
      }),
      { ...INVALID, code: 'resource_missing', param: 'recurring[meter]' },
      'unknown meter',
    );
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, recurring: { interval: 'month', meter: m.id } }),
      { ...INVALID, param: 'recurring[meter]' },
      'a meter on a licensed price',
    );
    const dead = await meter('Dead');
    await stripe.billing.meters.deactivate(dead.id);
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, recurring: { interval: 'month', usage_type: 'metered', meter: dead.id } }),
      { ...INVALID, param: 'recurring[meter]', message: "You can't attach a deactivated meter to a price." },
      'inactive meter',
    );
    await stripe.billing.meters.reactivate(dead.id);
    const revived = await stripe.prices.create({
      currency: 'usd',
      product: prod.id,
      unit_amount: 1,
      recurring: { interval: 'month', usage_type: 'metered', meter: dead.id },
    });
    t.equal(revived.recurring!.meter, dead.id, 'a reactivated meter can be attached again');
  });

  await t.test('prices: update, lookup keys, list filters, search', async (t) => {
    const prod = await stripe.products.create({ name: 'Keys' });
    const key = uniqueName('std');
    const a = await stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 100, lookup_key: key, recurring: { interval: 'month' } });
    t.equal(a.lookup_key, key);
    await expectError(
      t,
      stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 200, lookup_key: key }),
      { ...INVALID, param: 'lookup_key' },
      'duplicate lookup key',
    );
    const b = await stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 200, lookup_key: key, transfer_lookup_key: true });
    t.equal(b.lookup_key, key, 'transfer_lookup_key moves the key');
    t.equal((await stripe.prices.retrieve(a.id)).lookup_key, null, 'the previous holder lost it');
    const byKey = await stripe.prices.list({ lookup_keys: [key] });
    t.same(
      byKey.data.map((x) => x.id),
      [b.id],
      'lookup_keys filter',
    );

    const u = await stripe.prices.update(a.id, {
      active: false,
      nickname: 'Old',
      metadata: { x: '1' },
      lookup_key: uniqueName('old'),
      tax_behavior: 'exclusive',
    });
    t.equal(u.active, false);
    t.equal(u.nickname, 'Old');
    t.same(u.metadata, { x: '1' });
    t.equal(u.tax_behavior, 'exclusive');
    t.equal(u.unit_amount, 100, 'amount unchanged');
    await expectError(t, stripe.prices.update(a.id, { tax_behavior: 'inclusive' }), { ...INVALID, param: 'tax_behavior' }, 'tax_behavior is set once');
    await expectError(
      t,
      stripe.prices.update(a.id, { unit_amount: 5 } as Stripe.PriceUpdateParams),
      { ...INVALID, code: 'parameter_unknown', param: 'unit_amount' },
      'unit_amount cannot change',
    );
    await expectError(t, stripe.prices.update(a.id, { lookup_key: key }), { ...INVALID, param: 'lookup_key' }, 'update to a taken key');
    const moved = await stripe.prices.update(a.id, { lookup_key: key, transfer_lookup_key: true });
    t.equal(moved.lookup_key, key);
    t.equal((await stripe.prices.retrieve(b.id)).lookup_key, null);
    const unset = await stripe.prices.update(a.id, { lookup_key: '' });
    t.equal(unset.lookup_key, null, "lookup_key='' frees it");
    const c = await stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 300, lookup_key: key });
    t.equal(c.lookup_key, key, 'a freed key can be reused');

    t.same(
      (await stripe.prices.list({ product: prod.id, active: false })).data.map((x) => x.id),
      [a.id],
      'active filter',
    );
    t.same(
      (await stripe.prices.list({ product: prod.id, type: 'recurring' })).data.map((x) => x.id),
      [a.id],
      'type filter',
    );
    t.same(
      (await stripe.prices.list({ product: prod.id, recurring: { interval: 'month' } })).data.map((x) => x.id),
      [a.id],
      'recurring[interval] filter',
    );
    t.same(
      (await stripe.prices.list({ product: prod.id, currency: 'usd', limit: 1 }).autoPagingToArray({ limit: 10 })).map((x) => x.id),
      [c.id, b.id, a.id],
      'auto-pagination with filters',
    );
    const page = await stripe.prices.list({ product: prod.id, type: 'one_time', limit: 1 });
    t.same(
      page.data.map((x) => x.id),
      [c.id],
    );
    t.equal(page.has_more, true);
    const back = await stripe.prices.list({ product: prod.id, recurring: { usage_type: 'licensed' }, ending_before: b.id });
    t.same(
      back.data.map((x) => x.id),
      [],
      'ending_before with a predicate filter: nothing newer that is recurring',
    );

    const s1 = await stripe.prices.search({ query: `product:"${prod.id}" AND active:"true"` });
    t.same(
      s1.data.map((x) => x.id),
      [c.id, b.id],
    );
    const s2 = await stripe.prices.search({ query: `lookup_key:"${key}"` });
    t.same(
      s2.data.map((x) => x.id),
      [c.id],
    );
    const s3 = await stripe.prices.search({ query: `product:"${prod.id}" AND type:"recurring"` });
    t.same(
      s3.data.map((x) => x.id),
      [a.id],
    );
    await expectError(t, stripe.prices.search({ query: `unit_amount>5` }), { ...INVALID, param: 'query' }, 'unsupported price field');

    await expectError(t, stripe.products.del(prod.id), { ...INVALID }, 'a product with prices cannot be deleted');
    const prod2 = await stripe.products.create({ name: 'With default' });
    const dp = await stripe.prices.create({ currency: 'usd', product: prod2.id, unit_amount: 1 });
    const withDefault = await stripe.products.update(prod2.id, { default_price: dp.id });
    t.equal(withDefault.default_price, dp.id);
    await expectError(t, stripe.products.update(prod2.id, { default_price: a.id }), { ...INVALID, param: 'default_price' }, 'default_price of another product');
  });

  await t.test('plans: the legacy view of recurring prices', async (t) => {
    const m = await meter('Plan meter');
    const planId = uniqueName('gold-plan');
    const plan = await stripe.plans.create({
      id: planId,
      currency: 'usd',
      interval: 'month',
      usage_type: 'metered',
      meter: m.id,
      amount_decimal: dec('0.5'),
      product: { name: 'Plan product' },
      nickname: 'Gold',
      metadata: { tier: 'gold' },
    } as Stripe.PlanCreateParams);
    t.equal(plan.id, planId);
    t.equal(plan.object, 'plan');
    t.equal(plan.active, true);
    t.equal(plan.amount, null);
    t.equal(String(plan.amount_decimal), '0.5');
    t.equal(plan.billing_scheme, 'per_unit');
    t.equal(plan.currency, 'usd');
    t.equal(plan.interval, 'month');
    t.equal(plan.interval_count, 1);
    t.equal(plan.meter, m.id);
    t.equal(plan.usage_type, 'metered');
    t.equal(plan.nickname, 'Gold');
    t.same(plan.metadata, { tier: 'gold' });
    t.equal(plan.tiers_mode, null);
    t.equal(plan.transform_usage, null);
    t.equal(plan.trial_period_days, null);
    const product = await stripe.products.retrieve(plan.product as string);
    t.equal(product.name, 'Plan product', 'product[name] created a product');

    const asPrice = await stripe.prices.retrieve(planId);
    t.equal(asPrice.object, 'price');
    t.equal(asPrice.type, 'recurring');
    t.same(asPrice.recurring, { interval: 'month', interval_count: 1, meter: m.id, trial_period_days: null, usage_type: 'metered' });
    t.equal(String(asPrice.unit_amount_decimal), '0.5');
    t.equal(asPrice.product, plan.product);

    const price = await stripe.prices.create({
      currency: 'eur',
      product: product.id,
      unit_amount: 900,
      recurring: { interval: 'year' },
      transform_quantity: { divide_by: 10, round: 'up' },
    });
    const asPlan = await stripe.plans.retrieve(price.id);
    t.same(
      { ...asPlan },
      {
        id: price.id,
        object: 'plan',
        active: true,
        amount: 900,
        amount_decimal: dec('900'),
        billing_scheme: 'per_unit',
        created: price.created,
        currency: 'eur',
        interval: 'year',
        interval_count: 1,
        livemode: false,
        metadata: {},
        meter: null,
        nickname: null,
        product: product.id,
        tiers_mode: null,
        transform_usage: { divide_by: 10, round: 'up' },
        trial_period_days: null,
        usage_type: 'licensed',
      },
      'a recurring price is retrievable as a plan',
    );
    const oneTime = await stripe.prices.create({ currency: 'eur', product: product.id, unit_amount: 1 });
    await expectError(t, stripe.plans.retrieve(oneTime.id), { statusCode: 404, code: 'resource_missing' }, 'a one-time price is not a plan');

    const tiered = await stripe.plans.create({
      currency: 'usd',
      interval: 'week',
      product: product.id,
      billing_scheme: 'tiered',
      tiers_mode: 'volume',
      tiers: [
        { up_to: 5, unit_amount: 10 },
        { up_to: 'inf', flat_amount: 40 },
      ],
      expand: ['tiers'],
    });
    t.match(tiered.id, /^price_test_/, 'plans without an id get a price id');
    t.same(tiered.tiers, [
      { flat_amount: null, flat_amount_decimal: null, unit_amount: 10, unit_amount_decimal: dec('10'), up_to: 5 },
      { flat_amount: 40, flat_amount_decimal: dec('40'), unit_amount: null, unit_amount_decimal: null, up_to: null },
    ]);

    const listed = await stripe.plans.list({ product: product.id });
    t.same(
      listed.data.map((x) => x.id),
      [tiered.id, price.id, planId],
      'plans list: recurring prices only',
    );
    t.ok(listed.data.every((x) => x.object === 'plan'));

    const upd = await stripe.plans.update(planId, { nickname: 'Gold 2', active: false, trial_period_days: 7 });
    t.equal(upd.nickname, 'Gold 2');
    t.equal(upd.active, false);
    t.equal(upd.trial_period_days, 7);
    const priceAfter = await stripe.prices.retrieve(planId);
    t.equal(priceAfter.nickname, 'Gold 2', 'plan updates are visible on the price');
    t.equal(priceAfter.recurring!.trial_period_days, 7);
    await stripe.prices.update(planId, { nickname: 'From price' });
    t.equal((await stripe.plans.retrieve(planId)).nickname, 'From price', 'price updates are visible on the plan');

    await expectError(
      t,
      stripe.plans.create({ id: planId, currency: 'usd', interval: 'month', amount: 1, product: product.id }),
      { ...INVALID, code: 'resource_already_exists', param: 'id' },
      'duplicate plan id',
    );
    await expectError(
      t,
      stripe.plans.create({ currency: 'usd', interval: 'month', amount: 1, usage_type: 'metered', product: product.id }),
      { ...INVALID, param: 'meter' },
      'metered plan without a meter',
    );
    await expectError(
      t,
      stripe.plans.create({ currency: 'usd', amount: 1, product: product.id } as Stripe.PlanCreateParams),
      { ...INVALID, code: 'parameter_missing', param: 'interval' },
      'interval required',
    );
    await expectError(
      t,
      stripe.plans.create({ currency: 'usd', interval: 'month', product: product.id } as Stripe.PlanCreateParams),
      { ...INVALID, code: 'parameter_missing', param: 'amount' },
      'amount required',
    );
    await expectError(
      t,
      stripe.plans.create({ currency: 'usd', interval: 'month', amount: 1 } as Stripe.PlanCreateParams),
      { ...INVALID, code: 'parameter_missing', param: 'product' },
      'product required',
    );
    await expectError(
      t,
      stripe.plans.create({ currency: 'usd', interval: 'month', amount: 1, product: product.id, transform_usage: { divide_by: 0, round: 'up' } }),
      { ...INVALID, param: 'transform_usage[divide_by]' },
      'transform_usage',
    );

    const del = await stripe.plans.del(planId);
    t.same({ ...del }, { id: planId, object: 'plan', deleted: true });
    await expectError(t, stripe.plans.retrieve(planId), { statusCode: 404 }, 'deleted plan');
    await expectError(t, stripe.prices.retrieve(planId), { statusCode: 404 }, 'its price is gone too');
  });

  await t.test('accounts are walls', async (t) => {
    const prod = await stripe.products.create({ name: 'Private', metadata: { wall: 'catalog' } });
    const price = await stripe.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1, lookup_key: 'wall_key', recurring: { interval: 'month' } });
    const m = await meter('Private meter');
    await expectError(t, stripeB.products.retrieve(prod.id), { statusCode: 404 }, 'B cannot see A’s product');
    await expectError(t, stripeB.prices.retrieve(price.id), { statusCode: 404 }, 'B cannot see A’s price');
    await expectError(t, stripeB.plans.retrieve(price.id), { statusCode: 404 }, 'B cannot see A’s plan');
    await expectError(
      t,
      stripeB.prices.create({ currency: 'usd', product: prod.id, unit_amount: 1 }),
      { ...INVALID, code: 'resource_missing', param: 'product' },
      'B cannot price A’s product',
    );
    const prodB = await stripeB.products.create({ name: 'B product' });
    await expectError(
      t,
      stripeB.prices.create({ currency: 'usd', product: prodB.id, unit_amount: 1, recurring: { interval: 'month', usage_type: 'metered', meter: m.id } }),
      { ...INVALID, code: 'resource_missing', param: 'recurring[meter]' },
      'B cannot attach A’s meter',
    );
    const bPrice = await stripeB.prices.create({ currency: 'usd', product: prodB.id, unit_amount: 1, lookup_key: 'wall_key' });
    t.equal(bPrice.lookup_key, 'wall_key', 'lookup keys are per account');
    t.same((await stripeB.products.search({ query: `metadata['wall']:'catalog'` })).data, [], 'B does not find A’s product');
    t.same(
      (await stripeB.prices.list({ lookup_keys: ['wall_key'] })).data.map((x) => x.id),
      [bPrice.id],
    );
    t.same(
      (await stripe.prices.list({ lookup_keys: ['wall_key'] })).data.map((x) => x.id),
      [price.id],
    );
  });
});
