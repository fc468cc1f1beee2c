import t from 'tap';
import { parseForm, parseQuery, parseJsonBody, ParamReader, MAX_PARAMS } from '../shared/wire/form';
import { InvalidParamError, InvalidRequestError, MissingParamError, UnknownParamError } from '../shared/errors';

/** A t.throws pattern: the error's class and the properties it must have (tap's ErrorMatch type wants a message). */
const E = (ctor: abstract new (...args: never[]) => Error, props: Record<string, unknown> = {}) => ({ constructor: ctor, ...props }) as unknown as Error;

/** Plain-JSON view of a parse result (the objects have no prototype, so compare through JSON). */
const j = (v: unknown) => JSON.parse(JSON.stringify(v));

t.test('flat and nested (stripe-node meters.create body)', async (t) => {
  const body =
    'display_name=Probe%20requests&event_name=probe_api_requests&default_aggregation[formula]=sum&customer_mapping[type]=by_id&customer_mapping[event_payload_key]=stripe_customer_id&value_settings[event_payload_key]=value';
  t.same(j(parseForm(body)), {
    display_name: 'Probe requests',
    event_name: 'probe_api_requests',
    default_aggregation: { formula: 'sum' },
    customer_mapping: { type: 'by_id', event_payload_key: 'stripe_customer_id' },
    value_settings: { event_payload_key: 'value' },
  });
  t.same(j(parseForm(Buffer.from('a[b][c]=v'))), { a: { b: { c: 'v' } } }, 'Buffer body, deep nesting');
  t.same(j(parseForm('')), {}, 'empty body');
});

t.test("stripe-node escapes: %20, & = + ' ( ) percent-encoded, literal brackets", async (t) => {
  const p = parseForm('payload[weird%20key]=a%26b%3Dc%2Bd%27%28x%29&payload[value]=25');
  t.same(j(p), { payload: { 'weird key': "a&b=c+d'(x)", value: '25' } });
});

t.test('python: + is a space, %5B0%5D-encoded brackets in GET queries', async (t) => {
  t.same(j(parseForm('display_name=Probe+requests&payload[a+b]=x+y')), {
    display_name: 'Probe requests',
    payload: { 'a b': 'x y' },
  });
  t.same(j(parseQuery('expand%5B0%5D=data.x&expand%5B1%5D=data.y&status=active&limit=3')), {
    expand: ['data.x', 'data.y'],
    status: 'active',
    limit: '3',
  });
  t.same(j(parseQuery('?expand%5B%5D=a')), { expand: ['a'] }, 'leading ? and %5B%5D');
  t.same(j(parseQuery('a%5bb%5d=1')), { a: { b: '1' } }, 'lower-case escapes');
});

t.test('arrays: expand[] and expand[0] forms', async (t) => {
  t.same(j(parseForm('expand[]=x&expand[]=y')), { expand: ['x', 'y'] });
  t.same(j(parseForm('expand[0]=x&expand[1]=y')), { expand: ['x', 'y'] });
  t.same(j(parseForm('expand[1]=y&expand[0]=x')), { expand: ['x', 'y'] }, 'index order, not arrival order');
  t.same(j(parseForm('expand[10]=b&expand[2]=a')), { expand: ['a', 'b'] }, 'gaps are closed up');
  t.same(j(parseForm('a[b][0]=x')), { a: { b: ['x'] } });
  t.same(j(parseForm('a[01]=x')), { a: { '01': 'x' } }, 'non-canonical index stays a hash key');
  t.same(j(parseForm('a[0]=x&a[k]=y')), { a: { '0': 'x', k: 'y' } }, 'mixed keys stay a hash');
  t.ok(Array.isArray(parseForm('expand[]=x').expand));
  const top = parseForm('0=a&1=b');
  t.notOk(Array.isArray(top), 'the top level stays a hash');
  t.same(j(top), { 0: 'a', 1: 'b' });
});

t.test('arrays of objects', async (t) => {
  t.same(j(parseForm('items[0][price]=p&items[0][quantity]=2&items[1][price]=q')), {
    items: [{ price: 'p', quantity: '2' }, { price: 'q' }],
  });
  t.same(
    j(parseForm('items[][price]=p&items[][quantity]=2&items[][price]=q')),
    {
      items: [{ price: 'p', quantity: '2' }, { price: 'q' }],
    },
    "Rack's rule for a[][k]",
  );
});

t.test('empty values, missing =, empty pairs and keys, repeated keys', async (t) => {
  t.same(j(parseForm('a=&b&&=x&c=1')), { a: '', b: '', c: '1' });
  t.same(j(parseForm('a=1&a=2')), { a: '2' }, 'last wins');
  t.same(j(parseForm('a=x=y')), { a: 'x=y' }, 'split on the first =');
});

t.test('malformed bracket keys are kept literally', async (t) => {
  t.same(j(parseForm('a[b=1&a]=2&[c]=3&d[e]f=4')), { 'a[b': '1', 'a]': '2', '[c]': '3', 'd[e]f': '4' });
});

t.test('malformed percent-escapes are InvalidRequestError, never a crash', async (t) => {
  for (const body of ['a=%', 'a=%zz', 'a=%E2%82', 'a=%FF', 'a%=1', '%=1', 'payload[%G0]=1', 'a=100%']) {
    t.throws(() => parseForm(body), InvalidRequestError, body);
    let err: unknown;
    try {
      parseForm(body);
    } catch (e) {
      err = e;
    }
    t.equal((err as InvalidRequestError).status, 400, body);
    t.match((err as Error).message, /percent-encoding/, body);
  }
  t.throws(() => parseQuery('a=%'), InvalidRequestError);
});

t.test('conflicts, limits', async (t) => {
  t.throws(() => parseForm('a=1&a[b]=2'), E(InvalidRequestError, { param: 'a' }));
  t.throws(() => parseForm('a[b]=2&a=1'), E(InvalidRequestError, { param: 'a' }));
  t.throws(() => parseForm('a[]=1&a[0]=2'), E(InvalidRequestError, { param: 'a' }));
  t.throws(() => parseForm('a[b][c]=1&a[b]=2'), E(InvalidRequestError, { param: 'a[b]' }));

  t.same(j(parseForm('a[b][c][d][e][f][g][h][i]=x')), { a: { b: { c: { d: { e: { f: { g: { h: { i: 'x' } } } } } } } } }, 'depth 8 ok');
  t.same(j(parseForm('a[1][2]=x')), { a: [['x']] }, 'all-integer objects become arrays at every level');
  t.throws(() => parseForm('a[b][c][d][e][f][g][h][i][j]=x'), InvalidRequestError, 'depth 9');

  const many = Array.from({ length: MAX_PARAMS }, (_, i) => `k${i}=v`).join('&');
  t.equal(Object.keys(parseForm(many)).length, MAX_PARAMS);
  t.throws(() => parseForm(many + '&one=more'), /Too many parameters/);

  t.same(j(parseForm('a[1000]=x')), { a: ['x'] });
  t.throws(() => parseForm('a[1001]=x'), E(InvalidRequestError, { param: 'a[1001]' }));
  t.throws(() => parseForm('a[99999999999999999999]=x'), InvalidRequestError, 'huge index');
  t.same(j(parseForm('payload[5000]=x&payload[value]=1')), { payload: { 5000: 'x', value: '1' } }, 'only arrays are limited');
});

t.test('prototype pollution attempts', async (t) => {
  const attempts = [
    '__proto__[polluted]=1',
    '__proto__.polluted=1',
    'a[__proto__][polluted]=1',
    '%5F%5Fproto%5F%5F[polluted]=1',
    '__proto__%5Bpolluted%5D=1',
    'constructor[prototype][polluted]=1',
    'a[constructor][prototype][polluted]=1',
    'a[]=1&a[__proto__]=2',
    'expand[__proto__][polluted]=1',
  ];
  for (const body of attempts) {
    let p: Record<string, unknown> = {};
    t.doesNotThrow(() => (p = parseForm(body)), body);
    t.equal(({} as Record<string, unknown>).polluted, undefined, body);
    t.equal((Object.prototype as Record<string, unknown>).polluted, undefined, body);
    t.equal(Object.keys(p).includes('__proto__'), false, body);
  }
  const p = parseForm('constructor=x&toString[a]=b&payload[hasOwnProperty]=1');
  t.same(j(p), { constructor: 'x', toString: { a: 'b' }, payload: { hasOwnProperty: '1' } }, 'ordinary keys');
  const q = parseForm('a=1');
  t.equal((q as Record<string, unknown>).toString, undefined, 'no inherited members');
  t.equal((q as Record<string, unknown>).constructor, undefined, 'no inherited constructor');
  t.notOk('hasOwnProperty' in q);
});

t.test('parseJsonBody', async (t) => {
  t.same(parseJsonBody('{"event_name":"x","payload":{"value":"7"}}'), { event_name: 'x', payload: { value: '7' } });
  t.same(parseJsonBody(Buffer.from('{}')), {});
  t.same(parseJsonBody(''), {}, 'empty body is {}');
  for (const bad of ['{', '{"a":}', 'nope', '{"a":1}x']) {
    t.throws(() => parseJsonBody(bad), { constructor: InvalidRequestError, message: /Invalid JSON body/ }, bad);
  }
  for (const notObj of ['[]', 'null', '1', '"s"', 'true']) {
    t.throws(() => parseJsonBody(notObj), { constructor: InvalidRequestError, message: /top level must be a JSON object/ }, notObj);
  }
  const p = parseJsonBody('{"__proto__":{"polluted":1}}');
  t.equal(({} as Record<string, unknown>).polluted, undefined);
  t.throws(() => new ParamReader(p).assertNoUnknown(['event_name']), E(UnknownParamError, { param: '__proto__' }));
});

t.test('ParamReader.string', async (t) => {
  const r = new ParamReader(parseForm('name=abc&empty=&formula=max&long=' + 'x'.repeat(101) + '&obj[a]=1'));
  t.equal(r.string('name'), 'abc');
  t.equal(r.string('absent'), undefined);
  t.throws(() => r.string('absent', { required: true }), {
    constructor: MissingParamError,
    param: 'absent',
    message: 'Missing required param: absent.',
    code: 'parameter_missing',
  });
  t.throws(() => r.string('empty'), {
    constructor: InvalidParamError,
    param: 'empty',
    code: 'parameter_invalid_empty',
    message: /You passed an empty string for 'empty'/,
  });
  t.equal(r.string('empty', { allowEmpty: true }), '');
  t.equal(r.string('empty', { allowEmpty: true, enum: ['day', 'hour'], maxLength: 3 }), '', "'' skips enum and length checks");
  t.ok(r.isUnset('empty'));
  t.notOk(r.isUnset('name'));
  t.throws(() => r.string('formula', { enum: ['count', 'last', 'sum'] }), {
    constructor: InvalidParamError,
    param: 'formula',
    message: 'Invalid formula: must be one of count, last, or sum',
  });
  t.throws(() => r.string('long', { maxLength: 100 }), {
    constructor: InvalidParamError,
    param: 'long',
    message: 'Invalid string: xxxxxxxxxxxxxxxxxxxx...; must be at most 100 characters',
  });
  t.equal(r.string('long', { maxLength: 101 })!.length, 101);
  t.throws(() => r.string('obj'), { constructor: InvalidParamError, param: 'obj', message: /^Invalid string: / });
});

t.test('ParamReader.integer / boolean', async (t) => {
  const r = new ParamReader(parseForm('limit=10&neg=-5&bad=abc&dec=1.5&big=99999999999999999999&zero=0&t=true&f=false&b=yes&e='));
  t.equal(r.integer('limit'), 10);
  t.equal(r.integer('neg'), -5);
  t.equal(r.integer('absent'), undefined);
  t.equal(r.integer('e'), undefined, "'' is absent");
  t.throws(() => r.integer('e', { required: true }), MissingParamError);
  t.throws(() => r.integer('bad'), { constructor: InvalidParamError, param: 'bad', message: 'Invalid integer: abc' });
  t.throws(() => r.integer('dec'), { constructor: InvalidParamError, message: 'Invalid integer: 1.5' });
  t.throws(() => r.integer('big'), E(InvalidParamError, { param: 'big' }));
  t.throws(() => r.integer('zero', { min: 1, max: 100 }), {
    constructor: InvalidParamError,
    param: 'zero',
    message: 'This value must be greater than or equal to 1.',
  });
  t.throws(() => r.integer('limit', { max: 5 }), { constructor: InvalidParamError, param: 'limit', message: 'This value must be less than or equal to 5.' });
  const js = new ParamReader(parseJsonBody('{"n":7,"f":1.5,"s":"8","x":null,"b":true}'));
  t.equal(js.integer('n'), 7, 'JSON number');
  t.equal(js.integer('s'), 8, 'JSON string');
  t.equal(js.integer('x'), undefined, 'JSON null is absent');
  t.throws(() => js.integer('f'), { constructor: InvalidParamError, message: 'Invalid integer: 1.5' });
  t.throws(() => js.integer('b'), InvalidParamError);

  t.equal(r.boolean('t'), true);
  t.equal(r.boolean('f'), false);
  t.equal(r.boolean('absent'), undefined);
  t.throws(() => r.boolean('b'), { constructor: InvalidParamError, param: 'b', message: 'Invalid boolean: yes' });
  t.equal(js.boolean('b'), true, 'JSON boolean');
});

t.test('ParamReader.object: nested param names', async (t) => {
  const r = new ParamReader(parseForm('default_aggregation[formula]=max&default_aggregation[extra]=1&customer_mapping[type]=by_id&flat=x'));
  const agg = r.object('default_aggregation', { required: true });
  t.equal(agg.prefix, 'default_aggregation');
  t.throws(() => agg.string('formula', { enum: ['count', 'last', 'sum'] }), {
    constructor: InvalidParamError,
    param: 'default_aggregation[formula]',
    message: 'Invalid default_aggregation[formula]: must be one of count, last, or sum',
  });
  t.throws(() => agg.assertNoUnknown(['formula']), {
    constructor: UnknownParamError,
    param: 'default_aggregation[extra]',
    message: 'Received unknown parameter: default_aggregation[extra]',
    code: 'parameter_unknown',
  });
  const cm = r.object('customer_mapping')!;
  t.throws(
    () => cm.string('event_payload_key', { required: true }),
    E(MissingParamError, { param: 'customer_mapping[event_payload_key]', message: 'Missing required param: customer_mapping[event_payload_key].' }),
  );
  t.equal(r.object('absent'), undefined);
  t.throws(() => r.object('absent', { required: true }), E(MissingParamError, { param: 'absent' }));
  t.throws(() => r.object('flat'), E(InvalidParamError, { param: 'flat' }));
  const deep = new ParamReader(parseForm('a[b][c]=x')).object('a')!.object('b')!;
  t.throws(() => deep.integer('c'), E(InvalidParamError, { param: 'a[b][c]' }));
});

t.test('ParamReader.stringMap', async (t) => {
  const r = new ParamReader(
    parseForm('payload[stripe_customer_id]=cus_1&payload[value]=25&payload[constructor]=c&long[k]=' + 'y'.repeat(101) + '&nested[a][b]=1&num[0]=a&num[1]=b'),
  );
  const m = r.stringMap('payload', { required: true, maxValueLength: 100 });
  t.same(j(m), { stripe_customer_id: 'cus_1', value: '25', constructor: 'c' });
  t.equal((m as Record<string, unknown>).toString, undefined, 'no inherited members');
  t.notOk('hasOwnProperty' in m);
  t.throws(() => r.stringMap('long', { maxValueLength: 100 }), {
    constructor: InvalidParamError,
    param: 'long[k]',
    message: /^Invalid string: y{20}\.\.\.; must be at most 100 characters$/,
  });
  t.throws(() => r.stringMap('nested'), E(InvalidParamError, { param: 'nested[a]' }));
  t.same(j(r.stringMap('num')), { 0: 'a', 1: 'b' }, 'an integer-keyed map turned array comes back as a map');
  t.throws(() => r.stringMap('absent', { required: true }), E(MissingParamError, { param: 'absent' }));
  const js = new ParamReader(parseJsonBody('{"payload":{"value":25}}'));
  t.throws(() => js.stringMap('payload'), { constructor: InvalidParamError, param: 'payload[value]', message: 'Invalid string: 25' });
});

t.test('ParamReader.stringArray / objectArray', async (t) => {
  t.same(new ParamReader(parseForm('expand[]=a&expand[]=b')).stringArray('expand'), ['a', 'b']);
  t.same(new ParamReader(parseForm('expand[0]=a&expand[1]=b')).stringArray('expand'), ['a', 'b']);
  t.same(new ParamReader(parseForm('expand=a')).stringArray('expand'), ['a'], 'single string');
  t.equal(new ParamReader(parseForm('')).stringArray('expand'), undefined);
  t.throws(() => new ParamReader(parseForm('expand[a]=b')).stringArray('expand'), E(InvalidParamError, { param: 'expand' }));
  t.throws(() => new ParamReader(parseForm('expand[0][a]=b')).stringArray('expand'), E(InvalidParamError, { param: 'expand[0]' }));
  t.throws(() => new ParamReader(parseForm('expand[]=a&expand[]=b')).stringArray('expand', { maxItems: 1 }), E(InvalidParamError, { param: 'expand' }));

  const ev = new ParamReader(parseJsonBody('{"events":[{"event_name":"a"},{"event_name":5}]}')).objectArray('events', { required: true, maxItems: 100 });
  t.equal(ev.length, 2);
  t.equal(ev[0].string('event_name'), 'a');
  t.throws(() => ev[1].string('event_name'), E(InvalidParamError, { param: 'events[1][event_name]' }));
  t.throws(() => new ParamReader(parseJsonBody('{"events":[1]}')).objectArray('events'), E(InvalidParamError, { param: 'events[0]' }));
});

t.test('ParamReader.assertNoUnknown', async (t) => {
  const r = new ParamReader(parseForm('display_name=x&expand[]=a&bogus=1&other=2'));
  t.throws(() => r.assertNoUnknown(['display_name', 'expand']), {
    constructor: UnknownParamError,
    param: 'bogus',
    message: 'Received unknown parameter: bogus',
    status: 400,
    type: 'invalid_request_error',
  });
  t.doesNotThrow(() => r.assertNoUnknown(['display_name', 'expand', 'bogus', 'other']));
  t.throws(() => new ParamReader(parseForm('a[b=1')).assertNoUnknown(['a']), E(UnknownParamError, { param: 'a[b' }), 'malformed key is unknown');
});
