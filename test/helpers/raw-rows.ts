/**
 * Reads the worker's raw-event rows (RowBinary, in RAW_COLUMNS order) back into objects, for assertions; and the
 * readers and the bigint writer that only tests need.
 */
import { readInt128, skipString } from '../../shared/analytics/row-binary';
import { formatScaled } from '../../shared/decimal';

export interface RawRow {
  account: string;
  livemode: number;
  meter_id: string;
  event_name: string;
  customer: string;
  identifier: string;
  timestamp_ms: number;
  /** The Decimal(38, 15) as its canonical decimal string. */
  value: string;
  payload: string;
  received_ms: number;
  partition: number;
  seq: number;
  /** Bytes the row took. */
  bytes: number;
}

export function readRawRow(buf: Uint8Array, start: number): RawRow {
  let o = start;
  const str = (): string => {
    const s = readString(buf, o);
    o = skipString(buf, o);
    return s;
  };
  const account = str();
  const livemode = buf[o++];
  const meter_id = str();
  const event_name = str();
  const customer = str();
  const identifier = str();
  const timestamp_ms = readInt64(buf, o);
  o += 8;
  const value = formatScaled(readInt128(buf, o));
  o += 16;
  const payload = str();
  const received_ms = readInt64(buf, o);
  o += 8;
  const partition = buf[o] | (buf[o + 1] << 8);
  o += 2;
  const seq = readInt64(buf, o);
  o += 8;
  return { account, livemode, meter_id, event_name, customer, identifier, timestamp_ms, value, payload, received_ms, partition, seq, bytes: o - start };
}

/** Every row of a chunk result, in order. */
export function readRawRows(rows: Uint8Array, rowStart: Uint32Array, n: number): RawRow[] {
  const out: RawRow[] = [];
  for (let i = 0; i < n; i++) if (rowStart[i + 1] > rowStart[i]) out.push(readRawRow(rows, rowStart[i]));
  return out;
}

const TWO_32 = 4294967296;

/** Reads the String at `o`. */
export function readString(buf: Uint8Array, o: number): string {
  const end = skipString(buf, o);
  let start = o;
  while (buf[start] >= 128) start++;
  return Buffer.from(buf.buffer, buf.byteOffset + start + 1, end - start - 1).toString('utf8');
}

/** Reads the Int64 at `o` as a number (exact below 2^53). */
export function readInt64(buf: Uint8Array, o: number): number {
  const lo = (buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)) >>> 0;
  const hi = buf[o + 4] | (buf[o + 5] << 8) | (buf[o + 6] << 16) | (buf[o + 7] << 24);
  return hi * TWO_32 + lo;
}

/** Writes a 128-bit two's-complement integer: a Decimal128 from a scaled bigint, the reference the tests compare with. */
export function putInt128(buf: Buffer, o: number, v: bigint): number {
  let u = BigInt.asUintN(128, v);
  for (let i = 0; i < 16; i++) {
    buf[o + i] = Number(u & 255n);
    u >>= 8n;
  }
  return o + 16;
}
