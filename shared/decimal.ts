/**
 * Exact decimal meter values (invariant 7: values are decimals, summed without binary floating-point drift).
 *
 * A value is carried as a bigint scaled by 10^VALUE_SCALE ("scaled value"), the same fixed point as the ClickHouse
 * `Decimal(38, 15)` column, so sums are plain bigint additions: "0.1" ten times sums to exactly 1.
 *
 * Accepted syntax (payload values are strings): an optional leading '-', one or more ASCII digits, and optionally a '.'
 * followed by one or more digits. So "25", "-3", "0.5", "007" and "-0" are accepted; "+5", ".5", "5.", "1e3", " 5",
 * "5 ", "", "-", "0x10", "1_000" and "Infinity" are rejected. Leading zeros are allowed and are not significant.
 *
 * Digit limits (Stripe dahlia 2026-04-22: "at most 15 significant digits"):
 *  - significant digits = every digit of the string except leading zeros (the zeros before the first non-zero digit,
 *    including those right after the decimal point in "0.0001"). Trailing zeros count, in the integer part ("1000" has
 *    4) and after the decimal point ("1.50" has 3) since the client wrote them. At most 15.
 *  - fractional digits: at most 15 (VALUE_SCALE), otherwise the value is not representable exactly.
 *
 * Hot path: parseMeterValue/validateMeterValue scan with a charCode loop and build the scaled bigint from an exact
 * Number (<= 15 significant digits is < 2^53) times a precomputed power of ten; integers below 1024 come from a table.
 */

/** Fractional digits kept, = the scale of the ClickHouse Decimal(38, 15) column. */
export const VALUE_SCALE = 15;
/** 10^VALUE_SCALE: the scaled representation of 1. */
export const SCALE = 10n ** BigInt(VALUE_SCALE);
/** Stripe's limit on significant digits in a meter event value. */
export const MAX_SIGNIFICANT_DIGITS = 15;

/** POW10[k] = 10^k as a bigint, k = 0..VALUE_SCALE. */
const POW10: bigint[] = [];
for (let k = 0; k <= VALUE_SCALE; k++) POW10.push(10n ** BigInt(k));

const SMALL_INTS = 1024;
/** SMALL[i] = i * SCALE: the common small integer values ("1", "25") without a multiplication. */
const SMALL: bigint[] = [];
for (let i = 0; i < SMALL_INTS; i++) SMALL.push(BigInt(i) * SCALE);

// Results of the last scan() besides its return value, kept in module variables so the hot path allocates nothing.
let scanNeg = false;
/** Number of significant digits (digits after the leading zeros). */
let scanSig = 0;
/** Number of digits after the decimal point. */
let scanFrac = 0;
/** Index of the '.' in the string, or -1. */
let scanDot = -1;

/**
 * Scans `s` and returns the integer formed by all its digits without the sign and the point (exact only when
 * scanSig <= 15), or -1 when `s` is not a valid decimal. Sets scanNeg, scanSig, scanFrac and scanDot.
 */
function scan(s: string): number {
  const n = s.length;
  if (n === 0) return -1;
  let i = 0;
  let neg = false;
  if (s.charCodeAt(0) === 45 /* - */) {
    neg = true;
    i = 1;
  }
  const intStart = i;
  let m = 0;
  let sig = 0;
  for (; i < n; i++) {
    const d = s.charCodeAt(i) - 48;
    if (d < 0 || d > 9) break;
    if (sig !== 0 || d !== 0) {
      sig++;
      m = m * 10 + d;
    }
  }
  if (i === intStart) return -1;
  let frac = 0;
  let dot = -1;
  if (i < n) {
    if (s.charCodeAt(i) !== 46 /* . */) return -1;
    dot = i;
    const fracStart = ++i;
    for (; i < n; i++) {
      const d = s.charCodeAt(i) - 48;
      if (d < 0 || d > 9) return -1;
      if (sig !== 0 || d !== 0) {
        sig++;
        m = m * 10 + d;
      }
    }
    frac = i - fracStart;
    if (frac === 0) return -1;
  }
  scanNeg = neg;
  scanSig = sig;
  scanFrac = frac;
  scanDot = dot;
  return m;
}

/** Scaled value of a string that scan() accepted with scanFrac <= VALUE_SCALE; `m` is scan()'s result. */
function scaledFromScan(s: string, m: number): bigint {
  let v: bigint;
  if (scanSig <= MAX_SIGNIFICANT_DIGITS) {
    // m < 10^15 < 2^53: exact.
    if (scanFrac === 0 && m < SMALL_INTS) v = SMALL[m];
    else v = BigInt(m) * POW10[VALUE_SCALE - scanFrac];
  } else {
    // More digits than a double holds exactly: go through the digit string.
    const start = scanNeg ? 1 : 0;
    const digits = scanDot < 0 ? s.slice(start) : s.slice(start, scanDot) + s.slice(scanDot + 1);
    v = BigInt(digits) * POW10[VALUE_SCALE - scanFrac];
  }
  return scanNeg ? -v : v;
}

/**
 * The value scaled by 10^VALUE_SCALE, or null when `s` is not a valid decimal (see the syntax above) or has more than
 * VALUE_SCALE fractional digits (not representable exactly). Does not apply the 15-significant-digit rule: use
 * validateMeterValue for request validation.
 */
export function parseMeterValue(s: string): bigint | null {
  const m = scan(s);
  if (m < 0 || scanFrac > VALUE_SCALE) return null;
  return scaledFromScan(s, m);
}

/** Number of significant digits of `s` (see above), or -1 when `s` is not a valid decimal. "0" has 0. */
export function significantDigits(s: string): number {
  return scan(s) < 0 ? -1 : scanSig;
}

/** Number of digits after the decimal point, or -1 when `s` is not a valid decimal. */
export function fractionDigits(s: string): number {
  return scan(s) < 0 ? -1 : scanFrac;
}

export type MeterValueErrorCode = 'meter_event_invalid_value' | 'meter_event_value_too_many_digits';

export type MeterValueValidation = { ok: true; scaled: bigint } | { ok: false; code: MeterValueErrorCode; message: string };

/**
 * Full check of a meter event value: syntax, at most 15 significant digits, at most 15 fractional digits.
 * Error codes are Stripe's async error-report codes; the v2 synchronous handlers may map `meter_event_invalid_value`
 * to `payload_invalid_value`.
 */
export function validateMeterValue(s: string): MeterValueValidation {
  const code = checkMeterValue(s);
  if (code !== null) return { ok: false, code, message: meterValueErrorMessage(s) };
  return { ok: true, scaled: scaledFromScan(s, checkedDigits) };
}

/** The message for `s`, which checkMeterValue() refused last (its scan still describes `s`). */
export function meterValueErrorMessage(s: string): string {
  if (checkedDigits < 0) return `The value in the event payload must be a decimal number such as 25, -3 or 0.5. Received ${s}.`;
  if (scanSig > MAX_SIGNIFICANT_DIGITS) return `The value in the event payload can have at most ${MAX_SIGNIFICANT_DIGITS} digits. Received ${s}.`;
  return `The value in the event payload can have at most ${VALUE_SCALE} digits after the decimal point. Received ${s}.`;
}

/** scan()'s result for the last value checkMeterValue() read (-1: not a decimal). */
let checkedDigits = -1;
/** What checkMeterValue() read from the last value it accepted: sign, whole units and the fraction times 10^15. */
let checkedNeg = false;
let checkedUnits = 0;
let checkedFraction = 0;

const POW10_NUMBER: number[] = [];
for (let k = 0; k <= VALUE_SCALE; k++) POW10_NUMBER.push(10 ** k);

/**
 * The check of validateMeterValue, without allocating: null when `s` is a valid meter value (then
 * ScaledSum.addChecked adds it), else the error code (meterValueErrorMessage has the message). For the aggregator's
 * hot path, where a bigint per event (and an object per check) was a tenth of the worker's time.
 */
export function checkMeterValue(s: string): MeterValueErrorCode | null {
  const m = scan(s);
  checkedDigits = m;
  if (m < 0) return 'meter_event_invalid_value';
  if (scanSig > MAX_SIGNIFICANT_DIGITS || scanFrac > VALUE_SCALE) return 'meter_event_value_too_many_digits';
  // m < 10^15 < 2^53, so the split below is exact; the two corrections guard the division's rounding.
  const p = POW10_NUMBER[scanFrac];
  let units = Math.floor(m / p);
  let rest = m - units * p;
  if (rest < 0) {
    units--;
    rest += p;
  } else if (rest >= p) {
    units++;
    rest -= p;
  }
  checkedNeg = scanNeg;
  checkedUnits = units;
  checkedFraction = rest * POW10_NUMBER[VALUE_SCALE - scanFrac];
  return null;
}

const LIMB = 2 ** 24;
/** 10^15 in two 24-bit limbs: the products below stay under 2^53, so they are exact in doubles. */
const SCALE_HI = Math.floor(10 ** VALUE_SCALE / LIMB);
const SCALE_LO = 10 ** VALUE_SCALE - SCALE_HI * LIMB;

/**
 * Writes the value checkMeterValue() accepted last as ClickHouse's Decimal(38, 15) in RowBinary: its scaled value
 * (units * 10^15 + fraction, below 2^100) as a 128-bit little-endian two's-complement integer, computed in 24-bit
 * limbs so that no bigint is made per event. Returns the offset after the 16 bytes.
 */
export function putCheckedDecimal128(buf: Uint8Array, o: number): number {
  const uh = Math.floor(checkedUnits / LIMB);
  const ul = checkedUnits - uh * LIMB;
  const fh = Math.floor(checkedFraction / LIMB);
  const fl = checkedFraction - fh * LIMB;
  let c = ul * SCALE_LO + fl;
  const l0 = c % LIMB;
  c = (c - l0) / LIMB + ul * SCALE_HI + uh * SCALE_LO + fh;
  const l1 = c % LIMB;
  c = (c - l1) / LIMB + uh * SCALE_HI;
  const l2 = c % LIMB;
  c = (c - l2) / LIMB;
  const l3 = c % LIMB;
  putLimb(buf, o, l0);
  putLimb(buf, o + 3, l1);
  putLimb(buf, o + 6, l2);
  putLimb(buf, o + 9, l3);
  putLimb(buf, o + 12, (c - l3) / LIMB);
  buf[o + 15] = 0;
  if (checkedNeg) {
    let carry = 1;
    for (let i = o; i < o + 16; i++) {
      const b = (~buf[i] & 255) + carry;
      buf[i] = b;
      carry = b >> 8;
    }
  }
  return o + 16;
}

/** A 24-bit limb as three little-endian bytes. */
function putLimb(buf: Uint8Array, o: number, limb: number): void {
  buf[o] = limb;
  buf[o + 1] = limb >>> 8;
  buf[o + 2] = limb >>> 16;
}

/** Above this many whole units the running sum moves into its bigint (doubles are exact below 2^53). */
const SPILL_UNITS = 2 ** 52;
const FRACTION_ONE = 10 ** VALUE_SCALE;

/**
 * An exact sum of meter values in doubles: whole units, and the fraction times 10^15 kept in [0, 10^15), both exact
 * integers below 2^53; the units move into a bigint before they could lose precision. Equal to the sum of the values'
 * scaled bigints, without a bigint per value.
 */
export class ScaledSum {
  private units = 0;
  private fraction = 0;
  private spilled = 0n;

  /** Adds the value checkMeterValue() accepted last. */
  addChecked(): void {
    if (checkedNeg) {
      this.units -= checkedUnits;
      this.fraction -= checkedFraction;
      if (this.fraction < 0) {
        this.fraction += FRACTION_ONE;
        this.units--;
      }
    } else {
      this.units += checkedUnits;
      this.fraction += checkedFraction;
      if (this.fraction >= FRACTION_ONE) {
        this.fraction -= FRACTION_ONE;
        this.units++;
      }
    }
    if (this.units > SPILL_UNITS || this.units < -SPILL_UNITS) {
      this.spilled += BigInt(this.units) * SCALE;
      this.units = 0;
    }
  }

  /** The sum, scaled by 10^VALUE_SCALE. */
  scaled(): bigint {
    return this.spilled + BigInt(this.units) * SCALE + BigInt(this.fraction);
  }
}

/** Canonical decimal string of a scaled value, without trailing zeros: "1", "0.1", "-2.5", "0". */
export function formatScaled(v: bigint): string {
  const neg = v < 0n;
  const abs = neg ? -v : v;
  const q = abs / SCALE;
  const r = abs % SCALE;
  let out: string;
  if (r === 0n) {
    out = q.toString();
  } else {
    let frac = r.toString();
    if (frac.length < VALUE_SCALE) frac = '0'.repeat(VALUE_SCALE - frac.length) + frac;
    let end = frac.length;
    while (frac.charCodeAt(end - 1) === 48) end--;
    out = q.toString() + '.' + frac.slice(0, end);
  }
  return neg ? '-' + out : out;
}

/** The literal for a ClickHouse Decimal(38, 15) column or parameter: ClickHouse parses "0.1" exactly. */
export const formatScaledForClickHouse = formatScaled;

/**
 * A scaled value as a JS number for JSON responses (`aggregated_value` is a JSON number in Stripe). Goes through the
 * decimal string, so 1 -> 1 and 0.3 -> 0.3 (the double nearest to 0.3, as JS parses "0.3"), not 0.30000000000000004.
 */
export function scaledToNumber(v: bigint): number {
  if (v % SCALE === 0n) {
    const q = v / SCALE;
    if (q >= -9007199254740991n && q <= 9007199254740991n) return Number(q);
  }
  return Number(formatScaled(v));
}
