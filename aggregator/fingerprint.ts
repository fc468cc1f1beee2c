/**
 * The dedup fingerprint of an event: 64 bits of (account, identifier). Two events with the same fingerprint within
 * the window are one event to the aggregator, so two different identifiers must not share one, whatever their shape.
 *
 * Until 2026-12-07 the fingerprint was two 32-bit FNV-1a hashes of the identifier with two seeds. FNV-1a mixes a
 * character into the low bits and carries it upwards only through its multiplications, so identifiers that differ in a
 * few digits (a counter after a fixed prefix: the bench's identifiers, and many clients') collide in families, and the
 * two seeds collide together: 80 pairs among 30M identifiers for one account in four (README, "Fingerprints").
 * The fingerprint is now a 64-bit hash whose two lanes take every 32-bit block of the identifier through MurmurHash3's
 * block mix and are coupled per block, with MurmurHash3's finalizer. Over the identifiers tried (README,
 * "Fingerprints": 30M counter-shaped ones for four accounts) it collided no more than 64 random bits would: not once.
 *
 * The FNV pair is kept as the legacy fingerprint: an index written by an earlier version holds it, and until its
 * entries leave the window the aggregator also looks events up by it (see PartitionIndex.legacyUntilMs).
 */
import { hash32 } from '../shared/event-record';

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;
const C3 = 0x38b34ae5;

/** The fingerprint hashIdentifier() computed last: hi, lo. */
export const FINGERPRINT = new Uint32Array(2);

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}

/**
 * Hashes `s` (its UTF-16 code units, two per block) from the two seeds into FINGERPRINT. Allocates nothing: the
 * worker calls it once per event.
 */
export function hashIdentifier(s: string, seedHi: number, seedLo: number): void {
  let h1 = seedHi | 0;
  let h2 = seedLo | 0;
  const n = s.length;
  for (let i = 0; i < n; i += 2) {
    const k = i + 1 < n ? s.charCodeAt(i) | (s.charCodeAt(i + 1) << 16) : s.charCodeAt(i);
    let k1 = Math.imul(k, C1);
    k1 = (k1 << 15) | (k1 >>> 17);
    h1 ^= Math.imul(k1, C2);
    h1 = (h1 << 19) | (h1 >>> 13);
    h1 = (h1 + h2) | 0;
    h1 = (Math.imul(h1, 5) + 0x561ccd1b) | 0;
    let k2 = Math.imul(k, C2);
    k2 = (k2 << 16) | (k2 >>> 16);
    h2 ^= Math.imul(k2, C3);
    h2 = (h2 << 17) | (h2 >>> 15);
    h2 = (h2 + h1) | 0;
    h2 = (Math.imul(h2, 5) + 0x0bcaa747) | 0;
  }
  h1 ^= n;
  h2 ^= n;
  h1 = (h1 + h2) | 0;
  h2 = (h2 + h1) | 0;
  h1 = fmix32(h1);
  h2 = fmix32(h2);
  h1 = (h1 + h2) | 0;
  h2 = (h2 + h1) | 0;
  FINGERPRINT[0] = h1;
  FINGERPRINT[1] = h2;
}

/** The two seeds of an account: the account's own 64-bit hash, so that accounts never share identifiers' fingerprints. */
export function accountSeeds(account: string): [number, number] {
  hashIdentifier(account, 0x9747b28c, 0x2f1b3a5d);
  return [FINGERPRINT[0], FINGERPRINT[1]];
}

/** The fingerprint of (account, identifier): [hi, lo]. */
export function fingerprint(account: string, identifier: string): [number, number] {
  const [a, b] = accountSeeds(account);
  hashIdentifier(identifier, a, b);
  return [FINGERPRINT[0], FINGERPRINT[1]];
}

/** The seeds of the legacy (FNV-1a) fingerprint. */
export function legacyAccountSeeds(account: string): [number, number] {
  const a = hash32(account);
  return [a, Math.imul(a ^ 0x5bd1e995, 0x27d4eb2d) >>> 0];
}

/** The legacy fingerprint, written by versions before 2026-12-07 (see above). */
export function legacyFingerprint(account: string, identifier: string): [number, number] {
  return legacyFingerprintFrom(legacyAccountSeeds(account), identifier);
}

/** The legacy fingerprint of an identifier, from its account's legacy seeds (taken once per record). */
export function legacyFingerprintFrom([seedHi, seedLo]: [number, number], identifier: string): [number, number] {
  return [hash32(identifier, seedHi), hash32(identifier, seedLo)];
}
