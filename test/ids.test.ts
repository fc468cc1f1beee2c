import t from 'tap';
import { BASE62_ALPHABET, base62, base62Int, randomBase62, newId, idTimeMs, newRequestId, newSecretKey, newToken } from '../shared/ids';

const B62 = /^[0-9A-Za-z]+$/;

t.test('base62 helpers', async (t) => {
  t.equal(BASE62_ALPHABET.length, 62);
  t.equal([...BASE62_ALPHABET].sort().join(''), BASE62_ALPHABET, 'alphabet is in ASCII order');
  t.equal(base62Int(0), '0');
  t.equal(base62Int(61), 'z');
  t.equal(base62Int(62), '10');
  t.equal(base62Int(62, 4), '0010');
  t.throws(() => base62Int(-1), RangeError);
  t.throws(() => base62Int(1.5), RangeError);
  t.equal(base62(new Uint8Array([])), '');
  t.equal(base62(new Uint8Array([0])), '00');
  t.equal(base62(new Uint8Array([255])), '47');
  t.equal(base62(new Uint8Array([1, 0])), '048', '256 = 4*62 + 8, 3 chars for 2 bytes');
  t.equal(base62(new Uint8Array(16).fill(255)).length, 22, 'fixed width for 16 bytes');
  t.equal(base62(new Uint8Array(16)).length, 22);
  const r = randomBase62(1000);
  t.equal(r.length, 1000);
  t.match(r, B62);
});

t.test('randomBase62 uses the whole alphabet roughly uniformly', async (t) => {
  const counts = new Map<string, number>();
  const s = randomBase62(62000);
  for (const c of s) counts.set(c, (counts.get(c) ?? 0) + 1);
  t.equal(counts.size, 62);
  for (const [c, n] of counts) t.ok(n > 700 && n < 1300, `${c}: ${n}`);
});

t.test('newId', async (t) => {
  const test = newId('mtr', false);
  const live = newId('mtr', true);
  t.match(test, /^mtr_test_[0-9A-Za-z]{28}$/);
  t.match(live, /^mtr_[0-9A-Za-z]{28}$/);
  const before = Date.now();
  const id = newId('mtrusg', false);
  const ms = idTimeMs(id)!;
  t.ok(ms >= before && ms <= Date.now() + 1, 'encodes the creation ms');
  t.equal(idTimeMs('mtr_short'), null);
});

t.test('ids are unique and sort by creation', async (t) => {
  const ids: string[] = [];
  for (let i = 0; i < 20000; i++) ids.push(newId('mtr', false));
  t.equal(new Set(ids).size, ids.length, 'unique');
  const sorted = [...ids].sort();
  t.same(sorted, ids, 'string order = creation order');
});

t.test('request ids, secret keys, tokens', async (t) => {
  t.match(newRequestId(), /^req_[0-9A-Za-z]{14}$/);
  t.match(newSecretKey(false), /^sk_test_[0-9A-Za-z]{64}$/);
  t.match(newSecretKey(true), /^sk_live_[0-9A-Za-z]{64}$/);
  const tok = newToken();
  t.match(tok, /^mets_[0-9A-Za-z]{64}$/);
  t.not(newToken(), tok);
  const keys = new Set(Array.from({ length: 1000 }, () => newSecretKey(false)));
  t.equal(keys.size, 1000);
});
