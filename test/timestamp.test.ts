/** v2 timestamps: RFC 3339 only, as Stripe takes them. */
import t from 'tap';
import { parseRfc3339 } from '../shared/wire/timestamp';

t.test('RFC 3339 timestamps, strictly', async (t) => {
  t.equal(parseRfc3339('2026-12-05T12:00:00Z'), Date.UTC(2026, 11, 5, 12));
  t.equal(parseRfc3339('2026-12-05t12:00:00z'), Date.UTC(2026, 11, 5, 12), 'lower-case t and z (RFC 3339 §5.6)');
  t.equal(parseRfc3339('2026-12-05T12:00:00.123456789+01:30'), Date.UTC(2026, 11, 5, 10, 30, 0, 123), 'fraction and offset');
  t.equal(parseRfc3339('2024-02-29T00:00:00Z'), Date.UTC(2024, 1, 29), 'leap day');
  for (const bad of [
    '2026-12-05T12:00:00\u0000Z',
    '2026-12-05T12:00:00Z\u0000',
    '2026-12-05T13:21',
    '2026-12-05T13:21:00',
    '2026-12-05',
    '2026-02-30T00:00:00Z',
    '2025-02-29T00:00:00Z',
    '2026-12-05T24:00:00Z',
    '2026-12-05T12:60:00Z',
    '2026-12-05T12:00:00+24:00',
    '2026-12-05 12:00:00Z',
    ' 2026-12-05T12:00:00Z',
    '2026-12-05T12:00:00.Z',
    '+002026-12-05T12:00:00Z',
  ]) {
    t.equal(parseRfc3339(bad), null, JSON.stringify(bad));
  }
});
