/**
 * The event schema on the log. One log record holds the events of one request that fall into one partition, so a
 * 100-event stream request costs one append (one encode, one frame) rather than a hundred. Records are msgpackr arrays,
 * not objects: no field names on the wire and a cheap decode in the aggregator workers.
 */
import { Packr, Unpackr } from 'msgpackr';
import { newDict } from './wire/dict';

export const RECORD_VERSION = 1;

export const enum RecordKind {
  Events = 1,
  Adjustments = 2,
}

/** [event_name, identifier, timestamp (unix ms), payload] */
export type EventTuple = [string, string, number, Record<string, string>];
/** [event_name, identifier of the event to cancel] */
export type CancelTuple = [string, string];

export interface EventsRecord {
  kind: RecordKind.Events;
  account: string;
  livemode: boolean;
  receivedMs: number;
  /**
   * True when the gateway validated the events synchronously against the meter (v1/v2 meter_events): the aggregator
   * then counts them even if the meter was deactivated in between. Stream events are validated asynchronously.
   */
  validated: boolean;
  events: EventTuple[];
}

export interface AdjustmentsRecord {
  kind: RecordKind.Adjustments;
  account: string;
  livemode: boolean;
  receivedMs: number;
  cancels: CancelTuple[];
}

export type MeterRecord = EventsRecord | AdjustmentsRecord;

// Records mode: a payload shape repeated across a request's events is described once per record, so encoding and
// decoding run ~1.8x faster and records are ~30% smaller than plain maps (measured on 100-event records). Every record
// carries its own definitions (no shared structures), so any process or thread decodes it alone; plain-map records
// written by older versions decode the same way.
const packr = new Packr({ useRecords: true, moreTypes: false });
const unpackr = new Unpackr({ useRecords: true, mapsAsObjects: true });

/**
 * msgpackr decodes a map key `__proto__` as `__proto_` (its guard against prototype pollution), which would silently
 * rename a payload key a meter may be mapped on. Such keys, and keys starting with NUL, are written with one NUL in
 * front and read back without it: a bijection that leaves every other key (all real traffic) untouched.
 */
const ESCAPE = '\u0000';

function needsEscape(key: string): boolean {
  return key.charCodeAt(0) === 0 || key === '__proto__';
}

function escapePayloads(events: EventTuple[]): EventTuple[] {
  let out: EventTuple[] | null = null;
  for (let i = 0; i < events.length; i++) {
    const payload = events[i][3];
    let escaped: Record<string, string> | null = null;
    for (const k of Object.keys(payload)) {
      if (!needsEscape(k)) continue;
      escaped = {};
      for (const key of Object.keys(payload)) escaped[needsEscape(key) ? ESCAPE + key : key] = payload[key];
      break;
    }
    if (escaped) {
      out ??= events.slice();
      out[i] = [events[i][0], events[i][1], events[i][2], escaped];
    }
  }
  return out ?? events;
}

function unescapePayloads(events: EventTuple[]): EventTuple[] {
  for (const e of events) {
    const payload = e[3];
    for (const k in payload) {
      if (k.charCodeAt(0) !== 0) continue;
      const restored = newDict<string>();
      for (const key of Object.keys(payload)) restored[key.charCodeAt(0) === 0 ? key.slice(1) : key] = payload[key];
      e[3] = restored;
      break;
    }
  }
  return events;
}

export function encodeRecord(r: MeterRecord): Buffer {
  if (r.kind === RecordKind.Events) {
    return packr.pack([RECORD_VERSION, r.kind, r.account, r.livemode, r.receivedMs, r.validated, escapePayloads(r.events)]);
  }
  return packr.pack([RECORD_VERSION, r.kind, r.account, r.livemode, r.receivedMs, false, r.cancels]);
}

export function decodeRecord(buf: Uint8Array): MeterRecord {
  const a = unpackr.unpack(buf) as unknown[];
  if (!Array.isArray(a) || a[0] !== RECORD_VERSION) throw new Error(`unsupported log record version ${Array.isArray(a) ? String(a[0]) : typeof a}`);
  const kind = a[1] as RecordKind;
  const account = a[2] as string;
  const livemode = a[3] as boolean;
  const receivedMs = a[4] as number;
  if (kind === RecordKind.Events) {
    return { kind, account, livemode, receivedMs, validated: a[5] as boolean, events: unescapePayloads(a[6] as EventTuple[]) };
  }
  if (kind === RecordKind.Adjustments) return { kind, account, livemode, receivedMs, cancels: a[6] as CancelTuple[] };
  throw new Error(`unknown log record kind ${String(kind)}`);
}

/** How far from the time it is received an event's timestamp may be (Stripe's rule: 35 days back, 5 minutes ahead). */
export const MAX_PAST_MS = 35 * 24 * 3600 * 1000;
export const MAX_FUTURE_MS = 5 * 60 * 1000;

/** Most events one record may hold (the stream's per-request limit). */
export const MAX_EVENTS_PER_RECORD = 100;
/** Most partitions the seq encoding below supports. */
export const MAX_PARTITIONS = 64;

/**
 * A unique, replay-stable number for every event: where it sits in the log. Used as the tie-breaker for `last`, as the
 * key of cancellations, and (per partition) as the sink watermark. Stays below 2^53 for 2^39 records per partition.
 */
export function eventSeq(partition: number, offset: number, index: number): number {
  return (offset * 128 + index) * MAX_PARTITIONS + partition;
}

export function seqOffset(seq: number): number {
  return Math.floor(seq / (128 * MAX_PARTITIONS));
}

/** FNV-1a over the UTF-16 code units; cheap, stable across processes and versions. */
export function hash32(s: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/**
 * Invariant 4: the partition is derived from (account, identifier), so a retried event, its duplicates and the
 * adjustments that cancel it meet in one partition, in order, and no single customer becomes a hot partition.
 */
export function partitionFor(account: string, identifier: string, partitions: number): number {
  if (partitions <= 1) return 0;
  return hash32(identifier, hash32(account)) % partitions;
}
