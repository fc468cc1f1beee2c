/**
 * The PostgreSQL driver of the StateStore (distributed mode): the pool, its transactions, and what concurrency
 * forces. The queries and migrations are shared with SQLite (queries.ts, migrations.ts, dialects.ts); only running
 * them is here. Several processes share one database.
 *
 * Layout. Everything lives in one schema (`schema` option, default `public`), created by init() when missing. Table
 * names are schema-qualified in every statement (Kysely's withSchema), so the driver does not depend on the
 * connection's search_path (and works behind a transaction-pooling proxy). init() applies the migrations in one
 * transaction under a transaction-level advisory lock keyed by the schema name: processes starting together apply
 * them once, the others wait and then find them applied.
 *
 * Documents. `objects.data` is `json`, not `jsonb` (see dialects.ts): the API returns stored documents verbatim.
 *
 * Transactions. transaction(fn) takes a dedicated pooled client, BEGIN ISOLATION LEVEL READ COMMITTED ... COMMIT.
 * Inside it, getObject and findByUniqueKey are SELECT ... FOR UPDATE: a read-modify-write through tx.getObject +
 * tx.updateObject holds the row lock from the read to the commit, so concurrent transactions (in this process or
 * another) cannot lose an update (leases, idempotency and the billing tick rely on it). SERIALIZABLE with retry on
 * 40001 was not chosen because a retry would run `fn` again, and callers' `fn` may have effects outside the database.
 * What READ COMMITTED does not give, unlike SQLite's single writer: reads through listObjects/scanType inside a
 * transaction are not locked, and a concurrent insert is not blocked by them (the unique indexes still stop
 * duplicates; insertObject reports UniqueViolation). Transactions that lock rows in opposite orders can fail with a
 * deadlock error (40P01) — then fn's work is rolled back and the error is thrown; nothing is retried.
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
 * Blobs (putBlob/getBlob: opaque bytes by key, e.g. dedup snapshots shared by the aggregators) are offered here only.
 * close() refuses new calls at once, waits for the calls and transactions already running, then ends the pool. Expiry
 * uses the `now` clock of the calling process, like the SQLite driver, not the server's.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { Client, Pool, type PoolClient, type QueryResult, type QueryResultRow } from 'pg';
import type { StateStore } from '../state-store';
import { postgresDialect } from './dialects';
import { MIGRATIONS } from './migrations';
import { type Op, StateQueries, type Statement } from './queries';
import { DEADLOCK, FINISHED, type Operation, SqlStateStore, TransactionStore } from './sql-store';

export { MIGRATIONS as PG_MIGRATIONS } from './migrations';

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

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function pgCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
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

/** Runs an operation to its end, each statement awaited on `r`. */
async function runOn<R>(op: Op<R>, r: Runner): Promise<R> {
  let step = op.next();
  while (!step.done) {
    const s = step.value;
    let result: unknown;
    try {
      if (s.kind === 'atomic') {
        result = await r.atomic((a) => runOn(s.body(), a));
      } else {
        result = await execute(r, s);
      }
    } catch (err) {
      step = op.throw(err);
      continue;
    }
    step = op.next(result);
  }
  return step.value;
}

async function execute(r: Runner, s: Statement): Promise<unknown> {
  const res = await r.query(s.sql, s.params as unknown[]);
  return s.kind === 'rows' ? res.rows : s.kind === 'first' ? res.rows[0] : (res.rowCount ?? 0);
}

async function applyMigrations(client: PoolClient, schema: string, queries: StateQueries): Promise<void> {
  await client.query('BEGIN');
  try {
    // Held to the end of this transaction; other processes initialising the same schema wait here.
    await client.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [`meterd.state.migrate:${schema}`]);
    const exists = await client.query('SELECT 1 FROM pg_namespace WHERE nspname = $1', [schema]);
    if (exists.rows.length === 0) await client.query(`CREATE SCHEMA ${quoteIdent(schema)}`);
    await runOn(queries.migrate(MIGRATIONS), new ClientRunner(client, false));
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** The store for the duration of one transaction: one client, calls run one after another. */
class PostgresTransaction extends TransactionStore {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly queries: StateQueries,
    readonly runner: ClientRunner,
  ) {
    super();
  }

  putBlob(key: string, data: Buffer): Promise<void> {
    return this.exec((q) => q.putBlob(key, data));
  }
  getBlob(key: string): Promise<Buffer | null> {
    return this.exec((q) => q.getBlob(key));
  }
  deleteBlob(key: string): Promise<void> {
    return this.exec((q) => q.deleteBlob(key));
  }
  listBlobKeys(prefix: string): Promise<string[]> {
    return this.exec((q) => q.listBlobKeys(prefix));
  }

  /** No new calls from now on; resolves when the calls already made have settled. */
  finish(): Promise<void> {
    this.finished = true;
    return this.tail.then(() => undefined);
  }

  protected exec<R>(op: Operation<R>): Promise<R> {
    if (this.finished) return Promise.reject(new Error(FINISHED));
    const p = this.tail.then(() => runOn(op(this.queries, true), this.runner));
    this.tail = p.catch(() => undefined);
    return p;
  }
}

export class PostgresStateStore extends SqlStateStore {
  readonly schema: string;
  private readonly pool: Pool;
  private readonly queries: StateQueries;
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
    super();
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
    this.queries = new StateQueries(postgresDialect(this.schema), this.now);
    this.poolRunner = new PoolRunner(this.pool);
  }

  init(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('state store is closed'));
    if (this.ready) return Promise.resolve();
    this.initializing ??= this.track(async () => {
      const { client, release } = await checkout(this.pool);
      let broken: Error | undefined;
      try {
        await applyMigrations(client, this.schema, this.queries);
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

  protected exec<R>(op: Operation<R>): Promise<R> {
    const refused = this.refusal();
    if (refused) return Promise.reject(refused);
    return this.track(() => runOn(op(this.queries, false), this.poolRunner));
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
    const view = new PostgresTransaction(this.queries, runner);
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

  /** Stores `data` under `key`, replacing any previous value (dedup snapshots). */
  putBlob(key: string, data: Buffer): Promise<void> {
    return this.exec((q) => q.putBlob(key, data));
  }
  getBlob(key: string): Promise<Buffer | null> {
    return this.exec((q) => q.getBlob(key));
  }
  deleteBlob(key: string): Promise<void> {
    return this.exec((q) => q.deleteBlob(key));
  }
  listBlobKeys(prefix: string): Promise<string[]> {
    return this.exec((q) => q.listBlobKeys(prefix));
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
