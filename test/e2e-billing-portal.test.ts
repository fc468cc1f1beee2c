/**
 * End-to-end: the customer portal (`stripe.billingPortal.configurations`, `stripe.billingPortal.sessions`): the
 * configuration object, its errors and events; sessions (the default configuration created on first use); the page at
 * the session's url with the customer's subscriptions and invoices and a return link; cancellation from the page at
 * the period end or immediately, as configured; unknown tokens; account walls.
 */
import t from 'tap';
import { startServer } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';

const KEY_A = 'sk_test_bp_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_bp_b_' + Math.random().toString(36).slice(2, 10);

t.test('customer portal end to end', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const other = server.stripe(KEY_B);

  const product = await stripe.products.create({ name: uniqueName('Plan') });
  const price = await stripe.prices.create({
    currency: 'usd',
    unit_amount: 1200,
    product: product.id,
    recurring: { interval: 'month' },
    nickname: 'Pro monthly',
  });
  const customer = await stripe.customers.create({ name: 'Portal Customer', email: 'p@example.com' });
  const sub = await stripe.subscriptions.create({ customer: customer.id, items: [{ price: price.id }] });
  const sub2 = await stripe.subscriptions.create({ customer: customer.id, items: [{ price: price.id }] });

  // A session without a configuration creates the account's default one.
  const first = await stripe.billingPortal.sessions.create({ customer: customer.id, return_url: 'https://example.com/account' });
  t.match(first.id, /^bps_test_/);
  t.equal(first.object, 'billing_portal.session');
  t.equal(first.customer, customer.id);
  t.equal(first.return_url, 'https://example.com/account');
  t.equal(first.livemode, false);
  t.ok(first.url.startsWith(`${server.url}/billing_portal/p/`), 'the url opens a page on this server');
  const defaults = await stripe.billingPortal.configurations.list({ is_default: true });
  t.equal(defaults.data.length, 1);
  t.equal(defaults.data[0].id, first.configuration, 'the default configuration');
  t.equal(defaults.data[0].features.invoice_history.enabled, true);
  t.equal(defaults.data[0].features.subscription_cancel.enabled, false);

  const page = await fetch(first.url);
  t.equal(page.status, 200);
  t.match(page.headers.get('content-type') ?? '', /^text\/html/);
  const body = await page.text();
  t.match(body, 'Portal Customer');
  t.match(body, `data-subscription="${sub.id}"`, 'the subscriptions');
  t.match(body, 'Pro monthly');
  t.match(body, 'data-invoice="in_', 'the invoice history');
  t.match(body, 'href="https://example.com/account"', 'the return link');
  t.notMatch(body, '<form', 'no cancellation: not enabled');

  // A configuration that lets customers cancel at the period end.
  const config = await stripe.billingPortal.configurations.create({
    business_profile: { headline: 'Acme billing' },
    default_return_url: 'https://example.com/home',
    features: { invoice_history: { enabled: false }, subscription_cancel: { enabled: true, mode: 'at_period_end' } },
    metadata: { team: 'growth' },
  });
  t.match(config.id, /^bpc_test_/);
  t.equal(config.object, 'billing_portal.configuration');
  t.equal(config.active, true);
  t.equal(config.is_default, false);
  t.same(config.business_profile, { headline: 'Acme billing', privacy_policy_url: null, terms_of_service_url: null });
  t.same(config.features.subscription_cancel.mode, 'at_period_end');
  t.same(config.metadata, { team: 'growth' });
  t.same(await stripe.billingPortal.configurations.retrieve(config.id), config);
  const renamed = await stripe.billingPortal.configurations.update(config.id, { name: 'Self-serve' });
  t.equal(renamed.name, 'Self-serve');
  const updatedEvent = (await stripe.events.list({ type: 'billing_portal.configuration.updated', limit: 1 })).data[0];
  t.same(updatedEvent.data.previous_attributes, { name: null });

  const session = await stripe.billingPortal.sessions.create({ customer: customer.id, configuration: config.id });
  t.equal(session.return_url, null);
  const cancelPage = await (await fetch(session.url)).text();
  t.match(cancelPage, 'Acme billing');
  t.match(cancelPage, 'href="https://example.com/home"', "the configuration's default return url");
  t.notMatch(cancelPage, 'data-invoice=', 'invoice history off');
  const form = new RegExp(`action="([^"]*/subscriptions/${sub.id}/cancel)"`).exec(cancelPage);
  t.ok(form, 'a cancel form for the subscription');
  const cancelled = await fetch(server.url + form![1], { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: '' });
  t.equal(cancelled.status, 200);
  t.match(await cancelled.text(), 'canceled');
  const afterCancel = await stripe.subscriptions.retrieve(sub.id);
  t.equal(afterCancel.cancel_at_period_end, true, 'canceled at the period end');
  t.equal(afterCancel.status, 'active');

  // Immediately, as configured.
  const now = await stripe.billingPortal.configurations.create({ features: { subscription_cancel: { enabled: true, mode: 'immediately' } } });
  const s2 = await stripe.billingPortal.sessions.create({ customer: customer.id, configuration: now.id });
  const p2 = await (await fetch(s2.url)).text();
  const form2 = new RegExp(`action="([^"]*/subscriptions/${sub2.id}/cancel)"`).exec(p2);
  await fetch(server.url + form2![1], { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: '' });
  t.equal((await stripe.subscriptions.retrieve(sub2.id)).status, 'canceled', 'canceled immediately');

  // Events, errors, walls.
  const types = (await stripe.events.list({ limit: 100 })).data.map((e) => e.type);
  t.equal(types.filter((x) => x === 'billing_portal.session.created').length, 3);
  t.equal(types.filter((x) => x === 'billing_portal.configuration.created').length, 3);
  const thin: string[] = [];
  for await (const e of stripe.v2.core.events.list({ limit: 100 })) thin.push(e.type);
  t.equal(thin.filter((x) => x === 'v1.billing_portal.configuration.created').length, 3, 'thin counterparts');
  t.equal(thin.filter((x) => x === 'v1.billing_portal.configuration.updated').length, 1);
  t.equal(thin.filter((x) => x === 'v1.billing_portal.session.created').length, 3);
  const bogus = await fetch(`${server.url}/billing_portal/p/not-a-token`);
  t.equal(bogus.status, 404);
  await expectError(
    t,
    stripe.billingPortal.configurations.create({} as never),
    { statusCode: 400, code: 'parameter_missing', param: 'features' },
    'features required',
  );
  await expectError(
    t,
    stripe.billingPortal.configurations.create({ features: { payment_method_update: { enabled: true } } }),
    { statusCode: 400, param: 'features[payment_method_update][enabled]' },
    'a feature this portal does not offer',
  );
  await expectError(t, stripe.billingPortal.sessions.create({ customer: 'cus_nope' }), { statusCode: 404, param: 'customer' }, 'unknown customer');
  await expectError(
    t,
    stripe.billingPortal.sessions.create({ customer: customer.id, configuration: 'bpc_nope' }),
    { statusCode: 404 },
    'unknown configuration',
  );
  await expectError(t, other.billingPortal.sessions.create({ customer: customer.id }), { statusCode: 404 }, "another account's customer");
  await expectError(t, other.billingPortal.configurations.retrieve(config.id), { statusCode: 404 }, "another account's configuration");
});
