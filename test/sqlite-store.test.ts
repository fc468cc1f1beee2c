import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { SqliteStateStore, MIGRATIONS } from '../shared/state/sqlite-store';
import type { StateStore } from '../shared/state-store';
import { UniqueViolation } from '../shared/errors';
import { stateStoreConformance, obj, type ConformanceDriver, type StoreDb } from './helpers/state-store-conformance';

/**
 * A shared database is a file in a temporary folder; a private one is `:memory:` (each store instance then has its
 * own, which is fine for the tests that open one instance).
 */
const sqlite: ConformanceDriver = {
  migrationVersions: MIGRATIONS.map((m) => m.version),
  callsDuringTransaction: 'queue',
  async database(t, opts = {}): Promise<StoreDb> {
    const stores: StateStore[] = [];
    let file = ':memory:';
    let dir: string | null = null;
    if (opts.shared) {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sqlite-store-'));
      file = path.join(dir, 'state.db');
    }
    t.teardown(async () => {
      for (const s of stores) await s.close();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });
    const needsFile = (): void => {
      if (!dir) throw new Error('this needs a shared (file) database');
    };
    return {
      store(o = {}) {
        const s = new SqliteStateStore(file, o.now ? { now: o.now } : {});
        stores.push(s);
        return s;
      },
      async appliedVersions() {
        needsFile();
        const peek = new Database(file, { readonly: true });
        try {
          const rows = peek.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[];
          return rows.map((r) => r.version);
        } finally {
          peek.close();
        }
      },
      async addFutureMigration(version) {
        needsFile();
        const w = new Database(file);
        try {
          w.prepare('INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, 0)').run(version, 'future');
        } finally {
          w.close();
        }
      },
    };
  },
};

stateStoreConformance(t, 'sqlite', sqlite);

// SQLite only: durability settings.
t.test('sqlite: WAL journal and synchronous=FULL; WAL persists in the file', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sqlite-store-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'state.db');

  const s1 = new SqliteStateStore(file);
  await s1.init();
  t.equal(s1.journalMode, 'wal');
  const db1 = (s1 as unknown as { core: { db: Database.Database } }).core.db;
  t.equal(db1.pragma('synchronous', { simple: true }), 2, 'synchronous=FULL');
  await s1.insertObject(obj('a', 't', 'p1', 1, { kept: true }));
  await s1.close();

  const peek = new Database(file, { readonly: true });
  t.equal(peek.pragma('journal_mode', { simple: true }), 'wal', 'WAL persists in the file');
  peek.close();

  const mem = new SqliteStateStore(':memory:');
  await mem.init();
  t.equal(mem.journalMode, 'memory', ':memory: cannot use WAL');
  await mem.close();
});

/**
 * The schema as the hand-written SQLite driver created it (its migration 1, verbatim), before the migrations became
 * one list for both databases: a database made by that build must open, migrate and work.
 */
const PRE_KYSELY_SCHEMA = `
  CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL);
  CREATE TABLE objects (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    account    TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    unique_key TEXT,
    expires_ms INTEGER,
    data       TEXT    NOT NULL
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
  INSERT INTO schema_migrations VALUES (1, 'objects, idempotency, api_keys', 1);
`;

t.test('sqlite: a database made by the build before the shared migrations opens, migrates and works', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sqlite-store-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'state.db');
  const old = new Database(file);
  old.pragma('journal_mode = WAL');
  old.exec(PRE_KYSELY_SCHEMA);
  const insert = old.prepare('INSERT INTO objects (account, type, id, created_ms, unique_key, expires_ms, data) VALUES (?, ?, ?, ?, ?, ?, ?)');
  insert.run('acct', 'billing.meter', 'mtr_1', 1000, 'false:tokens', null, JSON.stringify({ id: 'mtr_1', status: 'active', n: 1 }));
  insert.run('acct', 'billing.meter', 'mtr_2', 1000, null, null, JSON.stringify({ id: 'mtr_2', status: 'inactive' }));
  insert.run('acct', 'session', 'ses_1', 1, 'tok', 5, JSON.stringify({ expired: true }));
  old.prepare('INSERT INTO idempotency VALUES (?, ?, ?, ?, ?, ?, ?)').run('acct', 'k1', 'POST /v1/billing/meters', 'h', 200, '{"id":"mtr_1"}', 10);
  old.prepare('INSERT INTO api_keys VALUES (?, ?, ?, ?)').run('sk_test_old', 'acct', 0, 7);
  old.close();

  const s = new SqliteStateStore(file, { now: () => 100 });
  await s.init();
  const peek = new Database(file, { readonly: true });
  t.same(
    (peek.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[]).map((r) => r.version),
    MIGRATIONS.map((m) => m.version),
    'the missing migrations were applied',
  );
  t.ok(peek.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'blobs'").get(), 'the blobs table was added');
  peek.close();
  t.same((await s.getObject('acct', 'billing.meter', 'mtr_1'))?.data, { id: 'mtr_1', status: 'active', n: 1 }, 'old rows read');
  t.equal((await s.findByUniqueKey('acct', 'billing.meter', 'false:tokens'))?.id, 'mtr_1');
  t.same(
    (await s.listObjects('acct', 'billing.meter', { limit: 10, where: { status: 'inactive' } })).data.map((o) => o.id),
    ['mtr_2'],
  );
  t.same(
    (await s.listObjects('acct', 'billing.meter', { limit: 10 })).data.map((o) => o.id),
    ['mtr_2', 'mtr_1'],
    'ties of created_ms in insertion order',
  );
  t.equal(await s.getObject('acct', 'session', 'ses_1'), null, 'expired stays invisible');
  t.equal((await s.getIdempotency('acct', 'k1'))?.responseBody, '{"id":"mtr_1"}');
  t.same(await s.listApiKeys(), [{ secret: 'sk_test_old', account: 'acct', livemode: false, createdMs: 7 }]);
  // Writes keep the old rules: the insertion sequence continues, unique keys are enforced, the expired row is replaced.
  await s.insertObject(obj('acct', 'billing.meter', 'mtr_3', 1000, {}));
  t.same(
    (await s.listObjects('acct', 'billing.meter', { limit: 1 })).data.map((o) => o.id),
    ['mtr_3'],
  );
  const dup = await s.insertObject(obj('acct', 'billing.meter', 'mtr_4', 2, {}, { uniqueKey: 'false:tokens' })).catch((e: unknown) => e);
  t.ok(dup instanceof UniqueViolation && dup.key === 'unique_key', 'unique key of an old row enforced');
  await s.insertObject(obj('acct', 'session', 'ses_1', 50, { fresh: true }, { uniqueKey: 'tok' }));
  t.same((await s.getObject('acct', 'session', 'ses_1'))?.data, { fresh: true });
  await s.close();
  // And it opens again with nothing left to do.
  const again = new SqliteStateStore(file);
  await again.init();
  t.equal((await again.listObjects('acct', 'billing.meter', { limit: 10 })).data.length, 3);
  await again.close();
});
