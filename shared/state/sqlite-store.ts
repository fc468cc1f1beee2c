/**
 * The SQLite driver of the StateStore (default mode): the connection, its transactions and its statement cache. The
 * queries and migrations are shared with PostgreSQL (queries.ts, migrations.ts); only running them is here.
 *
 * One better-sqlite3 connection per process, WAL journal with `synchronous=FULL`: a write the API acknowledges has been
 * fsynced. better-sqlite3 is synchronous, and so is every operation here: the statements an operation yields run one
 * after another inside the call, so an operation is atomic in the event loop (SQLite's single writer).
 *
 * The interface is async and a transaction's `fn` awaits. A transaction therefore holds an async mutex from BEGIN
 * IMMEDIATE to COMMIT/ROLLBACK: every other call on the store (reads too — they share the connection and would
 * otherwise see uncommitted writes) queues behind it, FIFO. While no transaction is open, calls run synchronously at
 * call time, without touching the mutex. The `tx` handed to `fn` bypasses the mutex. An `atomic` step is a
 * better-sqlite3 transaction function: a SAVEPOINT inside an open transaction.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import Database from 'better-sqlite3';
import type { StateStore } from '../state-store';
import { sqliteDialect } from './dialects';
import { MIGRATIONS } from './migrations';
import { type Op, StateQueries, type Statement } from './queries';
import { DEADLOCK, FINISHED, type Operation, SqlStateStore, TransactionStore } from './sql-store';

export { MIGRATIONS, type Migration } from './migrations';

type Db = Database.Database;
type Stmt = Database.Statement<unknown[], unknown>;

export interface SqliteStateStoreOptions {
  /** Clock used for expiry checks (tests). Defaults to Date.now. */
  now?: () => number;
  /** How long a statement waits for a lock held by another connection/process, ms. Default 5000. */
  busyTimeoutMs?: number;
}

const STATEMENT_CACHE_MAX = 512;

/** The connection and what runs on it. No locking here. */
class Core {
  private readonly statements = new Map<string, Stmt>();
  private readonly begin: Stmt;
  private readonly commitStmt: Stmt;
  private readonly rollbackStmt: Stmt;

  constructor(
    readonly db: Db,
    readonly queries: StateQueries,
  ) {
    this.begin = db.prepare('BEGIN IMMEDIATE');
    this.commitStmt = db.prepare('COMMIT');
    this.rollbackStmt = db.prepare('ROLLBACK');
  }

  beginImmediate(): void {
    this.begin.run();
  }
  commit(): void {
    this.commitStmt.run();
  }
  rollback(): void {
    if (this.db.inTransaction) this.rollbackStmt.run();
  }

  /**
   * Prepares a statement once: kept on the query it came from (each store has its own queries), and by SQL text for
   * statements made for one run (migrations).
   */
  private prepare(s: Statement): Stmt {
    let stmt = this.statements.get(s.sql);
    if (!stmt) {
      if (this.statements.size >= STATEMENT_CACHE_MAX) this.statements.clear();
      stmt = this.db.prepare(s.sql);
      this.statements.set(s.sql, stmt);
    }
    s.cache.handle = stmt;
    return stmt;
  }

  /** Runs an operation to its end, synchronously. */
  run<R>(op: Op<R>): R {
    let step = op.next();
    while (!step.done) {
      const s = step.value;
      let result: unknown;
      try {
        if (s.kind === 'atomic') {
          // A SAVEPOINT when a transaction is open, else BEGIN/COMMIT; a throw rolls it back.
          result = this.db.transaction(() => this.run(s.body()))();
        } else {
          const stmt = (s.cache.handle as Stmt | undefined) ?? this.prepare(s);
          const params = s.params;
          result = s.kind === 'first' ? stmt.get(...params) : s.kind === 'rows' ? stmt.all(...params) : stmt.run(...params).changes;
        }
      } catch (err) {
        step = op.throw(err);
        continue;
      }
      step = op.next(result);
    }
    return step.value;
  }
}

/** The store for the duration of one transaction: same connection, no mutex. */
class SqliteTransaction extends TransactionStore {
  constructor(private readonly core: Core) {
    super();
  }

  finish(): void {
    this.finished = true;
  }

  protected exec<R>(op: Operation<R>): Promise<R> {
    if (this.finished) return Promise.reject(new Error(FINISHED));
    try {
      return Promise.resolve(this.core.run(op(this.core.queries, true)));
    } catch (err) {
      return Promise.reject(err);
    }
  }
}

export class SqliteStateStore extends SqlStateStore {
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
    super();
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
      const core = new Core(db, new StateQueries(sqliteDialect(), this.now));
      // One transaction that holds the write lock: another process migrating the same file waits, then finds it done.
      core.beginImmediate();
      try {
        core.run(core.queries.migrate(MIGRATIONS));
        core.commit();
      } catch (err) {
        core.rollback();
        throw err;
      }
      this.core = core;
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
      return Promise.reject(new Error(DEADLOCK));
    }
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** Hands the mutex directly to the next waiter (so newcomers cannot overtake queued calls), or frees it. */
  private release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.locked = false;
  }

  /** Runs an operation: at once when no transaction is open, else after the queued ones. */
  protected exec<R>(op: Operation<R>): Promise<R> {
    if (!this.locked) {
      try {
        const core = this.ready();
        return Promise.resolve(core.run(op(core.queries, false)));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    return this.acquire().then(() => {
      try {
        const core = this.ready();
        return core.run(op(core.queries, false));
      } finally {
        this.release();
      }
    });
  }

  async transaction<T>(fn: (tx: StateStore) => Promise<T>): Promise<T> {
    await this.acquire();
    let view: SqliteTransaction | null = null;
    try {
      const core = this.ready();
      core.beginImmediate();
      view = new SqliteTransaction(core);
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
}
