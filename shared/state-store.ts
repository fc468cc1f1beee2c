/**
 * The transactional store for small state: API keys, meters, meter event sessions, idempotency records, v2 core events
 * (and later the billing objects). SQLite in the default mode, PostgreSQL in distributed mode; never ClickHouse.
 *
 * Objects are Stripe resources stored as JSON documents, one table for all types, so that new resources need no new
 * schema. Every read and write names the account (invariant 9: accounts are walls).
 */

export interface ApiKeyRecord {
  /** The secret itself (`sk_test_…` / `sk_live_…`). */
  secret: string;
  account: string;
  livemode: boolean;
  createdMs: number;
}

export interface StoredObject<T = Record<string, unknown>> {
  account: string;
  /** Stripe object type, e.g. `billing.meter`, `v2.core.event`. */
  type: string;
  id: string;
  /** Creation time in ms; lists are newest first, ties broken by insertion order. */
  createdMs: number;
  /**
   * Optional secondary key, unique per (account, type) when not null: a meter's `livemode:event_name`, a session's
   * token. Looked up with findByUniqueKey.
   */
  uniqueKey?: string | null;
  /** Optional expiry in ms; expired objects are invisible and removed by prune(). */
  expiresMs?: number | null;
  data: T;
}

export interface ListOptions {
  /** 1..100 */
  limit: number;
  /** Object id: return objects older than this one. */
  startingAfter?: string;
  /** Object id: return objects newer than this one. */
  endingBefore?: string;
  /** Top-level fields of `data` that must equal the given values. */
  where?: Record<string, string | number | boolean | null>;
  /** Only objects with createdMs in [gteMs, ltMs). */
  createdGteMs?: number;
  createdLtMs?: number;
}

export interface ListPage<T = Record<string, unknown>> {
  /** Newest first. */
  data: StoredObject<T>[];
  hasMore: boolean;
}

export interface IdempotencyRecord {
  account: string;
  key: string;
  /** `POST /v1/billing/meters`: a key reused on another endpoint is a mismatch. */
  requestLine: string;
  /** Hash of the canonical request parameters. */
  requestHash: string;
  status: number;
  /** The response body exactly as first sent. */
  responseBody: string;
  createdMs: number;
}

export interface StateStore {
  init(): Promise<void>;
  close(): Promise<void>;

  putApiKey(rec: ApiKeyRecord): Promise<void>;
  listApiKeys(): Promise<ApiKeyRecord[]>;

  /** Throws UniqueViolation when (account, type, id) or (account, type, uniqueKey) exists. */
  insertObject<T>(obj: StoredObject<T>): Promise<void>;
  /** Replaces `data` of an existing object. Returns false when there is none. */
  updateObject<T>(account: string, type: string, id: string, data: T): Promise<boolean>;
  getObject<T>(account: string, type: string, id: string): Promise<StoredObject<T> | null>;
  findByUniqueKey<T>(account: string, type: string, uniqueKey: string): Promise<StoredObject<T> | null>;
  listObjects<T>(account: string, type: string, opts: ListOptions): Promise<ListPage<T>>;
  /** Every object of a type across accounts, for in-memory caches (meters). Oldest first. */
  scanType<T>(type: string): Promise<StoredObject<T>[]>;
  deleteObject(account: string, type: string, id: string): Promise<boolean>;

  getIdempotency(account: string, key: string): Promise<IdempotencyRecord | null>;
  /** Keeps the first record when one exists for (account, key); returns the stored one. */
  putIdempotency(rec: IdempotencyRecord): Promise<IdempotencyRecord>;
  /**
   * Claims (account, key) for a request about to execute, for `ttlMs` from now: true when no other owner holds an
   * unexpired claim on it (an expired one is taken over). Shared by every process on the store, so that a key executes
   * once across them (shared/http/idempotency.ts). False may also mean that the holder released it just then: the
   * caller answers 409, which clients retry.
   */
  claimIdempotency(account: string, key: string, owner: string, ttlMs: number): Promise<boolean>;
  /** Ends `owner`'s claim on (account, key); another owner's claim is left as it is. */
  releaseIdempotency(account: string, key: string, owner: string): Promise<void>;

  /**
   * Runs `fn` atomically: no other write interleaves, and a throw rolls everything back. `fn` must only use the
   * store it is given.
   */
  transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T>;

  /** Opaque binary values by key (dedup snapshots in the distributed mode), put replaces; optional: the embedded mode keeps them in files. */
  putBlob?(key: string, data: Buffer): Promise<void>;
  getBlob?(key: string): Promise<Buffer | null>;
  deleteBlob?(key: string): Promise<void>;
  /** Keys of the blobs whose key starts with `prefix`. */
  listBlobKeys?(prefix: string): Promise<string[]>;

  /** Removes expired objects and idempotency claims, and idempotency records older than `idempotencyBeforeMs`. */
  prune(nowMs: number, idempotencyBeforeMs: number): Promise<void>;
}
