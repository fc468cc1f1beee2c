import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { SqliteStateStore, MIGRATIONS } from '../shared/state/sqlite-store';
import type { StateStore } from '../shared/state-store';
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
