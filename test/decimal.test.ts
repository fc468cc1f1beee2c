import t from 'tap';
import {
  VALUE_SCALE,
  SCALE,
  parseMeterValue,
  significantDigits,
  fractionDigits,
  validateMeterValue,
  formatScaled,
  formatScaledForClickHouse,
  scaledToNumber,
  checkMeterValue,
  ScaledSum,
  putCheckedDecimal128,
} from '../shared/decimal';
import { readInt128 } from '../shared/analytics/row-binary';
import { putInt128 } from './helpers/raw-rows';
import fc from 'fast-check';

t.test('scale', async (t) => {
  t.equal(VALUE_SCALE, 15);
  t.equal(SCALE, 10n ** 15n);
});

t.test('parseMeterValue: valid values', async (t) => {
  const cases: [string, bigint][] = [
    ['0', 0n],
    ['-0', 0n],
    ['1', SCALE],
    ['25', 25n * SCALE],
    ['1023', 1023n * SCALE],
    ['1024', 1024n * SCALE],
    ['-3', -3n * SCALE],
    ['0.1', SCALE / 10n],
    ['0.5', SCALE / 2n],
    ['-2.5', -(5n * SCALE) / 2n],
    ['007', 7n * SCALE],
    ['0.000000000000001', 1n],
    ['-0.000000000000001', -1n],
    ['123456789012345', 123456789012345n * SCALE],
    ['12345678.9012345', 123456789012345n * 10n ** 8n],
    ['1.50', 15n * 10n ** 14n],
    // More than 15 significant digits still parse exactly (validateMeterValue rejects them).
    ['1234567890123456789', 1234567890123456789n * SCALE],
    ['-98765432109876543.21', -9876543210987654321n * 10n ** 13n],
  ];
  for (const [s, v] of cases) t.equal(parseMeterValue(s), v, s);
});

t.test('parseMeterValue: invalid strings', async (t) => {
  const bad = [
    '',
    ' ',
    '-',
    '+5',
    '.5',
    '5.',
    '1e3',
    '1E3',
    ' 5',
    '5 ',
    '1,5',
    '1.2.3',
    '--1',
    '-+1',
    'abc',
    '0x10',
    '1_000',
    'Infinity',
    'NaN',
    '١',
    '５',
    '1\n',
    '0.0000000000000001' /* 16 fractional digits: not representable */,
  ];
  for (const s of bad) t.equal(parseMeterValue(s), null, JSON.stringify(s));
});

t.test('0.1 ten times sums to exactly 1', async (t) => {
  let sum = 0n;
  for (let i = 0; i < 10; i++) sum += parseMeterValue('0.1')!;
  t.equal(sum, SCALE);
  t.equal(formatScaled(sum), '1');
  t.equal(scaledToNumber(sum), 1);
  let f = 0;
  for (let i = 0; i < 10; i++) f += 0.1;
  t.not(f, 1, 'whereas floating point drifts');
  // 0.1 + 0.2 = 0.3 exactly
  t.equal(formatScaled(parseMeterValue('0.1')! + parseMeterValue('0.2')!), '0.3');
  t.equal(scaledToNumber(parseMeterValue('0.1')! + parseMeterValue('0.2')!), 0.3);
});

t.test('negative values and sums', async (t) => {
  const vals = ['10', '-3', '-2.25', '0.25'];
  const sum = vals.reduce((a, s) => a + parseMeterValue(s)!, 0n);
  t.equal(formatScaled(sum), '5');
  t.equal(formatScaled(parseMeterValue('-3')! + parseMeterValue('1.5')!), '-1.5');
  t.equal(scaledToNumber(parseMeterValue('-0.3')!), -0.3);
});

t.test('significantDigits / fractionDigits', async (t) => {
  const cases: [string, number, number][] = [
    ['0', 0, 0],
    ['0.000', 0, 3],
    ['25', 2, 0],
    ['007', 1, 0],
    ['1000', 4, 0],
    ['-1.50', 3, 2],
    ['0.000123', 3, 6],
    ['123456789012345', 15, 0],
    ['1234567890123456', 16, 0],
    ['000000000000000000001', 1, 0],
  ];
  for (const [s, sig, frac] of cases) {
    t.equal(significantDigits(s), sig, `sig ${s}`);
    t.equal(fractionDigits(s), frac, `frac ${s}`);
  }
  t.equal(significantDigits('abc'), -1);
  t.equal(fractionDigits('1e3'), -1);
});

t.test('validateMeterValue: limits', async (t) => {
  const ok = [
    '123456789012345',
    '-123456789012345',
    '12345678.9012345',
    '0.000000000000001',
    '0.123456789012345',
    '00000000000000000000000001',
    '999999999999999',
  ];
  for (const s of ok) {
    const r = validateMeterValue(s);
    t.ok(r.ok, s);
    if (r.ok) t.equal(r.scaled, parseMeterValue(s), s);
  }
  t.same(validateMeterValue('1234567890123456'), {
    ok: false,
    code: 'meter_event_value_too_many_digits',
    message: 'The value in the event payload can have at most 15 digits. Received 1234567890123456.',
  });
  for (const s of ['-1234567890123456', '1.234567890123456', '1000000000000000', '1.000000000000000']) {
    const r = validateMeterValue(s);
    t.equal(r.ok, false, s);
    if (!r.ok) t.equal(r.code, 'meter_event_value_too_many_digits', s);
  }
  const frac = validateMeterValue('0.0000000000000001');
  t.equal(frac.ok, false);
  if (!frac.ok) {
    t.equal(frac.code, 'meter_event_value_too_many_digits');
    t.match(frac.message, /at most 15 digits after the decimal point/);
  }
});

t.test('validateMeterValue: invalid strings', async (t) => {
  for (const s of ['', 'abc', '1e3', '+5', '.5', '5.', ' 5', '5 ', 'Infinity']) {
    const r = validateMeterValue(s);
    t.equal(r.ok, false, JSON.stringify(s));
    if (!r.ok) {
      t.equal(r.code, 'meter_event_invalid_value', JSON.stringify(s));
      t.ok(r.message.includes(`Received ${s}.`), JSON.stringify(s));
    }
  }
});

t.test('formatScaled / scaledToNumber', async (t) => {
  const cases: [bigint, string][] = [
    [0n, '0'],
    [SCALE, '1'],
    [SCALE / 10n, '0.1'],
    [-(5n * SCALE) / 2n, '-2.5'],
    [1n, '0.000000000000001'],
    [-1n, '-0.000000000000001'],
    [123456789012345n * SCALE, '123456789012345'],
    [10n ** 30n, '1000000000000000'],
    [10n ** 38n - 1n, '99999999999999999999999.999999999999999'],
  ];
  for (const [v, s] of cases) {
    t.equal(formatScaled(v), s, s);
    t.equal(formatScaledForClickHouse(v), s, s);
  }
  for (const s of ['0', '1', '25', '-3', '0.3', '2.675', '123456789012345', '0.000000000000001', '9007199254740993']) {
    t.equal(scaledToNumber(parseMeterValue(s)!), Number(s), s);
  }
  // Round trip: canonical string of a parsed value.
  for (const [s, c] of [
    ['1.50', '1.5'],
    ['007', '7'],
    ['-0', '0'],
    ['-0.10', '-0.1'],
    ['100', '100'],
  ]) {
    t.equal(formatScaled(parseMeterValue(s)!), c, s);
  }
});

/** A decimal string as clients write them: optional '-', up to 15 significant digits, up to 15 after the point. */
const meterValue = fc
  .tuple(fc.boolean(), fc.bigInt({ min: 0n, max: 10n ** 15n - 1n }), fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 3 }))
  .map(([neg, digits, frac, zeros]) => {
    let text = digits.toString().padStart(frac + 1, '0');
    if (frac > 0) text = `${text.slice(0, text.length - frac)}.${text.slice(text.length - frac)}`;
    return `${neg ? '-' : ''}${'0'.repeat(zeros)}${text}`;
  });

t.test('checkMeterValue accepts and refuses exactly as validateMeterValue', async (t) => {
  const odd = ['', '-', '+5', '.5', '5.', '1e3', ' 5', 'abc', '1234567890123456', '0.0000000000000001', '-0', '007', '999999999999999'];
  for (const s of odd) {
    const v = validateMeterValue(s);
    t.equal(checkMeterValue(s), v.ok ? null : v.code, JSON.stringify(s));
  }
  fc.assert(
    fc.property(fc.oneof(meterValue, fc.string()), (s) => {
      const v = validateMeterValue(s);
      return checkMeterValue(s) === (v.ok ? null : v.code);
    }),
    { numRuns: 5000 },
  );
});

t.test('ScaledSum equals the sum of the scaled bigints, spilling past 2^52 units', async (t) => {
  const sumOf = (values: string[]) => {
    const sum = new ScaledSum();
    for (const s of values) {
      if (checkMeterValue(s) === null) sum.addChecked();
    }
    return sum.scaled();
  };
  const exact = (values: string[]) => values.reduce((a, s) => a + (validateMeterValue(s).ok ? parseMeterValue(s)! : 0n), 0n);
  fc.assert(
    fc.property(fc.array(meterValue, { maxLength: 200 }), (values) => sumOf(values) === exact(values)),
    { numRuns: 2000 },
  );
  const big = '999999999999999';
  const many = Array.from({ length: 40 }, () => big);
  t.equal(sumOf(many), 40n * 999999999999999n * SCALE, '40 × (10^15 − 1): past 2^53 whole units, still exact');
  t.equal(sumOf([...many, ...many.map((v) => `-${v}`)]), 0n, 'and back to zero');
  t.equal(sumOf(['0.1', '0.2', '-0.3']), 0n, '0.1 + 0.2 − 0.3 is 0');
  t.equal(sumOf(['0.999999999999999', '0.000000000000001']), SCALE, 'the fraction carries into a unit');
  t.equal(sumOf(['-0.000000000000001']), -1n, 'a negative fraction borrows from the units');
});

t.test('putCheckedDecimal128 writes the Decimal128 bytes of the checked value, without a bigint', async (t) => {
  const cases = [
    '0',
    '-0',
    '1',
    '-1',
    '0.1',
    '-3.5',
    '25',
    '999999999999999',
    '-999999999999999',
    '0.000000000000001',
    '-0.000000000000001',
    '99999999.9999999',
    '123456789012345',
    '1.00000000000000',
    '16777216',
    '281474976710656',
    '0.999999999999999',
  ];
  /** Whether the bytes written for `s` are its scaled bigint's, and read back as it. */
  const writesExactly = (s: string): boolean => {
    if (checkMeterValue(s) !== null) return true;
    const got = Buffer.alloc(20, 0xee);
    const end = putCheckedDecimal128(got, 2);
    const want = Buffer.alloc(20, 0xee);
    putInt128(want, 2, parseMeterValue(s)!);
    return end === 18 && got.equals(want) && readInt128(got, 2) === parseMeterValue(s);
  };
  t.same(
    cases.filter((s) => !writesExactly(s)),
    [],
    `${cases.length} edge values, written and read back`,
  );
  // Random values of every shape the check accepts: up to 15 significant digits, up to 15 after the point.
  fc.assert(fc.property(meterValue, writesExactly), { numRuns: 5000 });
});
