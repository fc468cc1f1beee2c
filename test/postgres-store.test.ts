/**
 * The PostgreSQL StateStore driver: the shared conformance suite plus what only a shared server can show (several
 * instances racing on one database). Needs a server: DATABASE_URL (deploy/up.sh prints one). Without it the whole file
 * is skipped. Every test works in its own random schema, dropped at the end.
 */
import t from 'tap';
import crypto from 'node:crypto';
import { Pool } from 'pg';
import { PostgresStateStore, PG_MIGRATIONS } from '../shared/state/postgres-store';
import { UniqueViolation } from '../shared/errors';
import type { IdempotencyRecord, StateStore } from '../shared/state-store';
import { stateStoreConformance, obj, deferred, rejection, tick, type ConformanceDriver, type Data, type StoreDb } from './helpers/state-store-conformance';

const url = process.env.DATABASE_URL;

if (!url) {
  t.plan(0, 'DATABASE_URL is not set: no PostgreSQL to test against');
} else {
  const admin = new Pool({ connectionString: url, max: 2 });
  admin.on('error', () => undefined);
  t.teardown(() => admin.end());

  const q = (name: string): string => `"${name.replace(/"/g, '""')}"`;

  interface PgDb extends StoreDb {
    schema: string;
    store(opts?: { now?: () => number }): PostgresStateStore;
  }

  /** A fresh schema name per database; the schema itself is created by the first store's init(). */
  async function database(t: tap.Test, opts: { poolSize?: number } = {}): Promise<PgDb> {
    const schema = `test_${process.pid}_${crypto.randomBytes(5).toString('hex')}`;
    const stores: PostgresStateStore[] = [];
    t.teardown(async () => {
      for (const s of stores) await s.close();
      await admin.query(`DROP SCHEMA IF EXISTS ${q(schema)} CASCADE`);
    });
    return {
      schema,
      store(o = {}) {
        const s = new PostgresStateStore({ url: url!, schema, now: o.now, poolSize: opts.poolSize ?? 4 });
        stores.push(s);
        return s;
      },
      async appliedVersions() {
        const res = await admin.query<{ version: number }>(`SELECT version FROM ${q(schema)}.schema_migrations ORDER BY version`);
        return res.rows.map((r) => r.version);
      },
      async addFutureMigration(version) {
        await admin.query(`INSERT INTO ${q(schema)}.schema_migrations (version, name, applied_ms) VALUES ($1, 'future', 0)`, [version]);
      },
    };
  }

  const postgres: ConformanceDriver = {
    migrationVersions: PG_MIGRATIONS.map((m) => m.version),
    callsDuringTransaction: 'concurrent',
    database: (t) => database(t),
  };

  stateStoreConformance(t, 'postgres', postgres);

  // ---- PostgreSQL only: several instances ("processes") on one database. ----

  async function instances(t: tap.Test, n: number, poolSize = 3): Promise<{ db: PgDb; stores: PostgresStateStore[] }> {
    const db = await database(t, { poolSize });
    const stores = Array.from({ length: n }, () => db.store());
    await Promise.all(stores.map((s) => s.init()));
    return { db, stores };
  }

  t.test('postgres: the schema is created by init, with the expected tables; schemas are isolated', async (t) => {
    const db1 = await database(t);
    const db2 = await database(t);
    const a = db1.store();
    const b = db2.store();
    await a.init();
    await b.init();
    const tables = await admin.query<{ table_name: string }>(`SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name`, [
      db1.schema,
    ]);
    t.same(
      tables.rows.map((r) => r.table_name),
      ['api_keys', 'blobs', 'idempotency', 'idempotency_claims', 'objects', 'schema_migrations'],
    );
    const col = await admin.query<{ data_type: string }>(
      `SELECT data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'objects' AND column_name = 'data'`,
      [db1.schema],
    );
    t.equal(col.rows[0].data_type, 'json', 'json keeps documents verbatim');
    await a.insertObject(obj('acct', 't', 'x', 1, { in: 'one' }));
    await a.putApiKey({ secret: 'sk_test_one', account: 'acct', livemode: false, createdMs: 1 });
    await a.putBlob('k', Buffer.from('one'));
    t.equal(await b.getObject('acct', 't', 'x'), null, 'another schema sees nothing');
    t.same(await b.listApiKeys(), []);
    t.equal(await b.getBlob('k'), null);
    await b.insertObject(obj('acct', 't', 'x', 1, { in: 'two' })); // no conflict across schemas
    t.same((await a.getObject<Data>('acct', 't', 'x'))?.data, { in: 'one' });
    // Nothing leaked into the default schema.
    const pub = await admin.query(`SELECT 1 FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'objects'`);
    t.equal(pub.rows.length, 0, 'public untouched');
  });

  /** The schema as the hand-written PostgreSQL driver created it (its migration 1, verbatim). */
  const PRE_KYSELY_SCHEMA = `
    CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL);
    CREATE TABLE objects (
      seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      account    TEXT COLLATE "C" NOT NULL,
      type       TEXT COLLATE "C" NOT NULL,
      id         TEXT COLLATE "C" NOT NULL,
      created_ms BIGINT NOT NULL,
      unique_key TEXT COLLATE "C",
      expires_ms BIGINT,
      data       JSON NOT NULL
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
    INSERT INTO schema_migrations VALUES (1, 'objects, idempotency, api_keys, blobs', 1);
  `;

  t.test('postgres: a schema made by the build before the shared migrations opens, migrates and works', async (t) => {
    const db = await database(t);
    const client = await admin.connect();
    try {
      await client.query('BEGIN');
      await client.query(`CREATE SCHEMA ${q(db.schema)}`);
      await client.query(`SET LOCAL search_path TO ${q(db.schema)}`);
      await client.query(PRE_KYSELY_SCHEMA);
      await client.query(
        `INSERT INTO objects (account, type, id, created_ms, unique_key, data) VALUES ('acct', 'billing.meter', 'mtr_1', 1000, 'false:tokens', '{"id":"mtr_1","z":1,"a":2}')`,
      );
      await client.query(`INSERT INTO api_keys VALUES ('sk_test_old', 'acct', false, 7)`);
      await client.query(`INSERT INTO blobs VALUES ('snap', '\\x01ff', 3)`);
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    const s = db.store();
    await s.init();
    t.same(
      await db.appliedVersions(),
      PG_MIGRATIONS.map((m) => m.version),
      'the missing migrations were applied',
    );
    t.equal(JSON.stringify((await s.getObject('acct', 'billing.meter', 'mtr_1'))?.data), '{"id":"mtr_1","z":1,"a":2}', 'old rows read verbatim');
    t.same(await s.listApiKeys(), [{ secret: 'sk_test_old', account: 'acct', livemode: false, createdMs: 7 }]);
    t.same([...((await s.getBlob('snap')) ?? [])], [1, 255], 'old blobs kept');
    const dup = await rejection(s.insertObject(obj('acct', 'billing.meter', 'mtr_2', 2, {}, { uniqueKey: 'false:tokens' })));
    t.ok(dup instanceof UniqueViolation && dup.key === 'unique_key', 'unique key of an old row enforced');
    await s.insertObject(obj('acct', 'billing.meter', 'mtr_3', 1000, {}));
    t.same(
      (await s.listObjects('acct', 'billing.meter', { limit: 10 })).data.map((o) => o.id),
      ['mtr_3', 'mtr_1'],
      'the insertion sequence continues',
    );
  });

  t.test('postgres: 20 read-modify-write transactions over 2 instances lose no update', async (t) => {
    const { stores } = await instances(t, 2, 3);
    await stores[0].insertObject(obj('a', 'counter', 'c', 1, { n: 0 }));
    const incr = (s: StateStore): Promise<void> =>
      s.transaction(async (tx) => {
        const cur = await tx.getObject<{ n: number }>('a', 'counter', 'c');
        await new Promise((r) => setTimeout(r, 2)); // hold the row lock a while
        await tx.updateObject('a', 'counter', 'c', { n: cur!.data.n + 1 });
      });
    await Promise.all(Array.from({ length: 20 }, (_, i) => incr(stores[i % 2])));
    t.same((await stores[1].getObject('a', 'counter', 'c'))?.data, { n: 20 });
  });

  t.test('postgres: racing inserts of one id / unique key from several instances: exactly one wins', async (t) => {
    const { stores } = await instances(t, 3, 3);
    const byId = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => stores[i % 3].insertObject(obj('a', 't', 'same', i, { i }))));
    t.equal(byId.filter((r) => r.status === 'fulfilled').length, 1, 'one insert succeeded');
    for (const r of byId) {
      if (r.status === 'rejected') {
        t.ok(r.reason instanceof UniqueViolation, 'the others: UniqueViolation');
        t.equal((r.reason as UniqueViolation).key, 'id');
      }
    }
    const byKey = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => stores[i % 3].insertObject(obj('a', 't', `k${i}`, i, { i }, { uniqueKey: 'uk' }))),
    );
    t.equal(byKey.filter((r) => r.status === 'fulfilled').length, 1);
    t.ok(byKey.every((r) => r.status === 'fulfilled' || (r.reason instanceof UniqueViolation && r.reason.key === 'unique_key')));
    t.equal((await stores[0].listObjects('a', 't', { limit: 100 })).data.length, 2);
  });

  t.test('postgres: racing claims in transactions (lease pattern): one owner, the others see UniqueViolation and commit', async (t) => {
    const { stores } = await instances(t, 2, 4);
    const claim = (s: StateStore, owner: string): Promise<string> =>
      s.transaction(async (tx) => {
        const found = await tx.getObject<{ owner: string }>('sys', 'lease', 'p0');
        if (found) return `seen ${found.data.owner}`;
        await tick();
        try {
          await tx.insertObject(obj('sys', 'lease', 'p0', 1, { owner }));
        } catch (err) {
          if (err instanceof UniqueViolation) {
            // The transaction is still usable after the violation.
            await tx.insertObject(obj('sys', 'lost', owner, 1, {}));
            return 'lost';
          }
          throw err;
        }
        return 'won';
      });
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => claim(stores[i % 2], `o${i}`)));
    t.equal(results.filter((r) => r === 'won').length, 1, 'one winner');
    const owner = (await stores[0].getObject<{ owner: string }>('sys', 'lease', 'p0'))!.data.owner;
    const lost = results.filter((r) => r === 'lost').length;
    t.equal((await stores[1].listObjects('sys', 'lost', { limit: 100 })).data.length, lost, 'losers committed their work');
    t.ok(results.every((r) => r === 'won' || r === 'lost' || r === `seen ${owner}`));
  });

  t.test('postgres: concurrent putIdempotency of one key: every caller gets the first record', async (t) => {
    const { stores } = await instances(t, 3, 3);
    const rec = (i: number): IdempotencyRecord => ({
      account: 'a',
      key: 'k',
      requestLine: 'POST /v1/x',
      requestHash: `h${i}`,
      status: 200 + i,
      responseBody: `{"i":${i}}`,
      createdMs: 1000 + i,
    });
    const got = await Promise.all(Array.from({ length: 15 }, (_, i) => stores[i % 3].putIdempotency(rec(i))));
    const first = await stores[0].getIdempotency('a', 'k');
    t.ok(first);
    t.ok(
      got.every((g) => JSON.stringify(g) === JSON.stringify(first)),
      'all callers see the stored (first) record',
    );
  });

  t.test('postgres: concurrent init of many instances on a new schema', async (t) => {
    const db = await database(t, { poolSize: 1 });
    const stores = Array.from({ length: 6 }, () => db.store());
    const started = Date.now();
    await Promise.all(stores.map((s) => s.init()));
    t.same(
      await db.appliedVersions(),
      PG_MIGRATIONS.map((m) => m.version),
    );
    const rows = await admin.query(`SELECT count(*)::int AS n FROM ${q(db.schema)}.schema_migrations`);
    t.equal(rows.rows[0].n, PG_MIGRATIONS.length, 'one row per migration');
    t.comment(`6 concurrent inits: ${Date.now() - started} ms`);
  });

  t.test('postgres: an SQL error caught inside fn still rolls the transaction back, and is reported', async (t) => {
    const db = await database(t);
    const s = db.store();
    await s.init();
    const err = await rejection(
      s.transaction(async (tx) => {
        await tx.insertObject(obj('a', 't', 'before', 1, {}));
        // created_ms is BIGINT: 1.5 is refused by the server, which aborts the Postgres transaction.
        const e = await rejection(tx.insertObject(obj('a', 't', 'bad', 1.5, {})));
        t.equal((e as { code?: string }).code, '22P02');
        return 'fn swallowed it';
      }),
    );
    t.equal((err as { code?: string }).code, '22P02', 'the transaction rejects with the SQL error');
    t.equal(await s.getObject('a', 't', 'before'), null, 'nothing committed');
    await s.insertObject(obj('a', 't', 'after', 2, {}));
    t.ok(await s.getObject('a', 't', 'after'), 'the pool is healthy afterwards');
  });

  t.test('postgres: documents PostgreSQL cannot hold are refused before any SQL', async (t) => {
    const db = await database(t);
    const s = db.store();
    await s.init();
    for (const bad of ['nul \u0000 char', 'lone \ud800 surrogate', 'lone low \udc00']) {
      const e = await rejection(s.insertObject(obj('a', 't', 'x', 1, { bad })));
      t.ok(e instanceof TypeError, JSON.stringify(bad));
    }
    await s.insertObject(obj('a', 't', 'ok', 1, { pair: '\u{1f600}', text: 'backslash-u0000: \\u0000' }));
    t.ok(await s.getObject('a', 't', 'ok'), 'a paired surrogate and an escaped backslash are fine');
    t.ok((await rejection(s.updateObject('a', 't', 'ok', { bad: '\u0000' }))) instanceof TypeError);
    // Inside a transaction the refusal does not abort it.
    await s.transaction(async (tx) => {
      t.ok((await rejection(tx.insertObject(obj('a', 't', 'y', 1, { bad: '\u0000' })))) instanceof TypeError);
      await tx.insertObject(obj('a', 't', 'y', 1, { good: true }));
    });
    t.ok(await s.getObject('a', 't', 'y'));
    t.same(
      (await s.listObjects('a', 't', { limit: 10, where: { text: 'backslash-u0000: \\u0000' } })).data.map((o) => o.id),
      ['ok'],
    );
  });

  t.test('postgres: calls on tx made without awaiting run one after another and finish before COMMIT', async (t) => {
    const db = await database(t);
    const s = db.store();
    await s.init();
    await s.transaction(async (tx) => {
      // Fire-and-forget: these are queued on the transaction's connection, and commit waits for them.
      for (let i = 0; i < 10; i++) void tx.insertObject(obj('a', 't', `f${i}`, i, {}));
      void tx.insertObject(obj('a', 't', 'f0', 0, {})).catch(() => undefined); // a violation in the middle
      void tx.insertObject(obj('a', 't', 'last', 99, {}));
    });
    t.equal((await s.listObjects('a', 't', { limit: 100 })).data.length, 11);
  });

  t.test('postgres: a pool of one connection: transactions and plain calls still progress', async (t) => {
    const db = await database(t, { poolSize: 1 });
    const s = db.store();
    await s.init();
    await s.insertObject(obj('a', 'counter', 'c', 1, { n: 0 }));
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 10; i++) {
      work.push(
        s.transaction(async (tx) => {
          const cur = await tx.getObject<{ n: number }>('a', 'counter', 'c');
          await tx.updateObject('a', 'counter', 'c', { n: cur!.data.n + 1 });
        }),
      );
      work.push(s.getObject('a', 'counter', 'c'));
      work.push(s.insertObject(obj('a', 'other', `o${i}`, i, {})));
    }
    await Promise.all(work);
    t.same((await s.getObject('a', 'counter', 'c'))?.data, { n: 10 });
  });

  t.test('postgres: close waits for an open transaction, which still commits', async (t) => {
    const db = await database(t);
    const s = db.store();
    await s.init();
    const inside = deferred();
    const gate = deferred();
    const tx = s.transaction(async (tx) => {
      await tx.insertObject(obj('a', 't', 'x', 1, {}));
      inside.resolve();
      await gate.promise;
      await tx.insertObject(obj('a', 't', 'y', 2, {}));
    });
    await inside.promise;
    let closed = false;
    const closing = s.close().then(() => (closed = true));
    await new Promise((r) => setTimeout(r, 50));
    t.equal(closed, false, 'close is waiting');
    t.match(((await rejection(s.getObject('a', 't', 'x'))) as Error).message, /closed/, 'new calls refused at once');
    gate.resolve();
    await tx;
    await closing;
    const other = db.store();
    await other.init();
    t.same(
      (await other.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
      ['y', 'x'],
    );
  });

  t.test('postgres: close lets calls queued for a connection finish first', async (t) => {
    const db = await database(t, { poolSize: 1 });
    const s = db.store();
    await s.init();
    await s.insertObject(obj('a', 't', 'x', 1, {}));
    const inside = deferred();
    const gate = deferred();
    const tx = s.transaction(async (tx) => {
      inside.resolve();
      await gate.promise;
      await tx.updateObject('a', 't', 'x', { n: 1 });
    });
    await inside.promise;
    // The only connection is held by the transaction: these wait in the pool's queue.
    const read = s.getObject('a', 't', 'x');
    const write = s.insertObject(obj('a', 't', 'y', 2, {}));
    const tx2 = s.transaction(async (tx) => tx.insertObject(obj('a', 't', 'z', 3, {})));
    const closing = s.close();
    gate.resolve();
    await tx;
    t.ok(await read, 'queued read answered');
    await write;
    await tx2;
    await closing;
    const other = db.store();
    await other.init();
    t.same(
      (await other.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
      ['z', 'y', 'x'],
    );
    t.same((await other.getObject('a', 't', 'x'))?.data, { n: 1 });
  });

  t.test('postgres: a connection killed during an open transaction: the transaction fails, the process does not', async (t) => {
    const db = await database(t, { poolSize: 2 });
    const s = db.store();
    await s.init();
    const inside = deferred();
    const gate = deferred();
    const tx = rejection(
      s.transaction(async (tx) => {
        await tx.insertObject(obj('a', 't', 'doomed', 1, {}));
        inside.resolve();
        await gate.promise; // idle in transaction while the server kills the connection
        await tx.insertObject(obj('a', 't', 'doomed2', 2, {}));
      }),
    );
    await inside.promise;
    const killed = await admin.query(
      `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE application_name = 'meterd' AND state = 'idle in transaction' AND query LIKE $1`,
      [`%${db.schema}%`],
    );
    t.equal(killed.rows.length, 1, "killed the transaction's connection");
    await new Promise((r) => setTimeout(r, 100)); // the FATAL message arrives while no query runs
    gate.resolve();
    const err = (await tx) as Error;
    t.ok(err instanceof Error, `transaction rejected: ${err.message}`);
    t.equal(await s.getObject('a', 't', 'doomed'), null, 'nothing committed');
    await s.insertObject(obj('a', 't', 'fine', 3, {}));
    t.ok(await s.getObject('a', 't', 'fine'), 'the store goes on with a new connection');
  });

  t.test('postgres: a server error on one connection does not poison the pool', async (t) => {
    const db = await database(t, { poolSize: 2 });
    const s = db.store();
    await s.init();
    // Kill every connection of this store's pool from the server side.
    await s.getObject('a', 't', 'warm');
    const killed = await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'meterd' AND query LIKE $1`, [
      `%${db.schema}%`,
    ]);
    t.ok(killed.rows.length >= 1, `terminated ${killed.rows.length} connection(s)`);
    // A call may fail once on a dead connection; afterwards the pool reconnects.
    await s.getObject('a', 't', 'x').catch(() => undefined);
    await s.getObject('a', 't', 'x').catch(() => undefined);
    await s.insertObject(obj('a', 't', 'x', 1, {}));
    t.ok(await s.getObject('a', 't', 'x'));
    await s.transaction(async (tx) => tx.updateObject('a', 't', 'x', { after: true }));
    t.same((await s.getObject('a', 't', 'x'))?.data, { after: true });
  });
}
