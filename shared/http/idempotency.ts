/**
 * Stripe's Idempotency-Key semantics for POSTs: the first response for a key is saved and replayed for retries with the
 * same parameters; the same key with other parameters (or on another endpoint) is an idempotency_error; a key in use by
 * a request still executing is a 409 that the client retries. Results of requests that failed validation (4xx other
 * than 404) and 503s are not saved, so they can be retried, as Stripe does.
 *
 * Two record stores share this logic: the transactional store (durable, 24 h, for the control-plane endpoints) and a
 * bounded in-memory map for the high-rate meter event endpoints, whose retries are made safe by event identifiers.
 * A key executing is locked in its process; where the transactional store is shared by several processes (PostgreSQL),
 * it is also claimed there, so that it executes once across them.
 */
import crypto from 'node:crypto';
import { ConflictError, IdempotencyError, InvalidRequestError } from '../errors';
import type { IdempotencyRecord, StateStore } from '../state-store';
import type { HttpRequest, HttpResult } from './server';
import type { Principal } from './auth';
import { log } from '../logger';
import { metrics } from '../metrics';
import type { CounterChild } from '../metrics/registry';

export const IDEMPOTENCY_RETENTION_MS = 24 * 3600 * 1000;

/**
 * How long a claim on a key holds (StoreIdempotencyRecords): a process that stops while executing a request leaves its
 * claim, and retries get 409 until it expires. Control-plane requests take milliseconds; one that took longer than
 * this could execute a second time in another process.
 */
export const IDEMPOTENCY_CLAIM_MS = 60_000;

export interface IdempotencyRecords {
  get(account: string, key: string): Promise<IdempotencyRecord | null> | IdempotencyRecord | null;
  put(rec: IdempotencyRecord): Promise<unknown> | unknown;
  /**
   * Where the records are shared by several processes: claims a key for one execution across them (false: another
   * process is executing it) and releases it. Without them, the key is locked in this process only.
   */
  claim?(account: string, key: string, owner: string): Promise<boolean>;
  release?(account: string, key: string, owner: string): Promise<void>;
}

export class StoreIdempotencyRecords implements IdempotencyRecords {
  readonly claim?: (account: string, key: string, owner: string) => Promise<boolean>;
  readonly release?: (account: string, key: string, owner: string) => Promise<void>;

  /**
   * `shared`: other processes use the store too (PostgreSQL), so keys are claimed in it. The embedded store has one
   * process, whose own lock suffices; a claim there would also outlive a crash and refuse the retries for a minute.
   */
  constructor(
    private readonly store: StateStore,
    opts: { shared: boolean },
  ) {
    if (opts.shared) {
      this.claim = (account, key, owner) => store.claimIdempotency(account, key, owner, IDEMPOTENCY_CLAIM_MS);
      this.release = (account, key, owner) => store.releaseIdempotency(account, key, owner);
    }
  }
  get(account: string, key: string): Promise<IdempotencyRecord | null> {
    return this.store.getIdempotency(account, key);
  }
  put(rec: IdempotencyRecord): Promise<IdempotencyRecord> {
    return this.store.putIdempotency(rec);
  }
}

/** Insertion-ordered map used as a FIFO cache: bounded memory whatever the request rate. */
export class MemoryIdempotencyRecords implements IdempotencyRecords {
  private readonly records = new Map<string, IdempotencyRecord>();
  constructor(private readonly capacity = 100_000) {}
  get(account: string, key: string): IdempotencyRecord | null {
    const r = this.records.get(account + '\u0000' + key);
    if (!r) return null;
    if (r.createdMs < Date.now() - IDEMPOTENCY_RETENTION_MS) return null;
    return r;
  }
  put(rec: IdempotencyRecord): void {
    const k = rec.account + '\u0000' + rec.key;
    if (this.records.has(k)) return;
    if (this.records.size >= this.capacity) {
      const oldest = this.records.keys().next().value;
      if (oldest !== undefined) this.records.delete(oldest);
    }
    this.records.set(k, rec);
  }
}

function shouldSave(status: number): boolean {
  return status < 400 || status === 404 || (status >= 500 && status !== 503);
}

const inUse = () =>
  new ConflictError(
    'There is currently another in-progress request using this Stripe token (probably the same idempotency key). Try again later.',
    'idempotency_key_in_use',
  );

export class Idempotency {
  private readonly executing = new Set<string>();
  /** Names this process's claims (with a counter per request) in a store shared with other processes. */
  private readonly owner = crypto.randomUUID();
  private claims = 0;
  /** Executions ended so far (any key): a request that sees it change during its lookup looks again. */
  private ended = 0;

  /**
   * `records` keeps this layer's results; `elsewhere` are the other layers' stores, consulted so that a key is never
   * reused across them (a key first used on a meter endpoint is a mismatch on a meter event endpoint, and vice versa).
   */
  private readonly replays: CounterChild;

  constructor(
    private readonly records: IdempotencyRecords,
    private readonly elsewhere: IdempotencyRecords[] = [],
    /** Names the layer in meterd_idempotency_replays_total. */
    store: 'durable' | 'memory' = 'durable',
  ) {
    this.replays = metrics.idempotencyReplays.child(store);
  }

  private async lookup(account: string, key: string): Promise<IdempotencyRecord | null> {
    const own = await this.records.get(account, key);
    if (own) return own;
    for (const other of this.elsewhere) {
      const found = await other.get(account, key);
      if (found) return found;
    }
    return null;
  }

  async run(principal: Principal, req: HttpRequest, execute: () => Promise<HttpResult>): Promise<HttpResult> {
    if (!req.idempotencyKey || req.method !== 'POST') return execute();
    return this.runKeyed(principal, keyedRequest(req), execute);
  }

  /** Like run, for a request whose key, request line and body hash were taken elsewhere (a gateway thread). */
  async runKeyed(principal: Principal, keyed: KeyedRequest, execute: () => Promise<HttpResult>): Promise<HttpResult> {
    const { key, requestLine, requestHash } = keyed;
    if (key.length > 255) {
      throw new InvalidRequestError('Idempotency-Key must be at most 255 characters long.', { param: 'Idempotency-Key' });
    }
    const endedBefore = this.ended;
    const prior = await this.lookup(principal.account, key);
    if (prior) return this.replay(prior, keyed);
    const lock = principal.account + '\u0000' + key;
    if (this.executing.has(lock)) throw inUse();
    this.executing.add(lock);
    const claim = this.records.claim ? `${this.owner}:${++this.claims}` : null;
    try {
      if (claim !== null && !(await this.records.claim!(principal.account, key, claim))) {
        // Another process holds the key: it is executing, or it has just saved its result and not yet released it.
        const saved = await this.lookup(principal.account, key);
        if (saved) return this.replay(saved, keyed);
        throw inUse();
      }
      // An execution that ended while this request was looking its key up may have been of the same key: it saved its
      // result and released the key after that lookup read the store. Look again, or this request would execute a
      // second time. (Replays, which never take the key, run concurrently.) With claims, the execution may have been
      // in another process, which this one cannot see end: look again whenever the key was claimed.
      if (claim !== null || this.ended !== endedBefore) {
        const saved = await this.lookup(principal.account, key);
        if (saved) return this.replay(saved, keyed);
      }
      const result = await execute();
      if (shouldSave(result.status)) {
        const stored = await this.records.put({
          account: principal.account,
          key,
          requestLine,
          requestHash,
          status: result.status,
          responseBody: result.body,
          createdMs: Date.now(),
        });
        // Another process may have stored a result for this key first: answer what was stored.
        if (stored && typeof stored === 'object' && (stored as IdempotencyRecord).responseBody !== result.body) {
          return replay(stored as IdempotencyRecord, requestLine, requestHash, key);
        }
      }
      return result;
    } finally {
      // Released after the result is saved, so a request that claims the key next finds it.
      if (claim !== null) {
        await this.records.release!(principal.account, key, claim).catch((error: unknown) => {
          log.warn('an Idempotency-Key claim was not released; retries with the key get 409 until it expires', { key, error });
        });
      }
      this.executing.delete(lock);
      this.ended++;
    }
  }

  private replay(prior: IdempotencyRecord, { key, requestLine, requestHash }: KeyedRequest): HttpResult {
    const replayed = replay(prior, requestLine, requestHash, key);
    this.replays.inc();
    return replayed;
  }
}

/** What identifies a POST with an Idempotency-Key: the key, its method and path, and a hash of its body. */
export interface KeyedRequest {
  key: string;
  requestLine: string;
  requestHash: string;
}

export function keyedRequest(req: Pick<HttpRequest, 'idempotencyKey' | 'method' | 'path' | 'body'>): KeyedRequest {
  return {
    key: req.idempotencyKey,
    requestLine: `${req.method} ${req.path}`,
    requestHash: crypto.createHash('sha256').update(req.body).digest('base64url'),
  };
}

function replay(prior: IdempotencyRecord, requestLine: string, requestHash: string, key: string): HttpResult {
  if (prior.requestLine !== requestLine || prior.requestHash !== requestHash) {
    throw new IdempotencyError(
      `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
    );
  }
  return { status: prior.status, body: prior.responseBody, headers: { 'Idempotent-Replayed': 'true' } };
}
