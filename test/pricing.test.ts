/** Unit tests of api/billing/pricing.ts: exact amounts, one half-up rounding per line. */
import t from 'tap';
import { priceAmount, parseQuantity, truncatedQuantity, type PricingInput, type PricingTier } from '../api/billing/pricing';

const perUnit = (unit: string, transform: PricingInput['transform_quantity'] = null): PricingInput => ({
  billing_scheme: 'per_unit',
  unit_amount_decimal: unit,
  tiers_mode: null,
  transform_quantity: transform,
});
const tiered = (mode: 'graduated' | 'volume', tiers: Array<[number | null, string | null, string | null]>): PricingInput => ({
  billing_scheme: 'tiered',
  unit_amount_decimal: null,
  tiers_mode: mode,
  transform_quantity: null,
  tiers: tiers.map(([up_to, unit, flat]): PricingTier => ({ up_to, unit_amount_decimal: unit, flat_amount_decimal: flat })),
});
const amt = (p: PricingInput, q: string | number) => priceAmount(p, parseQuantity(q)).amount;

t.test('per unit', async (t) => {
  t.equal(amt(perUnit('2000'), 1), 2000);
  t.equal(amt(perUnit('2000'), 3), 6000);
  t.equal(amt(perUnit('25'), 0), 0);
  t.equal(amt(perUnit('25'), -4), 0, 'negative usage bills as 0');
  t.equal(amt(perUnit('0.5'), 3), 2, '1.5 cents rounds half up to 2');
  t.equal(amt(perUnit('0.5'), 5), 3, '2.5 -> 3');
  t.equal(amt(perUnit('0.5'), 4), 2, 'exact 2');
  t.equal(amt(perUnit('0.4'), 3), 1, '1.2 -> 1');
  t.equal(priceAmount(perUnit('0.5'), parseQuantity(3)).exact, '1.5');
  // Decimal quantities: ten times 0.1 units is exactly 1 unit, no float drift.
  let q = 0n;
  for (let i = 0; i < 10; i++) q += parseQuantity('0.1');
  t.equal(priceAmount(perUnit('0.3'), q).exact, '0.3');
  t.equal(priceAmount(perUnit('100'), parseQuantity('0.015')).amount, 2, '1.5 -> 2');
  t.equal(priceAmount(perUnit('100'), parseQuantity('0.0149999')).amount, 1, '1.49999 -> 1');
  t.equal(priceAmount(perUnit('0.000000000001'), parseQuantity('1000000000000')).amount, 1, '12-place unit amounts are exact');
  t.equal(priceAmount(perUnit('33.333333333333'), parseQuantity(3)).exact, '99.999999999999');
  t.equal(priceAmount(perUnit('33.333333333333'), parseQuantity(3)).amount, 100);
  t.equal(truncatedQuantity(parseQuantity('7.9')), 7, 'quantity is truncated');
  t.equal(truncatedQuantity(parseQuantity('-7.9')), -7);
});

t.test('transform_quantity', async (t) => {
  // Stripe's example: bill per 1000 units, rounding up.
  const up = perUnit('1000', { divide_by: 1000, round: 'up' });
  t.equal(amt(up, 1), 1000);
  t.equal(amt(up, 1000), 1000);
  t.equal(amt(up, 1001), 2000);
  t.equal(amt(up, 0), 0);
  t.equal(amt(up, '1000.5'), 2000, 'decimal quantities divide exactly before rounding');
  const down = perUnit('1000', { divide_by: 1000, round: 'down' });
  t.equal(amt(down, 999), 0);
  t.equal(amt(down, 1999), 1000);
  t.equal(amt(down, 2000), 2000);
  t.equal(amt(perUnit('1', { divide_by: 3, round: 'up' }), '0.0000001'), 1);
});

t.test('graduated tiers', async (t) => {
  // 1–5: $7/unit (700), 6–10: $6.50 (650), 11+: $6 (600)
  const g = tiered('graduated', [
    [5, '700', null],
    [10, '650', null],
    [null, '600', null],
  ]);
  t.equal(amt(g, 0), 0);
  t.equal(amt(g, 1), 700);
  t.equal(amt(g, 5), 3500);
  t.equal(amt(g, 6), 3500 + 650);
  t.equal(amt(g, 10), 3500 + 3250);
  t.equal(amt(g, 12), 3500 + 3250 + 1200, '12 units: 5x7 + 5x6.5 + 2x6 = 79.50');
  t.equal(amt(g, '5.5'), 3500 + 325, 'decimal quantity crosses into tier 2');
  // Flat fees: first 10 for a $10 flat fee, then $1 per unit.
  const f = tiered('graduated', [
    [10, '0', '1000'],
    [null, '100', null],
  ]);
  t.equal(amt(f, 0), 1000, 'the first tier is always reached');
  t.equal(amt(f, 10), 1000);
  t.equal(amt(f, 11), 1100);
  const f2 = tiered('graduated', [
    [10, '100', null],
    [null, '50', '500'],
  ]);
  t.equal(amt(f2, 10), 1000, 'second tier flat fee not charged before it is reached');
  t.equal(amt(f2, 11), 1000 + 500 + 50);
  // Fractional cents per unit across tiers, rounded once.
  const frac = tiered('graduated', [
    [1000, '0.5', null],
    [null, '0.25', null],
  ]);
  t.equal(priceAmount(frac, parseQuantity(1001)).exact, '500.25');
  t.equal(amt(frac, 1001), 500);
  t.equal(amt(frac, 1003), 501, '500.75 -> 501');
});

t.test('volume tiers', async (t) => {
  const v = tiered('volume', [
    [5, '700', null],
    [10, '650', null],
    [null, '600', null],
  ]);
  t.equal(amt(v, 1), 700);
  t.equal(amt(v, 5), 3500);
  t.equal(amt(v, 6), 3900, 'all 6 units at 6.50');
  t.equal(amt(v, 10), 6500);
  t.equal(amt(v, 12), 7200, 'all 12 units at 6');
  t.equal(amt(v, '5.5'), 3575, '5.5 units fall in tier 2');
  const vf = tiered('volume', [
    [10, '100', '500'],
    [null, '50', '1000'],
  ]);
  t.equal(amt(vf, 0), 500, 'zero is in the first tier');
  t.equal(amt(vf, 10), 1500);
  t.equal(amt(vf, 20), 2000);
});
