/**
 * The log records of one accepted request or batch: one Events record per partition its events hash to, split at the
 * record size limit. Built where the request was read (the main thread or a gateway thread), appended by the log.
 */
import {
  encodeJsonRecord,
  encodeRecord,
  type JsonRecordHeader,
  MAX_EVENTS_PER_RECORD,
  partitionFor,
  RecordKind,
  type EventTuple,
} from '../shared/event-record';
import type { Principal } from '../shared/http/auth';

export type PartitionRecord = [partition: number, record: Buffer];

/** The events' indexes grouped by partition, each group at most one record's worth. */
function recordGroups(account: string, events: EventTuple[], partitions: number): number[][] {
  const groups = new Map<number, number[]>();
  for (let i = 0; i < events.length; i++) {
    const part = partitions === 1 ? 0 : partitionFor(account, events[i][1], partitions);
    let g = groups.get(part);
    if (!g) groups.set(part, (g = []));
    g.push(i);
  }
  const out: number[][] = [];
  for (const [part, indexes] of groups) {
    for (let i = 0; i < indexes.length; i += MAX_EVENTS_PER_RECORD) {
      const slice = indexes.length <= MAX_EVENTS_PER_RECORD ? indexes : indexes.slice(i, i + MAX_EVENTS_PER_RECORD);
      out.push([part, ...slice]);
    }
  }
  return out;
}

export function encodeEventRecords(p: Principal, receivedMs: number, validated: boolean, events: EventTuple[], partitions: number): PartitionRecord[] {
  const record = (evs: EventTuple[]) => encodeRecord({ kind: RecordKind.Events, account: p.account, livemode: p.livemode, receivedMs, validated, events: evs });
  if (partitions === 1 && events.length <= MAX_EVENTS_PER_RECORD) return [[0, record(events)]];
  return recordGroups(p.account, events, partitions).map(([part, ...indexes]) => [part, record(indexes.map((i) => events[i]))]);
}

/** An event sent without a usable identifier: its record names the one the gateway gave it. */
function sentWithoutIdentifier(raw: unknown): boolean {
  const id = (raw as { identifier?: unknown }).identifier;
  return typeof id !== 'string' || id === '';
}

/**
 * The JSON records of a checked stream batch (see encodeJsonRecord): `events` are the batch's events as
 * readStreamEvents returned them and `raw` the list they were read from. When every event goes into one record, its
 * JSON is `body` (the request's bytes, whose `events` member is `raw`), copied once; otherwise each record's share of
 * `raw` is serialized again. Each record is a buffer of its own, ready to be transferred.
 */
export function encodeStreamRecords(
  p: Principal,
  receivedMs: number,
  events: EventTuple[],
  raw: unknown[],
  body: Uint8Array | null,
  partitions: number,
): PartitionRecord[] {
  const header = (indexes: number[] | null) => {
    const generated: Array<[number, string]> = [];
    const n = indexes ? indexes.length : events.length;
    for (let j = 0; j < n; j++) {
      const i = indexes ? indexes[j] : j;
      if (sentWithoutIdentifier(raw[i])) generated.push([j, events[i][1]]);
    }
    return { account: p.account, livemode: p.livemode, receivedMs, validated: false, generated };
  };
  if (body && partitions === 1 && events.length <= MAX_EVENTS_PER_RECORD) return [[0, encodeJsonRecord(header(null), body)]];
  // Split across partitions: each record takes its events' own bytes from the body where they can be found, and only
  // otherwise serializes them again.
  const ranges = body ? eventRanges(body, events.length) : null;
  return recordGroups(p.account, events, partitions).map(([part, ...indexes]) => {
    if (!body || !ranges) return [part, encodeJsonRecord(header(indexes), Buffer.from(JSON.stringify(indexes.map((i) => raw[i]))))];
    return [part, encodeJsonRecord(header(indexes), { source: body, ranges: rangesOf(ranges, indexes) })];
  });
}

/** The [start, end) pairs of the events at `indexes`, out of every event's pairs (eventRanges). */
function rangesOf(ranges: number[], indexes: number[]): number[] {
  const own: number[] = new Array(indexes.length * 2);
  for (let j = 0; j < indexes.length; j++) {
    own[2 * j] = ranges[2 * indexes[j]];
    own[2 * j + 1] = ranges[2 * indexes[j] + 1];
  }
  return own;
}

/** A WebSocket batch read and checked: its events, the list they were read from, and the text frame's bytes. */
export interface SocketBatch {
  events: EventTuple[];
  raw: unknown[];
  /** The JSON text of a text frame; null for a binary (msgpack) frame. */
  text: Buffer | null;
  /** The prefix of the identifiers derived for events sent without one (SocketBatchIdentifiers), or null if none. */
  derivedPrefix: string | null;
}

/**
 * The records of a WebSocket batch. A text frame's become JSON records (format 3) holding its events' own bytes,
 * found by eventRanges; a binary frame's are msgpackr records of event tuples, as before (the JSON text of a msgpack
 * frame would have to be produced by re-encoding it).
 */
export function encodeSocketBatchRecords(p: Principal, receivedMs: number, batch: SocketBatch, partitions: number): PartitionRecord[] {
  const { events, raw, text, derivedPrefix } = batch;
  const ranges = text ? eventRanges(text, events.length) : null;
  if (!text || !ranges) return encodeEventRecords(p, receivedMs, false, events, partitions);
  const record = (indexes: number[]) => {
    const header: JsonRecordHeader = { account: p.account, livemode: p.livemode, receivedMs, validated: false, generated: [] };
    const derived: Array<[number, number]> = [];
    for (let j = 0; j < indexes.length; j++) if (sentWithoutIdentifier(raw[indexes[j]])) derived.push([j, indexes[j]]);
    const own = rangesOf(ranges, indexes);
    if (derived.length > 0) header.derived = { prefix: derivedPrefix!, indexes: derived };
    return encodeJsonRecord(header, { source: text, ranges: own });
  };
  if (partitions === 1) {
    const out: PartitionRecord[] = [];
    for (let start = 0; start < events.length; start += MAX_EVENTS_PER_RECORD) {
      const end = Math.min(events.length, start + MAX_EVENTS_PER_RECORD);
      out.push([0, record(Array.from({ length: end - start }, (_, j) => start + j))]);
    }
    return out;
  }
  return recordGroups(p.account, events, partitions).map(([part, ...indexes]) => [part, record(indexes)]);
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const COMMA = 0x2c;
const EVENTS_KEY = Buffer.from('events');

/**
 * Where each event of a JSON text frame `{..., "events": [{...}, ...]}` is: [start, end) byte offsets, two per event,
 * of the objects in the top-level object's `events` array (the last one, as JSON.parse keeps the last of duplicate
 * keys). Only for text that JSON.parse accepted and whose events readStreamEvents accepted (each an object), so it
 * only follows strings and brackets. Null, and the caller re-encodes, when a top-level key has an escape (it could
 * spell `events`) or the count differs from `expected`.
 */
export function eventRanges(text: Uint8Array, expected: number): number[] | null {
  let depth = 0;
  let expectKey = false;
  let eventsKey = false;
  let inEvents = false;
  let current: number[] = [];
  let found: number[] | null = null;
  let eventStart = 0;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text[i];
    if (c === QUOTE) {
      const start = i + 1;
      let escaped = false;
      for (i = start; i < n && text[i] !== QUOTE; i++) {
        if (text[i] === BACKSLASH) {
          escaped = true;
          i++;
        }
      }
      if (depth === 1 && expectKey) {
        if (escaped) return null;
        eventsKey = i - start === EVENTS_KEY.length && EVENTS_KEY.equals(text.subarray(start, i));
        expectKey = false;
      }
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (depth === 0) expectKey = c === OPEN_BRACE;
      else if (depth === 1 && c === OPEN_BRACKET && eventsKey) {
        inEvents = true;
        current = [];
      } else if (depth === 2 && inEvents && c === OPEN_BRACE) eventStart = i;
      depth++;
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth--;
      if (inEvents && depth === 2 && c === CLOSE_BRACE) current.push(eventStart, i + 1);
      else if (inEvents && depth === 1) {
        inEvents = false;
        found = current;
      }
    } else if (c === COMMA && depth === 1) {
      expectKey = true;
      eventsKey = false;
    }
  }
  return found !== null && found.length === 2 * expected ? found : null;
}
