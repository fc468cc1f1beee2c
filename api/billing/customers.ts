/**
 * v1 customers: create, retrieve, update, delete, list (email, created), search (email, name, phone, created,
 * metadata).
 *
 * Stored as the Customer object itself (type `customer`). Deleting a customer replaces its document with Stripe's
 * deleted form `{id, object:'customer', deleted:true}`: retrieve then answers that object (as Stripe does), while
 * update, delete, list and search no longer see it.
 */
import type { HttpServer } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, type Params } from '../../shared/wire/form';
import { InvalidParamError, NotFoundError } from '../../shared/errors';
import { newId } from '../../shared/ids';
import { applyCustomerDiscountParams } from './discounts';
import { readListParams } from '../meters';
import type { SearchFields } from '../../shared/search';
import {
  listEndpoint,
  newInvoicePrefix,
  nowSeconds,
  nullableString,
  readCreatedRange,
  readMetadata,
  recordBillingEvent,
  searchEndpoint,
  type Metadata,
} from './common';

export const CUSTOMER_TYPE = 'customer';

export interface Address {
  city: string | null;
  country: string | null;
  line1: string | null;
  line2: string | null;
  postal_code: string | null;
  state: string | null;
}

export interface CustomerObject {
  id: string;
  object: 'customer';
  address: Address | null;
  balance: number;
  created: number;
  currency: string | null;
  default_source: string | null;
  delinquent: boolean;
  description: string | null;
  discount: Record<string, unknown> | null;
  email: string | null;
  invoice_prefix: string;
  invoice_settings: { custom_fields: null; default_payment_method: string | null; footer: string | null; rendering_options: null };
  livemode: boolean;
  metadata: Metadata;
  name: string | null;
  next_invoice_sequence: number;
  phone: string | null;
  preferred_locales: string[];
  shipping: { address: Address; name: string; phone: string | null } | null;
  tax_exempt: 'none' | 'exempt' | 'reverse';
  test_clock: string | null;
}

export interface DeletedCustomer {
  id: string;
  object: 'customer';
  deleted: true;
}

type StoredCustomer = CustomerObject | DeletedCustomer;

function isDeleted(c: StoredCustomer): c is DeletedCustomer {
  return (c as DeletedCustomer).deleted === true;
}

const ADDRESS_KEYS = ['city', 'country', 'line1', 'line2', 'postal_code', 'state'] as const;

function readAddress(r: ParamReader): Address {
  r.assertNoUnknown(ADDRESS_KEYS);
  const a = {} as Address;
  for (const k of ADDRESS_KEYS) a[k] = nullableString(r, k, 5000) ?? null;
  return a;
}

const CREATE_PARAMS = [
  'address',
  'balance',
  'description',
  'email',
  'invoice_prefix',
  'invoice_settings',
  'metadata',
  'name',
  'next_invoice_sequence',
  'phone',
  'preferred_locales',
  'shipping',
  'tax_exempt',
  'coupon',
  'promotion_code',
  'expand',
];

/** Applies the writable fields shared by create and update to `c`. */
function applyCustomerParams(r: ParamReader, c: CustomerObject): void {
  if (r.has('address')) {
    const a = r.object('address');
    c.address = a ? readAddress(a) : null;
  }
  const balance = r.integer('balance');
  if (balance !== undefined) c.balance = balance;
  const description = nullableString(r, 'description', 350);
  if (description !== undefined) c.description = description;
  const email = nullableString(r, 'email', 512);
  if (email !== undefined) c.email = email;
  const name = nullableString(r, 'name', 256);
  if (name !== undefined) c.name = name;
  const phone = nullableString(r, 'phone', 20);
  if (phone !== undefined) c.phone = phone;
  const prefix = r.string('invoice_prefix', { maxLength: 12 });
  if (prefix !== undefined) {
    if (!/^[A-Z0-9]{3,12}$/.test(prefix)) {
      throw new InvalidParamError('invoice_prefix', 'Invalid invoice_prefix: it must be 3 to 12 uppercase letters or numbers.');
    }
    c.invoice_prefix = prefix;
  }
  const seq = r.integer('next_invoice_sequence', { min: 1, max: 1_000_000_000 });
  if (seq !== undefined) c.next_invoice_sequence = seq;
  if (r.has('preferred_locales')) {
    c.preferred_locales = r.isUnset('preferred_locales') ? [] : (r.stringArray('preferred_locales', { maxItems: 30 }) ?? []);
  }
  if (r.has('shipping')) {
    const sh = r.object('shipping');
    if (!sh) c.shipping = null;
    else {
      sh.assertNoUnknown(['address', 'name', 'phone']);
      const address = readAddress(sh.object('address', { required: true }));
      const name = sh.string('name', { required: true, maxLength: 5000 });
      c.shipping = { address, name, phone: nullableString(sh, 'phone', 5000) ?? null };
    }
  }
  const taxExempt = r.string('tax_exempt', { enum: ['none', 'exempt', 'reverse'], allowEmpty: true });
  if (taxExempt !== undefined) c.tax_exempt = (taxExempt || 'none') as CustomerObject['tax_exempt'];
  const settings = r.object('invoice_settings');
  if (settings) {
    settings.assertNoUnknown(['footer']);
    const footer = nullableString(settings, 'footer', 5000);
    if (footer !== undefined) c.invoice_settings.footer = footer;
  }
  const metadata = readMetadata(r, c.metadata);
  if (metadata !== undefined) c.metadata = metadata;
}

/** A live customer of the account, or a 404 (deleted customers included). For other resources' `customer` params. */
export async function loadCustomer(store: StateStore, p: Principal, id: string, param = 'id'): Promise<CustomerObject> {
  const found = await store.getObject<StoredCustomer>(p.account, CUSTOMER_TYPE, id);
  if (!found || isDeleted(found.data)) throw new NotFoundError(`No such customer: '${id}'`, param);
  return found.data;
}

async function createCustomer(s: Services, p: Principal, params: Params) {
  const r = new ParamReader(params);
  r.assertNoUnknown([...CREATE_PARAMS, 'test_clock']);
  const { nowMs, now: realNow } = nowSeconds(s);
  const testClock = r.string('test_clock', { maxLength: 5000 }) ?? null;
  let now = realNow;
  if (testClock !== null) {
    // A customer on a test clock lives at the clock's frozen_time.
    const clock = await s.state.getObject<{ frozen_time: number }>(p.account, 'test_helpers.test_clock', testClock);
    if (!clock) throw new NotFoundError(`No such test clock: '${testClock}'`, 'test_clock');
    now = clock.data.frozen_time;
  }
  const c: CustomerObject = {
    id: newId('cus', p.livemode),
    object: 'customer',
    address: null,
    balance: 0,
    created: now,
    currency: null,
    default_source: null,
    delinquent: false,
    description: null,
    discount: null,
    email: null,
    invoice_prefix: newInvoicePrefix(),
    invoice_settings: { custom_fields: null, default_payment_method: null, footer: null, rendering_options: null },
    livemode: p.livemode,
    metadata: {},
    name: null,
    next_invoice_sequence: 1,
    phone: null,
    preferred_locales: [],
    shipping: null,
    tax_exempt: 'none',
    test_clock: testClock,
  };
  applyCustomerParams(r, c);
  await s.state.transaction(async (tx) => {
    const discountEvents = await applyCustomerDiscountParams(tx, p, r, c, now);
    await tx.insertObject({ account: p.account, type: CUSTOMER_TYPE, id: c.id, createdMs: nowMs, data: c });
    await recordBillingEvent(tx, p, 'customer.created', c);
    await discountEvents();
  });
  return json(200, c);
}

export const CUSTOMER_SEARCH_FIELDS: SearchFields<CustomerObject> = {
  created: { kind: 'number', get: (c) => c.created },
  email: { kind: 'string', get: (c) => c.email },
  metadata: { kind: 'metadata', get: (c) => c.metadata },
  name: { kind: 'string', get: (c) => c.name },
  phone: { kind: 'string', get: (c) => c.phone },
};

export function registerCustomerRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/customers',
    apiEndpoint(s, (p, _req, params) => createCustomer(s, p, params)),
  );

  http.route(
    'GET',
    '/v1/customers',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['limit', 'starting_after', 'ending_before', 'email', 'created', 'expand', 'test_clock']);
      const page = readListParams(r);
      const email = r.string('email', { maxLength: 512 });
      const testClock = r.string('test_clock', { maxLength: 5000 });
      const where: Record<string, string | null> = { deleted: null };
      if (email !== undefined) where.email = email;
      if (testClock !== undefined) where.test_clock = testClock;
      return listEndpoint<CustomerObject>(s, p, '/v1/customers', CUSTOMER_TYPE, page, { where, ...readCreatedRange(r) }, undefined, (c) => c);
    }),
  );

  http.route(
    'GET',
    '/v1/customers/search',
    apiEndpoint(s, (p, _req, params) =>
      searchEndpoint<CustomerObject>(s, p, params, {
        url: '/v1/customers/search',
        type: CUSTOMER_TYPE,
        resource: 'customers',
        fields: CUSTOMER_SEARCH_FIELDS,
        where: { deleted: null },
        render: (c) => c,
      }),
    ),
  );

  http.route(
    'GET',
    '/v1/customers/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const id = req.params[0];
      const found = await s.state.getObject<StoredCustomer>(p.account, CUSTOMER_TYPE, id);
      if (!found) throw new NotFoundError(`No such customer: '${id}'`);
      return json(200, found.data);
    }),
  );

  http.route(
    'POST',
    '/v1/customers/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(CREATE_PARAMS);
      const updated = await s.state.transaction(async (tx) => {
        const c = await loadCustomer(tx, p, req.params[0]);
        const before = structuredClone(c);
        applyCustomerParams(r, c);
        const discountEvents = await applyCustomerDiscountParams(tx, p, r, c, Math.floor(s.now() / 1000));
        await tx.updateObject(p.account, CUSTOMER_TYPE, c.id, c);
        await recordBillingEvent(tx, p, 'customer.updated', c, before as unknown as Record<string, unknown>);
        await discountEvents();
        return c;
      });
      return json(200, updated);
    }),
  );

  http.route(
    'DELETE',
    '/v1/customers/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      const gone = await s.state.transaction(async (tx) => {
        const c = await loadCustomer(tx, p, req.params[0]);
        const tomb: DeletedCustomer = { id: c.id, object: 'customer', deleted: true };
        await tx.updateObject(p.account, CUSTOMER_TYPE, c.id, tomb);
        await recordBillingEvent(tx, p, 'customer.deleted', c);
        return tomb;
      });
      return json(200, gone);
    }),
  );
}
