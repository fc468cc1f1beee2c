/**
 * Stripe-style object ids, request ids, secret keys and session tokens.
 *
 * Object ids are `${prefix}_${livemode ? '' : 'test_'}${body}` (like the docs' `mtr_test_61RC…`). The body is
 * 28 base62 characters: 8 for the millisecond timestamp, 3 for a per-process sequence within the millisecond, then
 * 17 random ones (~101 bits). The alphabet is in ASCII order (0-9, A-Z, a-z), so ids made by one process sort by
 * creation (string comparison), and ids from several processes sort by creation millisecond.
 *
 * Randomness comes from crypto.randomBytes, drawn in 4 KiB batches; characters are taken by rejection sampling
 * (bytes >= 248 are skipped), so every character is uniform over the 62 symbols.
 */
import { randomBytes } from 'node:crypto';

export const BASE62_ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

const POOL_SIZE = 4096;
let pool = randomBytes(POOL_SIZE);
let poolPos = 0;

function nextByte(): number {
  if (poolPos === POOL_SIZE) {
    pool = randomBytes(POOL_SIZE);
    poolPos = 0;
  }
  return pool[poolPos++];
}

/** `length` uniformly random base62 characters from a CSPRNG. */
export function randomBase62(length: number): string {
  let out = '';
  while (out.length < length) {
    const b = nextByte();
    if (b < 248) out += BASE62_ALPHABET[b % 62];
  }
  return out;
}

/** A non-negative integer (safe integer) in base62, left-padded with '0' to `width` characters. */
export function base62Int(n: number, width = 0): string {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`base62Int: not a non-negative safe integer: ${n}`);
  let out = '';
  do {
    out = BASE62_ALPHABET[n % 62] + out;
    n = Math.floor(n / 62);
  } while (n > 0);
  return out.length < width ? '0'.repeat(width - out.length) + out : out;
}

/**
 * Base62 encoding of bytes read as one big-endian unsigned integer, left-padded to the length that the largest value
 * of that many bytes needs (so the output length depends only on the input length).
 */
export function base62(bytes: Uint8Array): string {
  if (bytes.length === 0) return '';
  const width = Math.ceil((bytes.length * 8) / Math.log2(62));
  let n = 0n;
  for (let i = 0; i < bytes.length; i++) n = (n << 8n) | BigInt(bytes[i]);
  let out = '';
  while (n > 0n) {
    out = BASE62_ALPHABET[Number(n % 62n)] + out;
    n /= 62n;
  }
  return out.length < width ? '0'.repeat(width - out.length) + out : out;
}

const TIME_WIDTH = 8; // 62^8 ms ≈ 6,900 years
const SEQ_WIDTH = 3;
const SEQ_MAX = 62 ** SEQ_WIDTH; // 238,328 ids per ms per process
const RANDOM_WIDTH = 17;

let lastMs = 0;
let seq = 0;
let lastTimePart = '';

/**
 * The time-ordered 28-character body of an object id. Monotonic within the process: when the clock goes backwards or
 * the sequence of a millisecond is used up, it continues from the last millisecond used.
 */
function idBody(): string {
  const now = Date.now();
  if (now > lastMs) {
    lastMs = now;
    seq = 0;
    lastTimePart = base62Int(now, TIME_WIDTH);
  } else if (++seq === SEQ_MAX) {
    lastMs++;
    seq = 0;
    lastTimePart = base62Int(lastMs, TIME_WIDTH);
  }
  return lastTimePart + base62Int(seq, SEQ_WIDTH) + randomBase62(RANDOM_WIDTH);
}

/** A new object id, e.g. newId('mtr', false) -> `mtr_test_0V2yXk3b000…`. */
export function newId(prefix: string, livemode: boolean): string {
  return livemode ? `${prefix}_${idBody()}` : `${prefix}_test_${idBody()}`;
}

/** The creation millisecond encoded in an id made by newId, or null when it does not look like one. */
export function idTimeMs(id: string): number | null {
  const underscore = id.lastIndexOf('_');
  const body = id.slice(underscore + 1);
  if (body.length !== TIME_WIDTH + SEQ_WIDTH + RANDOM_WIDTH) return null;
  let n = 0;
  for (let i = 0; i < TIME_WIDTH; i++) {
    const d = BASE62_ALPHABET.indexOf(body[i]);
    if (d < 0) return null;
    n = n * 62 + d;
  }
  return n;
}

/** A request id for the `Request-Id` header: `req_` + 14 random base62 characters. */
export function newRequestId(): string {
  return 'req_' + randomBase62(14);
}

/** A secret API key: `sk_test_`/`sk_live_` + 64 random base62 characters (~381 bits). */
export function newSecretKey(livemode: boolean): string {
  return (livemode ? 'sk_live_' : 'sk_test_') + randomBase62(64);
}

/** A meter event session authentication token: `mets_` + 64 random base62 characters. */
export function newToken(): string {
  return 'mets_' + randomBase62(64);
}
