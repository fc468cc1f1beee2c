/**
 * The StateStore contract as a test suite, run against every driver (test/sqlite-store.test.ts,
 * test/postgres-store.test.ts). The SQLite driver's behaviour is the reference; where a difference is inherent to the
 * driver (calls on the outer store while a transaction is open queue in SQLite, run at once in PostgreSQL) the driver
 * says which behaviour it has and the suite checks that one.
 */
import type {} from 'tap'; // the global `tap` namespace (tap.Test)
import { NotFoundError, InvalidRequestError, UniqueViolation } from '../../shared/errors';
import type { IdempotencyRecord, StateStore, StoredObject } from '../../shared/state-store';

type Test = tap.Test;
export type Data = Record<string, unknown>;

/** One empty database (a file, a schema…) that store instances can be opened on. */
export interface StoreDb {
  /** A new, uninitialised store instance on this database — a second call is like a second process. */
  store(opts?: { now?: () => number }): StateStore;
  /** Versions recorded in schema_migrations, ascending. */
  appliedVersions(): Promise<number[]>;
  /** Records a migration version that this build does not know (a database written by a newer build). */
  addFutureMigration(version: number): Promise<void>;
}

export interface ConformanceDriver {
  /**
   * A fresh, empty database; every store opened on it is closed, and the database removed, at t's teardown.
   * `shared`: several store instances must see the same data (otherwise the driver may use a private database).
   */
  database(t: Test, opts?: { shared?: boolean }): Promise<StoreDb>;
  /** The migration versions the driver applies. */
  migrationVersions: readonly number[];
  /**
   * What a call on the store does while a transaction of the same store is open:
   * 'queue' — waits until it ends (one connection: SQLite); 'concurrent' — runs at once on another connection and
   * sees only committed data (a pool: PostgreSQL).
   */
  callsDuringTransaction: 'queue' | 'concurrent';
}

export function obj(account: string, type: string, id: string, createdMs: number, data: Data, extra: Partial<StoredObject<Data>> = {}): StoredObject<Data> {
  return { account, type, id, createdMs, data, ...extra };
}

export function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

export async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

export function stateStoreConformance(t: Test, name: string, driver: ConformanceDriver): void {
  /** A fresh initialised store on its own database, closed at t's teardown. */
  async function open(t: Test, clock?: { now: number }): Promise<StateStore> {
    const db = await driver.database(t);
    const s = db.store(clock ? { now: () => clock.now } : {});
    await s.init();
    return s;
  }

  t.test(`${name}: insert / get / update / delete, scoped by account`, async (t) => {
    const s = await open(t);
    await s.insertObject(obj('acct_1', 'billing.meter', 'mtr_1', 1000, { name: 'a', n: 1 }, { uniqueKey: 'false:ev' }));
    const got = await s.getObject<Data>('acct_1', 'billing.meter', 'mtr_1');
    t.same(got, {
      account: 'acct_1',
      type: 'billing.meter',
      id: 'mtr_1',
      createdMs: 1000,
      uniqueKey: 'false:ev',
      expiresMs: null,
      data: { name: 'a', n: 1 },
    });
    t.equal(await s.getObject('acct_2', 'billing.meter', 'mtr_1'), null, 'other account cannot see it');
    t.equal(await s.getObject('acct_1', 'other.type', 'mtr_1'), null, 'other type cannot see it');
    t.equal(await s.getObject('acct_1', 'billing.meter', 'mtr_x'), null);

    t.equal(await s.updateObject('acct_1', 'billing.meter', 'mtr_1', { name: 'b', nested: { x: [1, 2] } }), true);
    t.same((await s.getObject('acct_1', 'billing.meter', 'mtr_1'))?.data, { name: 'b', nested: { x: [1, 2] } });
    t.equal((await s.getObject('acct_1', 'billing.meter', 'mtr_1'))?.uniqueKey, 'false:ev', 'update keeps unique key');
    t.equal(await s.updateObject('acct_2', 'billing.meter', 'mtr_1', { name: 'evil' }), false, 'no cross-account update');
    t.equal(await s.updateObject('acct_1', 'billing.meter', 'nope', { name: 'c' }), false);
    t.same((await s.getObject('acct_1', 'billing.meter', 'mtr_1'))?.data, { name: 'b', nested: { x: [1, 2] } });

    t.equal(await s.deleteObject('acct_2', 'billing.meter', 'mtr_1'), false, 'no cross-account delete');
    t.equal(await s.deleteObject('acct_1', 'billing.meter', 'mtr_1'), true);
    t.equal(await s.deleteObject('acct_1', 'billing.meter', 'mtr_1'), false);
    t.equal(await s.getObject('acct_1', 'billing.meter', 'mtr_1'), null);
    t.equal(await s.findByUniqueKey('acct_1', 'billing.meter', 'false:ev'), null, 'unique key freed by delete');
    await s.insertObject(obj('acct_1', 'billing.meter', 'mtr_1', 2000, { again: true }, { uniqueKey: 'false:ev' }));
    t.same((await s.getObject('acct_1', 'billing.meter', 'mtr_1'))?.data, { again: true });
  });

  t.test(`${name}: documents round-trip exactly (key order, nesting, unicode, numbers)`, async (t) => {
    const s = await open(t);
    // The API returns stored documents verbatim, so key order is part of the contract.
    const data: Data = {
      id: 'mtr_1',
      object: 'billing.meter',
      created: 1700000000,
      zeta: null,
      alpha: { b: 1, a: [3, 2, { y: true, x: false }] },
      emoji: 'caf\u00e9 \u{1f600} \u2028',
      big: 2 ** 53 - 1,
      tiny: 1.5e-7,
      neg: -0.25,
      esc: 'quote " backslash \\ tab \t newline \n and \\u0000 as text',
      empty: {},
      list: [],
    };
    await s.insertObject(obj('a', 't', 'x', 1, data));
    const got = (await s.getObject<Data>('a', 't', 'x'))!.data;
    t.same(got, data);
    t.same(Object.keys(got), Object.keys(data), 'top-level key order kept');
    t.same(Object.keys(got.alpha as Data), ['b', 'a'], 'nested key order kept');
    t.equal(JSON.stringify(got), JSON.stringify(data), 'byte-identical after a round trip');
    const updated = { z: 1, y: 2, x: { c: 3, b: 4 } };
    await s.updateObject('a', 't', 'x', updated);
    const got2 = (await s.getObject<Data>('a', 't', 'x'))!.data;
    t.equal(JSON.stringify(got2), JSON.stringify(updated), 'update keeps key order too');
    const listed = (await s.listObjects<Data>('a', 't', { limit: 1 })).data[0].data;
    t.equal(JSON.stringify(listed), JSON.stringify(updated), 'listObjects too');
    const scanned = (await s.scanType<Data>('t'))[0].data;
    t.equal(JSON.stringify(scanned), JSON.stringify(updated), 'scanType too');
  });

  t.test(`${name}: uniqueness: id and unique_key, per account and type; findByUniqueKey`, async (t) => {
    const s = await open(t);
    await s.insertObject(obj('a1', 'billing.meter', 'm1', 1, { v: 1 }, { uniqueKey: 'k' }));

    const e1 = await rejection(s.insertObject(obj('a1', 'billing.meter', 'm1', 2, { v: 2 })));
    t.ok(e1 instanceof UniqueViolation, 'duplicate id');
    t.equal((e1 as UniqueViolation).key, 'id');

    const e2 = await rejection(s.insertObject(obj('a1', 'billing.meter', 'm2', 2, { v: 2 }, { uniqueKey: 'k' })));
    t.ok(e2 instanceof UniqueViolation, 'duplicate unique key');
    t.equal((e2 as UniqueViolation).key, 'unique_key');
    t.equal(await s.getObject('a1', 'billing.meter', 'm2'), null, 'failed insert left nothing');

    // Same id / unique key in another account or another type is fine.
    await s.insertObject(obj('a2', 'billing.meter', 'm1', 3, { v: 3 }, { uniqueKey: 'k' }));
    await s.insertObject(obj('a1', 'v2.core.event', 'm1', 3, { v: 4 }, { uniqueKey: 'k' }));
    // Many objects without a unique key.
    await s.insertObject(obj('a1', 'billing.meter', 'm3', 4, { v: 5 }));
    await s.insertObject(obj('a1', 'billing.meter', 'm4', 4, { v: 6 }, { uniqueKey: null }));

    t.equal((await s.findByUniqueKey<Data>('a1', 'billing.meter', 'k'))?.data.v, 1);
    t.equal((await s.findByUniqueKey<Data>('a2', 'billing.meter', 'k'))?.data.v, 3);
    t.equal((await s.findByUniqueKey<Data>('a1', 'v2.core.event', 'k'))?.data.v, 4);
    t.equal((await s.findByUniqueKey<Data>('a1', 'billing.meter', 'k'))?.id, 'm1');
    t.equal(await s.findByUniqueKey('a3', 'billing.meter', 'k'), null);
    t.equal(await s.findByUniqueKey('a1', 'billing.meter', 'other'), null);
  });

  t.test(`${name}: list pagination over 25 objects with created_ms ties`, async (t) => {
    const s = await open(t);
    // created_ms has ties (groups of 3) and objects are inserted in a scrambled order, so ordering must use created_ms
    // first and insertion order only inside a tie.
    const order = Array.from({ length: 25 }, (_, i) => (i * 7) % 25); // a permutation of 0..24
    const inserted: { id: string; created: number; seq: number }[] = [];
    for (const [seq, i] of order.entries()) {
      const id = `o_${String(i).padStart(2, '0')}`;
      const created = 1_000 + Math.floor(i / 3) * 10;
      inserted.push({ id, created, seq });
      await s.insertObject(obj('acct', 't', id, created, { i }));
    }
    // Noise: another account and another type.
    await s.insertObject(obj('acct_other', 't', 'x1', 5_000, {}));
    await s.insertObject(obj('acct', 't2', 'x2', 5_000, {}));

    const expected = [...inserted].sort((a, b) => b.created - a.created || b.seq - a.seq).map((o) => o.id);
    // Sanity: ties really are present and broken by insertion order (not by id).
    const tieGroup = inserted
      .filter((o) => o.created === 1_000)
      .sort((a, b) => b.seq - a.seq)
      .map((o) => o.id);
    t.same(tieGroup, ['o_01', 'o_02', 'o_00'], 'tie group: insertion order, which differs from id order');
    t.same(expected.slice(-3), tieGroup);

    const ids = (p: { data: StoredObject<unknown>[] }): string[] => p.data.map((o) => o.id);

    // Forward (older): 10, 10, 5.
    const p1 = await s.listObjects('acct', 't', { limit: 10 });
    t.same(ids(p1), expected.slice(0, 10));
    t.equal(p1.hasMore, true);
    const p2 = await s.listObjects('acct', 't', { limit: 10, startingAfter: ids(p1)[9] });
    t.same(ids(p2), expected.slice(10, 20));
    t.equal(p2.hasMore, true);
    const p3 = await s.listObjects('acct', 't', { limit: 10, startingAfter: ids(p2)[9] });
    t.same(ids(p3), expected.slice(20, 25));
    t.equal(p3.hasMore, false);
    t.same([...ids(p1), ...ids(p2), ...ids(p3)], expected, 'forward walk visits every object once, in order');

    // Exactly a full last page: hasMore false.
    const exact = await s.listObjects('acct', 't', { limit: 5, startingAfter: expected[19] });
    t.same(ids(exact), expected.slice(20));
    t.equal(exact.hasMore, false);
    const all = await s.listObjects('acct', 't', { limit: 25 });
    t.equal(all.data.length, 25);
    t.equal(all.hasMore, false);
    const first24 = await s.listObjects('acct', 't', { limit: 24 });
    t.equal(first24.hasMore, true);

    // Cursor in the middle of a tie group: strictly older in (created_ms, seq) order.
    for (let k = 0; k < 25; k++) {
      const page = await s.listObjects('acct', 't', { limit: 3, startingAfter: expected[k] });
      t.same(ids(page), expected.slice(k + 1, k + 4), `startingAfter ${expected[k]}`);
      t.equal(page.hasMore, k + 4 < 25);
      const back = await s.listObjects('acct', 't', { limit: 3, endingBefore: expected[k] });
      t.same(ids(back), expected.slice(Math.max(0, k - 3), k), `endingBefore ${expected[k]}`);
      t.equal(back.hasMore, k - 3 > 0);
    }

    // Backward (newer) from the oldest: closest 10 first, returned newest first.
    const b1 = await s.listObjects('acct', 't', { limit: 10, endingBefore: expected[24] });
    t.same(ids(b1), expected.slice(14, 24));
    t.equal(b1.hasMore, true);
    const b2 = await s.listObjects('acct', 't', { limit: 10, endingBefore: ids(b1)[0] });
    t.same(ids(b2), expected.slice(4, 14));
    t.equal(b2.hasMore, true);
    const b3 = await s.listObjects('acct', 't', { limit: 10, endingBefore: ids(b2)[0] });
    t.same(ids(b3), expected.slice(0, 4));
    t.equal(b3.hasMore, false);
    const none = await s.listObjects('acct', 't', { limit: 10, endingBefore: expected[0] });
    t.same(none, { data: [], hasMore: false });

    // Unknown cursors, including ids that exist only in another account.
    for (const [key, param] of [
      ['startingAfter', 'starting_after'],
      ['endingBefore', 'ending_before'],
    ] as const) {
      for (const bad of ['o_nope', 'x1']) {
        const err = await rejection(s.listObjects('acct', 't', { limit: 10, [key]: bad }));
        t.ok(err instanceof NotFoundError, `${key}=${bad} -> NotFoundError`);
        t.equal((err as NotFoundError).message, `No such object: '${bad}'`);
        t.equal((err as NotFoundError).param, param);
        t.equal((err as NotFoundError).status, 404);
      }
    }
    const both = await rejection(s.listObjects('acct', 't', { limit: 10, startingAfter: expected[3], endingBefore: expected[0] }));
    t.ok(both instanceof InvalidRequestError, 'both cursors rejected');
    for (const limit of [0, 101, 1.5]) {
      t.ok((await rejection(s.listObjects('acct', 't', { limit }))) instanceof RangeError, `limit ${limit} rejected`);
    }

    // Empty list.
    t.same(await s.listObjects('acct', 'empty', { limit: 10 }), { data: [], hasMore: false });
  });

  t.test(`${name}: list where filters and created range`, async (t) => {
    const s = await open(t);
    const rows: [string, number, Data][] = [
      ['a', 100, { status: 'active', livemode: false, n: 1, note: null }],
      ['b', 200, { status: 'inactive', livemode: true, n: 2, note: 'x' }],
      ['c', 300, { status: 'active', livemode: true, n: 1.5 }],
      ['d', 400, { status: 'true', livemode: 1, n: '1' }],
      ['e', 500, { status: 'active', livemode: 'true', n: 1, note: false }],
      ['f', 600, { status: 'active', livemode: false, n: 0, note: 0 }],
    ];
    for (const [id, created, data] of rows) await s.insertObject(obj('acct', 't', id, created, data));
    await s.insertObject(obj('other', 't', 'z', 450, { status: 'active', livemode: true }));
    const ids = async (where: Record<string, string | number | boolean | null>, extra: object = {}): Promise<string[]> =>
      (await s.listObjects('acct', 't', { limit: 100, where, ...extra })).data.map((o) => o.id);

    t.same(await ids({ status: 'active' }), ['f', 'e', 'c', 'a'], 'string');
    t.same(await ids({ status: 'true' }), ['d'], 'string "true" is not boolean true');
    t.same(await ids({ livemode: true }), ['c', 'b'], 'boolean true: not 1, not "true"');
    t.same(await ids({ livemode: false }), ['f', 'a'], 'boolean false');
    t.same(await ids({ status: 'active', livemode: true }), ['c'], 'AND of filters');
    t.same(await ids({ note: null }), ['d', 'c', 'a'], 'null = JSON null or missing, not false/0');
    t.same(await ids({ note: false }), ['e']);
    t.same(await ids({ n: 1 }), ['e', 'a'], 'number, not the string "1"');
    t.same(await ids({ n: 1.5 }), ['c']);
    t.same(await ids({ n: '1' }), ['d']);
    t.same(await ids({ missing: 'x' }), []);
    t.same(await ids({ 'status.x': 'active' }), [], 'field names are literal, not paths');
    t.same(await ids({ status: 'ACTIVE' }), [], 'strings compare exactly (case)');
    t.same(await ids({ status: 'active ' }), [], 'strings compare exactly (spaces)');
    t.same(await ids({ n: Number.NaN }), [], 'NaN matches nothing');
    t.same(await ids({ n: Number.POSITIVE_INFINITY }), [], 'Infinity matches nothing');
    t.same(await ids({ status: 'x\u0000y' }), [], 'a string no document holds matches nothing');
    t.ok((await rejection(ids({ '': 'x' }))) instanceof TypeError, 'empty field name rejected');
    t.ok((await rejection(ids({ 'a"b': 'x' }))) instanceof TypeError, 'field name with a quote rejected');

    t.same(await ids({}, { createdGteMs: 200, createdLtMs: 500 }), ['d', 'c', 'b'], 'range [200, 500)');
    t.same(await ids({}, { createdGteMs: 600 }), ['f']);
    t.same(await ids({}, { createdLtMs: 101 }), ['a']);
    t.same(await ids({ status: 'active' }, { createdGteMs: 200 }), ['f', 'e', 'c']);

    // Filters combine with pagination and hasMore.
    const p1 = await s.listObjects('acct', 't', { limit: 2, where: { status: 'active' } });
    t.same(
      p1.data.map((o) => o.id),
      ['f', 'e'],
    );
    t.equal(p1.hasMore, true);
    const p2 = await s.listObjects('acct', 't', { limit: 2, where: { status: 'active' }, startingAfter: 'e' });
    t.same(
      p2.data.map((o) => o.id),
      ['c', 'a'],
    );
    t.equal(p2.hasMore, false);
    // A cursor object need not match the filter.
    const p3 = await s.listObjects('acct', 't', { limit: 5, where: { status: 'active' }, startingAfter: 'd' });
    t.same(
      p3.data.map((o) => o.id),
      ['c', 'a'],
    );
    const p4 = await s.listObjects('acct', 't', { limit: 1, where: { status: 'active' }, endingBefore: 'd' });
    t.same(
      p4.data.map((o) => o.id),
      ['e'],
    );
    t.equal(p4.hasMore, true);
    // Cursor + range + filter, and an empty page after a known cursor.
    const p5 = await s.listObjects('acct', 't', { limit: 5, where: { status: 'active' }, startingAfter: 'f', createdLtMs: 400 });
    t.same(
      p5.data.map((o) => o.id),
      ['c', 'a'],
    );
    t.same(await s.listObjects('acct', 't', { limit: 5, where: { status: 'nope' }, startingAfter: 'f' }), {
      data: [],
      hasMore: false,
    });
  });

  t.test(`${name}: expiry: invisible to every read, insert over it, prune`, async (t) => {
    const clock = { now: 10_000 };
    const s = await open(t, clock);
    await s.insertObject(obj('a', 'session', 's1', 1, { tok: 1 }, { uniqueKey: 'tok1', expiresMs: 10_500 }));
    await s.insertObject(obj('a', 'session', 's2', 2, { tok: 2 }, { uniqueKey: 'tok2', expiresMs: 20_000 }));
    await s.insertObject(obj('a', 'session', 's3', 3, { tok: 3 }));
    t.equal((await s.getObject('a', 'session', 's1'))?.expiresMs, 10_500);

    clock.now = 10_500; // expires_ms <= now: expired
    t.equal(await s.getObject('a', 'session', 's1'), null);
    t.equal(await s.findByUniqueKey('a', 'session', 'tok1'), null);
    t.same(
      (await s.listObjects('a', 'session', { limit: 10 })).data.map((o) => o.id),
      ['s3', 's2'],
    );
    t.same(
      (await s.scanType('session')).map((o) => o.id),
      ['s2', 's3'],
    );
    t.equal(await s.updateObject('a', 'session', 's1', { tok: 9 }), false);
    t.ok((await rejection(s.listObjects('a', 'session', { limit: 10, startingAfter: 's1' }))) instanceof NotFoundError);
    t.equal((await s.listObjects('a', 'session', { limit: 1 })).hasMore, true);
    t.equal((await s.listObjects('a', 'session', { limit: 2 })).hasMore, false, 'expired rows do not count for hasMore');

    // An expired object does not block its id or unique key.
    await s.insertObject(obj('a', 'session', 's1', 4, { tok: 'new' }, { uniqueKey: 'tok1' }));
    t.same((await s.getObject('a', 'session', 's1'))?.data, { tok: 'new' });
    // ...but a live one still does.
    t.ok((await rejection(s.insertObject(obj('a', 'session', 's9', 5, {}, { uniqueKey: 'tok2' })))) instanceof UniqueViolation);
    t.ok((await rejection(s.insertObject(obj('a', 'session', 's2', 5, {})))) instanceof UniqueViolation);

    await s.insertObject(obj('a', 'session', 's4', 6, {}, { expiresMs: 15_000 }));
    await s.insertObject(obj('b', 'session', 's5', 7, {}, { expiresMs: 15_000 }));
    clock.now = 16_000;
    t.equal(await s.deleteObject('a', 'session', 's4'), false, 'deleting an expired object reports false');
    await s.prune(16_000, 0);
    clock.now = 0; // turn back time: pruned rows are really gone, the unpruned one is visible again
    t.equal(await s.getObject('b', 'session', 's5'), null, 'pruned');
    t.equal(await s.getObject('a', 'session', 's4'), null, 'deleted');
    t.ok(await s.getObject('a', 'session', 's2'), 'not yet expired at prune time: kept');
    t.ok(await s.getObject('a', 'session', 's3'), 'no expiry: kept');
    t.ok(await s.getObject('a', 'session', 's1'), 're-inserted without expiry: kept');
  });

  t.test(`${name}: expiry: replacing an expired object is all-or-nothing`, async (t) => {
    const clock = { now: 1_000 };
    const s = await open(t, clock);
    await s.insertObject(obj('a', 'session', 'old', 1, { v: 'old' }, { uniqueKey: 'u_old', expiresMs: 2_000 }));
    await s.insertObject(obj('a', 'session', 'live', 2, { v: 'live' }, { uniqueKey: 'u_live' }));
    clock.now = 3_000;
    // Its id is held by an expired row (removable), its unique key by a live one: nothing may change.
    const err = await rejection(s.insertObject(obj('a', 'session', 'old', 3, { v: 'new' }, { uniqueKey: 'u_live' })));
    t.ok(err instanceof UniqueViolation);
    t.equal((err as UniqueViolation).key, 'unique_key');
    clock.now = 0; // the expired row is still there: the delete was rolled back with the failed insert
    t.same((await s.getObject<Data>('a', 'session', 'old'))?.data, { v: 'old' });
    t.same((await s.findByUniqueKey<Data>('a', 'session', 'u_live'))?.data, { v: 'live' });
    clock.now = 3_000;
    // Inside a transaction the same holds, and the transaction goes on.
    await s.transaction(async (tx) => {
      const e = await rejection(tx.insertObject(obj('a', 'session', 'old', 3, { v: 'new' }, { uniqueKey: 'u_live' })));
      t.ok(e instanceof UniqueViolation);
      await tx.insertObject(obj('a', 'session', 'old', 4, { v: 'replaced' }, { uniqueKey: 'u_old' }));
    });
    t.same((await s.getObject<Data>('a', 'session', 'old'))?.data, { v: 'replaced' });
  });

  t.test(`${name}: scanType: all accounts, oldest first`, async (t) => {
    const s = await open(t);
    await s.insertObject(obj('a2', 'billing.meter', 'm2', 200, { x: 2 }));
    await s.insertObject(obj('a1', 'billing.meter', 'm1', 100, { x: 1 }));
    await s.insertObject(obj('a3', 'billing.meter', 'm3', 200, { x: 3 }));
    await s.insertObject(obj('a1', 'other', 'o1', 50, {}));
    const all = await s.scanType<Data>('billing.meter');
    t.same(
      all.map((o) => [o.account, o.id, o.data.x]),
      [
        ['a1', 'm1', 1],
        ['a2', 'm2', 2],
        ['a3', 'm3', 3],
      ],
    );
    t.equal(all[0].type, 'billing.meter');
    t.same(await s.scanType('nothing'), []);
  });

  t.test(`${name}: idempotency: first record wins, scoped by account, prune by age`, async (t) => {
    const s = await open(t);
    const rec = (account: string, key: string, status: number, createdMs: number): IdempotencyRecord => ({
      account,
      key,
      requestLine: 'POST /v1/billing/meters',
      requestHash: `h${status}`,
      status,
      responseBody: `{"status":${status}}`,
      createdMs,
    });
    t.equal(await s.getIdempotency('a', 'k1'), null);
    t.same(await s.putIdempotency(rec('a', 'k1', 200, 1000)), rec('a', 'k1', 200, 1000));
    t.same(await s.putIdempotency(rec('a', 'k1', 400, 2000)), rec('a', 'k1', 200, 1000), 'second put returns the first');
    t.same(await s.getIdempotency('a', 'k1'), rec('a', 'k1', 200, 1000));
    t.same(await s.putIdempotency(rec('b', 'k1', 201, 3000)), rec('b', 'k1', 201, 3000), 'other account independent');
    t.same(await s.getIdempotency('b', 'k1'), rec('b', 'k1', 201, 3000));
    t.equal(await s.getIdempotency('c', 'k1'), null);

    await s.prune(0, 2000); // removes records created before 2000
    t.equal(await s.getIdempotency('a', 'k1'), null);
    t.same(await s.getIdempotency('b', 'k1'), rec('b', 'k1', 201, 3000));
    t.same(await s.putIdempotency(rec('a', 'k1', 409, 4000)), rec('a', 'k1', 409, 4000), 'key reusable after prune');
  });

  t.test(`${name}: idempotency claims: one owner across store instances, released, taken over once expired`, async (t) => {
    const db = await driver.database(t, { shared: true });
    const clock = { now: 10_000 };
    const a = db.store({ now: () => clock.now });
    const b = db.store({ now: () => clock.now });
    await a.init();
    await b.init();
    t.equal(await a.claimIdempotency('acct', 'k1', 'a:1', 60_000), true, 'the first claim holds');
    t.equal(await b.claimIdempotency('acct', 'k1', 'b:1', 60_000), false, 'a second owner, on another instance, is refused');
    t.equal(await a.claimIdempotency('acct', 'k1', 'a:2', 60_000), false, 'so is a second request of the same process');
    t.equal(await b.claimIdempotency('acct2', 'k1', 'b:2', 60_000), true, 'keys are per account');
    t.equal(await b.claimIdempotency('acct', 'k2', 'b:3', 60_000), true, 'and per key');

    await b.releaseIdempotency('acct', 'k1', 'b:1');
    t.equal(await b.claimIdempotency('acct', 'k1', 'b:4', 60_000), false, "releasing another owner's claim does nothing");
    await a.releaseIdempotency('acct', 'k1', 'a:1');
    t.equal(await b.claimIdempotency('acct', 'k1', 'b:5', 60_000), true, 'released: the next claim holds');

    clock.now += 59_999;
    t.equal(await a.claimIdempotency('acct', 'k1', 'a:3', 60_000), false, 'not expired yet');
    clock.now += 1;
    const takers = await Promise.all([a.claimIdempotency('acct', 'k1', 'a:4', 60_000), b.claimIdempotency('acct', 'k1', 'b:6', 60_000)]);
    t.same(takers.filter(Boolean).length, 1, 'an expired claim is taken over by exactly one of two concurrent claims');
    await b.releaseIdempotency('acct', 'k1', 'b:5');
    t.equal(await a.claimIdempotency('acct', 'k1', 'a:5', 60_000), false, 'the expired owner cannot release the new claim');

    clock.now += 60_000;
    t.equal(await b.claimIdempotency('acct', 'k3', 'b:7', 120_000), true);
    await a.prune(clock.now, 0);
    t.equal(await a.claimIdempotency('acct', 'k3', 'a:6', 60_000), false, 'prune leaves a claim that has not expired');
    t.equal(await a.claimIdempotency('acct', 'k1', 'a:7', 60_000), true, 'and the expired ones are claimed anew');
  });

  t.test(`${name}: api keys: put (upsert) and list`, async (t) => {
    const s = await open(t);
    t.same(await s.listApiKeys(), []);
    await s.putApiKey({ secret: 'sk_test_b', account: 'acct_1', livemode: false, createdMs: 2 });
    await s.putApiKey({ secret: 'sk_live_a', account: 'acct_1', livemode: true, createdMs: 1 });
    await s.putApiKey({ secret: 'sk_test_b', account: 'acct_2', livemode: false, createdMs: 3 });
    t.same(await s.listApiKeys(), [
      { secret: 'sk_live_a', account: 'acct_1', livemode: true, createdMs: 1 },
      { secret: 'sk_test_b', account: 'acct_2', livemode: false, createdMs: 3 },
    ]);
    // Ties on createdMs: by secret, bytewise (upper case before lower case, '_' between them).
    await s.putApiKey({ secret: 'sk_test_b_x', account: 'acct_3', livemode: false, createdMs: 10 });
    await s.putApiKey({ secret: 'sk_test_B', account: 'acct_3', livemode: false, createdMs: 10 });
    await s.putApiKey({ secret: 'sk_test_bX', account: 'acct_3', livemode: false, createdMs: 10 });
    t.same(
      (await s.listApiKeys()).slice(2).map((k) => k.secret),
      ['sk_test_B', 'sk_test_bX', 'sk_test_b_x'],
    );
  });

  t.test(`${name}: blobs: put (replace) and get`, async (t) => {
    const clock = { now: 5 };
    const s = await open(t, clock);
    if (!s.putBlob || !s.getBlob) {
      t.pass('this driver has no blob support (optional methods)');
      return;
    }
    t.equal(await s.getBlob('nope'), null);
    const bin = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    await s.putBlob('group/dedup-p0', bin);
    const got = await s.getBlob('group/dedup-p0');
    t.ok(Buffer.isBuffer(got));
    t.ok(got!.equals(bin), 'every byte value round-trips');
    await s.putBlob('group/dedup-p0', Buffer.from('second'));
    t.equal((await s.getBlob('group/dedup-p0'))?.toString(), 'second', 'put replaces');
    await s.putBlob('group/dedup-p1', Buffer.alloc(0));
    t.equal((await s.getBlob('group/dedup-p1'))?.length, 0, 'empty blob is not null');
    if (s.listBlobKeys && s.deleteBlob) {
      await s.putBlob('group_x/dedup-p1/run-a', Buffer.from('a'));
      await s.putBlob('group_x/dedup-p1/run-b', Buffer.from('b'));
      await s.putBlob('groupyx/dedup-p1/run-c', Buffer.from('c'));
      t.same((await s.listBlobKeys('group_x/dedup-p1/')).sort(), ['group_x/dedup-p1/run-a', 'group_x/dedup-p1/run-b'], 'listed by prefix, `_` taken literally');
      await s.deleteBlob('group_x/dedup-p1/run-a');
      t.equal(await s.getBlob('group_x/dedup-p1/run-a'), null, 'deleted');
      t.same(await s.listBlobKeys('group_x/dedup-p1/'), ['group_x/dedup-p1/run-b']);
      await s.deleteBlob('nope');
    }
    const large = Buffer.alloc(3 * 1024 * 1024, 0xab);
    large.writeUInt32BE(0xdeadbeef, large.length - 4);
    await s.putBlob('large', large);
    t.ok((await s.getBlob('large'))!.equals(large), '3 MB blob');
    // In a transaction: rolled back with it, committed with it.
    await rejection(
      s.transaction(async (tx) => {
        await tx.putBlob!('group/dedup-p0', Buffer.from('rolled back'));
        t.equal((await tx.getBlob!('group/dedup-p0'))?.toString(), 'rolled back', 'tx sees its own blob');
        throw new Error('no');
      }),
    );
    t.equal((await s.getBlob('group/dedup-p0'))?.toString(), 'second');
    await s.transaction(async (tx) => tx.putBlob!('group/dedup-p0', Buffer.from('third')));
    t.equal((await s.getBlob('group/dedup-p0'))?.toString(), 'third');
  });

  t.test(`${name}: transactions`, async (t) => {
    t.test('commit returns the value; throw rolls everything back', async (t) => {
      const s = await open(t);
      const v = await s.transaction(async (tx) => {
        await tx.insertObject(obj('a', 't', 'x1', 1, { n: 1 }));
        await tick();
        await tx.putIdempotency({ account: 'a', key: 'k', requestLine: 'r', requestHash: 'h', status: 200, responseBody: '{}', createdMs: 1 });
        t.ok(await tx.getObject('a', 't', 'x1'), 'tx sees its own write');
        return 42;
      });
      t.equal(v, 42);
      t.ok(await s.getObject('a', 't', 'x1'));

      const boom = new Error('boom');
      const err = await rejection(
        s.transaction(async (tx) => {
          await tx.insertObject(obj('a', 't', 'x2', 2, { n: 2 }));
          await tx.updateObject('a', 't', 'x1', { n: 100 });
          await tx.deleteObject('a', 't', 'x1');
          await tx.putApiKey({ secret: 'sk_test_z', account: 'a', livemode: false, createdMs: 1 });
          await tick();
          throw boom;
        }),
      );
      t.equal(err, boom, 'the thrown error propagates');
      t.equal(await s.getObject('a', 't', 'x2'), null, 'insert rolled back');
      t.same((await s.getObject('a', 't', 'x1'))?.data, { n: 1 }, 'update and delete rolled back');
      t.same(await s.listApiKeys(), [], 'api key rolled back');

      // A UniqueViolation caught inside the transaction does not abort it.
      await s.transaction(async (tx) => {
        await tx.insertObject(obj('a', 't', 'x3', 3, {}));
        const e = await rejection(tx.insertObject(obj('a', 't', 'x1', 3, {})));
        t.ok(e instanceof UniqueViolation);
        await tx.insertObject(obj('a', 't', 'x4', 4, {}));
      });
      t.same(
        (await s.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
        ['x4', 'x3', 'x1'],
      );

      // The store keeps working after a rollback (the mutex / connection was released).
      await s.insertObject(obj('a', 't', 'x5', 5, {}));
      t.ok(await s.getObject('a', 't', 'x5'));
    });

    t.test('every operation works on the tx handle', async (t) => {
      const s = await open(t);
      await s.insertObject(obj('a', 't', 'pre', 1, { n: 0 }, { uniqueKey: 'u_pre' }));
      await s.putIdempotency({ account: 'a', key: 'old', requestLine: 'r', requestHash: 'h', status: 200, responseBody: '{}', createdMs: 1 });
      await s.transaction(async (tx) => {
        await tx.init();
        await tx.insertObject(obj('a', 't', 'in', 2, { n: 1 }, { uniqueKey: 'u_in' }));
        t.equal((await tx.findByUniqueKey('a', 't', 'u_in'))?.id, 'in');
        t.same(
          (await tx.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
          ['in', 'pre'],
        );
        t.same(
          (await tx.listObjects('a', 't', { limit: 10, startingAfter: 'in' })).data.map((o) => o.id),
          ['pre'],
        );
        t.same(
          (await tx.scanType('t')).map((o) => o.id),
          ['pre', 'in'],
        );
        t.equal(await tx.updateObject('a', 't', 'pre', { n: 2 }), true);
        t.equal(await tx.deleteObject('a', 't', 'in'), true);
        const rec = { account: 'a', key: 'new', requestLine: 'r', requestHash: 'h', status: 201, responseBody: '{"x":1}', createdMs: 5 };
        t.same(await tx.putIdempotency(rec), rec);
        t.equal((await tx.getIdempotency('a', 'new'))?.status, 201);
        await tx.putApiKey({ secret: 'sk_test_tx', account: 'a', livemode: false, createdMs: 1 });
        t.equal((await tx.listApiKeys()).length, 1);
        await tx.prune(0, 2); // removes idempotency 'old'
        t.equal(await tx.getIdempotency('a', 'old'), null);
        t.match(((await rejection(tx.close())) as Error).message, /inside a transaction/);
      });
      t.same((await s.getObject('a', 't', 'pre'))?.data, { n: 2 });
      t.equal(await s.getObject('a', 't', 'in'), null);
      t.equal((await s.getIdempotency('a', 'new'))?.status, 201);
      t.equal(await s.getIdempotency('a', 'old'), null);
      t.equal((await s.listApiKeys()).length, 1);
    });

    if (driver.callsDuringTransaction === 'queue') {
      t.test('a concurrent call issued while a transaction is open runs after the commit', async (t) => {
        const s = await open(t);
        const events: string[] = [];
        const gate = deferred();
        const inside = deferred();
        const txDone = s
          .transaction(async (tx) => {
            await tx.insertObject(obj('a', 't', 'in_tx', 1, {}));
            inside.resolve();
            await gate.promise;
            events.push('tx body end');
            return 'ok';
          })
          .then((v) => {
            events.push('tx committed');
            return v;
          });
        await inside.promise;
        // Issued while the transaction is open: a read that would otherwise see uncommitted data, and a write.
        const read = s.getObject('a', 't', 'in_tx').then((o) => {
          events.push(`read ${o ? 'found' : 'missing'}`);
        });
        const write = s.insertObject(obj('a', 't', 'outside', 2, {})).then(() => events.push('outside write done'));
        const list = s.listObjects('a', 't', { limit: 10 }).then((p) => events.push(`list ${p.data.map((o) => o.id).join(',')}`));
        for (let i = 0; i < 5; i++) await tick();
        t.same(events, [], 'nothing ran while the transaction was open');
        gate.resolve();
        t.equal(await txDone, 'ok');
        await Promise.all([read, write, list]);
        t.same(events, ['tx body end', 'tx committed', 'read found', 'outside write done', 'list outside,in_tx']);
      });
    } else {
      t.test('a concurrent call issued while a transaction is open runs at once and sees committed data only', async (t) => {
        const s = await open(t);
        await s.insertObject(obj('a', 't', 'before', 1, { n: 0 }));
        const gate = deferred();
        const inside = deferred();
        const txDone = s.transaction(async (tx) => {
          await tx.insertObject(obj('a', 't', 'in_tx', 2, {}));
          await tx.updateObject('a', 't', 'before', { n: 1 });
          inside.resolve();
          await gate.promise;
          return 'ok';
        });
        await inside.promise;
        t.equal(await s.getObject('a', 't', 'in_tx'), null, 'uncommitted insert invisible');
        t.same((await s.getObject('a', 't', 'before'))?.data, { n: 0 }, 'uncommitted update invisible');
        await s.insertObject(obj('a', 't', 'outside', 3, {}));
        t.same(
          (await s.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
          ['outside', 'before'],
        );
        gate.resolve();
        t.equal(await txDone, 'ok');
        t.ok(await s.getObject('a', 't', 'in_tx'), 'visible after commit');
        t.same((await s.getObject('a', 't', 'before'))?.data, { n: 1 });
        t.same(
          (await s.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
          ['outside', 'in_tx', 'before'],
        );
      });
    }

    t.test('no dirty reads of a transaction that rolls back', async (t) => {
      const s = await open(t);
      const inside = deferred();
      const gate = deferred();
      const txDone = rejection(
        s.transaction(async (tx) => {
          await tx.insertObject(obj('a', 't', 'ghost', 1, {}));
          inside.resolve();
          await gate.promise;
          throw new Error('abort');
        }),
      );
      await inside.promise;
      const read = s.getObject('a', 't', 'ghost');
      const found = s.findByUniqueKey('a', 't', 'nothing');
      gate.resolve();
      t.equal(((await txDone) as Error).message, 'abort');
      t.equal(await read, null);
      t.equal(await found, null);
    });

    t.test('concurrent transactions serialise (no lost update)', async (t) => {
      const s = await open(t);
      await s.insertObject(obj('a', 'counter', 'c', 1, { n: 0 }, { uniqueKey: 'ctr' }));
      const incr = (): Promise<void> =>
        s.transaction(async (tx) => {
          const cur = await tx.getObject<{ n: number }>('a', 'counter', 'c');
          await tick(); // give the others every chance to interleave
          await tx.updateObject('a', 'counter', 'c', { n: cur!.data.n + 1 });
        });
      await Promise.all(Array.from({ length: 20 }, incr));
      t.same((await s.getObject('a', 'counter', 'c'))?.data, { n: 20 });
      // The same through findByUniqueKey.
      const incrByKey = (): Promise<void> =>
        s.transaction(async (tx) => {
          const cur = await tx.findByUniqueKey<{ n: number }>('a', 'counter', 'ctr');
          await tick();
          await tx.updateObject('a', 'counter', cur!.id, { n: cur!.data.n + 1 });
        });
      await Promise.all(Array.from({ length: 20 }, incrByKey));
      t.same((await s.getObject('a', 'counter', 'c'))?.data, { n: 40 });
    });

    t.test('nested transaction on tx, stale tx handle, outer store inside fn', async (t) => {
      const s = await open(t);
      let leaked: StateStore | null = null;
      await s.transaction(async (tx) => {
        leaked = tx;
        const inner = await tx.transaction(async (tx2) => {
          t.equal(tx2, tx, 'nested transaction runs fn(tx)');
          await tx2.insertObject(obj('a', 't', 'n1', 1, {}));
          return 'inner';
        });
        t.equal(inner, 'inner');
        t.ok(await tx.getObject('a', 't', 'n1'));
      });
      t.ok(await s.getObject('a', 't', 'n1'), 'nested write committed with the outer transaction');

      const stale = await rejection(leaked!.insertObject(obj('a', 't', 'n2', 2, {})));
      t.match((stale as Error).message, /transaction is finished/);
      t.match(((await rejection(leaked!.transaction(async () => 1))) as Error).message, /transaction is finished/);

      // Calling the outer store from inside fn would deadlock; it fails fast instead, and the tx rolls back.
      const dead = await rejection(
        s.transaction(async (tx) => {
          await tx.insertObject(obj('a', 't', 'n3', 3, {}));
          await s.getObject('a', 't', 'n1');
        }),
      );
      t.match((dead as Error).message, /deadlock/);
      t.equal(await s.getObject('a', 't', 'n3'), null);
      // The same for a transaction on the outer store, and for closing it.
      const dead2 = await rejection(s.transaction(async () => s.transaction(async () => 1)));
      t.match((dead2 as Error).message, /deadlock/);
      const dead3 = await rejection(s.transaction(async () => s.close()));
      t.match((dead3 as Error).message, /deadlock/);
      t.equal(await s.getObject('a', 't', 'n3'), null, 'the store is still open');
      // After the transaction, the context that ran fn may use the store again.
      let later: Promise<unknown> | null = null;
      await s.transaction(async () => {
        later = new Promise((r) => setTimeout(r, 20)).then(() => s.getObject('a', 't', 'n1'));
      });
      t.ok(await later!, 'a call made from fn context after the commit works');
    });

    t.test('a throw in fn before any write; begin on a closed store', async (t) => {
      const db = await driver.database(t);
      const s = db.store();
      await s.init();
      await rejection(
        s.transaction(async () => {
          throw new Error('early');
        }),
      );
      await s.insertObject(obj('a', 't', 'ok', 1, {}));
      await s.close();
      const err = await rejection(s.transaction(async () => 1));
      t.match((err as Error).message, /closed/);
      t.match(((await rejection(s.getObject('a', 't', 'ok'))) as Error).message, /closed/);
      t.match(((await rejection(s.init())) as Error).message, /closed/);
    });
  });

  t.test(`${name}: persistence across close/reopen; migrations`, async (t) => {
    const db = await driver.database(t, { shared: true });
    const s1 = db.store();
    await s1.init();
    await s1.insertObject(obj('a', 't', 'p1', 1, { kept: true }, { uniqueKey: 'u' }));
    await s1.transaction(async (tx) => {
      await tx.insertObject(obj('a', 't', 'p2', 2, { kept: 'too' }));
    });
    await rejection(
      s1.transaction(async (tx) => {
        await tx.insertObject(obj('a', 't', 'p3', 3, {}));
        throw new Error('no');
      }),
    );
    await s1.putIdempotency({ account: 'a', key: 'k', requestLine: 'r', requestHash: 'h', status: 200, responseBody: 'b', createdMs: 5 });
    await s1.putApiKey({ secret: 'sk_test_1', account: 'a', livemode: false, createdMs: 1 });
    await s1.close();
    await s1.close(); // idempotent

    const s2 = db.store();
    await s2.init();
    t.same((await s2.findByUniqueKey('a', 't', 'u'))?.data, { kept: true });
    t.same(
      (await s2.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
      ['p2', 'p1'],
    );
    t.equal((await s2.getIdempotency('a', 'k'))?.responseBody, 'b');
    t.same(await s2.listApiKeys(), [{ secret: 'sk_test_1', account: 'a', livemode: false, createdMs: 1 }]);
    // The insertion sequence keeps increasing across reopen: a new object with an equal created_ms sorts newest.
    await s2.insertObject(obj('a', 't', 'p0', 2, {}));
    t.same(
      (await s2.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id),
      ['p0', 'p2', 'p1'],
    );

    // Migrations applied exactly once.
    t.same(await db.appliedVersions(), driver.migrationVersions);

    // A database from a newer build is refused.
    const db2 = await driver.database(t, { shared: true });
    const s3 = db2.store();
    await s3.init();
    await s3.close();
    await db2.addFutureMigration(999);
    const err = await rejection(db2.store().init());
    t.match((err as Error).message, /newer than this build/);
  });

  t.test(`${name}: stores initialised concurrently on one database apply the migrations once`, async (t) => {
    const db = await driver.database(t, { shared: true });
    const stores = Array.from({ length: 4 }, () => db.store());
    await Promise.all(stores.map((s) => s.init()));
    t.same(await db.appliedVersions(), driver.migrationVersions);
    await Promise.all(stores.map((s, i) => s.insertObject(obj('a', 't', `x${i}`, i, {}))));
    for (const s of stores) t.equal((await s.listObjects('a', 't', { limit: 10 })).data.length, 4);
    await Promise.all(stores.map((s) => s.init())); // again: nothing to do
    t.same(await db.appliedVersions(), driver.migrationVersions);
  });

  t.test(`${name}: two store instances on one database see each other's writes`, async (t) => {
    const db = await driver.database(t, { shared: true });
    const a = db.store();
    const b = db.store();
    await a.init();
    await b.init();
    await a.insertObject(obj('acct', 't', 'from_a', 1, { by: 'a' }, { uniqueKey: 'ua' }));
    t.same((await b.getObject('acct', 't', 'from_a'))?.data, { by: 'a' });
    t.equal((await b.findByUniqueKey('acct', 't', 'ua'))?.id, 'from_a');
    const dup = await rejection(b.insertObject(obj('acct', 't', 'other', 2, {}, { uniqueKey: 'ua' })));
    t.ok(dup instanceof UniqueViolation, 'unique keys are shared');
    t.equal((dup as UniqueViolation).key, 'unique_key');
    await b.insertObject(obj('acct', 't', 'from_b', 2, { by: 'b' }));
    t.same(
      (await a.listObjects('acct', 't', { limit: 10 })).data.map((o) => o.id),
      ['from_b', 'from_a'],
    );
    t.equal(await b.updateObject('acct', 't', 'from_a', { by: 'b too' }), true);
    t.same((await a.getObject('acct', 't', 'from_a'))?.data, { by: 'b too' });
    await b.transaction(async (tx) => {
      await tx.insertObject(obj('acct', 't', 'tx_b', 3, {}));
    });
    t.ok(await a.getObject('acct', 't', 'tx_b'), 'a committed transaction of one is visible to the other');
    t.equal(await a.deleteObject('acct', 't', 'tx_b'), true);
    t.equal(await b.getObject('acct', 't', 'tx_b'), null);
    const rec = (status: number): IdempotencyRecord => ({
      account: 'acct',
      key: 'idem',
      requestLine: 'POST /v1/x',
      requestHash: `h${status}`,
      status,
      responseBody: `${status}`,
      createdMs: status,
    });
    t.same(await a.putIdempotency(rec(200)), rec(200));
    t.same(await b.putIdempotency(rec(500)), rec(200), 'first record wins across instances');
    await b.putApiKey({ secret: 'sk_test_shared', account: 'acct', livemode: false, createdMs: 1 });
    t.same(
      (await a.listApiKeys()).map((k) => k.secret),
      ['sk_test_shared'],
    );
    t.same(
      (await a.scanType('t')).map((o) => o.id),
      ['from_a', 'from_b'],
    );
    await a.prune(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
    t.equal(await b.getIdempotency('acct', 'idem'), null, 'prune by one is seen by the other');
    if (a.putBlob && b.getBlob) {
      await a.putBlob('snap', Buffer.from('from a'));
      t.equal((await b.getBlob('snap'))?.toString(), 'from a', 'blobs are shared');
    }
  });

  t.test(`${name}: calls before init fail clearly`, async (t) => {
    const db = await driver.database(t);
    const s = db.store();
    t.match(((await rejection(s.getObject('a', 't', 'x'))) as Error).message, /not initialised/);
    t.match(((await rejection(s.transaction(async () => 1))) as Error).message, /not initialised/);
    await s.init();
    await s.init(); // idempotent
    t.equal(await s.getObject('a', 't', 'x'), null);
    await s.close();
  });
}
