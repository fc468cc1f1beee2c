/**
 * Unit tests of the search query language: parsing, validation against a resource's fields, and evaluation.
 */
import t, { type Test } from 'tap';
import { compileSearch, parseSearchQuery, validateSearchQuery, type SearchFields } from '../shared/search';
import { InvalidRequestError } from '../shared/errors';

interface Doc {
  id: string;
  email: string | null;
  name: string | null;
  created: number;
  amount: number | null;
  active: boolean;
  currency: string;
  metadata: Record<string, string>;
}

const FIELDS: SearchFields<Doc> = {
  email: { kind: 'string', get: (d) => d.email },
  name: { kind: 'string', get: (d) => d.name },
  created: { kind: 'number', get: (d) => d.created },
  amount: { kind: 'number', get: (d) => d.amount },
  active: { kind: 'boolean', get: (d) => d.active },
  currency: { kind: 'token', get: (d) => d.currency },
  metadata: { kind: 'metadata', get: (d) => d.metadata },
};

const DOCS: Doc[] = [
  {
    id: 'a',
    email: 'jenny@example.com',
    name: 'Jenny Rosen',
    created: 100,
    amount: 500,
    active: true,
    currency: 'usd',
    metadata: { order_id: '6735', tier: 'gold' },
  },
  { id: 'b', email: 'bob@example.org', name: "Bob O'Brien", created: 200, amount: 1500, active: false, currency: 'eur', metadata: { tier: 'silver' } },
  { id: 'c', email: null, name: 'Amazing "Co"', created: 300, amount: null, active: true, currency: 'usd', metadata: {} },
];

function ids(q: string): string[] {
  const f = compileSearch(q, FIELDS, 'things');
  return DOCS.filter(f).map((d) => d.id);
}

function expectQueryError(tt: Test, q: string, pattern: RegExp): void {
  try {
    const parsed = parseSearchQuery(q);
    validateSearchQuery(parsed, FIELDS, 'things');
    tt.fail(`expected an error for ${q}`);
  } catch (err) {
    tt.ok(err instanceof InvalidRequestError, `${q}: InvalidRequestError`);
    const e = err as InvalidRequestError;
    tt.equal(e.param, 'query', `${q}: param is query`);
    tt.equal(e.status, 400);
    tt.match(e.message, pattern, `${q}: message ${e.message}`);
  }
}

t.test('parses clauses into an AST', async (t) => {
  t.same(parseSearchQuery(`email:"jenny@example.com"`), {
    combinator: 'AND',
    clauses: [{ field: 'email', metadataKey: undefined, op: ':', value: 'jenny@example.com', quoted: true, negated: false }],
  });
  const q = parseSearchQuery(`-metadata['order_id']:'6735' OR created>=1626998400 OR name~"amaz"`);
  t.equal(q.combinator, 'OR');
  t.same(
    q.clauses.map((c) => [c.field, c.metadataKey, c.op, c.value, c.quoted, c.negated]),
    [
      ['metadata', 'order_id', ':', '6735', true, true],
      ['created', undefined, '>=', '1626998400', false, false],
      ['name', undefined, '~', 'amaz', true, false],
    ],
  );
  t.same(parseSearchQuery('email:null').clauses[0].value, null, 'bare null is the null literal');
  t.same(parseSearchQuery('email:"null"').clauses[0].value, 'null', 'quoted null is a string');
  t.same(parseSearchQuery(`name:"Amazing \\"Co\\""`).clauses[0].value, 'Amazing "Co"', 'backslash escapes the quote');
  t.same(parseSearchQuery(`name:'Bob O\\'Brien'`).clauses[0].value, "Bob O'Brien");
  t.same(
    parseSearchQuery('amount<=10   AND   amount>2').clauses.map((c) => c.op),
    ['<=', '>'],
  );
});

t.test('evaluates exact, substring, numeric, boolean, metadata, null and negation', async (t) => {
  t.same(ids(`email:"jenny@example.com"`), ['a'], 'exact match');
  t.same(ids(`email:"JENNY@example.com"`), ['a'], 'exact match is case-insensitive');
  t.same(ids(`email:"jenny"`), [], 'exact match is not a prefix match');
  t.same(ids(`name~"ros"`), ['a'], 'substring');
  t.same(ids(`name~"AMAZ"`), ['c'], 'substring is case-insensitive');
  t.same(ids('created>100'), ['b', 'c']);
  t.same(ids('created>=200'), ['b', 'c']);
  t.same(ids('created<200'), ['a']);
  t.same(ids('created<=200'), ['a', 'b']);
  t.same(ids('created:200'), ['b'], ': on a number is equality');
  t.same(ids('created="300"'), ['c'], 'quoted numbers are allowed');
  t.same(ids('amount>400 AND amount<1000'), ['a']);
  t.same(ids("active:'true'"), ['a', 'c']);
  t.same(ids('active:false'), ['b']);
  t.same(ids(`currency:"usd"`), ['a', 'c']);
  t.same(ids(`metadata['order_id']:'6735'`), ['a']);
  t.same(ids(`metadata["tier"]:"SILVER"`), ['b']);
  t.same(ids(`metadata['tier']:null`), ['c'], 'metadata key absent');
  t.same(ids(`-metadata['tier']:null`), ['a', 'b'], 'metadata key present');
  t.same(ids('email:null'), ['c']);
  t.same(ids('-email:null'), ['a', 'b']);
  t.same(ids('amount:null'), ['c'], 'null numeric field');
  t.same(ids('amount<10000'), ['a', 'b'], 'a null number never compares');
  t.same(ids(`-currency:"usd"`), ['b']);
  t.same(ids(`currency:"eur" OR metadata['order_id']:'6735'`), ['a', 'b'], 'OR');
  t.same(ids(`currency:"usd" AND active:true AND -email:null`), ['a'], 'AND of three');
});

t.test('syntax and validation errors name the query param', async (t) => {
  expectQueryError(t, '', /empty/);
  expectQueryError(t, '   ', /empty/);
  expectQueryError(t, `email:"unterminated`, /unterminated/);
  expectQueryError(t, `email "x"`, /operator/);
  expectQueryError(t, `email:`, /value/);
  expectQueryError(t, `email:"a" currency:"usd"`, /AND or OR/);
  expectQueryError(t, `email:"a" AND currency:"usd" OR active:true`, /cannot be combined/);
  expectQueryError(t, `color:"red"`, /unsupported search field.*things/);
  expectQueryError(t, `email:jenny`, /must be quoted/);
  expectQueryError(t, `name~"ab"`, /at least 3/);
  expectQueryError(t, `currency~"usd"`, /not supported/);
  expectQueryError(t, `created~"100"`, /not supported on numeric/);
  expectQueryError(t, `created>"abc"`, /not a number/);
  expectQueryError(t, `email>"a"`, /not supported/);
  expectQueryError(t, `active:yes`, /boolean/);
  expectQueryError(t, `metadata:"x"`, /needs a key/);
  expectQueryError(t, `metadata[order]:'1'`, /must be quoted/);
  expectQueryError(t, `name['x']:'1'`, /only metadata/);
  expectQueryError(t, `created>null`, /null can only be used/);
  const eleven = Array.from({ length: 11 }, (_, i) => `created>${i}`).join(' AND ');
  expectQueryError(t, eleven, /at most 10 clauses/);
  t.same(ids(Array.from({ length: 10 }, (_, i) => `created>${i}`).join(' AND ')), ['a', 'b', 'c'], '10 clauses are fine');
});
