/**
 * Batch templates of the HTTP stream generator: one JSON body per batch size, in which only fixed-width digits are
 * patched per batch (identifier, customer, value, timestamp), so building a request costs no allocation.
 */
import type { Options } from './options';

export const ID_DIGITS = 10;
export const VAL_DIGITS = 3; // values 100..999: fixed width without leading zeros
export const TS_LEN = 24; // 2025-01-01T00:00:00.000Z

export interface Layout {
  n: number;
  body: Buffer;
  idOff: Uint32Array;
  custOff: Uint32Array;
  valOff: Uint32Array;
  tsOff: Uint32Array | null;
}

export function buildLayout(n: number, o: Options, custWidth: number): Layout {
  const idOff = new Uint32Array(n);
  const custOff = new Uint32Array(n);
  const valOff = new Uint32Array(n);
  const tsOff = o.timestamps ? new Uint32Array(n) : null;
  // Every piece is ASCII, so string length == byte offset.
  let s = '{"events":[';
  for (let i = 0; i < n; i++) {
    if (i) s += ',';
    s += `{"event_name":"${o.eventName}","identifier":"${o.runId}-`;
    idOff[i] = s.length;
    s += '0'.repeat(ID_DIGITS);
    s += `","payload":{"stripe_customer_id":"${o.customerPrefix}`;
    custOff[i] = s.length;
    s += '0'.repeat(custWidth);
    s += '","value":"';
    valOff[i] = s.length;
    s += '1'.repeat(VAL_DIGITS);
    s += '"}';
    if (tsOff) {
      s += ',"timestamp":"';
      tsOff[i] = s.length;
      s += '2000-01-01T00:00:00.000Z';
      s += '"';
    }
    s += '}';
  }
  s += ']}';
  return { n, body: Buffer.from(s, 'latin1'), idOff, custOff, valOff, tsOff };
}

export function writeDigits(buf: Buffer, off: number, width: number, v: number): void {
  for (let p = off + width - 1; p >= off; p--) {
    const q = (v / 10) | 0;
    buf[p] = 48 + v - q * 10;
    v = q;
  }
}

/** Deterministic, well-mixed 32-bit hash of the event sequence number. */
export function mix(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b) >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x45d9f3b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}
