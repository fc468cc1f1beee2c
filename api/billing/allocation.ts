/**
 * The arithmetic of discounts and billing credits on an invoice's lines, exactly, with one rounding per amount.
 *
 * Rules (written down in the README, "Discounts and credits"):
 *  - Discounts apply in the invoice's order, each to what the earlier ones left of the lines it applies to.
 *  - percent_off: the discount is the exact percentage of the eligible remaining amount, rounded half-up once for
 *    the whole invoice; amount_off: min(amount_off, eligible remaining amount). Either total is then split across the
 *    eligible lines in proportion to their remaining amounts by largest remainder (ties to the earlier line), so the
 *    line shares are integers that add up to the invoice's figure exactly and no line goes below 0.
 *  - Credits apply after every discount, to the lines they are scoped to, grant by grant in the order given (the
 *    caller sorts with creditOrder), line by line in invoice order, each taking
 *    min(grant balance left, line amount left): integers, no rounding at all.
 */

/** `percent` is a decimal string with at most 2 places (Stripe's percent_off); returns it in basis points. */
export function percentToBasisPoints(percent: string | number): bigint {
  const m = /^(\d{1,3})(?:\.(\d{1,2}))?$/.exec(String(percent));
  if (!m) throw new RangeError(`not a percentage: ${percent}`);
  return BigInt(m[1]) * 100n + BigInt((m[2] ?? '').padEnd(2, '0'));
}

/** round half-up (amounts are non-negative) of basis points x amount / 10000. */
export function percentOf(amount: number, basisPoints: bigint): number {
  return Number((BigInt(amount) * basisPoints * 2n + 10000n) / 20000n);
}

/**
 * Splits `total` across `weights` (non-negative integers) in proportion, by largest remainder: every share is
 * floor(total x w / W) plus one for the lines with the largest remainders (earlier lines first on ties), so the shares
 * add up to `total` exactly. `total` must not exceed the sum of the weights (then no share exceeds its weight).
 */
export function splitProportionally(total: number, weights: number[]): number[] {
  const sum = weights.reduce((a, w) => a + w, 0);
  if (total < 0 || total > sum) throw new RangeError(`cannot split ${total} over weights summing to ${sum}`);
  if (sum === 0) return weights.map(() => 0);
  const T = BigInt(total);
  const W = BigInt(sum);
  const shares = weights.map((w) => (T * BigInt(w)) / W);
  const remainders = weights.map((w, i) => ({ i, r: (T * BigInt(w)) % W }));
  let left = total - shares.reduce((a, s) => a + Number(s), 0);
  remainders.sort((a, b) => (a.r === b.r ? a.i - b.i : a.r > b.r ? -1 : 1));
  const out = shares.map(Number);
  for (const { i } of remainders) {
    if (left === 0) break;
    out[i] += 1;
    left--;
  }
  return out;
}

export interface DiscountRule {
  id: string;
  percentOff: string | number | null;
  amountOff: number | null;
  /** Lines this discount may apply to (by index); null = every discountable line. */
  eligible: (lineIndex: number) => boolean;
}

/**
 * Per discount, the amount taken from each line. `amounts` are the lines' amounts; `discountable` says which lines
 * take discounts at all.
 */
export function allocateDiscounts(amounts: number[], discountable: boolean[], discounts: DiscountRule[]): number[][] {
  const left = amounts.map((a) => Math.max(0, a));
  const out: number[][] = [];
  for (const d of discounts) {
    const weights = left.map((a, i) => (discountable[i] && d.eligible(i) ? a : 0));
    const base = weights.reduce((a, w) => a + w, 0);
    let total: number;
    if (d.percentOff !== null) total = percentOf(base, percentToBasisPoints(d.percentOff));
    else total = Math.min(d.amountOff ?? 0, base);
    total = Math.min(total, base);
    const shares = splitProportionally(total, weights);
    for (let i = 0; i < left.length; i++) left[i] -= shares[i];
    out.push(shares);
  }
  return out;
}

export interface CreditSource {
  id: string;
  /** What is left to apply, in minor units. */
  balance: number;
  eligible: (lineIndex: number) => boolean;
}

/** Per credit source (in the order given), the amount applied to each line; `amounts` are what is left of the lines. */
export function allocateCredits(amounts: number[], credits: CreditSource[]): number[][] {
  const left = amounts.map((a) => Math.max(0, a));
  const out: number[][] = [];
  for (const c of credits) {
    let balance = Math.max(0, c.balance);
    const shares = left.map(() => 0);
    for (let i = 0; i < left.length && balance > 0; i++) {
      if (!c.eligible(i) || left[i] === 0) continue;
      const take = Math.min(balance, left[i]);
      shares[i] = take;
      left[i] -= take;
      balance -= take;
    }
    out.push(shares);
  }
  return out;
}

/**
 * Credit grants in Stripe's application order: priority (lower first; null = 50), then expiry (earlier first, none
 * last), then category (promotional before paid), then effective_at (earlier first), then creation (older first).
 */
export function creditOrder<
  T extends { priority: number | null; expires_at: number | null; category?: string; effective_at?: number | null; created: number; id: string },
>(grants: T[]): T[] {
  const rank = (c: string | undefined) => (c === 'promotional' ? 0 : 1);
  return [...grants].sort((a, b) => {
    const pa = a.priority ?? 50;
    const pb = b.priority ?? 50;
    if (pa !== pb) return pa - pb;
    const ea = a.expires_at ?? Number.POSITIVE_INFINITY;
    const eb = b.expires_at ?? Number.POSITIVE_INFINITY;
    if (ea !== eb) return ea - eb;
    if (rank(a.category) !== rank(b.category)) return rank(a.category) - rank(b.category);
    const fa = a.effective_at ?? a.created;
    const fb = b.effective_at ?? b.created;
    if (fa !== fb) return fa - fb;
    if (a.created !== b.created) return a.created - b.created;
    return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  });
}

/**
 * The part of `lineReduction` (a discount or credit of an invoice line of amount `lineAmount`) that goes with crediting
 * `amount` of the line after `before` was credited already: round(e x (before + amount) / A) - round(e x before / A),
 * half-up. Summed over notes that credit the whole line, it is exactly the line's reduction.
 */
export function creditedShare(lineReduction: number, lineAmount: number, before: number, amount: number): number {
  if (lineAmount === 0) return 0;
  const E = BigInt(lineReduction);
  const A = BigInt(lineAmount);
  const at = (x: number) => (2n * E * BigInt(x) + A) / (2n * A);
  return Number(at(before + amount) - at(before));
}
