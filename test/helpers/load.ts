/**
 * A load generator with a client-side model of what was sent, for tests that break things under load and then check
 * that the event summaries equal exactly what the client got acknowledged (the pattern of e2e-crash.test.ts, for
 * several target processes and for outages that answer 503).
 *
 * Each sender behaves like a real client: it sends one request at a time and retries it, with the same identifiers
 * (or the same Idempotency-Key), until it gets a 200. A 503 (which must carry `Stripe-Should-Retry: true`) and a
 * network failure (the target died with the request in flight: the outcome is in doubt) are retried after a short
 * backoff, on the next target in the list, so a dead process's requests move to a live one. Any other status is
 * recorded as unexpected (and retried too, so that the model stays complete).
 *
 * The model counts every event ever sent, minus the cancelled ones; since every request is retried until
 * acknowledged, that is what the summaries must show once the load has stopped and everything was acknowledged.
 */
import http from 'node:http';

export const EVENT_NAME = 'fault_api_calls';
export const CUSTOMERS = Array.from({ length: 12 }, (_, i) => `cus_fault_${String(i).padStart(2, '0')}`);
const MAX_BATCH = 100;
const REQUEST_TIMEOUT_MS = 30_000;

export interface Ev {
  id: string;
  customer: string;
  value: number;
  /** Sent without an identifier: the server derives it from the Idempotency-Key, so it cannot be cancelled by id. */
  generated?: boolean;
}

export type Kind = 'stream' | 'v1' | 'cancel';

export interface Req {
  kind: Kind;
  /** Events carried (stream, v1), or the one event a cancel targets. */
  events: Ev[];
  body: string;
  idemKey?: string;
  acked: boolean;
  attempts: number;
  /** Name of the target that acknowledged it. */
  ackedBy?: string;
}

/** Where requests go: a gateway (or any process serving the meter event endpoints). */
export interface Target {
  name: string;
  port: number;
}

export type Outcome = { status: number; text: string; headers: http.IncomingHttpHeaders } | { error: string };

export type SendResult = 'acked' | 'unavailable' | 'network' | 'unexpected';

export function rand(min: number, max: number): number {
  return min + Math.floor(Math.random() * (max - min + 1));
}

export function pick<T>(xs: T[]): T {
  return xs[Math.floor(Math.random() * xs.length)];
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** One POST over a keep-alive agent; never throws: a network failure is an `error` outcome. */
export function post(agent: http.Agent, port: number, path: string, headers: Record<string, string>, body: string): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (o: Outcome) => {
      if (!settled) {
        settled = true;
        resolve(o);
      }
    };
    const req = http.request(
      { host: '127.0.0.1', port, path, method: 'POST', agent, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => done({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), headers: res.headers }));
        res.on('error', (err) => done({ error: String(err) }));
        res.on('aborted', () => done({ error: 'response aborted' }));
      },
    );
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error(`no response within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', (err) => done({ error: String(err) }));
    req.end(body);
  });
}

/** The client side: what was sent, what was acknowledged, what is in doubt. */
export class LoadClient {
  readonly requests: Req[] = [];
  /** Every event ever sent, by identifier (its value and customer never change between resends). */
  readonly events = new Map<string, Ev>();
  /** Acknowledged events that may still be cancelled. */
  readonly cancellable: Ev[] = [];
  /** Identifiers targeted by a cancel request. */
  readonly cancelled = new Set<string>();
  readonly ackedStreamBatches: Req[] = [];
  /** Responses that are neither a 200 nor a 503 with Stripe-Should-Retry: true. */
  readonly unexpected: string[] = [];
  ackedEvents = 0;
  ackedRequests = 0;
  networkErrors = 0;
  /** 503 answers carrying Stripe-Should-Retry: true. */
  retryable503 = 0;
  /** Acknowledged events per target name. */
  readonly ackedByTarget = new Map<string, number>();
  private counter = 0;

  constructor(
    private readonly tag: string,
    readonly key: string,
    readonly customers: string[] = CUSTOMERS,
    readonly eventName: string = EVENT_NAME,
  ) {}

  private newEvent(generated = false): Ev {
    const ev: Ev = { id: `${this.tag}-${(this.counter++).toString(36)}`, customer: pick(this.customers), value: rand(1, 1000), generated };
    this.events.set(ev.id, ev);
    return ev;
  }

  /** A stream batch; `keyed` ones carry no identifiers but an Idempotency-Key (the server derives the identifiers). */
  newStream(size = rand(1, MAX_BATCH), keyed = Math.random() < 0.2): Req {
    const events: Ev[] = [];
    for (let i = 0; i < size; i++) events.push(this.newEvent(keyed));
    const body = JSON.stringify({
      events: events.map((e) => ({
        event_name: this.eventName,
        ...(keyed ? {} : { identifier: e.id }),
        payload: { stripe_customer_id: e.customer, value: String(e.value) },
      })),
    });
    const r: Req = { kind: 'stream', events, body, idemKey: keyed ? `idem-${events[0].id}` : undefined, acked: false, attempts: 0 };
    this.requests.push(r);
    return r;
  }

  /** A v1 event; half of them carry no identifier but an Idempotency-Key. */
  newV1(keyed = Math.random() < 0.5): Req {
    const e = this.newEvent(keyed);
    const body = new URLSearchParams({
      event_name: this.eventName,
      ...(keyed ? {} : { identifier: e.id }),
      'payload[stripe_customer_id]': e.customer,
      'payload[value]': String(e.value),
    }).toString();
    const r: Req = { kind: 'v1', events: [e], body, idemKey: keyed ? `idem-${e.id}` : undefined, acked: false, attempts: 0 };
    this.requests.push(r);
    return r;
  }

  /** A v2 cancel of an acknowledged event (so the event is in the log before the cancel). */
  newCancel(): Req | null {
    if (this.cancellable.length === 0) return null;
    const i = Math.floor(Math.random() * this.cancellable.length);
    const e = this.cancellable[i];
    this.cancellable[i] = this.cancellable[this.cancellable.length - 1];
    this.cancellable.pop();
    this.cancelled.add(e.id);
    const body = JSON.stringify({ event_name: this.eventName, type: 'cancel', cancel: { identifier: e.id } });
    const r: Req = { kind: 'cancel', events: [e], body, acked: false, attempts: 0 };
    this.requests.push(r);
    return r;
  }

  /** The usual mix: 85 % stream batches, 10 % v1 events, 5 % cancellations. */
  next(): Req {
    const x = Math.random();
    let r: Req | null = null;
    if (x < 0.05) r = this.newCancel();
    else if (x < 0.15) r = this.newV1();
    return r ?? this.newStream();
  }

  inDoubt(): Req[] {
    return this.requests.filter((r) => !r.acked);
  }

  /** Sends (or resends) a request; `dupe` marks a resend of something already acknowledged. */
  async send(agent: http.Agent, target: Target, token: string, r: Req, phase: string, dupe = false): Promise<SendResult> {
    let path: string;
    let headers: Record<string, string>;
    if (r.kind === 'stream') {
      path = '/v2/billing/meter_event_stream';
      headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    } else if (r.kind === 'v1') {
      path = '/v1/billing/meter_events';
      headers = { authorization: `Bearer ${this.key}`, 'content-type': 'application/x-www-form-urlencoded' };
    } else {
      path = '/v2/billing/meter_event_adjustments';
      headers = { authorization: `Bearer ${this.key}`, 'content-type': 'application/json' };
    }
    if (r.idemKey) headers['idempotency-key'] = r.idemKey;
    r.attempts++;
    const o = await post(agent, target.port, path, headers, r.body);
    if ('error' in o) {
      this.networkErrors++;
      return 'network';
    }
    if (o.status === 503) {
      if (o.headers['stripe-should-retry'] === 'true') {
        this.retryable503++;
        return 'unavailable';
      }
      this.unexpected.push(`${phase}: ${r.kind} to ${target.name} -> 503 without Stripe-Should-Retry: true: ${o.text.slice(0, 300)}`);
      return 'unexpected';
    }
    if (o.status !== 200) {
      this.unexpected.push(`${phase}: ${r.kind} to ${target.name} -> ${o.status} ${o.text.slice(0, 300)}`);
      return 'unexpected';
    }
    if (dupe || r.acked) return 'acked';
    r.acked = true;
    r.ackedBy = target.name;
    this.ackedRequests++;
    if (r.kind === 'stream') this.ackedStreamBatches.push(r);
    if (r.kind !== 'cancel') {
      this.ackedEvents += r.events.length;
      this.ackedByTarget.set(target.name, (this.ackedByTarget.get(target.name) ?? 0) + r.events.length);
      for (const e of r.events) if (!e.generated && !this.cancelled.has(e.id)) this.cancellable.push(e);
    }
    return 'acked';
  }

  /** Per customer: every event sent (each is retried until acknowledged) minus the cancelled ones. */
  expected(): Map<string, number> {
    const out = new Map<string, number>(this.customers.map((c) => [c, 0]));
    for (const e of this.events.values()) out.set(e.customer, out.get(e.customer)! + e.value);
    for (const id of this.cancelled) {
      const e = this.events.get(id)!;
      out.set(e.customer, out.get(e.customer)! - e.value);
    }
    return out;
  }

  total(): number {
    return [...this.expected().values()].reduce((a, b) => a + b, 0);
  }
}

export interface LoadOptions {
  /** Session token for the stream endpoint. */
  token: string;
  targets: Target[];
  senders?: number;
  /** Pause between a sender's requests (default 100 ms: a few thousand events/s, enough and kind to a 2-core box). */
  thinkMs?: number;
}

/**
 * Concurrent senders over a (changeable) list of targets. Sender i sends to targets[i % n]; a retry moves on to the
 * next target. stop() lets every sender finish its current request (retried until acknowledged).
 */
export class Load {
  targets: Target[];
  phase = 'load';
  private stopping = false;
  private aborted = false;
  private running: Promise<void>[] = [];
  private readonly agent: http.Agent;
  /** Requests currently in flight, per target name. */
  readonly inFlight = new Map<string, number>();
  readonly senders: number;

  constructor(
    readonly client: LoadClient,
    private readonly opts: LoadOptions,
  ) {
    this.targets = [...opts.targets];
    this.senders = opts.senders ?? 8;
    this.agent = new http.Agent({ keepAlive: true, maxSockets: this.senders * 4 });
  }

  start(): void {
    for (let i = 0; i < this.senders; i++) {
      this.running.push(
        (async () => {
          while (!this.stopping && !this.aborted) {
            await this.deliver(i, this.client.next());
            const think = this.opts.thinkMs ?? 100;
            if (think > 0) await sleep(think);
          }
        })(),
      );
    }
  }

  /** Sends `r` until it is acknowledged (or the load is aborted). */
  async deliver(i: number, r: Req, dupe = false): Promise<void> {
    for (let attempt = 0; !this.aborted; attempt++) {
      const targets = this.targets;
      if (targets.length === 0) {
        await sleep(100);
        continue;
      }
      const target = targets[(i + attempt) % targets.length];
      this.inFlight.set(target.name, (this.inFlight.get(target.name) ?? 0) + 1);
      let res: SendResult;
      try {
        res = await this.client.send(this.agent, target, this.opts.token, r, `${this.phase}${attempt > 0 ? ' retry' : ''}`, dupe);
      } finally {
        this.inFlight.set(target.name, this.inFlight.get(target.name)! - 1);
      }
      if (res === 'acked') return;
      await sleep(res === 'network' ? 50 : Math.min(1000, 100 * 2 ** Math.min(attempt, 4)));
    }
  }

  /** Stops issuing new requests; waits for the current ones to be acknowledged, at most `deadlineMs`. */
  async stop(deadlineMs = 60_000): Promise<void> {
    this.stopping = true;
    const all = Promise.all(this.running);
    const timer = setTimeout(() => {
      this.aborted = true;
    }, deadlineMs);
    await all;
    clearTimeout(timer);
  }

  /**
   * After stop(): retries whatever is still unacknowledged (nothing, normally), then resends a sample of acknowledged
   * stream batches to every target (they must not be counted again).
   */
  async finish(dupes = 20, deadlineMs = 60_000): Promise<void> {
    this.aborted = false;
    this.phase = 'finish';
    const timer = setTimeout(() => {
      this.aborted = true;
    }, deadlineMs);
    try {
      const work: Array<{ r: Req; dupe: boolean }> = this.client.inDoubt().map((r) => ({ r, dupe: false }));
      const acked = this.client.ackedStreamBatches;
      const picked = new Set<Req>();
      for (let k = 0; k < dupes && acked.length > 0; k++) picked.add(pick(acked));
      for (const r of picked) work.push({ r, dupe: true });
      let next = 0;
      await Promise.all(
        Array.from({ length: Math.min(this.senders, work.length) }, async (_, i) => {
          while (next < work.length) {
            const w = work[next++];
            // A duplicate goes to another target than the one that acknowledged it, when there is one.
            const offset = w.dupe
              ? Math.max(
                  0,
                  this.targets.findIndex((t) => t.name !== w.r.ackedBy),
                )
              : i;
            await this.deliver(offset, w.r, w.dupe);
          }
        }),
      );
    } finally {
      clearTimeout(timer);
      this.agent.destroy();
    }
  }
}

/** Resolves when `cond` holds (polled every 50 ms); false after `timeoutMs`. */
export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(50);
  }
}
