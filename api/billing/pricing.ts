/**
 * Quantity -> amount for a price, exactly.
 *
 * Quantities are scaled decimals (shared/decimal.ts, 10^15: meter aggregates can be decimals); unit and flat amounts
 * are decimal strings with at most 12 places (prices.ts). Every product quantity x amount is computed exactly as a
 * bigint at scale 10^(15+12), all parts of a line are added exactly, and THE ONE ROUNDING RULE is applied once per line:
 * the exact decimal amount is rounded half-up (half away from zero; amounts are never negative here) to an integer
 * number of minor units. So 3 units at 0.5 cents = 1.5 -> 2 cents, and 10 events of 0.1 units at 0.5 cents = 0.5 -> 1.
 *
 * Rules:
 *  - negative quantities price as 0 (Stripe: "If the overall cycle usage is negative, Stripe reports ... 0").
 *  - per_unit: quantity x unit_amount_decimal. transform_quantity divides the quantity by divide_by and rounds the
 *    result to an integer (up = ceiling, down = floor) before multiplying.
 *  - tiered graduated: each tier prices the part of the quantity inside it ((prev up_to, up_to]) at its unit amount,
 *    plus its flat amount when the quantity reaches the tier (quantity > previous up_to; the first tier is always
 *    reached, so its flat amount is charged even for 0).
 *  - tiered volume: the tier holding the whole quantity (the first with quantity <= up_to; 0 is in the first tier)
 *    prices every unit, plus that tier's flat amount.
 */
import { SCALE } from '../../shared/decimal';
import { parseMeterValue } from '../../shared/decimal';

/** Scale of amounts: 12 decimal places. */
const AMOUNT_PLACES = 12;
const AMOUNT_SCALE = 10n ** BigInt(AMOUNT_PLACES);
/** Scale of exact line amounts (quantity scale x amount scale). */
const EXACT_SCALE = SCALE * AMOUNT_SCALE;

export interface PricingTier {
  flat_amount_decimal: string | null;
  unit_amount_decimal: string | null;
  up_to: number | null;
}

export interface PricingInput {
  billing_scheme: 'per_unit' | 'tiered';
  unit_amount_decimal: string | null;
  tiers?: PricingTier[] | null;
  tiers_mode: 'graduated' | 'volume' | null;
  transform_quantity: { divide_by: number; round: 'up' | 'down' } | null;
}

export interface PricedAmount {
  /** Integer minor units (rounded half-up once). */
  amount: number;
  /** The exact amount in minor units as a decimal string, before rounding. */
  exact: string;
}

/** A non-negative decimal amount string (<= 12 places) scaled by 10^12. */
export function parseAmount(s: string | null | undefined): bigint {
  if (s === null || s === undefined || s === '') return 0n;
  const m = /^(\d+)(?:\.(\d{1,12}))?$/.exec(s);
  if (!m) throw new RangeError(`not a decimal amount: ${s}`);
  const frac = (m[2] ?? '').padEnd(AMOUNT_PLACES, '0');
  return BigInt(m[1]) * AMOUNT_SCALE + BigInt(frac);
}

/** A decimal quantity string (or number) as a scaled quantity (10^15). */
export function parseQuantity(q: string | number | bigint): bigint {
  if (typeof q === 'bigint') return q * SCALE;
  const v = parseMeterValue(String(q));
  if (v === null) throw new RangeError(`not a decimal quantity: ${q}`);
  return v;
}

function divCeil(a: bigint, b: bigint): bigint {
  return a % b === 0n ? a / b : a / b + 1n;
}

/** Round half-up of a non-negative exact value at EXACT_SCALE to an integer. */
function roundHalfUp(exact: bigint): bigint {
  return (exact + EXACT_SCALE / 2n) / EXACT_SCALE;
}

function formatExact(exact: bigint): string {
  const q = exact / EXACT_SCALE;
  const r = exact % EXACT_SCALE;
  if (r === 0n) return q.toString();
  const frac = r.toString().padStart(27, '0').replace(/0+$/, '');
  return `${q}.${frac}`;
}

/** The exact amount (at 10^27) of `quantity` (scaled 10^15) under `price`. */
export function exactAmount(price: PricingInput, quantity: bigint): bigint {
  let q = quantity < 0n ? 0n : quantity;
  if (price.billing_scheme === 'per_unit') {
    const unit = parseAmount(price.unit_amount_decimal);
    if (price.transform_quantity) {
      const d = BigInt(price.transform_quantity.divide_by) * SCALE;
      q = (price.transform_quantity.round === 'up' ? divCeil(q, d) : q / d) * SCALE;
    }
    return q * unit;
  }
  const tiers = price.tiers ?? [];
  if (price.tiers_mode === 'volume') {
    const tier = tiers.find((t) => t.up_to === null || q <= BigInt(t.up_to) * SCALE) ?? tiers[tiers.length - 1];
    if (!tier) return 0n;
    return q * parseAmount(tier.unit_amount_decimal) + parseAmount(tier.flat_amount_decimal) * SCALE;
  }
  // graduated
  let total = 0n;
  let prev = 0n;
  for (let i = 0; i < tiers.length; i++) {
    const t = tiers[i];
    if (i > 0 && q <= prev) break;
    const upper = t.up_to === null ? q : BigInt(t.up_to) * SCALE;
    const inTier = (q < upper ? q : upper) - prev;
    if (inTier > 0n) total += inTier * parseAmount(t.unit_amount_decimal);
    total += parseAmount(t.flat_amount_decimal) * SCALE;
    if (t.up_to === null) break;
    prev = upper;
  }
  return total;
}

/** Amount in minor units for `quantity` (scaled 10^15, see parseQuantity) under `price`. */
export function priceAmount(price: PricingInput, quantity: bigint): PricedAmount {
  const exact = exactAmount(price, quantity);
  const rounded = roundHalfUp(exact);
  if (rounded > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('amount too large');
  return { amount: Number(rounded), exact: formatExact(exact) };
}

/** Integer part of a scaled quantity (truncated toward zero), for `quantity` on lines. */
export function truncatedQuantity(quantity: bigint): number {
  return Number(quantity / SCALE);
}
