/**
 * The StateStore interface over the operations of queries.ts, once for both drivers and for their transaction
 * handles: each method hands its operation to `exec`, which a driver implements (run it now, queue it behind a
 * transaction, run it on a transaction's client…). `inTx` tells the operation it runs inside a transaction, where
 * reads that feed a write lock their row. Blobs (putBlob/getBlob) are offered by the PostgreSQL driver only: the
 * embedded mode keeps its snapshots in files.
 */
import type { ApiKeyRecord, IdempotencyRecord, ListOptions, ListPage, StateStore, StoredObject } from '../state-store';
import type { Op, StateQueries } from './queries';

export type Operation<R> = (q: StateQueries, inTx: boolean) => Op<R>;

export abstract class SqlStateStore implements StateStore {
  protected abstract exec<R>(op: Operation<R>): Promise<R>;
  abstract init(): Promise<void>;
  abstract close(): Promise<void>;
  abstract transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T>;

  putApiKey(rec: ApiKeyRecord): Promise<void> {
    return this.exec((q) => q.putApiKey(rec));
  }
  listApiKeys(): Promise<ApiKeyRecord[]> {
    return this.exec((q) => q.listApiKeys());
  }
  insertObject<T>(obj: StoredObject<T>): Promise<void> {
    return this.exec((q) => q.insertObject(obj));
  }
  updateObject<T>(account: string, type: string, id: string, data: T): Promise<boolean> {
    return this.exec((q) => q.updateObject(account, type, id, data));
  }
  getObject<T>(account: string, type: string, id: string): Promise<StoredObject<T> | null> {
    return this.exec((q, inTx) => q.getObject<T>(account, type, id, inTx));
  }
  findByUniqueKey<T>(account: string, type: string, uniqueKey: string): Promise<StoredObject<T> | null> {
    return this.exec((q, inTx) => q.findByUniqueKey<T>(account, type, uniqueKey, inTx));
  }
  listObjects<T>(account: string, type: string, opts: ListOptions): Promise<ListPage<T>> {
    return this.exec((q) => q.listObjects<T>(account, type, opts));
  }
  scanType<T>(type: string): Promise<StoredObject<T>[]> {
    return this.exec((q) => q.scanType<T>(type));
  }
  deleteObject(account: string, type: string, id: string): Promise<boolean> {
    return this.exec((q) => q.deleteObject(account, type, id));
  }
  getIdempotency(account: string, key: string): Promise<IdempotencyRecord | null> {
    return this.exec((q) => q.getIdempotency(account, key));
  }
  putIdempotency(rec: IdempotencyRecord): Promise<IdempotencyRecord> {
    return this.exec((q) => q.putIdempotency(rec));
  }
  claimIdempotency(account: string, key: string, owner: string, ttlMs: number): Promise<boolean> {
    return this.exec((q) => q.claimIdempotency(account, key, owner, ttlMs));
  }
  releaseIdempotency(account: string, key: string, owner: string): Promise<void> {
    return this.exec((q) => q.releaseIdempotency(account, key, owner));
  }
  prune(nowMs: number, idempotencyBeforeMs: number): Promise<void> {
    return this.exec((q) => q.prune(nowMs, idempotencyBeforeMs));
  }
}

export const FINISHED = 'transaction is finished: its store handle cannot be used';
export const DEADLOCK = 'deadlock: the store was called from inside its own transaction; use the `tx` handle given to fn';

/** The store handed to a transaction's fn: its calls run inside that transaction until it ends. */
export abstract class TransactionStore extends SqlStateStore {
  protected finished = false;

  init(): Promise<void> {
    return this.exec(function* () {});
  }
  close(): Promise<void> {
    return Promise.reject(new Error('cannot close the store from inside a transaction'));
  }
  /** Already inside a transaction: just run fn with this handle. */
  async transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T> {
    if (this.finished) throw new Error(FINISHED);
    return fn(this);
  }
}
