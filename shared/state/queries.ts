/**
 * The state store's operations, written once for both databases. Each operation is a generator of statements: it
 * yields a compiled statement and receives its result. The driver decides how a statement runs: the SQLite driver
 * runs the whole generator synchronously inside better-sqlite3 (so an operation is atomic in the event loop, as
 * SQLite's single writer expects), the PostgreSQL driver awaits each statement on a pooled or a transaction's client.
 * An `atomic` step runs its statements all-or-nothing: a SAVEPOINT inside a transaction, else a transaction of its own.
 *
 * Statements are built with Kysely (typed against tables.ts) and compiled once per store, with placeholders for the
 * values (`Prepared`): building and compiling a query costs more than running a simple one on SQLite, and the hot calls
 * (get, insert, list) must not pay it every time.
 */
import { type Compilable, type Expression, type ExpressionBuilder, sql, type SqlBool } from 'kysely';
import { InvalidRequestError, NotFoundError, UniqueViolation } from '../errors';
import type { ApiKeyRecord, IdempotencyRecord, ListOptions, ListPage, StoredObject } from '../state-store';
import type { Dialect, FieldFilter } from './dialects';
import { MIGRATIONS, type Migration } from './migrations';
import type { IdempotencyTable, ObjectsTable, StateTables } from './tables';

/**
 * A compiled statement with its values: `rows` returns the rows, `first` the first row (or undefined), `run` the
 * number of rows changed.
 */
export interface Statement {
  kind: 'rows' | 'first' | 'run';
  sql: string;
  params: readonly unknown[];
  /** Where the driver keeps its prepared form of this statement (better-sqlite3's Statement), so it prepares once. */
  cache: { handle?: unknown };
}
/** A step of an operation: a statement, or a sub-operation to run all-or-nothing. */
export type Step = Statement | { kind: 'atomic'; body: () => Op<unknown> };
export type Op<R> = Generator<Step, R, unknown>;

/** Placeholder for the i-th value of a prepared statement. */
class Slot {
  constructor(readonly index: number) {}
}

/** A statement compiled once; each run binds its values to the placeholders. */
class Prepared {
  readonly sql: string;
  readonly cache: { handle?: unknown } = {};
  /** For each parameter of the compiled SQL: the index of the value it takes, or a constant (-1 and `constants`). */
  private readonly slots: number[];
  private readonly constants: unknown[];

  constructor(
    query: Compilable,
    readonly kind: 'rows' | 'first' | 'run',
  ) {
    const compiled = query.compile();
    this.sql = compiled.sql;
    this.slots = compiled.parameters.map((p) => (p instanceof Slot ? p.index : -1));
    this.constants = compiled.parameters.map((p) => (p instanceof Slot ? undefined : p));
    this.inOrder = this.slots.every((slot, i) => slot === i);
  }

  /** The values are the parameters as they are (no constant, each value once, in order): most statements. */
  private readonly inOrder: boolean;

  bind(values: readonly unknown[]): Statement {
    if (this.inOrder && values.length === this.slots.length) return { kind: this.kind, sql: this.sql, params: values, cache: this.cache };
    const params = new Array<unknown>(this.slots.length);
    for (let i = 0; i < params.length; i++) {
      const s = this.slots[i];
      params[i] = s >= 0 ? values[s] : this.constants[i];
    }
    return { kind: this.kind, sql: this.sql, params, cache: this.cache };
  }
}

/** Placeholders 0..n-1, typed as whatever the query expects. */
// biome-ignore lint/suspicious/noExplicitAny: a placeholder stands for a value of any column type
function slots(n: number): any[] {
  return Array.from({ length: n }, (_, i) => new Slot(i));
}

function* rows<R>(p: Prepared, values: readonly unknown[]): Op<R[]> {
  return (yield p.bind(values)) as R[];
}

function* first<R>(p: Prepared, values: readonly unknown[]): Op<R | undefined> {
  return (yield p.bind(values)) as R | undefined;
}

function* changes(p: Prepared, values: readonly unknown[]): Op<number> {
  return (yield p.bind(values)) as number;
}

function* atomic<R>(body: () => Op<R>): Op<R> {
  return (yield { kind: 'atomic', body }) as R;
}

type ObjectRow = Pick<ObjectsTable, 'id' | 'created_ms' | 'unique_key' | 'expires_ms' | 'data'>;
type IdemRow = IdempotencyTable;

const OBJECT_COLUMNS = ['id', 'created_ms', 'unique_key', 'expires_ms', 'data'] as const;
const LIST_CACHE_MAX = 256;

type ObjectsEb = ExpressionBuilder<StateTables, 'objects'>;

interface ListShape {
  newer: boolean;
  cursor: 'none' | 'position' | 'joined';
  gte: boolean;
  lt: boolean;
  filters: FieldFilter[];
}

/** Not expired at `now`. */
// biome-ignore lint/suspicious/noExplicitAny: a placeholder (see slots)
function visible(eb: ObjectsEb, now: any): Expression<SqlBool> {
  return eb.or([eb('expires_ms', 'is', null), eb('expires_ms', '>', now)]);
}

function toIdem(r: IdemRow): IdempotencyRecord {
  return {
    account: r.account,
    key: r.key,
    requestLine: r.request_line,
    requestHash: r.request_hash,
    status: r.status,
    responseBody: r.response_body,
    createdMs: Number(r.created_ms),
  };
}

export class StateQueries {
  private readonly db;
  private readonly q;
  private readonly listCache = new Map<string, Prepared>();

  constructor(
    private readonly dialect: Dialect,
    private readonly now: () => number,
  ) {
    const db = dialect.db;
    this.db = db;
    const $ = slots(8);
    const getBy = (column: 'id' | 'unique_key', lock: boolean) =>
      new Prepared(
        db
          .selectFrom('objects')
          .select(OBJECT_COLUMNS)
          .where((eb) => eb.and([eb('account', '=', $[0]), eb('type', '=', $[1]), eb(column, '=', $[2]), visible(eb, $[3])]))
          .$if(lock, (qb) => qb.forUpdate()),
        'first',
      );
    this.q = {
      getObject: getBy('id', false),
      getObjectLocked: getBy('id', dialect.rowLocks),
      findByUniqueKey: getBy('unique_key', false),
      cursor: new Prepared(
        db
          .selectFrom('objects')
          .select(['created_ms', 'seq'])
          .where((eb) => eb.and([eb('account', '=', $[0]), eb('type', '=', $[1]), eb('id', '=', $[2]), visible(eb, $[3])])),
        'first',
      ),
      findByUniqueKeyLocked: getBy('unique_key', dialect.rowLocks),
      insertObjectUnlessConflict: new Prepared(
        db
          .insertInto('objects')
          .values({ account: $[0], type: $[1], id: $[2], created_ms: $[3], unique_key: $[4], expires_ms: $[5], data: $[6] })
          .onConflict((oc) => oc.doNothing()),
        'run',
      ),
      insertObject: new Prepared(
        db.insertInto('objects').values({ account: $[0], type: $[1], id: $[2], created_ms: $[3], unique_key: $[4], expires_ms: $[5], data: $[6] }),
        'run',
      ),
      // Rows locked in seq order (PostgreSQL), so that two inserts clearing the same two rows cannot deadlock.
      deleteExpiredConflicts: new Prepared(
        db.deleteFrom('objects').where('seq', 'in', (eb) =>
          eb
            .selectFrom('objects')
            .select('seq')
            .where((w) =>
              w.and([
                w('account', '=', $[0]),
                w('type', '=', $[1]),
                w.or([w('id', '=', $[2]), w('unique_key', '=', $[3])]),
                w('expires_ms', 'is not', null),
                w('expires_ms', '<=', $[4]),
              ]),
            )
            .orderBy('seq')
            .$if(dialect.rowLocks, (qb) => qb.forUpdate()),
        ),
        'run',
      ),
      updateObject: new Prepared(
        db
          .updateTable('objects')
          .set({ data: $[0] })
          .where((eb) => eb.and([eb('account', '=', $[1]), eb('type', '=', $[2]), eb('id', '=', $[3]), visible(eb, $[4])])),
        'run',
      ),
      deleteObject: new Prepared(
        db
          .deleteFrom('objects')
          .where((eb) => eb.and([eb('account', '=', $[0]), eb('type', '=', $[1]), eb('id', '=', $[2])]))
          .returning('expires_ms'),
        'rows',
      ),
      scanType: new Prepared(
        db
          .selectFrom('objects')
          .select(['account', ...OBJECT_COLUMNS])
          .where((eb) => eb.and([eb('type', '=', $[0]), visible(eb, $[1])]))
          .orderBy('created_ms', 'asc')
          .orderBy('seq', 'asc'),
        'rows',
      ),
      getIdempotency: new Prepared(
        db
          .selectFrom('idempotency')
          .select(['account', 'key', 'request_line', 'request_hash', 'status', 'response_body', 'created_ms'])
          .where((eb) => eb.and([eb('account', '=', $[0]), eb('key', '=', $[1])])),
        'first',
      ),
      putIdempotency: new Prepared(
        db
          .insertInto('idempotency')
          .values({
            account: $[0],
            key: $[1],
            request_line: $[2],
            request_hash: $[3],
            status: $[4],
            response_body: $[5],
            created_ms: $[6],
          })
          .onConflict((oc) => oc.columns(['account', 'key']).doNothing()),
        'run',
      ),
      putApiKey: new Prepared(
        db
          .insertInto('api_keys')
          .values({ secret: $[0], account: $[1], livemode: $[2], created_ms: $[3] })
          .onConflict((oc) =>
            oc.column('secret').doUpdateSet((eb) => ({
              account: eb.ref('excluded.account'),
              livemode: eb.ref('excluded.livemode'),
              created_ms: eb.ref('excluded.created_ms'),
            })),
          ),
        'run',
      ),
      listApiKeys: new Prepared(
        db.selectFrom('api_keys').select(['secret', 'account', 'livemode', 'created_ms']).orderBy('created_ms', 'asc').orderBy('secret', 'asc'),
        'rows',
      ),
      pruneObjects: new Prepared(
        db.deleteFrom('objects').where((eb) => eb.and([eb('expires_ms', 'is not', null), eb('expires_ms', '<=', $[0])])),
        'run',
      ),
      pruneIdempotency: new Prepared(db.deleteFrom('idempotency').where('created_ms', '<', $[0]), 'run'),
      claimIdempotency: new Prepared(
        db
          .insertInto('idempotency_claims')
          .values({ account: $[0], key: $[1], owner: $[2], expires_ms: $[3] })
          .onConflict((oc) => oc.columns(['account', 'key']).doNothing()),
        'run',
      ),
      // Only a claim that has expired (its process stopped without releasing it) is taken over.
      takeOverIdempotencyClaim: new Prepared(
        db
          .updateTable('idempotency_claims')
          .set({ owner: $[2], expires_ms: $[3] })
          .where((eb) => eb.and([eb('account', '=', $[0]), eb('key', '=', $[1]), eb('expires_ms', '<=', $[4])])),
        'run',
      ),
      releaseIdempotencyClaim: new Prepared(
        db.deleteFrom('idempotency_claims').where((eb) => eb.and([eb('account', '=', $[0]), eb('key', '=', $[1]), eb('owner', '=', $[2])])),
        'run',
      ),
      pruneIdempotencyClaims: new Prepared(db.deleteFrom('idempotency_claims').where('expires_ms', '<=', $[0]), 'run'),
      putBlob: new Prepared(
        db
          .insertInto('blobs')
          .values({ key: $[0], data: $[1], updated_ms: $[2] })
          .onConflict((oc) => oc.column('key').doUpdateSet((eb) => ({ data: eb.ref('excluded.data'), updated_ms: eb.ref('excluded.updated_ms') }))),
        'run',
      ),
      getBlob: new Prepared(db.selectFrom('blobs').select('data').where('key', '=', $[0]), 'first'),
      deleteBlob: new Prepared(db.deleteFrom('blobs').where('key', '=', $[0]), 'run'),
      listBlobKeys: new Prepared(db.selectFrom('blobs').select('key').where(sql<SqlBool>`substr(key, 1, ${$[0]}) = ${$[1]}`), 'rows'),
      createMigrationsTable: new Prepared(
        db.schema
          .createTable('schema_migrations')
          .ifNotExists()
          .addColumn('version', dialect.types.int, (c) => c.primaryKey())
          .addColumn('name', dialect.types.text, (c) => c.notNull())
          .addColumn('applied_ms', dialect.types.ms, (c) => c.notNull()),
        'run',
      ),
      appliedVersion: new Prepared(
        db.selectFrom('schema_migrations').select((eb) => eb.fn.coalesce(eb.fn.max('version'), sql<number>`0`).as('v')),
        'rows',
      ),
      recordMigration: new Prepared(db.insertInto('schema_migrations').values({ version: $[0], name: $[1], applied_ms: $[2] }), 'run'),
    };
  }

  private toObject<T>(account: string, type: string, r: ObjectRow): StoredObject<T> {
    return {
      account,
      type,
      id: r.id,
      createdMs: Number(r.created_ms),
      uniqueKey: r.unique_key,
      expiresMs: r.expires_ms === null ? null : Number(r.expires_ms),
      data: this.dialect.decodeJson(r.data) as T,
    };
  }

  *putApiKey(rec: ApiKeyRecord): Op<void> {
    yield* changes(this.q.putApiKey, [rec.secret, rec.account, this.dialect.encodeFlag(rec.livemode), rec.createdMs]);
  }

  *listApiKeys(): Op<ApiKeyRecord[]> {
    const found = yield* rows<{ secret: string; account: string; livemode: boolean | number; created_ms: number | string }>(this.q.listApiKeys, []);
    return found.map((r) => ({ secret: r.secret, account: r.account, livemode: r.livemode === true || r.livemode === 1, createdMs: Number(r.created_ms) }));
  }

  *insertObject<T>(obj: StoredObject<T>): Op<void> {
    const values = [obj.account, obj.type, obj.id, obj.createdMs, obj.uniqueKey ?? null, obj.expiresMs ?? null, this.dialect.encodeJson(obj.data)];
    // No error on a conflict, so that an open PostgreSQL transaction is not aborted by it.
    if ((yield* changes(this.q.insertObjectUnlessConflict, values)) === 1) return;
    // A conflict. An expired object is invisible: it must not block its id or unique key. Remove the expired
    // conflicts and insert again, all-or-nothing; the plain INSERT names the violated index if a live row remains.
    const now = this.now();
    const q = this.q;
    try {
      yield* atomic(function* () {
        yield* changes(q.deleteExpiredConflicts, [obj.account, obj.type, obj.id, obj.uniqueKey ?? null, now]);
        yield* changes(q.insertObject, values);
      });
    } catch (err) {
      const key = this.dialect.uniqueViolation(err);
      throw key ? new UniqueViolation(key) : err;
    }
  }

  *updateObject<T>(account: string, type: string, id: string, data: T): Op<boolean> {
    return (yield* changes(this.q.updateObject, [this.dialect.encodeJson(data), account, type, id, this.now()])) > 0;
  }

  /** `lock`: inside a transaction, where a read that feeds a write locks its row. */
  *getObject<T>(account: string, type: string, id: string, lock: boolean): Op<StoredObject<T> | null> {
    // The hottest call: its statement is yielded directly, without a helper generator.
    const found = (yield (lock ? this.q.getObjectLocked : this.q.getObject).bind([account, type, id, this.now()])) as ObjectRow | undefined;
    return found ? this.toObject<T>(account, type, found) : null;
  }

  *findByUniqueKey<T>(account: string, type: string, uniqueKey: string, lock: boolean): Op<StoredObject<T> | null> {
    const found = yield* first<ObjectRow>(lock ? this.q.findByUniqueKeyLocked : this.q.findByUniqueKey, [account, type, uniqueKey, this.now()]);
    return found ? this.toObject<T>(account, type, found) : null;
  }

  *deleteObject(account: string, type: string, id: string): Op<boolean> {
    // Deletes an expired row too (it is garbage), but reports false for it: it was already invisible.
    const found = yield* rows<{ expires_ms: number | string | null }>(this.q.deleteObject, [account, type, id]);
    if (found.length === 0) return false;
    const expires = found[0].expires_ms;
    return expires === null || Number(expires) > this.now();
  }

  *scanType<T>(type: string): Op<StoredObject<T>[]> {
    const found = yield* rows<ObjectRow & { account: string }>(this.q.scanType, [type, this.now()]);
    return found.map((r) => this.toObject<T>(r.account, type, r));
  }

  *listObjects<T>(account: string, type: string, opts: ListOptions): Op<ListPage<T>> {
    const { limit } = opts;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new RangeError(`limit must be 1..100, got ${limit}`);
    if (opts.startingAfter !== undefined && opts.endingBefore !== undefined) {
      throw new InvalidRequestError('You may only specify one of these parameters: starting_after, ending_before.');
    }
    // Direction of travel: older (default, starting_after) or newer (ending_before).
    const newer = opts.endingBefore !== undefined;
    const cursorId = newer ? opts.endingBefore : opts.startingAfter;
    const now = this.now();
    const filters = opts.where ? Object.entries(opts.where).map(([field, value]) => this.dialect.fieldFilter(field, value)) : [];
    const notFound = () => new NotFoundError(`No such object: '${cursorId}'`, newer ? 'ending_before' : 'starting_after');
    const values: unknown[] = [account, type, now, limit + 1];
    let cursor: ListShape['cursor'] = 'none';
    if (cursorId !== undefined) {
      if (this.dialect.inProcess) {
        const at = yield* first<{ created_ms: number | string; seq: number | string }>(this.q.cursor, [account, type, cursorId, now]);
        if (!at) throw notFound();
        values.push(at.created_ms, at.seq);
        cursor = 'position';
      } else {
        values.push(cursorId);
        cursor = 'joined';
      }
    }
    if (opts.createdGteMs !== undefined) values.push(opts.createdGteMs);
    if (opts.createdLtMs !== undefined) values.push(opts.createdLtMs);
    for (const f of filters) for (const a of f.args) values.push(a);
    const shape: ListShape = { newer, cursor, gte: opts.createdGteMs !== undefined, lt: opts.createdLtMs !== undefined, filters };
    const key = `${newer ? 'n' : 'o'}${cursor}${shape.gte ? 'g' : ''}${shape.lt ? 'l' : ''}:${filters.map((f) => f.kind).join(',')}`;
    let prepared = this.listCache.get(key);
    if (!prepared) {
      if (this.listCache.size >= LIST_CACHE_MAX) this.listCache.clear();
      prepared = this.listQuery(shape);
      this.listCache.set(key, prepared);
    }
    let found = yield* rows<ObjectRow>(prepared, values);
    if (cursor === 'joined') {
      // No row: the cursor is unknown; one all-null row: the page is empty.
      if (found.length === 0) throw notFound();
      found = found.filter((r) => r.id !== null);
    }
    const hasMore = found.length > limit;
    if (hasMore) found.length = limit;
    if (newer) found.reverse();
    return { data: found.map((r) => this.toObject<T>(account, type, r)), hasMore };
  }

  /**
   * The list statement for one shape of options; values in the order listObjects pushes them. A cursor is either a
   * position read before (`position`: SQLite, where a statement costs no round trip and the two simple statements run
   * faster than one join) or read in the same statement (`joined`: PostgreSQL, one round trip and one snapshot: the
   * cursor row joined LATERAL with its page, so that an unknown cursor gives no row and an empty page one all-null
   * row; LATERAL keeps the page's ORDER BY and LIMIT on the index instead of sorting every older row).
   */
  private listQuery(shape: ListShape): Prepared {
    const { newer, cursor, gte, lt, filters } = shape;
    const cursorArgs = cursor === 'position' ? 2 : cursor === 'joined' ? 1 : 0;
    const $ = slots(4 + cursorArgs + (gte ? 1 : 0) + (lt ? 1 : 0) + filters.reduce((n, f) => n + f.args.length, 0));
    let next = 4;
    const cursorSlots = $.slice(next, (next += cursorArgs));
    const gteSlot = gte ? $[next++] : null;
    const ltSlot = lt ? $[next++] : null;
    const filterSlots = filters.map((f) => f.args.map(() => $[next++]));
    const dir = newer ? 'asc' : 'desc';
    const cmp = newer ? '>' : '<';
    const page = (eb: ObjectsEb, data: Expression<unknown>): Expression<SqlBool>[] => {
      const conds: Expression<SqlBool>[] = [eb('account', '=', $[0]), eb('type', '=', $[1]), visible(eb, $[2])];
      if (gteSlot) conds.push(eb('created_ms', '>=', gteSlot));
      if (ltSlot) conds.push(eb('created_ms', '<', ltSlot));
      filters.forEach((f, i) => {
        conds.push(f.sql(data, filterSlots[i]));
      });
      return conds;
    };
    const db = this.db;
    if (cursor !== 'joined') {
      return new Prepared(
        db
          .selectFrom('objects')
          .select(OBJECT_COLUMNS)
          .where((eb) => {
            const conds = page(eb, eb.ref('data'));
            if (cursor === 'position') conds.push(eb(eb.refTuple('created_ms', 'seq'), cmp, eb.tuple(cursorSlots[0], cursorSlots[1])));
            return eb.and(conds);
          })
          .orderBy('created_ms', dir)
          .orderBy('seq', dir)
          .limit($[3]),
        'rows',
      );
    }
    const c = db
      .selectFrom('objects')
      .select(['created_ms as c_created', 'seq as c_seq'])
      .where((eb) => eb.and([eb('account', '=', $[0]), eb('type', '=', $[1]), eb('id', '=', cursorSlots[0]), visible(eb, $[2])]))
      .as('c');
    return new Prepared(
      db
        .selectFrom(c)
        .leftJoinLateral(
          (eb) =>
            eb
              .selectFrom('objects')
              .select(OBJECT_COLUMNS)
              .where((w) => {
                const conds = page(w as unknown as ObjectsEb, w.ref('objects.data'));
                conds.push(w(w.refTuple('objects.created_ms', 'objects.seq'), cmp, w.refTuple('c.c_created', 'c.c_seq')));
                return w.and(conds);
              })
              .orderBy('created_ms', dir)
              .orderBy('seq', dir)
              .limit($[3])
              .as('o'),
          (join) => join.onTrue(),
        )
        .select(['o.id', 'o.created_ms', 'o.unique_key', 'o.expires_ms', 'o.data']),
      'rows',
    );
  }

  *getIdempotency(account: string, key: string): Op<IdempotencyRecord | null> {
    const found = yield* first<IdemRow>(this.q.getIdempotency, [account, key]);
    return found ? toIdem(found) : null;
  }

  *putIdempotency(rec: IdempotencyRecord): Op<IdempotencyRecord> {
    // The stored record can vanish between the two statements only if prune (of another process) removes it; then
    // try again.
    for (let attempt = 0; ; attempt++) {
      const values = [rec.account, rec.key, rec.requestLine, rec.requestHash, rec.status, rec.responseBody, rec.createdMs];
      if ((yield* changes(this.q.putIdempotency, values)) === 1) return { ...rec };
      const stored = yield* this.getIdempotency(rec.account, rec.key);
      if (stored) return stored;
      if (attempt >= 5) throw new Error('idempotency record vanished repeatedly');
    }
  }

  *claimIdempotency(account: string, key: string, owner: string, ttlMs: number): Op<boolean> {
    const now = this.now();
    const values = [account, key, owner, now + ttlMs];
    if ((yield* changes(this.q.claimIdempotency, values)) === 1) return true;
    return (yield* changes(this.q.takeOverIdempotencyClaim, [...values, now])) === 1;
  }

  *releaseIdempotency(account: string, key: string, owner: string): Op<void> {
    yield* changes(this.q.releaseIdempotencyClaim, [account, key, owner]);
  }

  *prune(nowMs: number, idempotencyBeforeMs: number): Op<void> {
    const q = this.q;
    yield* atomic(function* () {
      yield* changes(q.pruneObjects, [nowMs]);
      yield* changes(q.pruneIdempotency, [idempotencyBeforeMs]);
      yield* changes(q.pruneIdempotencyClaims, [nowMs]);
    });
  }

  *putBlob(key: string, data: Buffer): Op<void> {
    if (!Buffer.isBuffer(data)) throw new TypeError('blob data must be a Buffer');
    yield* changes(this.q.putBlob, [key, data, this.now()]);
  }

  /** Keys of the blobs whose key starts with `prefix`. */
  *listBlobKeys(prefix: string): Op<string[]> {
    const found = yield* rows<{ key: string }>(this.q.listBlobKeys, [[...prefix].length, prefix]);
    return found.map((r) => r.key);
  }

  *deleteBlob(key: string): Op<void> {
    yield* changes(this.q.deleteBlob, [key]);
  }

  *getBlob(key: string): Op<Buffer | null> {
    const found = yield* first<{ data: Buffer }>(this.q.getBlob, [key]);
    return found ? found.data : null;
  }

  /**
   * Applies the migrations the database lacks. The driver runs it in one transaction that no other process can run
   * at the same time (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock).
   */
  *migrate(migrations: readonly Migration[] = MIGRATIONS): Op<void> {
    yield* changes(this.q.createMigrationsTable, []);
    const latest = migrations.length ? migrations[migrations.length - 1].version : 0;
    const current = Number((yield* rows<{ v: number | string }>(this.q.appliedVersion, []))[0].v);
    if (current > latest) throw new Error(`state database schema version ${current} is newer than this build supports (${latest})`);
    for (const m of migrations) {
      if (m.version <= current) continue;
      for (const statement of m.statements(this.db, this.dialect.types, this.dialect)) {
        yield* changes(new Prepared(statement, 'run'), []);
      }
      yield* changes(this.q.recordMigration, [m.version, m.name, Date.now()]);
    }
  }
}
