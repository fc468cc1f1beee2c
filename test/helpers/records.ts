/** Log records as the aggregator sees them, for the tests of the stream's record formats. */
import type { ChunkTask } from '../../aggregator/worker';
import type { PartitionRecord } from '../../ingest/records';
import { decodeRecord, type MeterRecord } from '../../shared/event-record';
import type { MeterInfo } from '../../shared/meters';

export function decodeAll(records: PartitionRecord[]): Array<[number, MeterRecord]> {
  return records.map(([part, bytes]) => [part, decodeRecord(bytes)]);
}

/** One partition's records as the aggregator hands them to a worker. */
export function chunk(records: PartitionRecord[], partition: number, meters: MeterInfo[]): ChunkTask {
  const mine = records.filter(([p]) => p === partition).map(([, b]) => b);
  const ends = new Uint32Array(mine.length);
  let n = 0;
  mine.forEach((b, i) => {
    n += b.length;
    ends[i] = n;
  });
  return { partition, firstOffset: 3, data: Buffer.concat(mine), ends, meters, emitFromOffset: 0 };
}
