import t from 'tap';
import { ParamReader } from '../shared/wire/form';
import { InvalidParamError, MissingParamError, UnknownParamError } from '../shared/errors';
import { P, pickParams, readParams, whereOf } from '../api/billing/resource';

/** A t.throws pattern: the error's class and the properties it must have. */
const E = (ctor: abstract new (...args: never[]) => Error, props: Record<string, unknown> = {}) => ({ constructor: ctor, ...props }) as unknown as Error;

const SCHEMA = {
  name: P.string({ required: true, maxLength: 5 }),
  count: P.integer({ min: 1 }),
  active: P.boolean(),
  note: P.nullableString(10),
  tags: P.clearableStringArray({ maxItems: 2 }),
  metadata: P.metadata(),
  created: P.created(),
};

t.test('declared params are read with their readers; absent ones are undefined', async (t) => {
  const v = readParams(new ParamReader({ name: 'ab', count: '3', active: 'true', note: '', tags: ['x'], created: { gte: '10' } }), SCHEMA);
  t.equal(v.name, 'ab');
  t.equal(v.count, 3);
  t.equal(v.active, true);
  t.equal(v.note, null, "'' unsets a nullable string");
  t.same(v.tags, ['x']);
  t.equal(v.metadata, undefined);
  t.same(v.created, { createdGteMs: 10_000, createdLtMs: undefined });
  t.equal(Object.getPrototypeOf(v), null, 'values never see inherited members');
});

t.test('unknown params, type errors and missing required params are Stripe errors', async (t) => {
  t.throws(() => readParams(new ParamReader({ name: 'ab', colour: 'red' }), SCHEMA), E(UnknownParamError, { param: 'colour' }));
  t.throws(() => readParams(new ParamReader({ name: 'ab', count: 'x' }), SCHEMA), E(InvalidParamError, { param: 'count' }));
  t.throws(() => readParams(new ParamReader({ name: 'abcdefg' }), SCHEMA), E(InvalidParamError, { param: 'name' }));
  t.throws(() => readParams(new ParamReader({}), SCHEMA), E(MissingParamError, { param: 'name' }));
  t.throws(() => readParams(new ParamReader({ name: 'ab', tags: ['a', 'b', 'c'] }), SCHEMA), E(InvalidParamError, { param: 'tags' }));
  t.doesNotThrow(() => readParams(new ParamReader({ name: 'ab', expand: ['x'] }), SCHEMA), 'expand is always allowed');
  t.throws(() => readParams(new ParamReader({ name: 'ab', expand: ['x'] }), SCHEMA, []), E(UnknownParamError, { param: 'expand' }), 'unless told');
});

t.test('metadata applies to the current metadata: merge, remove a key, remove all', async (t) => {
  const merge = readParams(new ParamReader({ name: 'a', metadata: { b: '2', a: '' } }), SCHEMA).metadata!;
  t.same(merge({ a: '1', c: '3' }), { c: '3', b: '2' });
  const clear = readParams(new ParamReader({ name: 'a', metadata: '' }), SCHEMA).metadata!;
  t.same(clear({ a: '1' }), {});
  t.throws(() => readParams(new ParamReader({ name: 'a', metadata: { ['k'.repeat(41)]: 'v' } }), SCHEMA), E(InvalidParamError));
});

t.test('a nested reader names the full parameter; pickParams takes part of a schema', async (t) => {
  const nested = new ParamReader({ product_data: { name: 'ab', colour: 'red' } }).object('product_data')!;
  t.throws(() => readParams(nested, pickParams(SCHEMA, ['name']), []), E(UnknownParamError, { param: 'product_data[colour]' }));
  const only = pickParams(SCHEMA, ['name', 'active', 'nope']);
  t.same(Object.keys(only), ['name', 'active']);
});

t.test('whereOf keeps the set scalar values of the names given', async (t) => {
  t.same(whereOf({ a: 'x', b: undefined, c: false, d: 2, e: ['no'] }, ['a', 'b', 'c', 'd', 'e']), { a: 'x', c: false, d: 2 });
});
