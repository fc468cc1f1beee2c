/**
 * The log records of one accepted request or batch: one Events record per partition its events hash to, split at the
 * record size limit. Built where the request was read (the main thread or a gateway thread), appended by the log.
 */
import { encodeJsonRecord, encodeRecord, MAX_EVENTS_PER_RECORD, partitionFor, RecordKind, type EventTuple } from '../shared/event-record';
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
  return recordGroups(p.account, events, partitions).map(([part, ...indexes]) => [
    part,
    encodeJsonRecord(header(indexes), Buffer.from(JSON.stringify(indexes.map((i) => raw[i])))),
  ]);
}
