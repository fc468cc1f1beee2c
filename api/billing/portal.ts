/**
 * The customer portal: `/v1/billing_portal/configurations` (create, list, retrieve, update) and
 * `POST /v1/billing_portal/sessions`, whose `url` opens a portal page served here (`/billing_portal/p/<token>`, the
 * unguessable token being the customer's credential): the customer's subscriptions and, with
 * `features.invoice_history`, its invoices, and with `features.subscription_cancel` a button that cancels a
 * subscription (at the period end or immediately, as the configuration's `mode` says), and a link back to
 * `return_url`.
 *
 * Where we differ or Stripe is silent (README): the features that need payment methods or a product catalogue in the
 * portal (`customer_update`, `payment_method_update`, `subscription_update`) and `login_page` cannot be enabled (400);
 * a session's page works for SESSION_TTL_S after its creation; `flow_data` is not accepted. The first session of an
 * account without a configuration creates the default one (invoice history on, cancellation off).
 */
import crypto from 'node:crypto';
import type { HttpServer, HttpResult } from '../../shared/http/server';
import { json } from '../../shared/http/server';
import { apiEndpoint } from '../../shared/http/endpoints';
import type { Services } from '../../shared/services';
import type { Principal } from '../../shared/http/auth';
import type { StateStore } from '../../shared/state-store';
import { ParamReader, parseForm, type Params } from '../../shared/wire/form';
import { InvalidParamError } from '../../shared/errors';
import { loadResource } from './resource';
import { newId } from '../../shared/ids';
import { recordThinEvent } from '../../shared/core-events';
import { readListParams } from '../meters';
import { listEndpoint, nullableString, readMetadata, recordBillingEvent, type Metadata } from './common';
import { loadCustomer } from './customers';
import { INVOICE_TYPE, type InvoiceObject } from './invoice-model';
import { cancelSubscription, updateSubscription } from './subscriptions';
import { SUBSCRIPTION_TYPE, type SubscriptionObject } from './subscription-model';

export const PORTAL_CONFIGURATION_TYPE = 'billing_portal.configuration';
export const PORTAL_SESSION_TYPE = 'billing_portal.session';
const SESSION_TTL_S = 3600;

interface PortalConfiguration {
  id: string;
  object: 'billing_portal.configuration';
  active: boolean;
  application: null;
  business_profile: { headline: string | null; privacy_policy_url: string | null; terms_of_service_url: string | null };
  created: number;
  default_return_url: string | null;
  features: {
    customer_update: { allowed_updates: string[]; enabled: false };
    invoice_history: { enabled: boolean };
    payment_method_update: { enabled: false };
    subscription_cancel: {
      cancellation_reason: { enabled: false; options: string[] };
      enabled: boolean;
      mode: 'at_period_end' | 'immediately';
      proration_behavior: 'none';
    };
    subscription_update: { default_allowed_updates: string[]; enabled: false; proration_behavior: 'none'; products: null };
  };
  is_default: boolean;
  livemode: boolean;
  login_page: { enabled: false; url: null };
  metadata: Metadata;
  name: string | null;
  updated: number;
}

interface PortalSession {
  id: string;
  object: 'billing_portal.session';
  configuration: string;
  created: number;
  customer: string;
  flow: null;
  livemode: boolean;
  locale: string | null;
  on_behalf_of: null;
  return_url: string | null;
  url: string;
  _token: string;
}

let origin = 'http://127.0.0.1:12111';

/** Where portal links point: PUBLIC_URL, else the address the server listens on (set by main.ts once listening). */
export function setPortalOrigin(url: string): void {
  origin = url.replace(/\/+$/, '');
}

function readUrlParam(r: ParamReader, name: string): string | null | undefined {
  const v = nullableString(r, name, 5000);
  if (v === undefined || v === null) return v;
  try {
    const u = new URL(v);
    if (u.protocol === 'http:' || u.protocol === 'https:') return v;
  } catch {
    /* answered below */
  }
  throw new InvalidParamError(r.param(name), `Invalid URL: ${v.slice(0, 100)}`, 'url_invalid');
}

/** `features` of a create or update, applied to `f`; the features this portal cannot offer stay off. */
function applyFeatures(r: ParamReader, f: PortalConfiguration['features']): void {
  r.assertNoUnknown(['customer_update', 'invoice_history', 'payment_method_update', 'subscription_cancel', 'subscription_update']);
  for (const name of ['customer_update', 'payment_method_update', 'subscription_update'] as const) {
    const sub = r.object(name);
    if (sub?.boolean('enabled') === true) throw new InvalidParamError(sub.param('enabled'), `The portal here does not offer ${name}.`);
  }
  const history = r.object('invoice_history');
  if (history) {
    history.assertNoUnknown(['enabled']);
    f.invoice_history.enabled = history.boolean('enabled', { required: true });
  }
  const cancel = r.object('subscription_cancel');
  if (cancel) {
    cancel.assertNoUnknown(['enabled', 'mode', 'proration_behavior', 'cancellation_reason']);
    const enabled = cancel.boolean('enabled');
    if (enabled !== undefined) f.subscription_cancel.enabled = enabled;
    const mode = cancel.string('mode', { enum: ['at_period_end', 'immediately'] });
    if (mode !== undefined) f.subscription_cancel.mode = mode as 'at_period_end' | 'immediately';
    cancel.string('proration_behavior', { enum: ['none'] });
    const reason = cancel.object('cancellation_reason');
    if (reason?.boolean('enabled') === true) throw new InvalidParamError(reason.param('enabled'), 'The portal here does not ask for cancellation reasons.');
  }
}

function applyCommon(r: ParamReader, c: PortalConfiguration): void {
  const bp = r.object('business_profile');
  if (bp) {
    bp.assertNoUnknown(['headline', 'privacy_policy_url', 'terms_of_service_url']);
    const headline = nullableString(bp, 'headline', 60);
    if (headline !== undefined) c.business_profile.headline = headline;
    for (const k of ['privacy_policy_url', 'terms_of_service_url'] as const) {
      const v = readUrlParam(bp, k);
      if (v !== undefined) c.business_profile[k] = v;
    }
  }
  const ret = readUrlParam(r, 'default_return_url');
  if (ret !== undefined) c.default_return_url = ret;
  const login = r.object('login_page');
  if (login?.boolean('enabled') === true) throw new InvalidParamError(login.param('enabled'), 'The portal here has no login page.');
  const name = nullableString(r, 'name', 256);
  if (name !== undefined) c.name = name;
  const metadata = readMetadata(r, c.metadata);
  if (metadata !== undefined) c.metadata = metadata;
}

function newConfiguration(p: Principal, now: number, isDefault: boolean): PortalConfiguration {
  return {
    id: newId('bpc', p.livemode),
    object: 'billing_portal.configuration',
    active: true,
    application: null,
    business_profile: { headline: null, privacy_policy_url: null, terms_of_service_url: null },
    created: now,
    default_return_url: null,
    features: {
      customer_update: { allowed_updates: [], enabled: false },
      invoice_history: { enabled: true },
      payment_method_update: { enabled: false },
      subscription_cancel: { cancellation_reason: { enabled: false, options: [] }, enabled: false, mode: 'at_period_end', proration_behavior: 'none' },
      subscription_update: { default_allowed_updates: [], enabled: false, proration_behavior: 'none', products: null },
    },
    is_default: isDefault,
    livemode: p.livemode,
    login_page: { enabled: false, url: null },
    metadata: {},
    name: null,
    updated: now,
  };
}

function loadConfiguration(store: StateStore, p: Principal, id: string, param = 'id'): Promise<PortalConfiguration> {
  return loadResource<PortalConfiguration>(store, p, { type: PORTAL_CONFIGURATION_TYPE, noun: 'configuration' }, id, param);
}

/** The account's default configuration, created on first use. */
async function defaultConfiguration(tx: StateStore, p: Principal, nowMs: number): Promise<PortalConfiguration> {
  const found = await tx.listObjects<PortalConfiguration>(p.account, PORTAL_CONFIGURATION_TYPE, { limit: 1, where: { is_default: true } });
  if (found.data.length > 0) return found.data[0].data;
  const c = newConfiguration(p, Math.floor(nowMs / 1000), true);
  await tx.insertObject({ account: p.account, type: PORTAL_CONFIGURATION_TYPE, id: c.id, createdMs: nowMs, data: c });
  await configurationEvent(tx, p, 'created', c, nowMs);
  return c;
}

/** The v1 configuration event and its thin counterpart. */
async function configurationEvent(
  tx: StateStore,
  p: Principal,
  action: 'created' | 'updated',
  c: PortalConfiguration,
  nowMs: number,
  prev?: Record<string, unknown>,
) {
  await recordBillingEvent(tx, p, `billing_portal.configuration.${action}`, c, prev);
  const related = { id: c.id, type: 'billing_portal.configuration', url: `/v1/billing_portal/configurations/${c.id}` };
  await recordThinEvent(tx, p, `v1.billing_portal.configuration.${action}`, related, nowMs);
}

function renderSession(ps: PortalSession): Record<string, unknown> {
  const { _token: _omit, ...served } = ps;
  return served;
}

// ---------------------------------------------------------------------------------------------------------------------
// The portal page

function esc(v: unknown): string {
  return String(v ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function money(amount: number, currency: string): string {
  return `${(amount / 100).toFixed(2)} ${currency.toUpperCase()}`;
}

function day(unix: number | null): string {
  return unix ? new Date(unix * 1000).toISOString().slice(0, 10) : '';
}

function html(status: number, body: string): HttpResult {
  return {
    status,
    body: `<!doctype html><html><head><meta charset="utf-8"><title>Billing</title></head><body>${body}</body></html>`,
    contentType: 'text/html; charset=utf-8',
  };
}

async function sessionByToken(s: Services, token: string): Promise<{ account: string; session: PortalSession } | null> {
  const found = await s.state.findByUniqueKey<PortalSession>('_portal', 'billing_portal.token', token);
  if (!found) return null;
  const ref = found.data as unknown as { account: string; session: string };
  const ps = await s.state.getObject<PortalSession>(ref.account, PORTAL_SESSION_TYPE, ref.session);
  if (!ps || ps.data.created + SESSION_TTL_S < Math.floor(s.now() / 1000)) return null;
  return { account: ref.account, session: ps.data };
}

async function portalPage(s: Services, account: string, ps: PortalSession, notice = ''): Promise<HttpResult> {
  const p: Principal = { account, livemode: ps.livemode };
  const config = await loadConfiguration(s.state, p, ps.configuration);
  const customer = await loadCustomer(s.state, p, ps.customer, 'customer');
  const subs = (await s.state.listObjects<SubscriptionObject>(account, SUBSCRIPTION_TYPE, { limit: 100, where: { customer: ps.customer } })).data.map(
    (o) => o.data,
  );
  const parts: string[] = [];
  if (config.business_profile.headline) parts.push(`<h1>${esc(config.business_profile.headline)}</h1>`);
  parts.push(`<h2>${esc(customer.name ?? customer.email ?? customer.id)}</h2>`);
  if (notice) parts.push(`<p class="notice">${esc(notice)}</p>`);
  parts.push('<h3>Subscriptions</h3><ul class="subscriptions">');
  for (const sub of subs) {
    const items = sub.items.data.map((it) => esc(it.price.nickname ?? it.price.id)).join(', ');
    const end = sub.items.data[0]?.current_period_end ?? null;
    let line = `<li data-subscription="${esc(sub.id)}">${items} — ${esc(sub.status)}${sub.cancel_at_period_end ? `, ends ${day(end)}` : sub.status === 'canceled' ? '' : `, renews ${day(end)}`}`;
    if (config.features.subscription_cancel.enabled && sub.status !== 'canceled' && !sub.cancel_at_period_end) {
      line += ` <form method="post" action="/billing_portal/p/${esc(ps._token)}/subscriptions/${esc(sub.id)}/cancel"><button type="submit">Cancel</button></form>`;
    }
    parts.push(`${line}</li>`);
  }
  parts.push('</ul>');
  if (config.features.invoice_history.enabled) {
    const invoices = (await s.state.listObjects<InvoiceObject>(account, INVOICE_TYPE, { limit: 100, where: { customer: ps.customer } })).data
      .map((o) => o.data)
      .filter((inv) => inv.status !== 'draft');
    parts.push('<h3>Invoices</h3><ul class="invoices">');
    for (const inv of invoices) {
      parts.push(
        `<li data-invoice="${esc(inv.id)}">${esc(inv.number ?? inv.id)} — ${day(inv.created)} — ${money(inv.total, inv.currency)} — ${esc(inv.status)}</li>`,
      );
    }
    parts.push('</ul>');
  }
  const back = ps.return_url ?? config.default_return_url;
  if (back) parts.push(`<p><a class="return" href="${esc(back)}">Return</a></p>`);
  return html(200, parts.join('\n'));
}

export function registerPortalRoutes(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v1/billing_portal/configurations',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['business_profile', 'default_return_url', 'features', 'login_page', 'metadata', 'name', 'expand']);
      const nowMs = s.now();
      const c = newConfiguration(p, Math.floor(nowMs / 1000), false);
      applyFeatures(r.object('features', { required: true }), c.features);
      applyCommon(r, c);
      await s.state.transaction(async (tx) => {
        await tx.insertObject({ account: p.account, type: PORTAL_CONFIGURATION_TYPE, id: c.id, createdMs: nowMs, data: c });
        await configurationEvent(tx, p, 'created', c, nowMs);
      });
      return json(200, c);
    }),
  );

  http.route(
    'GET',
    '/v1/billing_portal/configurations',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['active', 'is_default', 'limit', 'starting_after', 'ending_before', 'expand']);
      const active = r.boolean('active');
      const isDefault = r.boolean('is_default');
      const where: Record<string, boolean> = {};
      if (active !== undefined) where.active = active;
      if (isDefault !== undefined) where.is_default = isDefault;
      return listEndpoint<PortalConfiguration>(
        s,
        p,
        '/v1/billing_portal/configurations',
        PORTAL_CONFIGURATION_TYPE,
        readListParams(r),
        { where },
        undefined,
        (c) => c,
      );
    }),
  );

  http.route(
    'GET',
    '/v1/billing_portal/configurations/:id',
    apiEndpoint(s, async (p, req, params) => {
      new ParamReader(params).assertNoUnknown(['expand']);
      return json(200, await loadConfiguration(s.state, p, req.params[0]));
    }),
  );

  http.route(
    'POST',
    '/v1/billing_portal/configurations/:id',
    apiEndpoint(s, async (p, req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['active', 'business_profile', 'default_return_url', 'features', 'login_page', 'metadata', 'name', 'expand']);
      const c = await s.state.transaction(async (tx) => {
        const c = await loadConfiguration(tx, p, req.params[0]);
        const before = structuredClone(c);
        const features = r.object('features');
        if (features) applyFeatures(features, c.features);
        applyCommon(r, c);
        const active = r.boolean('active');
        if (active !== undefined) c.active = active;
        c.updated = Math.floor(s.now() / 1000);
        await tx.updateObject(p.account, PORTAL_CONFIGURATION_TYPE, c.id, c);
        const { updated: _u, ...prev } = before;
        await configurationEvent(tx, p, 'updated', c, s.now(), prev);
        return c;
      });
      return json(200, c);
    }),
  );

  http.route(
    'POST',
    '/v1/billing_portal/sessions',
    apiEndpoint(s, async (p, _req, params) => {
      const r = new ParamReader(params);
      r.assertNoUnknown(['customer', 'configuration', 'locale', 'return_url', 'on_behalf_of', 'expand']);
      const customerId = r.string('customer', { required: true, maxLength: 5000 });
      const configId = r.string('configuration', { maxLength: 5000 });
      const locale = r.string('locale', { maxLength: 20 }) ?? null;
      const returnUrl = readUrlParam(r, 'return_url') ?? null;
      const nowMs = s.now();
      const ps = await s.state.transaction(async (tx) => {
        const customer = await loadCustomer(tx, p, customerId, 'customer');
        const config = configId ? await loadConfiguration(tx, p, configId, 'configuration') : await defaultConfiguration(tx, p, nowMs);
        if (!config.active) throw new InvalidParamError('configuration', `The configuration ${config.id} is inactive.`);
        const token = crypto.randomBytes(24).toString('base64url');
        const ps: PortalSession = {
          id: newId('bps', p.livemode),
          object: 'billing_portal.session',
          configuration: config.id,
          created: Math.floor(nowMs / 1000),
          customer: customer.id,
          flow: null,
          livemode: p.livemode,
          locale,
          on_behalf_of: null,
          return_url: returnUrl,
          url: `${origin}/billing_portal/p/${token}`,
          _token: token,
        };
        await tx.insertObject({
          account: p.account,
          type: PORTAL_SESSION_TYPE,
          id: ps.id,
          createdMs: nowMs,
          expiresMs: nowMs + SESSION_TTL_S * 1000,
          data: ps,
        });
        // The token → session index lives outside the accounts: the token alone finds its account.
        await tx.insertObject({
          account: '_portal',
          type: 'billing_portal.token',
          id: ps.id,
          uniqueKey: token,
          createdMs: nowMs,
          expiresMs: nowMs + SESSION_TTL_S * 1000,
          data: { account: p.account, session: ps.id },
        });
        await recordBillingEvent(tx, p, 'billing_portal.session.created', renderSession(ps));
        await recordThinEvent(tx, p, 'v1.billing_portal.session.created', null, nowMs);
        return ps;
      });
      return json(200, renderSession(ps));
    }),
  );

  const expired = () => html(404, '<p>This portal link has expired. Ask for a new one.</p>');

  http.route('GET', '/billing_portal/p/:token', async (req) => {
    const found = await sessionByToken(s, req.params[0]);
    return found ? portalPage(s, found.account, found.session) : expired();
  });

  http.route('POST', '/billing_portal/p/:token/subscriptions/:id/cancel', async (req) => {
    const found = await sessionByToken(s, req.params[0]);
    if (!found) return expired();
    parseForm(req.body);
    const { account, session } = found;
    const p: Principal = { account, livemode: session.livemode };
    const config = await loadConfiguration(s.state, p, session.configuration);
    const sub = await s.state.getObject<SubscriptionObject>(account, SUBSCRIPTION_TYPE, req.params[1]);
    if (!config.features.subscription_cancel.enabled || sub?.data.customer !== session.customer) {
      return portalPage(s, account, session, 'This subscription cannot be canceled here.');
    }
    const none: Params = {};
    if (config.features.subscription_cancel.mode === 'immediately') await cancelSubscription(s, p, sub.id, none);
    else await updateSubscription(s, p, sub.id, { cancel_at_period_end: 'true' });
    return portalPage(s, account, session, 'Your subscription was canceled.');
  });
}
