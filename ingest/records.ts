/**
 * The log records of one accepted request or batch: one Events record per partition its events hash to, split at the
 * record size limit. Built where the request was read (the main thread or a gateway thread), appended by the log.
 */
import { encodeRecord, MAX_EVENTS_PER_RECORD, partitionFor, RecordKind, type EventTuple } from '../shared/event-record';
import type { Principal } from '../shared/http/auth';

export type PartitionRecord = [partition: number, record: Buffer];

export function encodeEventRecords(p: Principal, receivedMs: number, validated: boolean, events: EventTuple[], partitions: number): PartitionRecord[] {
  const record = (evs: EventTuple[]) => encodeRecord({ kind: RecordKind.Events, account: p.account, livemode: p.livemode, receivedMs, validated, events: evs });
  if (partitions === 1 && events.length <= MAX_EVENTS_PER_RECORD) return [[0, record(events)]];
  const groups = new Map<number, EventTuple[]>();
  for (const e of events) {
    const part = partitions === 1 ? 0 : partitionFor(p.account, e[1], partitions);
    let g = groups.get(part);
    if (!g) groups.set(part, (g = []));
    g.push(e);
  }
  const out: PartitionRecord[] = [];
  for (const [part, evs] of groups) {
    for (let i = 0; i < evs.length; i += MAX_EVENTS_PER_RECORD) {
      out.push([part, record(evs.length <= MAX_EVENTS_PER_RECORD ? evs : evs.slice(i, i + MAX_EVENTS_PER_RECORD))]);
    }
  }
  return out;
}
