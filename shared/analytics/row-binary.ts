/**
 * ClickHouse's RowBinary format, written straight into a Buffer: the raw-event rows go to the store in it because the
 * engine reads it at about half the CPU of TabSeparated text (README, "Raw events in RowBinary"). Every value is
 * little-endian; a String is its UTF-8 byte length as a LEB128 varint, then the bytes; a Decimal(38, 15) is its scaled
 * value as a 128-bit two's-complement integer (see `putCheckedDecimal128` in shared/decimal.ts).
 *
 * The writers take the offset to write at and return the offset after what they wrote; the caller makes room first
 * (`maxStringBytes`), so no writer checks or grows the buffer.
 */

const TWO_32 = 4294967296;

/** The most bytes `putString` can write for `s`: a varint of up to five bytes and three bytes per UTF-16 unit. */
export function maxStringBytes(s: string): number {
  return 5 + s.length * 3;
}

/** Writes a String. ASCII below 128 characters (identifiers, customer ids: nearly every field) is copied by hand. */
export function putString(buf: Buffer, o: number, s: string): number {
  const n = s.length;
  if (n < 128) {
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 128) break;
      buf[o + 1 + i] = c;
    }
    if (i === n) {
      buf[o] = n;
      return o + 1 + n;
    }
  }
  const bytes = Buffer.byteLength(s, 'utf8');
  o = putVarint(buf, o, bytes);
  return o + buf.write(s, o, 'utf8');
}

/** Writes an unsigned LEB128 varint (ClickHouse's string length prefix). */
export function putVarint(buf: Buffer, o: number, v: number): number {
  while (v >= 128) {
    buf[o++] = (v & 127) | 128;
    v = Math.floor(v / 128);
  }
  buf[o++] = v;
  return o;
}

/** Writes an Int64 (or a UInt64 below 2^53) from an integer-valued number. */
export function putInt64(buf: Buffer, o: number, v: number): number {
  const hi = Math.floor(v / TWO_32);
  const lo = v - hi * TWO_32;
  buf[o] = lo;
  buf[o + 1] = lo >>> 8;
  buf[o + 2] = lo >>> 16;
  buf[o + 3] = lo >>> 24;
  buf[o + 4] = hi;
  buf[o + 5] = hi >> 8;
  buf[o + 6] = hi >> 16;
  buf[o + 7] = hi >> 24;
  return o + 8;
}

/** Writes a UInt16. */
export function putUInt16(buf: Buffer, o: number, v: number): number {
  buf[o] = v;
  buf[o + 1] = v >>> 8;
  return o + 2;
}

/** The offset after the String at `o`. */
export function skipString(buf: Uint8Array, o: number): number {
  let len = 0;
  let scale = 1;
  for (;;) {
    const b = buf[o++];
    len += (b & 127) * scale;
    if (b < 128) break;
    scale *= 128;
  }
  return o + len;
}

/** Reads the 128-bit two's-complement integer at `o` (a Decimal128's scaled value). */
export function readInt128(buf: Uint8Array, o: number): bigint {
  let v = 0n;
  for (let i = 15; i >= 0; i--) v = (v << 8n) | BigInt(buf[o + i]);
  return BigInt.asIntN(128, v);
}
