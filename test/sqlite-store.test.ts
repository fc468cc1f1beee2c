import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { SqliteStateStore, MIGRATIONS } from '../shared/state/sqlite-store';
import { NotFoundError, InvalidRequestError, UniqueViolation } from '../shared/errors';
import type { IdempotencyRecord, StateStore, StoredObject } from '../shared/state-store';

type Data = Record<string, unknown>;

async function open(clock?: { now: number }): Promise<SqliteStateStore> {
  const store = new SqliteStateStore(':memory:', clock ? { now: () => clock.now } : {});
  await store.init();
  return store;
}

function obj(account: string, type: string, id: string, createdMs: number, data: Data, extra: Partial<StoredObject<Data>> = {}): StoredObject<Data> {
  return { account, type, id, createdMs, data, ...extra };
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

t.test('insert / get / update / delete, scoped by account', async (t) => {
  const s = await open();
  t.teardown(() => s.close());
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

t.test('uniqueness: id and unique_key, per account and type; findByUniqueKey', async (t) => {
  const s = await open();
  t.teardown(() => s.close());
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

t.test('list pagination over 25 objects with created_ms ties', async (t) => {
  const s = await open();
  t.teardown(() => s.close());
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
  const tieGroup = inserted.filter((o) => o.created === 1_000).sort((a, b) => b.seq - a.seq).map((o) => o.id);
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

  // Empty list.
  t.same(await s.listObjects('acct', 'empty', { limit: 10 }), { data: [], hasMore: false });
});

t.test('list where filters and created range', async (t) => {
  const s = await open();
  t.teardown(() => s.close());
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

  t.same(await ids({}, { createdGteMs: 200, createdLtMs: 500 }), ['d', 'c', 'b'], 'range [200, 500)');
  t.same(await ids({}, { createdGteMs: 600 }), ['f']);
  t.same(await ids({}, { createdLtMs: 101 }), ['a']);
  t.same(await ids({ status: 'active' }, { createdGteMs: 200 }), ['f', 'e', 'c']);

  // Filters combine with pagination and hasMore.
  const p1 = await s.listObjects('acct', 't', { limit: 2, where: { status: 'active' } });
  t.same(p1.data.map((o) => o.id), ['f', 'e']);
  t.equal(p1.hasMore, true);
  const p2 = await s.listObjects('acct', 't', { limit: 2, where: { status: 'active' }, startingAfter: 'e' });
  t.same(p2.data.map((o) => o.id), ['c', 'a']);
  t.equal(p2.hasMore, false);
  // A cursor object need not match the filter.
  const p3 = await s.listObjects('acct', 't', { limit: 5, where: { status: 'active' }, startingAfter: 'd' });
  t.same(p3.data.map((o) => o.id), ['c', 'a']);
  const p4 = await s.listObjects('acct', 't', { limit: 1, where: { status: 'active' }, endingBefore: 'd' });
  t.same(p4.data.map((o) => o.id), ['e']);
  t.equal(p4.hasMore, true);
});

t.test('expiry: invisible to every read, insert over it, prune', async (t) => {
  const clock = { now: 10_000 };
  const s = await open(clock);
  t.teardown(() => s.close());
  await s.insertObject(obj('a', 'session', 's1', 1, { tok: 1 }, { uniqueKey: 'tok1', expiresMs: 10_500 }));
  await s.insertObject(obj('a', 'session', 's2', 2, { tok: 2 }, { uniqueKey: 'tok2', expiresMs: 20_000 }));
  await s.insertObject(obj('a', 'session', 's3', 3, { tok: 3 }));
  t.equal((await s.getObject('a', 'session', 's1'))?.expiresMs, 10_500);

  clock.now = 10_500; // expires_ms <= now: expired
  t.equal(await s.getObject('a', 'session', 's1'), null);
  t.equal(await s.findByUniqueKey('a', 'session', 'tok1'), null);
  t.same((await s.listObjects('a', 'session', { limit: 10 })).data.map((o) => o.id), ['s3', 's2']);
  t.same((await s.scanType('session')).map((o) => o.id), ['s2', 's3']);
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

t.test('scanType: all accounts, oldest first', async (t) => {
  const s = await open();
  t.teardown(() => s.close());
  await s.insertObject(obj('a2', 'billing.meter', 'm2', 200, { x: 2 }));
  await s.insertObject(obj('a1', 'billing.meter', 'm1', 100, { x: 1 }));
  await s.insertObject(obj('a3', 'billing.meter', 'm3', 200, { x: 3 }));
  await s.insertObject(obj('a1', 'other', 'o1', 50, {}));
  const all = await s.scanType<Data>('billing.meter');
  t.same(all.map((o) => [o.account, o.id, o.data.x]), [
    ['a1', 'm1', 1],
    ['a2', 'm2', 2],
    ['a3', 'm3', 3],
  ]);
  t.equal(all[0].type, 'billing.meter');
  t.same(await s.scanType('nothing'), []);
});

t.test('idempotency: first record wins, scoped by account, prune by age', async (t) => {
  const s = await open();
  t.teardown(() => s.close());
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

t.test('api keys: put (upsert) and list', async (t) => {
  const s = await open();
  t.teardown(() => s.close());
  t.same(await s.listApiKeys(), []);
  await s.putApiKey({ secret: 'sk_test_b', account: 'acct_1', livemode: false, createdMs: 2 });
  await s.putApiKey({ secret: 'sk_live_a', account: 'acct_1', livemode: true, createdMs: 1 });
  await s.putApiKey({ secret: 'sk_test_b', account: 'acct_2', livemode: false, createdMs: 3 });
  t.same(await s.listApiKeys(), [
    { secret: 'sk_live_a', account: 'acct_1', livemode: true, createdMs: 1 },
    { secret: 'sk_test_b', account: 'acct_2', livemode: false, createdMs: 3 },
  ]);
});

t.test('transactions', async (t) => {
  t.test('commit returns the value; throw rolls everything back', async (t) => {
    const s = await open();
    t.teardown(() => s.close());
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
    t.same((await s.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id), ['x4', 'x3', 'x1']);

    // The store keeps working after a rollback (the mutex was released).
    await s.insertObject(obj('a', 't', 'x5', 5, {}));
    t.ok(await s.getObject('a', 't', 'x5'));
  });

  t.test('a concurrent call issued while a transaction is open runs after the commit', async (t) => {
    const s = await open();
    t.teardown(() => s.close());
    const events: string[] = [];
    const gate = deferred();
    const inside = deferred();
    const txDone = s.transaction(async (tx) => {
      await tx.insertObject(obj('a', 't', 'in_tx', 1, {}));
      inside.resolve();
      await gate.promise;
      events.push('tx body end');
      return 'ok';
    }).then((v) => {
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

  t.test('no dirty reads of a transaction that rolls back', async (t) => {
    const s = await open();
    t.teardown(() => s.close());
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
    const s = await open();
    t.teardown(() => s.close());
    await s.insertObject(obj('a', 'counter', 'c', 1, { n: 0 }));
    const incr = (): Promise<void> =>
      s.transaction(async (tx) => {
        const cur = await tx.getObject<{ n: number }>('a', 'counter', 'c');
        await tick(); // give the others every chance to interleave
        await tx.updateObject('a', 'counter', 'c', { n: cur!.data.n + 1 });
      });
    await Promise.all(Array.from({ length: 20 }, incr));
    t.same((await s.getObject('a', 'counter', 'c'))?.data, { n: 20 });
  });

  t.test('nested transaction on tx, stale tx handle, outer store inside fn', async (t) => {
    const s = await open();
    t.teardown(() => s.close());
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

    // Calling the outer store from inside fn would deadlock; it fails fast instead, and the tx rolls back.
    const dead = await rejection(
      s.transaction(async (tx) => {
        await tx.insertObject(obj('a', 't', 'n3', 3, {}));
        await s.getObject('a', 't', 'n1');
      }),
    );
    t.match((dead as Error).message, /deadlock/);
    t.equal(await s.getObject('a', 't', 'n3'), null);
  });

  t.test('a throw in fn before any write; begin on a closed store', async (t) => {
    const s = await open();
    await rejection(s.transaction(async () => {
      throw new Error('early');
    }));
    await s.insertObject(obj('a', 't', 'ok', 1, {}));
    await s.close();
    const err = await rejection(s.transaction(async () => 1));
    t.match((err as Error).message, /closed/);
    t.match(((await rejection(s.getObject('a', 't', 'ok'))) as Error).message, /closed/);
  });
});

t.test('persistence across close/reopen; migrations; pragmas', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sqlite-store-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'state.db');

  const s1 = new SqliteStateStore(file);
  await s1.init();
  t.equal(s1.journalMode, 'wal');
  const db1 = (s1 as unknown as { core: { db: Database.Database } }).core.db;
  t.equal(db1.pragma('synchronous', { simple: true }), 2, 'synchronous=FULL');
  await s1.insertObject(obj('a', 't', 'p1', 1, { kept: true }, { uniqueKey: 'u' }));
  await s1.transaction(async (tx) => {
    await tx.insertObject(obj('a', 't', 'p2', 2, { kept: 'too' }));
  });
  await rejection(s1.transaction(async (tx) => {
    await tx.insertObject(obj('a', 't', 'p3', 3, {}));
    throw new Error('no');
  }));
  await s1.putIdempotency({ account: 'a', key: 'k', requestLine: 'r', requestHash: 'h', status: 200, responseBody: 'b', createdMs: 5 });
  await s1.putApiKey({ secret: 'sk_test_1', account: 'a', livemode: false, createdMs: 1 });
  await s1.close();
  await s1.close(); // idempotent

  const s2 = new SqliteStateStore(file);
  await s2.init();
  t.teardown(() => s2.close());
  t.same((await s2.findByUniqueKey('a', 't', 'u'))?.data, { kept: true });
  t.same((await s2.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id), ['p2', 'p1']);
  t.equal((await s2.getIdempotency('a', 'k'))?.responseBody, 'b');
  t.same(await s2.listApiKeys(), [{ secret: 'sk_test_1', account: 'a', livemode: false, createdMs: 1 }]);
  // The insertion sequence keeps increasing across reopen: a new object with an equal created_ms sorts newest.
  await s2.insertObject(obj('a', 't', 'p0', 2, {}));
  t.same((await s2.listObjects('a', 't', { limit: 10 })).data.map((o) => o.id), ['p0', 'p2', 'p1']);

  // Migrations applied exactly once.
  const peek = new Database(file, { readonly: true });
  const versions = peek.prepare('SELECT version FROM schema_migrations ORDER BY version').all() as { version: number }[];
  t.same(versions.map((v) => v.version), MIGRATIONS.map((m) => m.version));
  t.equal(peek.pragma('journal_mode', { simple: true }), 'wal', 'WAL persists in the file');
  peek.close();

  // A database from a newer build is refused.
  const file2 = path.join(dir, 'future.db');
  const s3 = new SqliteStateStore(file2);
  await s3.init();
  await s3.close();
  const w = new Database(file2);
  w.prepare('INSERT INTO schema_migrations (version, name, applied_ms) VALUES (999, ?, 0)').run('future');
  w.close();
  const err = await rejection(new SqliteStateStore(file2).init());
  t.match((err as Error).message, /newer than this build/);
});

t.test('calls before init fail clearly', async (t) => {
  const s = new SqliteStateStore(':memory:');
  t.match(((await rejection(s.getObject('a', 't', 'x'))) as Error).message, /not initialised/);
  await s.init();
  await s.init(); // idempotent
  t.equal(await s.getObject('a', 't', 'x'), null);
  await s.close();
});
