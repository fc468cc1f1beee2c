/**
 * PostgreSQL driver of the StateStore (distributed mode): several processes share one database. Semantics are those
 * of the SQLite driver (shared/state/sqlite-store.ts), which is the contract; the differences that concurrency forces
 * are listed below.
 *
 * Layout. Everything lives in one schema (`schema` option, default `public`), created by init() when missing. Table
 * names are schema-qualified in every statement, so the driver does not depend on the connection's search_path (and
 * works behind a transaction-pooling proxy). init() applies versioned migrations (schema_migrations) in one
 * transaction under a transaction-level advisory lock keyed by the schema name: processes starting together apply
 * them once, the others wait and then find them applied.
 *
 * Documents. `objects.data` is `json`, not `jsonb`: json keeps the text exactly as JSON.stringify wrote it, so key
 * order survives a round trip (the API returns stored documents verbatim; jsonb would reorder keys by length and
 * Postgres-mode responses would differ from SQLite-mode ones). `where` filters compare the text of the top-level
 * field (`data -> field`) with JSON.stringify(value): exact and type-strict because both sides come from
 * JSON.stringify (a string matches only a JSON string, a number only the same JSON number, a boolean only a JSON
 * boolean); null matches JSON null or a missing field via json_typeof. PostgreSQL cannot process U+0000 or an unpaired
 * surrogate inside JSON (`->` fails on such a document), so documents containing them are refused at write time with a
 * TypeError, before any SQL runs; a filter value containing them matches nothing.
 *
 * Transactions. transaction(fn) takes a dedicated pooled client, BEGIN ISOLATION LEVEL READ COMMITTED ... COMMIT.
 * Inside it, getObject and findByUniqueKey are SELECT ... FOR UPDATE: a read-modify-write through tx.getObject +
 * tx.updateObject holds the row lock from the read to the commit, so concurrent transactions (in this process or
 * another) cannot lose an update. SERIALIZABLE with retry on 40001 was not chosen because a retry would run `fn`
 * again, and callers' `fn` may have effects outside the database. What READ COMMITTED does not give, unlike SQLite's
 * single writer: reads through listObjects/scanType inside a transaction are not locked, and a concurrent insert is
 * not blocked by them (the unique indexes still stop duplicates; insertObject reports UniqueViolation). Transactions
 * that lock rows in opposite orders can fail with a deadlock error (40P01) — then fn's work is rolled back and the
 * error is thrown; nothing is retried.
 *
 * Calls on the outer store from inside its own transaction's fn are refused with the same "deadlock" error as the
 * SQLite driver: they would run on another connection without seeing the transaction's writes, and with a full pool
 * (every connection held by a transaction waiting for a second one) they would deadlock the pool. Calls on the `tx`
 * handle are serialised (one statement sequence at a time), so a caller may fire several without awaiting each.
 *
 * A unique violation inside a transaction does not abort it (the insert runs INSERT ... ON CONFLICT DO NOTHING first,
 * then retries under a SAVEPOINT). Any other SQL error inside a transaction does abort the Postgres transaction; the
 * driver remembers it, and transaction() then rolls back and rejects with it even if fn caught it and returned.
 *
 * Besides the SQLite tables there is `blobs` (putBlob/getBlob: opaque bytes by key, e.g. dedup snapshots shared by
 * the aggregators). close() refuses new calls at once, waits for the calls and transactions already running, then
 * ends the pool. Expiry uses the `now` clock of the calling process, like the SQLite driver, not the server's.
 */
import { OBJECT_COLS, toIdem, toJson as baseToJson, type IdemRow } from './rows';
import { AsyncLocalStorage } from 'node:async_hooks';
import { Client, Pool, type PoolClient, type QueryResult, type QueryResultRow } from 'pg';
import { InvalidRequestError, NotFoundError, UniqueViolation } from '../errors';
import type { ApiKeyRecord, IdempotencyRecord, ListOptions, ListPage, StateStore, StoredObject } from '../state-store';

export interface PgMigration {
  version: number;
  name: string;
  /** Runs with search_path set to the store's schema (unqualified names land there). */
  sql: string;
}

/**
 * Schema migrations, applied in order by init() in one transaction, recorded in `schema_migrations`. Append new
 * versions; never edit an applied one. Version numbers follow the SQLite driver's where the tables are the same.
 */
export const PG_MIGRATIONS: readonly PgMigration[] = [
  {
    version: 1,
    name: 'objects, idempotency, api_keys, blobs',
    sql: `
      CREATE TABLE objects (
        seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order; breaks created_ms ties
        account    TEXT COLLATE "C" NOT NULL,
        type       TEXT COLLATE "C" NOT NULL,
        id         TEXT COLLATE "C" NOT NULL,
        created_ms BIGINT NOT NULL,
        unique_key TEXT COLLATE "C",
        expires_ms BIGINT,
        data       JSON NOT NULL                                     -- JSON text, kept verbatim (key order)
      );
      CREATE UNIQUE INDEX objects_id ON objects (account, type, id);
      CREATE UNIQUE INDEX objects_unique_key ON objects (account, type, unique_key) WHERE unique_key IS NOT NULL;
      CREATE INDEX objects_list ON objects (account, type, created_ms, seq);
      CREATE INDEX objects_type_scan ON objects (type, created_ms, seq);
      CREATE INDEX objects_expires ON objects (expires_ms) WHERE expires_ms IS NOT NULL;

      CREATE TABLE idempotency (
        account       TEXT COLLATE "C" NOT NULL,
        key           TEXT COLLATE "C" NOT NULL,
        request_line  TEXT NOT NULL,
        request_hash  TEXT NOT NULL,
        status        INTEGER NOT NULL,
        response_body TEXT NOT NULL,
        created_ms    BIGINT NOT NULL,
        PRIMARY KEY (account, key)
      );
      CREATE INDEX idempotency_created ON idempotency (created_ms);

      CREATE TABLE api_keys (
        secret     TEXT COLLATE "C" PRIMARY KEY,
        account    TEXT NOT NULL,
        livemode   BOOLEAN NOT NULL,
        created_ms BIGINT NOT NULL
      );

      CREATE TABLE blobs (
        key        TEXT COLLATE "C" PRIMARY KEY,
        data       BYTEA NOT NULL,
        updated_ms BIGINT NOT NULL
      );
    `,
  },
];

export interface PostgresStateStoreOptions {
  /** A PostgreSQL URL, e.g. postgres://user:password@host:5432/db?sslmode=require */
  url: string;
  /** Schema holding the tables; created by init() when missing. Default 'public'. */
  schema?: string;
  /** Connections in the pool. Default 10. */
  poolSize?: number;
  /** Clock used for expiry checks and blob timestamps (tests). Defaults to Date.now. */
  now?: () => number;
}

interface ObjectRow {
  id: string;
  created_ms: string;
  unique_key: string | null;
  expires_ms: string | null;
  data: unknown;
}
interface ScanRow extends ObjectRow {
  account: string;
}
interface ApiKeyRow {
  secret: string;
  account: string;
  livemode: boolean;
  created_ms: string;
}

const FINISHED = 'transaction is finished: its store handle cannot be used';
const DEADLOCK = 'deadlock: the store was called from inside its own transaction; use the `tx` handle given to fn';

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** U+0000 or an unpaired surrogate, as JSON.stringify escapes them (an even number of backslashes before `\u`). */
const UNSUPPORTED_ESCAPE = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i;

function hasUnsupportedEscape(json: string): boolean {
  return json.includes('\\u') && UNSUPPORTED_ESCAPE.test(json);
}

function toJson(data: unknown): string {
  const s = baseToJson(data);
  if (hasUnsupportedEscape(s)) {
    throw new TypeError('object data contains U+0000 or an unpaired surrogate, which PostgreSQL cannot store as JSON');
  }
  return s;
}

function num(v: string | number): number {
  return typeof v === 'number' ? v : Number(v);
}

function toObject<T>(account: string, type: string, r: ObjectRow): StoredObject<T> {
  return {
    account,
    type,
    id: r.id,
    createdMs: num(r.created_ms),
    uniqueKey: r.unique_key,
    expiresMs: r.expires_ms === null ? null : num(r.expires_ms),
    data: r.data as T,
  };
}

function checkField(field: string): void {
  // Same rule as the SQLite driver (whose JSON path quoting cannot hold a '"'), plus NUL, which no text can hold.
  if (field.length === 0 || field.includes('"') || field.includes('\0')) {
    throw new TypeError(`unsupported where field: ${JSON.stringify(field)}`);
  }
}

function pgCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** UniqueViolation.key from the violated index: 'unique_key' for objects_unique_key, else 'id'. */
function uniqueViolation(err: unknown): UniqueViolation {
  const constraint = (err as { constraint?: unknown }).constraint;
  return new UniqueViolation(constraint === 'objects_unique_key' ? 'unique_key' : 'id');
}

/**
 * A client taken from the pool for several statements. While it is out, the pool does not listen for its errors: a
 * connection that dies between two statements (server restart, pg_terminate_backend) would emit an unhandled 'error'
 * and crash the process. This listens, and release() destroys a connection that failed instead of pooling it.
 */
async function checkout(pool: Pool): Promise<{ client: PoolClient; release: (broken?: Error) => void }> {
  const client = await pool.connect();
  let dead: Error | undefined;
  const onError = (err: Error): void => {
    dead ??= err;
  };
  client.on('error', onError);
  return {
    client,
    release: (broken?: Error) => {
      client.removeListener('error', onError);
      client.release(broken ?? dead);
    },
  };
}

/** Where statements run: the pool (autocommit), or one client inside a transaction. */
interface Runner {
  /** Inside transaction(): reads that feed a write lock their row (FOR UPDATE). */
  readonly inTx: boolean;
  query<R extends QueryResultRow>(text: string, values?: unknown[]): Promise<QueryResult<R>>;
  /** Runs fn all-or-nothing: a SAVEPOINT inside a transaction, else BEGIN/COMMIT on a dedicated client. */
  atomic<R>(fn: (r: Runner) => Promise<R>): Promise<R>;
}

class PoolRunner implements Runner {
  readonly inTx = false;
  constructor(private readonly pool: Pool) {}

  query<R extends QueryResultRow>(text: string, values?: unknown[]): Promise<QueryResult<R>> {
    return this.pool.query<R>(text, values);
  }

  async atomic<R>(fn: (r: Runner) => Promise<R>): Promise<R> {
    const { client, release } = await checkout(this.pool);
    let broken: Error | undefined; // a failed ROLLBACK: the connection's state is unknown, destroy it
    try {
      await client.query('BEGIN');
      const result = await fn(new ClientRunner(client, false));
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch((e: Error) => (broken = e));
      throw err;
    } finally {
      release(broken);
    }
  }
}

/** A checked-out client. In a transaction it remembers the first SQL error, which aborted the Postgres transaction. */
class ClientRunner implements Runner {
  failure: unknown = null;
  private savepoints = 0;

  constructor(
    private readonly client: PoolClient,
    readonly inTx: boolean,
  ) {}

  async query<R extends QueryResultRow>(text: string, values?: unknown[]): Promise<QueryResult<R>> {
    try {
      return await this.client.query<R>(text, values);
    } catch (err) {
      if (this.failure === null) this.failure = err;
      throw err;
    }
  }

  async atomic<R>(fn: (r: Runner) => Promise<R>): Promise<R> {
    const name = `meterd_sp_${++this.savepoints}`;
    const before = this.failure;
    await this.query(`SAVEPOINT ${name}`);
    try {
      const result = await fn(this);
      await this.query(`RELEASE SAVEPOINT ${name}`);
      return result;
    } catch (err) {
      if (before === null) {
        // Undo the failed statements; the transaction is usable again unless the rollback itself fails.
        try {
          await this.client.query(`ROLLBACK TO SAVEPOINT ${name}`);
          await this.client.query(`RELEASE SAVEPOINT ${name}`);
          this.failure = null;
        } catch (e) {
          this.failure ??= e;
        }
      }
      throw err;
    }
  }
}

/** The statements, run on whatever Runner a call is bound to. */
class Ops {
  private readonly t: { objects: string; idempotency: string; apiKeys: string; blobs: string };

  constructor(
    schema: string,
    private readonly now: () => number,
  ) {
    const s = quoteIdent(schema);
    this.t = { objects: `${s}.objects`, idempotency: `${s}.idempotency`, apiKeys: `${s}.api_keys`, blobs: `${s}.blobs` };
  }

  async putApiKey(r: Runner, rec: ApiKeyRecord): Promise<void> {
    await r.query(
      `INSERT INTO ${this.t.apiKeys} (secret, account, livemode, created_ms) VALUES ($1, $2, $3, $4)
       ON CONFLICT (secret) DO UPDATE SET account = excluded.account, livemode = excluded.livemode,
         created_ms = excluded.created_ms`,
      [rec.secret, rec.account, rec.livemode, rec.createdMs],
    );
  }

  async listApiKeys(r: Runner): Promise<ApiKeyRecord[]> {
    const res = await r.query<ApiKeyRow>(`SELECT secret, account, livemode, created_ms FROM ${this.t.apiKeys} ORDER BY created_ms ASC, secret ASC`);
    return res.rows.map((row) => ({
      secret: row.secret,
      account: row.account,
      livemode: row.livemode,
      createdMs: num(row.created_ms),
    }));
  }

  async insertObject<T>(r: Runner, obj: StoredObject<T>): Promise<void> {
    const json = toJson(obj.data);
    const values = [obj.account, obj.type, obj.id, obj.createdMs, obj.uniqueKey ?? null, obj.expiresMs ?? null, json];
    const cols = 'INSERT INTO ' + this.t.objects + ' (account, type, id, created_ms, unique_key, expires_ms, data)';
    // Fast path: no error on conflict, so an open transaction is not aborted by it.
    const res = await r.query(`${cols} VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING`, values);
    if (res.rowCount === 1) return;
    // A conflict. An expired object is invisible: it must not block its id or unique key. Remove the expired
    // conflicts and insert again, all-or-nothing; the plain INSERT names the violated index if a live row remains.
    const now = this.now();
    try {
      await r.atomic(async (a) => {
        // Rows locked in seq order, so that two inserts clearing the same two rows cannot deadlock.
        await a.query(
          `DELETE FROM ${this.t.objects} WHERE seq IN (
             SELECT seq FROM ${this.t.objects} WHERE account = $1 AND type = $2 AND (id = $3 OR unique_key = $4)
               AND expires_ms IS NOT NULL AND expires_ms <= $5 ORDER BY seq FOR UPDATE)`,
          [obj.account, obj.type, obj.id, obj.uniqueKey ?? null, now],
        );
        await a.query(`${cols} VALUES ($1, $2, $3, $4, $5, $6, $7)`, values);
      });
    } catch (err) {
      throw pgCode(err) === '23505' ? uniqueViolation(err) : err;
    }
  }

  async updateObject<T>(r: Runner, account: string, type: string, id: string, data: T): Promise<boolean> {
    const res = await r.query(
      `UPDATE ${this.t.objects} SET data = $1 WHERE account = $2 AND type = $3 AND id = $4
         AND (expires_ms IS NULL OR expires_ms > $5)`,
      [toJson(data), account, type, id, this.now()],
    );
    return (res.rowCount ?? 0) > 0;
  }

  async getObject<T>(r: Runner, account: string, type: string, id: string): Promise<StoredObject<T> | null> {
    const res = await r.query<ObjectRow>(
      `SELECT ${OBJECT_COLS} FROM ${this.t.objects} WHERE account = $1 AND type = $2 AND id = $3
         AND (expires_ms IS NULL OR expires_ms > $4)${r.inTx ? ' FOR UPDATE' : ''}`,
      [account, type, id, this.now()],
    );
    return res.rows.length ? toObject<T>(account, type, res.rows[0]) : null;
  }

  async findByUniqueKey<T>(r: Runner, account: string, type: string, key: string): Promise<StoredObject<T> | null> {
    const res = await r.query<ObjectRow>(
      `SELECT ${OBJECT_COLS} FROM ${this.t.objects} WHERE account = $1 AND type = $2 AND unique_key = $3
         AND (expires_ms IS NULL OR expires_ms > $4)${r.inTx ? ' FOR UPDATE' : ''}`,
      [account, type, key, this.now()],
    );
    return res.rows.length ? toObject<T>(account, type, res.rows[0]) : null;
  }

  async deleteObject(r: Runner, account: string, type: string, id: string): Promise<boolean> {
    // Deletes an expired row too (it is garbage), but reports false for it: it was already invisible.
    const res = await r.query<{ expires_ms: string | null }>(
      `DELETE FROM ${this.t.objects} WHERE account = $1 AND type = $2 AND id = $3 RETURNING expires_ms`,
      [account, type, id],
    );
    if (res.rows.length === 0) return false;
    const exp = res.rows[0].expires_ms;
    return exp === null || num(exp) > this.now();
  }

  async scanType<T>(r: Runner, type: string): Promise<StoredObject<T>[]> {
    const res = await r.query<ScanRow>(
      `SELECT account, ${OBJECT_COLS} FROM ${this.t.objects} WHERE type = $1
         AND (expires_ms IS NULL OR expires_ms > $2) ORDER BY created_ms ASC, seq ASC`,
      [type, this.now()],
    );
    return res.rows.map((row) => toObject<T>(row.account, type, row));
  }

  async listObjects<T>(r: Runner, account: string, type: string, opts: ListOptions): Promise<ListPage<T>> {
    const { limit } = opts;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new RangeError(`limit must be 1..100, got ${limit}`);
    if (opts.startingAfter !== undefined && opts.endingBefore !== undefined) {
      throw new InvalidRequestError('You may only specify one of these parameters: starting_after, ending_before.');
    }
    const params: unknown[] = [account, type, this.now()];
    const p = (v: unknown): string => `$${params.push(v)}`;
    const visible = '(expires_ms IS NULL OR expires_ms > $3)';
    // Direction of travel: older (default, starting_after) or newer (ending_before).
    const newer = opts.endingBefore !== undefined;
    const cursorId = newer ? opts.endingBefore : opts.startingAfter;

    let filters = '';
    if (opts.createdGteMs !== undefined) filters += ` AND created_ms >= ${p(opts.createdGteMs)}`;
    if (opts.createdLtMs !== undefined) filters += ` AND created_ms < ${p(opts.createdLtMs)}`;
    if (opts.where) {
      for (const [field, value] of Object.entries(opts.where)) {
        checkField(field);
        if (value === null) {
          // JSON null or missing.
          filters += ` AND coalesce(json_typeof(data -> ${p(field)}::text), 'null') = 'null'`;
        } else if (typeof value === 'boolean' || typeof value === 'number' || typeof value === 'string') {
          // The stored text came from JSON.stringify, so equal values have equal text, and the text carries the type.
          const text = JSON.stringify(value);
          if ((typeof value === 'number' && !Number.isFinite(value)) || hasUnsupportedEscape(text)) {
            filters += ' AND false'; // no stored document can hold it
          } else {
            filters += ` AND (data -> ${p(field)}::text)::text = ${p(text)}`;
          }
        } else {
          throw new TypeError(`unsupported where value for ${field}: ${typeof value}`);
        }
      }
    }
    const order = newer ? 'ORDER BY created_ms ASC, seq ASC' : 'ORDER BY created_ms DESC, seq DESC';

    let rows: ObjectRow[];
    if (cursorId === undefined) {
      const res = await r.query<ObjectRow>(
        `SELECT ${OBJECT_COLS} FROM ${this.t.objects} WHERE account = $1 AND type = $2 AND ${visible}${filters}
           ${order} LIMIT ${p(limit + 1)}`,
        params,
      );
      rows = res.rows;
    } else {
      // One statement, one snapshot: no row when the cursor is unknown, one all-null row when the page is empty.
      const cmp = newer ? '>' : '<';
      const res = await r.query<ObjectRow>(
        `SELECT o.id, o.created_ms, o.unique_key, o.expires_ms, o.data
         FROM (SELECT created_ms AS c_created, seq AS c_seq FROM ${this.t.objects}
               WHERE account = $1 AND type = $2 AND id = ${p(cursorId)} AND ${visible}) c
         LEFT JOIN LATERAL (
           SELECT ${OBJECT_COLS} FROM ${this.t.objects}
           WHERE account = $1 AND type = $2 AND ${visible} AND (created_ms, seq) ${cmp} (c.c_created, c.c_seq)${filters}
           ${order} LIMIT ${p(limit + 1)}
         ) o ON true`,
        params,
      );
      if (res.rows.length === 0) {
        throw new NotFoundError(`No such object: '${cursorId}'`, newer ? 'ending_before' : 'starting_after');
      }
      rows = res.rows.filter((row) => row.id !== null);
    }
    const hasMore = rows.length > limit;
    if (hasMore) rows.length = limit;
    if (newer) rows.reverse();
    return { data: rows.map((row) => toObject<T>(account, type, row)), hasMore };
  }

  async getIdempotency(r: Runner, account: string, key: string): Promise<IdempotencyRecord | null> {
    const res = await r.query<IdemRow>(
      `SELECT account, key, request_line, request_hash, status, response_body, created_ms
       FROM ${this.t.idempotency} WHERE account = $1 AND key = $2`,
      [account, key],
    );
    return res.rows.length ? toIdem(res.rows[0]) : null;
  }

  async putIdempotency(r: Runner, rec: IdempotencyRecord): Promise<IdempotencyRecord> {
    // The stored record can vanish between the two statements only if prune removes it; then try again.
    for (let attempt = 0; ; attempt++) {
      const res = await r.query(
        `INSERT INTO ${this.t.idempotency}
           (account, key, request_line, request_hash, status, response_body, created_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (account, key) DO NOTHING`,
        [rec.account, rec.key, rec.requestLine, rec.requestHash, rec.status, rec.responseBody, rec.createdMs],
      );
      if (res.rowCount === 1) return { ...rec };
      const stored = await this.getIdempotency(r, rec.account, rec.key);
      if (stored) return stored;
      if (attempt >= 5) throw new Error('idempotency record vanished repeatedly');
    }
  }

  async prune(r: Runner, nowMs: number, idempotencyBeforeMs: number): Promise<void> {
    // One statement: both deletes or neither.
    await r.query(
      `WITH expired AS (DELETE FROM ${this.t.objects} WHERE expires_ms IS NOT NULL AND expires_ms <= $1)
       DELETE FROM ${this.t.idempotency} WHERE created_ms < $2`,
      [nowMs, idempotencyBeforeMs],
    );
  }

  async putBlob(r: Runner, key: string, data: Buffer): Promise<void> {
    if (!Buffer.isBuffer(data)) throw new TypeError('blob data must be a Buffer');
    await r.query(
      `INSERT INTO ${this.t.blobs} (key, data, updated_ms) VALUES ($1, $2, $3)
       ON CONFLICT (key) DO UPDATE SET data = excluded.data, updated_ms = excluded.updated_ms`,
      [key, data, this.now()],
    );
  }

  async getBlob(r: Runner, key: string): Promise<Buffer | null> {
    const res = await r.query<{ data: Buffer }>(`SELECT data FROM ${this.t.blobs} WHERE key = $1`, [key]);
    return res.rows.length ? res.rows[0].data : null;
  }
}

async function applyMigrations(client: PoolClient, schema: string, migrations: readonly PgMigration[]): Promise<void> {
  const s = quoteIdent(schema);
  await client.query('BEGIN');
  try {
    // Held to the end of this transaction; other processes initialising the same schema wait here.
    await client.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [`meterd.state.migrate:${schema}`]);
    const exists = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
    if (exists.rows.length === 0) await client.query(`CREATE SCHEMA ${s}`);
    await client.query(`SET LOCAL search_path TO ${s}`);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version    INTEGER PRIMARY KEY,
      name       TEXT    NOT NULL,
      applied_ms BIGINT  NOT NULL
    )`);
    const latest = migrations.length ? migrations[migrations.length - 1].version : 0;
    const cur = await client.query<{ v: number }>('SELECT coalesce(max(version), 0)::int AS v FROM schema_migrations');
    const current = cur.rows[0].v;
    if (current > latest) {
      throw new Error(`state database schema version ${current} is newer than this build supports (${latest})`);
    }
    for (const m of migrations) {
      if (m.version <= current) continue;
      await client.query(m.sql);
      await client.query('INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)', [m.version, m.name, Date.now()]);
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** A StateStore view for the duration of one transaction: one client, calls run one after another. */
class TxView implements StateStore {
  private finished = false;
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly ops: Ops,
    readonly runner: ClientRunner,
  ) {}

  /** No new calls from now on; resolves when the calls already made have settled. */
  finish(): Promise<void> {
    this.finished = true;
    return this.tail.then(() => undefined);
  }

  private call<R>(op: (r: Runner) => Promise<R>): Promise<R> {
    if (this.finished) return Promise.reject(new Error(FINISHED));
    const p = this.tail.then(() => op(this.runner));
    this.tail = p.catch(() => undefined);
    return p;
  }

  init(): Promise<void> {
    return this.call(async () => undefined);
  }
  close(): Promise<void> {
    return Promise.reject(new Error('cannot close the store from inside a transaction'));
  }
  putApiKey(rec: ApiKeyRecord): Promise<void> {
    return this.call((r) => this.ops.putApiKey(r, rec));
  }
  listApiKeys(): Promise<ApiKeyRecord[]> {
    return this.call((r) => this.ops.listApiKeys(r));
  }
  insertObject<T>(obj: StoredObject<T>): Promise<void> {
    return this.call((r) => this.ops.insertObject(r, obj));
  }
  updateObject<T>(account: string, type: string, id: string, data: T): Promise<boolean> {
    return this.call((r) => this.ops.updateObject(r, account, type, id, data));
  }
  getObject<T>(account: string, type: string, id: string): Promise<StoredObject<T> | null> {
    return this.call((r) => this.ops.getObject<T>(r, account, type, id));
  }
  findByUniqueKey<T>(account: string, type: string, uniqueKey: string): Promise<StoredObject<T> | null> {
    return this.call((r) => this.ops.findByUniqueKey<T>(r, account, type, uniqueKey));
  }
  listObjects<T>(account: string, type: string, opts: ListOptions): Promise<ListPage<T>> {
    return this.call((r) => this.ops.listObjects<T>(r, account, type, opts));
  }
  scanType<T>(type: string): Promise<StoredObject<T>[]> {
    return this.call((r) => this.ops.scanType<T>(r, type));
  }
  deleteObject(account: string, type: string, id: string): Promise<boolean> {
    return this.call((r) => this.ops.deleteObject(r, account, type, id));
  }
  getIdempotency(account: string, key: string): Promise<IdempotencyRecord | null> {
    return this.call((r) => this.ops.getIdempotency(r, account, key));
  }
  putIdempotency(rec: IdempotencyRecord): Promise<IdempotencyRecord> {
    return this.call((r) => this.ops.putIdempotency(r, rec));
  }
  prune(nowMs: number, idempotencyBeforeMs: number): Promise<void> {
    return this.call((r) => this.ops.prune(r, nowMs, idempotencyBeforeMs));
  }
  putBlob(key: string, data: Buffer): Promise<void> {
    return this.call((r) => this.ops.putBlob(r, key, data));
  }
  getBlob(key: string): Promise<Buffer | null> {
    return this.call((r) => this.ops.getBlob(r, key));
  }
  /** Already inside a transaction: just run fn with this handle. */
  async transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T> {
    if (this.finished) throw new Error(FINISHED);
    return fn(this);
  }
}

export class PostgresStateStore implements StateStore {
  readonly schema: string;
  private readonly pool: Pool;
  private readonly ops: Ops;
  private readonly poolRunner: PoolRunner;
  private readonly now: () => number;
  private ready = false;
  private closed = false;
  private initializing: Promise<void> | null = null;
  private closing: Promise<void> | null = null;
  /** Calls and transactions running (close() waits for them: the pool would strand those waiting for a client). */
  private inflight = 0;
  private drained: (() => void) | null = null;
  /** Tokens of the open transactions, to detect calls on the outer store from inside a transaction's fn. */
  private readonly openTx = new Set<object>();
  private readonly txContext = new AsyncLocalStorage<object>();

  constructor(opts: PostgresStateStoreOptions) {
    this.schema = opts.schema ?? 'public';
    if (this.schema.length === 0 || Buffer.byteLength(this.schema) > 63 || this.schema.includes('\0')) {
      throw new TypeError(`invalid schema name: ${JSON.stringify(this.schema)}`);
    }
    const poolSize = opts.poolSize ?? 10;
    if (!Number.isInteger(poolSize) || poolSize < 1) throw new RangeError(`poolSize must be >= 1, got ${poolSize}`);
    this.now = opts.now ?? Date.now;
    this.pool = new Pool({ connectionString: opts.url, max: poolSize, application_name: 'meterd' });
    // An idle connection that fails (server restart, network) is dropped by the pool; without a listener the
    // 'error' event would crash the process.
    this.pool.on('error', () => undefined);
    this.ops = new Ops(this.schema, this.now);
    this.poolRunner = new PoolRunner(this.pool);
  }

  init(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('state store is closed'));
    if (this.ready) return Promise.resolve();
    this.initializing ??= this.track(async () => {
      const { client, release } = await checkout(this.pool);
      let broken: Error | undefined;
      try {
        await applyMigrations(client, this.schema, PG_MIGRATIONS);
      } catch (err) {
        if (pgCode(err) === undefined) broken = err as Error; // not a server error: maybe a dead connection
        throw err;
      } finally {
        release(broken);
      }
      if (!this.closed) this.ready = true;
    }).finally(() => {
      this.initializing = null;
    });
    return this.initializing;
  }

  /**
   * Refuses new calls at once, lets the calls and transactions already running finish (they may be waiting for a
   * connection), then closes the pool. Idempotent.
   */
  close(): Promise<void> {
    if (this.insideOwnTransaction()) return Promise.reject(new Error(DEADLOCK));
    if (!this.closing) {
      this.closed = true;
      this.ready = false;
      this.closing = (async () => {
        if (this.inflight > 0) await new Promise<void>((resolve) => (this.drained = resolve));
        await this.pool.end();
      })();
    }
    return this.closing;
  }

  private insideOwnTransaction(): boolean {
    if (this.openTx.size === 0) return false;
    const token = this.txContext.getStore();
    return token !== undefined && this.openTx.has(token);
  }

  /** Why a call cannot run now, or null. */
  private refusal(): Error | null {
    if (this.closed) return new Error('state store is closed');
    if (!this.ready) return new Error('state store is not initialised: call init()');
    if (this.insideOwnTransaction()) return new Error(DEADLOCK);
    return null;
  }

  /** Counts a running call, so that close() can wait for it. */
  private track<R>(op: () => Promise<R>): Promise<R> {
    this.inflight++;
    let p: Promise<R>;
    try {
      p = op();
    } catch (err) {
      p = Promise.reject(err);
    }
    return p.finally(() => {
      if (--this.inflight === 0 && this.drained) {
        this.drained();
        this.drained = null;
      }
    });
  }

  private run<R>(op: (r: Runner) => Promise<R>): Promise<R> {
    const refused = this.refusal();
    if (refused) return Promise.reject(refused);
    return this.track(() => op(this.poolRunner));
  }

  transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T> {
    const refused = this.refusal();
    if (refused) return Promise.reject(refused);
    return this.track(() => this.runTransaction(fn));
  }

  private async runTransaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T> {
    const { client, release } = await checkout(this.pool);
    let broken: Error | undefined; // a failed ROLLBACK: the connection's state is unknown, destroy it
    const token = {};
    const runner = new ClientRunner(client, true);
    const view = new TxView(this.ops, runner);
    try {
      await client.query('BEGIN ISOLATION LEVEL READ COMMITTED');
      this.openTx.add(token);
      const result = await this.txContext.run(token, () => fn(view));
      await view.finish(); // calls that fn started without awaiting them complete before COMMIT
      // After an SQL error the Postgres transaction is aborted and COMMIT would silently roll back: report the error.
      if (runner.failure !== null) throw runner.failure;
      const done = await client.query('COMMIT');
      if (done.command !== 'COMMIT') throw new Error(`transaction was not committed (${done.command})`);
      return result;
    } catch (err) {
      await view.finish();
      await client.query('ROLLBACK').catch((e: Error) => (broken = e));
      throw err;
    } finally {
      this.openTx.delete(token);
      release(broken);
    }
  }

  putApiKey(rec: ApiKeyRecord): Promise<void> {
    return this.run((r) => this.ops.putApiKey(r, rec));
  }
  listApiKeys(): Promise<ApiKeyRecord[]> {
    return this.run((r) => this.ops.listApiKeys(r));
  }
  insertObject<T>(obj: StoredObject<T>): Promise<void> {
    return this.run((r) => this.ops.insertObject(r, obj));
  }
  updateObject<T>(account: string, type: string, id: string, data: T): Promise<boolean> {
    return this.run((r) => this.ops.updateObject(r, account, type, id, data));
  }
  getObject<T>(account: string, type: string, id: string): Promise<StoredObject<T> | null> {
    return this.run((r) => this.ops.getObject<T>(r, account, type, id));
  }
  findByUniqueKey<T>(account: string, type: string, uniqueKey: string): Promise<StoredObject<T> | null> {
    return this.run((r) => this.ops.findByUniqueKey<T>(r, account, type, uniqueKey));
  }
  listObjects<T>(account: string, type: string, opts: ListOptions): Promise<ListPage<T>> {
    return this.run((r) => this.ops.listObjects<T>(r, account, type, opts));
  }
  scanType<T>(type: string): Promise<StoredObject<T>[]> {
    return this.run((r) => this.ops.scanType<T>(r, type));
  }
  deleteObject(account: string, type: string, id: string): Promise<boolean> {
    return this.run((r) => this.ops.deleteObject(r, account, type, id));
  }
  getIdempotency(account: string, key: string): Promise<IdempotencyRecord | null> {
    return this.run((r) => this.ops.getIdempotency(r, account, key));
  }
  putIdempotency(rec: IdempotencyRecord): Promise<IdempotencyRecord> {
    return this.run((r) => this.ops.putIdempotency(r, rec));
  }
  prune(nowMs: number, idempotencyBeforeMs: number): Promise<void> {
    return this.run((r) => this.ops.prune(r, nowMs, idempotencyBeforeMs));
  }
  /** Stores `data` under `key`, replacing any previous value (dedup snapshots). */
  putBlob(key: string, data: Buffer): Promise<void> {
    return this.run((r) => this.ops.putBlob(r, key, data));
  }
  getBlob(key: string): Promise<Buffer | null> {
    return this.run((r) => this.ops.getBlob(r, key));
  }
}

/** Drops a schema and everything in it (the bench's clean-up of a deployment of its own). */
export async function dropPostgresSchema(url: string, schema: string): Promise<void> {
  if (!/^[a-z0-9_]+$/.test(schema)) throw new Error(`not a plain schema name: ${schema}`);
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  } finally {
    await client.end();
  }
}
