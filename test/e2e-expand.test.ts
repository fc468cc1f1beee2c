/**
 * End-to-end: `expand[]` on the billing objects through the official stripe client — subscriptions (customer,
 * latest_invoice, items.data.price.product), invoices (customer, lines.data.price), prices (product), lists
 * (data.customer), invalid paths (400 on expand[i]) and account walls.
 */
import t from 'tap';
import type Stripe from 'stripe';
import { startServer } from './helpers/server';
import { expectError } from './helpers/assertions';

const KEY_A = 'sk_test_expand_a_' + Math.random().toString(36).slice(2, 10);
const KEY_B = 'sk_test_expand_b_' + Math.random().toString(36).slice(2, 10);
const INVALID = { type: 'StripeInvalidRequestError', statusCode: 400 };

t.test('expand on billing objects', async (t) => {
  const server = await startServer({ env: { API_KEYS: `${KEY_A},${KEY_B}` }, key: KEY_A });
  t.teardown(() => server.stop());
  const stripe = server.stripe(KEY_A);
  const stripeB = server.stripe(KEY_B);

  const customer = await stripe.customers.create({ email: 'expand@example.com' });
  const product = await stripe.products.create({ name: 'Seat' });
  const price = await stripe.prices.create({ product: product.id, currency: 'usd', unit_amount: 1500, recurring: { interval: 'month' } });

  await t.test('price.product', async (t) => {
    const got = await stripe.prices.retrieve(price.id, { expand: ['product'] });
    const prod = got.product as Stripe.Product;
    t.equal(prod.id, product.id);
    t.equal(prod.object, 'product');
    t.equal(prod.name, 'Seat');
    const plain = await stripe.prices.retrieve(price.id);
    t.equal(plain.product, product.id);
    const list = await stripe.prices.list({ product: product.id, expand: ['data.product'] });
    t.equal((list.data[0].product as Stripe.Product).name, 'Seat');
  });

  let sub: Stripe.Subscription;
  await t.test('subscription customer, latest_invoice, items.data.price.product', async (t) => {
    sub = await stripe.subscriptions.create({
      customer: customer.id,
      items: [{ price: price.id }],
      expand: ['customer', 'latest_invoice', 'latest_invoice.customer'],
    });
    t.equal((sub.customer as Stripe.Customer).email, 'expand@example.com');
    const inv = sub.latest_invoice as Stripe.Invoice;
    t.equal(inv.object, 'invoice');
    t.match(inv.id, /^in_/);
    t.equal((inv.customer as Stripe.Customer).id, customer.id);
    const got = await stripe.subscriptions.retrieve(sub.id, { expand: ['items.data.price.product', 'default_payment_method'] });
    t.equal(got.customer, customer.id);
    t.equal(typeof got.latest_invoice, 'string');
    t.equal((got.items.data[0].price.product as Stripe.Product).name, 'Seat');
    const item = await stripe.subscriptionItems.retrieve(got.items.data[0].id, { expand: ['price.product'] });
    t.equal((item.price.product as Stripe.Product).id, product.id);
  });

  await t.test('invoice customer and lines.data.price', async (t) => {
    const inv = await stripe.invoices.retrieve((sub.latest_invoice as Stripe.Invoice).id, {
      expand: ['customer', 'parent.subscription_details.subscription', 'lines.data.price.product'],
    });
    t.equal((inv.customer as Stripe.Customer).id, customer.id);
    // The invoice's subscription is parent.subscription_details.subscription since basil.
    t.equal((inv.parent!.subscription_details!.subscription as Stripe.Subscription).id, sub.id);
    const line = inv.lines.data[0] as unknown as { price: Stripe.Price };
    t.equal(line.price.id, price.id);
    t.equal((line.price.product as Stripe.Product).name, 'Seat');
  });

  await t.test('invoice item customer and price', async (t) => {
    const once = await stripe.prices.create({ product: product.id, currency: 'usd', unit_amount: 900 });
    const ii = await stripe.invoiceItems.create({
      customer: customer.id,
      pricing: { price: once.id },
      expand: ['customer', 'price'],
    } as Stripe.InvoiceItemCreateParams);
    t.equal((ii.customer as Stripe.Customer).id, customer.id);
    t.equal((ii as unknown as { price: Stripe.Price }).price.id, once.id);
  });

  await t.test('list data.customer', async (t) => {
    const list = await stripe.subscriptions.list({ customer: customer.id, expand: ['data.customer'] });
    t.equal(list.data.length, 1);
    t.equal((list.data[0].customer as Stripe.Customer).email, 'expand@example.com');
    const invoices = await stripe.invoices.list({ customer: customer.id, expand: ['data.customer'] });
    t.ok(invoices.data.length >= 1);
    for (const i of invoices.data) t.equal((i.customer as Stripe.Customer).id, customer.id);
  });

  await t.test('invalid paths are 400 on expand[i]', async (t) => {
    await expectError(
      t,
      stripe.subscriptions.retrieve(sub.id, { expand: ['customer', 'nope'] }),
      { ...INVALID, param: 'expand[1]', message: 'This property cannot be expanded (nope).' },
      'unknown field',
    );
    await expectError(t, stripe.prices.retrieve(price.id, { expand: ['currency'] }), { ...INVALID, param: 'expand[0]' }, 'not expandable');
    await expectError(t, stripe.subscriptions.list({ expand: ['customer'] }), { ...INVALID, param: 'expand[0]' }, 'list paths start with data');
  });

  await t.test('accounts are walls', async (t) => {
    await expectError(t, stripeB.subscriptions.retrieve(sub.id, { expand: ['customer'] }), { statusCode: 404 }, 'other account');
  });
});
