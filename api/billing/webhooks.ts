/**
 * Webhook endpoints (`/v1/webhook_endpoints`) and the delivery of events to them.
 *
 * Deliveries are persisted: recording an event (inside the change's transaction) inserts one `webhook_delivery`
 * object per enabled endpoint whose `enabled_events` match (`*` matches everything), so a delivery exists exactly when
 * its event does, and pending deliveries survive a restart (the dispatcher resumes them on start). The dispatcher:
 *  - is kicked after each recorded event and also polls the store every WEBHOOK_POLL_MS (default 1000 ms), which
 *    catches deliveries whose transaction committed after the kick;
 *  - keeps one request in flight per endpoint and sends each endpoint's deliveries in event order (a delivery waiting
 *    for a retry holds back the later ones of that endpoint);
 *  - signs the JSON body exactly as Stripe does: `Stripe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
 *    "<t>.<body>" keyed with the endpoint's whsec_ secret>`, so `stripe.webhooks.constructEvent` verifies it;
 *  - treats a 2xx answer as delivered; anything else (status, connection error, WEBHOOK_TIMEOUT_MS = 10 s timeout)
 *    is retried with exponential backoff: delay = WEBHOOK_RETRY_BASE_MS (default 60 000 ms) × 2^(attempt−1), capped
 *    at 6 hours, up to WEBHOOK_MAX_ATTEMPTS attempts (default 16, i.e. roughly two days, like Stripe's ~3-day live
 *    retry window). After the last failed attempt the delivery is dropped. Either way the event's pending_webhooks
 *    goes down by one.
 *  - drops deliveries whose endpoint was deleted or disabled meanwhile.
 *
 * Several API processes (distributed mode) each run a dispatcher over the shared store: a process claims a delivery
 * with a lease (row locked while claiming) before sending, so each attempt is made once; a process that dies
 * mid-attempt leaves the lease to expire (timeout + 5 s) and another process retries. A receiver may still see an
 * event twice (answer lost after processing), as with Stripe: receivers should be idempotent by event id.
 *
 * Versions (Stripe's rule): an endpoint created with `api_version` keeps it and receives every event rendered in it
 * (its `api_version` field says so); one created without receives each event in the version the event was created
 * in (the account's default at that time).
 */
import type { Config } from '../../shared/config';
import crypto from 'node:crypto';
import { AsyncResource } from 'node:async_hooks';
import type { HttpServer } from '../../shared/http/server';
import type { Services } from '../../shared/services';
import type { StateStore, StoredObject } from '../../shared/state-store';
import type { ParamReader } from '../../shared/wire/form';
import { InvalidParamError } from '../../shared/errors';
import { newId, randomBase62 } from '../../shared/ids';
import { log } from '../../shared/logger';
import type { ApiVersioning } from '../../shared/versioning/versioning';
import { CURRENT_API_VERSION, isKnownVersion } from '../../shared/versioning/releases';
import { metrics } from '../../shared/metrics';
import { recordDeliveryAttempt } from './recent-deliveries';
import { defineResource, P } from './resource';
import {
  EVENT_TYPE,
  WEBHOOK_DELIVERY_TYPE,
  WEBHOOK_ENDPOINT_TYPE,
  onDeliveriesQueued,
  type DeliveryDoc,
  type EventObject,
  type StoredEndpoint,
} from './outbox';

function render(e: StoredEndpoint, withSecret = false): Record<string, unknown> {
  const { secret, ...rest } = e;
  return withSecret ? { ...rest, secret } : rest;
}

/** Stripe's v1 signature scheme. */
export function signPayload(payload: string, secret: string, t: number): string {
  const sig = crypto.createHmac('sha256', secret).update(`${t}.${payload}`, 'utf8').digest('hex');
  return `t=${t},v1=${sig}`;
}

/**
 * What a dispatcher delivers: v1 snapshot events to webhook endpoints (below), or thin events to v2 event destinations
 * (api/event-destinations.ts). Same rows, ordering, leases, signature and retries; the channel names the row type,
 * finds the target and the body, and settles what a finished delivery leaves behind.
 */
export interface DeliveryChannel {
  deliveryType: string;
  /** The URL, secret and body of the delivery, or null when it is void (target deleted or disabled, event gone). */
  prepare(store: StateStore, account: string, d: DeliveryDoc): Promise<{ url: string; secret: string; payload: string; eventType: string } | null>;
  /** In the transaction that removes a finished delivery (sent, given up or void). */
  settle(tx: StateStore, account: string, d: DeliveryDoc): Promise<void>;
  /** Subscribes to "rows were queued in this process". */
  subscribe(listener: () => void): () => void;
}

/**
 * A v1 event rendered in `version` (an endpoint's or a snapshot destination's pinned version; else the version the
 * event was recorded in, else the current one), as the JSON body a receiver gets.
 */
export async function renderEventBody(versioning: ApiVersioning, account: string, ev: EventObject, version: string | null): Promise<string> {
  const event = structuredClone(ev);
  event.api_version = version ?? (ev.api_version && isKnownVersion(ev.api_version) ? ev.api_version : CURRENT_API_VERSION);
  return JSON.stringify(await versioning.renderObject(event, event.api_version, account), null, 2);
}

/** A finished delivery of a v1 event: one fewer pending webhook on the event. */
export async function settleEventDelivery(tx: StateStore, account: string, d: DeliveryDoc): Promise<void> {
  const ev = await tx.getObject<EventObject>(account, EVENT_TYPE, d.event);
  if (ev) {
    ev.data.pending_webhooks = Math.max(0, ev.data.pending_webhooks - 1);
    await tx.updateObject(account, EVENT_TYPE, d.event, ev.data);
  }
}

/** v1 events to v1 webhook endpoints, rendered in the endpoint's pinned version. */
export function webhookChannel(versioning: ApiVersioning): DeliveryChannel {
  return {
    deliveryType: WEBHOOK_DELIVERY_TYPE,
    async prepare(store, account, d) {
      const [endpoint, ev] = await Promise.all([
        store.getObject<StoredEndpoint>(account, WEBHOOK_ENDPOINT_TYPE, d.endpoint),
        store.getObject<EventObject>(account, EVENT_TYPE, d.event),
      ]);
      if (endpoint?.data.status !== 'enabled' || !ev) return null;
      return {
        url: endpoint.data.url,
        secret: endpoint.data.secret,
        payload: await renderEventBody(versioning, account, ev.data, endpoint.data.api_version),
        eventType: ev.data.type,
      };
    },
    settle: settleEventDelivery,
    subscribe: onDeliveriesQueued,
  };
}

let activeDispatcher: WebhookDispatcher | null = null;

export class WebhookDispatcher {
  private readonly retryBaseMs: number;
  private readonly maxAttempts: number;
  private readonly timeoutMs: number;
  private readonly pollMs: number;
  private static readonly MAX_DELAY_MS = 6 * 3600 * 1000;
  /** Endpoints (account/endpoint) with a request in flight. */
  private readonly inFlight = new Set<string>();
  private running = false;
  private again = false;
  private stopped = false;
  private poller: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  /** Timers are started from this scope, never from the caller's (a store transaction's async context). */
  private readonly scope = new AsyncResource('webhook-dispatcher');

  constructor(
    private readonly store: StateStore,
    config: Pick<Config, 'webhookRetryBaseMs' | 'webhookMaxAttempts' | 'webhookTimeoutMs' | 'webhookPollMs'>,
    private readonly channel: DeliveryChannel,
  ) {
    this.retryBaseMs = config.webhookRetryBaseMs;
    this.maxAttempts = config.webhookMaxAttempts;
    this.timeoutMs = config.webhookTimeoutMs;
    this.pollMs = config.webhookPollMs;
  }

  start(): void {
    this.poller = setInterval(() => this.tick(), this.pollMs);
    this.poller.unref();
    this.unsubscribe = this.channel.subscribe(() => this.kick());
    this.kick();
  }

  stop(): void {
    this.stopped = true;
    if (this.poller) clearInterval(this.poller);
    this.unsubscribe?.();
  }

  /** Schedules a scan soon (and once more a little later, for a transaction that commits after the first one). */
  kick(): void {
    this.scope.runInAsyncScope(() => {
      setTimeout(() => this.tick(), 5).unref();
      setTimeout(() => this.tick(), 100).unref();
    });
  }

  private tick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    this.scan()
      .catch((err) => {
        if (!this.stopped) log.warn('webhook dispatch scan failed', { err: String(err) });
      })
      .finally(() => {
        this.running = false;
        if (this.again) {
          this.again = false;
          this.tick();
        }
      });
  }

  private async scan(): Promise<void> {
    const all = await this.store.scanType<DeliveryDoc>(this.channel.deliveryType);
    all.sort((a, b) => a.createdMs - b.createdMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const head = new Map<string, StoredObject<DeliveryDoc>>();
    for (const d of all) {
      const k = `${d.account}/${d.data.endpoint}`;
      if (!head.has(k)) head.set(k, d);
    }
    const now = Date.now();
    let nextDue = Infinity;
    for (const [k, d] of head) {
      if (this.inFlight.has(k)) continue;
      const due = Math.max(d.data.next_attempt_ms, d.data.lease_until_ms ?? 0);
      if (due > now) {
        nextDue = Math.min(nextDue, due);
        continue;
      }
      this.inFlight.add(k);
      this.deliver(d)
        .catch((err) => {
          if (!this.stopped) log.warn('webhook delivery failed', { err: String(err) });
        })
        .finally(() => {
          this.inFlight.delete(k);
          this.tick();
        });
    }
    if (nextDue !== Infinity && nextDue - now < this.pollMs) {
      this.scope.runInAsyncScope(() => setTimeout(() => this.tick(), nextDue - now + 1).unref());
    }
  }

  private async finish(account: string, d: DeliveryDoc): Promise<void> {
    await this.store.transaction(async (tx) => {
      await tx.deleteObject(account, this.channel.deliveryType, d.id);
      await this.channel.settle(tx, account, d);
    });
  }

  /** Takes the delivery for this process (the row is locked while checked), or null when another one holds it. */
  private async claim(account: string, id: string): Promise<DeliveryDoc | null> {
    return this.store.transaction(async (tx) => {
      const found = await tx.getObject<DeliveryDoc>(account, this.channel.deliveryType, id);
      const now = Date.now();
      if (!found || (found.data.lease_until_ms ?? 0) > now || found.data.next_attempt_ms > now) return null;
      const d = { ...found.data, lease_until_ms: now + this.timeoutMs + 5000 };
      await tx.updateObject(account, this.channel.deliveryType, id, d);
      return d;
    });
  }

  private async deliver(stored: StoredObject<DeliveryDoc>): Promise<void> {
    const account = stored.account;
    const d = await this.claim(account, stored.id);
    if (!d) return;
    const target = await this.channel.prepare(this.store, account, d);
    if (!target) {
      await this.finish(account, d);
      DROPPED.inc();
      return;
    }
    const { url, secret, payload, eventType } = target;
    const t = Math.floor(Date.now() / 1000);
    const started = performance.now();
    let error: string | null = null;
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json; charset=utf-8',
          'User-Agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
          'Stripe-Signature': signPayload(payload, secret, t),
        },
        body: payload,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      await res.arrayBuffer().catch(() => undefined);
      if (res.status < 200 || res.status > 299) error = `HTTP ${res.status}`;
    } catch (err) {
      error = String((err as Error)?.message ?? err);
    }
    if (this.stopped) return;
    const attempts = d.attempts + 1;
    const outcome = error === null ? 'delivered' : attempts >= this.maxAttempts ? 'abandoned' : 'retry_scheduled';
    countAttempt(account, d, url, eventType, attempts, error, performance.now() - started, outcome);
    if (error === null) {
      await this.finish(account, d);
      return;
    }
    if (attempts >= this.maxAttempts) {
      log.warn('webhook delivery abandoned', { endpoint: d.endpoint, event: d.event, attempts, error });
      await this.finish(account, d);
      return;
    }
    const delay = Math.min(WebhookDispatcher.MAX_DELAY_MS, this.retryBaseMs * 2 ** (attempts - 1));
    const next: DeliveryDoc = { ...d, attempts, next_attempt_ms: Date.now() + delay, last_error: error, lease_until_ms: 0 };
    await this.store.updateObject(account, this.channel.deliveryType, d.id, next);
  }
}

const DROPPED = metrics.webhookDeliveries.child('dropped');
const ATTEMPT_SECONDS = metrics.webhookSeconds.child();

/** Counts one delivery attempt and keeps it for the dashboard. */
function countAttempt(
  account: string,
  d: DeliveryDoc,
  url: string,
  eventType: string,
  attempt: number,
  error: string | null,
  ms: number,
  outcome: string,
): void {
  ATTEMPT_SECONDS.observe(ms / 1000);
  metrics.webhookAttempts.child(error === null ? 'success' : 'failure').inc();
  if (outcome === 'retry_scheduled') metrics.webhookRetries.child().inc();
  else metrics.webhookDeliveries.child(outcome).inc();
  recordDeliveryAttempt(account, {
    at: Date.now(),
    endpoint: d.endpoint,
    url,
    event: d.event,
    event_type: eventType,
    attempt,
    error,
    duration_ms: Math.round(ms),
    outcome,
  });
}

/** The `url` of a delivery target: http or https (`httpsOnly`: https, as live-mode event destinations need). */
export function readUrl(r: ParamReader, required: boolean, httpsOnly = false): string | undefined {
  const url = r.string('url', { required, maxLength: 5000 });
  if (url === undefined) return undefined;
  let protocol = '';
  try {
    protocol = new URL(url).protocol;
  } catch {
    protocol = '';
  }
  if (protocol !== 'https:' && (protocol !== 'http:' || httpsOnly)) {
    throw new InvalidParamError(
      r.param('url'),
      httpsOnly && protocol === 'http:' ? 'Live mode webhook endpoints must use HTTPS.' : `Invalid URL: ${url}`,
      'url_invalid',
    );
  }
  return url;
}

function readEnabledEvents(r: ParamReader, required: boolean): string[] | undefined {
  const ev = r.stringArray('enabled_events', { required, maxItems: 500 });
  if (ev === undefined) return undefined;
  if (ev.length === 0) throw new InvalidParamError('enabled_events', 'enabled_events must contain at least one event type.');
  for (const e of ev) {
    if (!/^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$/.test(e)) {
      throw new InvalidParamError('enabled_events', `Invalid event type: ${e}.`);
    }
  }
  return [...new Set(ev)];
}

/** An endpoint's pinned version must be one the release table knows (it renders every delivery). */
function readApiVersion(r: ParamReader): string | null {
  const version = r.string('api_version', { maxLength: 100 });
  if (version === undefined) return null;
  if (!isKnownVersion(version)) throw new InvalidParamError('api_version', `Invalid Stripe API version: ${version}`);
  return version;
}

const ENDPOINT_PARAMS = {
  url: P.custom((r) => readUrl(r, false)),
  enabled_events: P.custom((r) => readEnabledEvents(r, false)),
  description: P.nullableString(5000),
  metadata: P.metadata(),
};

const CREATE_PARAMS = {
  ...ENDPOINT_PARAMS,
  url: P.custom((r) => readUrl(r, true)),
  enabled_events: P.custom((r) => readEnabledEvents(r, true)),
  api_version: P.custom((r) => readApiVersion(r)),
  connect: P.boolean(),
};

export function registerWebhookRoutes(http: HttpServer, s: Services): void {
  // Webhook endpoints are configuration, not billing state: Stripe records no event for their changes.
  defineResource(http, s, {
    path: '/v1/webhook_endpoints',
    type: WEBHOOK_ENDPOINT_TYPE,
    noun: 'webhook endpoint',
    render: (e: StoredEndpoint) => render(e),
    events: {},
    create: {
      params: CREATE_PARAMS,
      // The secret is shown once, in the answer to the create.
      answer: (e) => render(e, true),
      build: ({ p, now }, v): StoredEndpoint => ({
        id: newId('we', p.livemode),
        object: 'webhook_endpoint',
        api_version: v.api_version ?? null,
        application: null,
        created: now,
        description: v.description ?? null,
        enabled_events: v.enabled_events!,
        livemode: p.livemode,
        metadata: v.metadata?.({}) ?? {},
        secret: 'whsec_' + randomBase62(32),
        status: 'enabled',
        url: v.url!,
      }),
    },
    list: { params: {}, filter: () => ({}) },
    update: {
      params: { ...ENDPOINT_PARAMS, disabled: P.boolean() },
      apply: (_ctx, e, v) => {
        if (v.url !== undefined) e.url = v.url;
        if (v.enabled_events !== undefined) e.enabled_events = v.enabled_events;
        if (v.description !== undefined) e.description = v.description;
        if (v.metadata) e.metadata = v.metadata(e.metadata);
        if (v.disabled !== undefined) e.status = v.disabled ? 'disabled' : 'enabled';
      },
    },
    remove: {},
  });

  if (activeDispatcher) activeDispatcher.stop();
  activeDispatcher = new WebhookDispatcher(s.state, s.config, webhookChannel(s.versioning));
  activeDispatcher.start();
}
