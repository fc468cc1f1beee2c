/**
 * SQLite driver of the StateStore (default mode). One better-sqlite3 connection per process, WAL journal with
 * `synchronous=FULL`: a write the API acknowledges has been fsynced.
 *
 * better-sqlite3 is synchronous while the interface is async and a transaction's `fn` awaits. A transaction therefore
 * holds an async mutex from BEGIN IMMEDIATE to COMMIT/ROLLBACK: every other call on the store (reads too — they share
 * the connection and would otherwise see uncommitted writes) queues behind it, FIFO. While no transaction is open,
 * calls run synchronously at call time, without touching the mutex. The `tx` handed to `fn` bypasses the mutex.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import Database from 'better-sqlite3';
import { InvalidRequestError, NotFoundError, UniqueViolation } from '../errors';
import { OBJECT_COLS, toIdem, toJson, type IdemRow } from './rows';
import type { ApiKeyRecord, IdempotencyRecord, ListOptions, ListPage, StateStore, StoredObject } from '../state-store';

type Db = Database.Database;
type Stmt = Database.Statement<unknown[], unknown>;

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/**
 * Schema migrations, applied in order by init(), each in its own transaction, recorded in `schema_migrations`.
 * Append new versions; never edit an applied one.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'objects, idempotency, api_keys',
    sql: `
      CREATE TABLE objects (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order; ties of created_ms are broken by it
        account    TEXT    NOT NULL,
        type       TEXT    NOT NULL,
        id         TEXT    NOT NULL,
        created_ms INTEGER NOT NULL,
        unique_key TEXT,
        expires_ms INTEGER,
        data       TEXT    NOT NULL                    -- JSON document
      );
      CREATE UNIQUE INDEX objects_id ON objects (account, type, id);
      CREATE UNIQUE INDEX objects_unique_key ON objects (account, type, unique_key) WHERE unique_key IS NOT NULL;
      CREATE INDEX objects_list ON objects (account, type, created_ms, seq);
      CREATE INDEX objects_type_scan ON objects (type, created_ms, seq);
      CREATE INDEX objects_expires ON objects (expires_ms) WHERE expires_ms IS NOT NULL;

      CREATE TABLE idempotency (
        account       TEXT    NOT NULL,
        key           TEXT    NOT NULL,
        request_line  TEXT    NOT NULL,
        request_hash  TEXT    NOT NULL,
        status        INTEGER NOT NULL,
        response_body TEXT    NOT NULL,
        created_ms    INTEGER NOT NULL,
        PRIMARY KEY (account, key)
      );
      CREATE INDEX idempotency_created ON idempotency (created_ms);

      CREATE TABLE api_keys (
        secret     TEXT    PRIMARY KEY,
        account    TEXT    NOT NULL,
        livemode   INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
      );
    `,
  },
];

export interface SqliteStateStoreOptions {
  /** Clock used for expiry checks (tests). Defaults to Date.now. */
  now?: () => number;
  /** How long a statement waits for a lock held by another connection/process, ms. Default 5000. */
  busyTimeoutMs?: number;
}

interface ObjectRow {
  id: string;
  created_ms: number;
  unique_key: string | null;
  expires_ms: number | null;
  data: string;
}
interface ScanRow extends ObjectRow {
  account: string;
}
interface CursorRow {
  created_ms: number;
  seq: number;
}
interface ApiKeyRow {
  secret: string;
  account: string;
  livemode: number;
  created_ms: number;
}

const VISIBLE = '(expires_ms IS NULL OR expires_ms > ?)';
const LIST_CACHE_MAX = 256;

function toObject<T>(account: string, type: string, r: ObjectRow): StoredObject<T> {
  return {
    account,
    type,
    id: r.id,
    createdMs: r.created_ms,
    uniqueKey: r.unique_key,
    expiresMs: r.expires_ms,
    data: JSON.parse(r.data) as T,
  };
}

/** JSON path of a top-level field. */
function fieldPath(field: string): string {
  if (field.length === 0 || field.includes('"')) throw new TypeError(`unsupported where field: ${JSON.stringify(field)}`);
  return `$."${field}"`;
}

function isUniqueError(err: unknown): err is Error & { code: string } {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
}

/** UniqueViolation.key: 'id' for (account, type, id), 'unique_key' for (account, type, unique_key). */
function uniqueViolation(err: Error): UniqueViolation {
  return new UniqueViolation(err.message.includes('unique_key') ? 'unique_key' : 'id');
}

/** The synchronous implementation: owns the connection and the prepared statements. No locking here. */
class Core {
  private readonly st: {
    getObject: Stmt;
    findByUniqueKey: Stmt;
    cursor: Stmt;
    insertObject: Stmt;
    deleteExpiredConflicts: Stmt;
    updateObject: Stmt;
    deleteObject: Stmt;
    scanType: Stmt;
    getIdem: Stmt;
    putIdem: Stmt;
    putApiKey: Stmt;
    listApiKeys: Stmt;
    pruneObjects: Stmt;
    pruneIdem: Stmt;
    begin: Stmt;
    commit: Stmt;
    rollback: Stmt;
  };
  private readonly listCache = new Map<string, Stmt>();
  private readonly insertReplacingExpired: (obj: StoredObject<unknown>, json: string, now: number) => boolean;
  private readonly pruneTx: (nowMs: number, idemBeforeMs: number) => void;

  constructor(
    readonly db: Db,
    private readonly now: () => number,
  ) {
    const p = (sql: string): Stmt => db.prepare(sql);
    this.st = {
      getObject: p(`SELECT ${OBJECT_COLS} FROM objects WHERE account = ? AND type = ? AND id = ? AND ${VISIBLE}`),
      findByUniqueKey: p(`SELECT ${OBJECT_COLS} FROM objects WHERE account = ? AND type = ? AND unique_key = ? AND ${VISIBLE}`),
      cursor: p(`SELECT created_ms, seq FROM objects WHERE account = ? AND type = ? AND id = ? AND ${VISIBLE}`),
      insertObject: p('INSERT INTO objects (account, type, id, created_ms, unique_key, expires_ms, data) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      deleteExpiredConflicts: p(
        `DELETE FROM objects WHERE account = ? AND type = ? AND (id = ? OR unique_key = ?)
           AND expires_ms IS NOT NULL AND expires_ms <= ?`,
      ),
      updateObject: p(`UPDATE objects SET data = ? WHERE account = ? AND type = ? AND id = ? AND ${VISIBLE}`),
      deleteObject: p('DELETE FROM objects WHERE account = ? AND type = ? AND id = ? RETURNING expires_ms'),
      scanType: p(`SELECT account, ${OBJECT_COLS} FROM objects WHERE type = ? AND ${VISIBLE} ORDER BY created_ms ASC, seq ASC`),
      getIdem: p('SELECT * FROM idempotency WHERE account = ? AND key = ?'),
      putIdem: p(
        `INSERT INTO idempotency (account, key, request_line, request_hash, status, response_body, created_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account, key) DO NOTHING`,
      ),
      putApiKey: p(
        `INSERT INTO api_keys (secret, account, livemode, created_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (secret) DO UPDATE SET account = excluded.account, livemode = excluded.livemode,
           created_ms = excluded.created_ms`,
      ),
      listApiKeys: p('SELECT secret, account, livemode, created_ms FROM api_keys ORDER BY created_ms ASC, secret ASC'),
      pruneObjects: p('DELETE FROM objects WHERE expires_ms IS NOT NULL AND expires_ms <= ?'),
      pruneIdem: p('DELETE FROM idempotency WHERE created_ms < ?'),
      begin: p('BEGIN IMMEDIATE'),
      commit: p('COMMIT'),
      rollback: p('ROLLBACK'),
    };
    // better-sqlite3 transaction functions become SAVEPOINTs when called inside an open transaction.
    this.insertReplacingExpired = db.transaction((obj: StoredObject<unknown>, json: string, now: number) => {
      const removed = this.st.deleteExpiredConflicts.run(obj.account, obj.type, obj.id, obj.uniqueKey ?? null, now);
      if (removed.changes === 0) return false;
      this.runInsert(obj, json); // a throw rolls the delete back too
      return true;
    });
    this.pruneTx = db.transaction((nowMs: number, idemBeforeMs: number) => {
      this.st.pruneObjects.run(nowMs);
      this.st.pruneIdem.run(idemBeforeMs);
    });
  }

  begin(): void {
    this.st.begin.run();
  }
  commit(): void {
    this.st.commit.run();
  }
  rollback(): void {
    if (this.db.inTransaction) this.st.rollback.run();
  }

  putApiKey(rec: ApiKeyRecord): void {
    this.st.putApiKey.run(rec.secret, rec.account, rec.livemode ? 1 : 0, rec.createdMs);
  }

  listApiKeys(): ApiKeyRecord[] {
    return (this.st.listApiKeys.all() as ApiKeyRow[]).map((r) => ({
      secret: r.secret,
      account: r.account,
      livemode: r.livemode === 1,
      createdMs: r.created_ms,
    }));
  }

  private runInsert(obj: StoredObject<unknown>, json: string): void {
    this.st.insertObject.run(obj.account, obj.type, obj.id, obj.createdMs, obj.uniqueKey ?? null, obj.expiresMs ?? null, json);
  }

  insertObject<T>(obj: StoredObject<T>): void {
    const json = toJson(obj.data);
    try {
      this.runInsert(obj, json);
      return;
    } catch (err) {
      if (!isUniqueError(err)) throw err;
      // An expired object is invisible: it must not block its id or unique key. Remove it and retry, atomically.
      let replaced: boolean;
      try {
        replaced = this.insertReplacingExpired(obj, json, this.now());
      } catch (err2) {
        throw isUniqueError(err2) ? uniqueViolation(err2) : err2;
      }
      if (!replaced) throw uniqueViolation(err);
    }
  }

  updateObject<T>(account: string, type: string, id: string, data: T): boolean {
    return this.st.updateObject.run(toJson(data), account, type, id, this.now()).changes > 0;
  }

  getObject<T>(account: string, type: string, id: string): StoredObject<T> | null {
    const r = this.st.getObject.get(account, type, id, this.now()) as ObjectRow | undefined;
    return r ? toObject<T>(account, type, r) : null;
  }

  findByUniqueKey<T>(account: string, type: string, uniqueKey: string): StoredObject<T> | null {
    const r = this.st.findByUniqueKey.get(account, type, uniqueKey, this.now()) as ObjectRow | undefined;
    return r ? toObject<T>(account, type, r) : null;
  }

  deleteObject(account: string, type: string, id: string): boolean {
    // Deletes an expired row too (it is garbage), but reports false for it: it was already invisible.
    const r = this.st.deleteObject.get(account, type, id) as { expires_ms: number | null } | undefined;
    return r !== undefined && (r.expires_ms === null || r.expires_ms > this.now());
  }

  scanType<T>(type: string): StoredObject<T>[] {
    return (this.st.scanType.all(type, this.now()) as ScanRow[]).map((r) => toObject<T>(r.account, type, r));
  }

  listObjects<T>(account: string, type: string, opts: ListOptions): ListPage<T> {
    const { limit } = opts;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new RangeError(`limit must be 1..100, got ${limit}`);
    if (opts.startingAfter !== undefined && opts.endingBefore !== undefined) {
      throw new InvalidRequestError('You may only specify one of these parameters: starting_after, ending_before.');
    }
    const now = this.now();
    const params: unknown[] = [account, type, now];
    let sql = `SELECT ${OBJECT_COLS} FROM objects WHERE account = ? AND type = ? AND ${VISIBLE}`;
    // Direction of travel: older (default, starting_after) or newer (ending_before).
    const newer = opts.endingBefore !== undefined;
    const cursorId = newer ? opts.endingBefore : opts.startingAfter;
    if (cursorId !== undefined) {
      const c = this.st.cursor.get(account, type, cursorId, now) as CursorRow | undefined;
      if (!c) throw new NotFoundError(`No such object: '${cursorId}'`, newer ? 'ending_before' : 'starting_after');
      sql += newer ? ' AND (created_ms, seq) > (?, ?)' : ' AND (created_ms, seq) < (?, ?)';
      params.push(c.created_ms, c.seq);
    }
    if (opts.createdGteMs !== undefined) {
      sql += ' AND created_ms >= ?';
      params.push(opts.createdGteMs);
    }
    if (opts.createdLtMs !== undefined) {
      sql += ' AND created_ms < ?';
      params.push(opts.createdLtMs);
    }
    if (opts.where) {
      for (const [field, value] of Object.entries(opts.where)) {
        const path = fieldPath(field);
        if (value === null) {
          // JSON null or missing.
          sql += " AND coalesce(json_type(data, ?), 'null') = 'null'";
          params.push(path);
        } else if (typeof value === 'boolean') {
          sql += ' AND json_type(data, ?) = ?';
          params.push(path, value ? 'true' : 'false');
        } else if (typeof value === 'number') {
          sql += " AND json_type(data, ?) IN ('integer', 'real') AND json_extract(data, ?) = ?";
          params.push(path, path, value);
        } else if (typeof value === 'string') {
          sql += " AND json_type(data, ?) = 'text' AND json_extract(data, ?) = ?";
          params.push(path, path, value);
        } else {
          throw new TypeError(`unsupported where value for ${field}: ${typeof value}`);
        }
      }
    }
    sql += newer ? ' ORDER BY created_ms ASC, seq ASC LIMIT ?' : ' ORDER BY created_ms DESC, seq DESC LIMIT ?';
    params.push(limit + 1);

    const rows = this.listStatement(sql).all(...params) as ObjectRow[];
    const hasMore = rows.length > limit;
    if (hasMore) rows.length = limit;
    if (newer) rows.reverse();
    return { data: rows.map((r) => toObject<T>(account, type, r)), hasMore };
  }

  /** Statements for listObjects, by SQL text: the text depends only on the shape of the options, not on values. */
  private listStatement(sql: string): Stmt {
    let s = this.listCache.get(sql);
    if (!s) {
      if (this.listCache.size >= LIST_CACHE_MAX) this.listCache.clear();
      s = this.db.prepare(sql) as Stmt;
      this.listCache.set(sql, s);
    }
    return s;
  }

  getIdempotency(account: string, key: string): IdempotencyRecord | null {
    const r = this.st.getIdem.get(account, key) as IdemRow | undefined;
    return r ? toIdem(r) : null;
  }

  putIdempotency(rec: IdempotencyRecord): IdempotencyRecord {
    const res = this.st.putIdem.run(rec.account, rec.key, rec.requestLine, rec.requestHash, rec.status, rec.responseBody, rec.createdMs);
    if (res.changes > 0) return { ...rec };
    const stored = this.getIdempotency(rec.account, rec.key);
    if (!stored) throw new Error('idempotency record vanished'); // cannot happen: one connection, no interleaving
    return stored;
  }

  prune(nowMs: number, idempotencyBeforeMs: number): void {
    this.pruneTx(nowMs, idempotencyBeforeMs);
  }
}

function applyMigrations(db: Db, migrations: readonly Migration[]): void {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_ms INTEGER NOT NULL
  )`);
  const latest = migrations.length ? migrations[migrations.length - 1].version : 0;
  const current = (db.prepare('SELECT coalesce(max(version), 0) AS v FROM schema_migrations').get() as { v: number }).v;
  if (current > latest) {
    throw new Error(`state database schema version ${current} is newer than this build supports (${latest})`);
  }
  const record = db.prepare('INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)');
  for (const m of migrations) {
    if (m.version <= current) continue;
    db.transaction(() => {
      db.exec(m.sql);
      record.run(m.version, m.name, Date.now());
    }).immediate();
  }
}

/** A StateStore view for the duration of one transaction: same connection, no mutex. */
class TxView implements StateStore {
  private finished = false;

  constructor(private readonly core: Core) {}

  finish(): void {
    this.finished = true;
  }

  private call<R>(op: () => R): Promise<R> {
    if (this.finished) return Promise.reject(new Error('transaction is finished: its store handle cannot be used'));
    try {
      return Promise.resolve(op());
    } catch (err) {
      return Promise.reject(err);
    }
  }

  init(): Promise<void> {
    return this.call(() => undefined);
  }
  close(): Promise<void> {
    return Promise.reject(new Error('cannot close the store from inside a transaction'));
  }
  putApiKey(rec: ApiKeyRecord): Promise<void> {
    return this.call(() => this.core.putApiKey(rec));
  }
  listApiKeys(): Promise<ApiKeyRecord[]> {
    return this.call(() => this.core.listApiKeys());
  }
  insertObject<T>(obj: StoredObject<T>): Promise<void> {
    return this.call(() => this.core.insertObject(obj));
  }
  updateObject<T>(account: string, type: string, id: string, data: T): Promise<boolean> {
    return this.call(() => this.core.updateObject(account, type, id, data));
  }
  getObject<T>(account: string, type: string, id: string): Promise<StoredObject<T> | null> {
    return this.call(() => this.core.getObject<T>(account, type, id));
  }
  findByUniqueKey<T>(account: string, type: string, uniqueKey: string): Promise<StoredObject<T> | null> {
    return this.call(() => this.core.findByUniqueKey<T>(account, type, uniqueKey));
  }
  listObjects<T>(account: string, type: string, opts: ListOptions): Promise<ListPage<T>> {
    return this.call(() => this.core.listObjects<T>(account, type, opts));
  }
  scanType<T>(type: string): Promise<StoredObject<T>[]> {
    return this.call(() => this.core.scanType<T>(type));
  }
  deleteObject(account: string, type: string, id: string): Promise<boolean> {
    return this.call(() => this.core.deleteObject(account, type, id));
  }
  getIdempotency(account: string, key: string): Promise<IdempotencyRecord | null> {
    return this.call(() => this.core.getIdempotency(account, key));
  }
  putIdempotency(rec: IdempotencyRecord): Promise<IdempotencyRecord> {
    return this.call(() => this.core.putIdempotency(rec));
  }
  prune(nowMs: number, idempotencyBeforeMs: number): Promise<void> {
    return this.call(() => this.core.prune(nowMs, idempotencyBeforeMs));
  }
  /** Already inside a transaction: just run fn with this handle. */
  async transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T> {
    if (this.finished) throw new Error('transaction is finished: its store handle cannot be used');
    return fn(this);
  }
}

export class SqliteStateStore implements StateStore {
  private core: Core | null = null;
  private closed = false;
  private readonly now: () => number;
  private readonly busyTimeoutMs: number;

  /** The mutex: held by an open transaction (and briefly by each call queued behind one). */
  private locked = false;
  private readonly waiters: Array<() => void> = [];
  /** Identifies the transaction holding the mutex, to detect calls on the outer store from inside its `fn`. */
  private readonly txContext = new AsyncLocalStorage<object>();
  private currentTx: object | null = null;

  /** Journal mode in effect after init(): 'wal' for files, 'memory' for ':memory:'. */
  journalMode = '';

  constructor(
    private readonly path: string,
    options: SqliteStateStoreOptions = {},
  ) {
    this.now = options.now ?? Date.now;
    this.busyTimeoutMs = options.busyTimeoutMs ?? 5000;
  }

  async init(): Promise<void> {
    if (this.closed) throw new Error('state store is closed');
    if (this.core) return;
    const db = new Database(this.path, { timeout: this.busyTimeoutMs });
    try {
      this.journalMode = String(db.pragma('journal_mode = WAL', { simple: true })).toLowerCase();
      db.pragma('synchronous = FULL');
      applyMigrations(db, MIGRATIONS);
      this.core = new Core(db, this.now);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.acquire();
    this.closed = true;
    const core = this.core;
    this.core = null;
    try {
      core?.db.close();
    } finally {
      this.release();
    }
  }

  private ready(): Core {
    if (this.core) return this.core;
    throw new Error(this.closed ? 'state store is closed' : 'state store is not initialised: call init()');
  }

  private acquire(): Promise<void> {
    if (!this.locked) {
      this.locked = true;
      return Promise.resolve();
    }
    if (this.currentTx !== null && this.txContext.getStore() === this.currentTx) {
      return Promise.reject(new Error('deadlock: the store was called from inside its own transaction; use the `tx` handle given to fn'));
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Hands the mutex directly to the next waiter (so newcomers cannot overtake queued calls), or frees it. */
  private release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.locked = false;
  }

  /** Runs a synchronous operation: at once when no transaction is open, else after the queued ones. */
  private run<R>(op: (core: Core) => R): Promise<R> {
    if (!this.locked) {
      try {
        return Promise.resolve(op(this.ready()));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.acquire().then(() => {
      try {
        return op(this.ready());
      } finally {
        this.release();
      }
    });
  }

  async transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T> {
    await this.acquire();
    let view: TxView | null = null;
    try {
      const core = this.ready();
      core.begin();
      view = new TxView(core);
      const token = {};
      this.currentTx = token;
      const tx = view;
      try {
        const result = await this.txContext.run(token, () => fn(tx));
        core.commit();
        return result;
      } catch (err) {
        core.rollback();
        throw err;
      }
    } finally {
      view?.finish();
      this.currentTx = null;
      this.release();
    }
  }

  putApiKey(rec: ApiKeyRecord): Promise<void> {
    return this.run((c) => c.putApiKey(rec));
  }
  listApiKeys(): Promise<ApiKeyRecord[]> {
    return this.run((c) => c.listApiKeys());
  }
  insertObject<T>(obj: StoredObject<T>): Promise<void> {
    return this.run((c) => c.insertObject(obj));
  }
  updateObject<T>(account: string, type: string, id: string, data: T): Promise<boolean> {
    return this.run((c) => c.updateObject(account, type, id, data));
  }
  getObject<T>(account: string, type: string, id: string): Promise<StoredObject<T> | null> {
    return this.run((c) => c.getObject<T>(account, type, id));
  }
  findByUniqueKey<T>(account: string, type: string, uniqueKey: string): Promise<StoredObject<T> | null> {
    return this.run((c) => c.findByUniqueKey<T>(account, type, uniqueKey));
  }
  listObjects<T>(account: string, type: string, opts: ListOptions): Promise<ListPage<T>> {
    return this.run((c) => c.listObjects<T>(account, type, opts));
  }
  scanType<T>(type: string): Promise<StoredObject<T>[]> {
    return this.run((c) => c.scanType<T>(type));
  }
  deleteObject(account: string, type: string, id: string): Promise<boolean> {
    return this.run((c) => c.deleteObject(account, type, id));
  }
  getIdempotency(account: string, key: string): Promise<IdempotencyRecord | null> {
    return this.run((c) => c.getIdempotency(account, key));
  }
  putIdempotency(rec: IdempotencyRecord): Promise<IdempotencyRecord> {
    return this.run((c) => c.putIdempotency(rec));
  }
  prune(nowMs: number, idempotencyBeforeMs: number): Promise<void> {
    return this.run((c) => c.prune(nowMs, idempotencyBeforeMs));
  }
}
