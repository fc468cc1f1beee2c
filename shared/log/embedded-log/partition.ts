/**
 * One partition of the embedded log: its directory's segments and durable end (shared state), the group-commit writer
 * that appends to them, and the committed offsets that reclaim them. Readers (reader.ts) read the segments directly.
 */
import { PartitionOffsets } from './offsets';
import { recoverPartitionSync } from './recovery';
import { PartitionSegments } from './segment-files';
import type { LogContext } from './types';
import { PartitionWriter } from './writer';

export class LogPartition extends PartitionSegments {
  readonly writer: PartitionWriter;
  readonly offsets: PartitionOffsets;

  /** Recovers the partition in `dir` (synchronously: see recovery.ts); open() the writer before appending. */
  constructor(
    log: LogContext,
    readonly id: number,
    dir: string,
  ) {
    super(dir);
    const recovered = recoverPartitionSync(dir);
    this.segments = recovered.segments;
    this.durableNext = recovered.end;
    this.writer = new PartitionWriter(log, id, this);
    this.offsets = new PartitionOffsets(log, this, recovered.groupOffsets);
  }

  async close(): Promise<void> {
    await this.writer.close();
    await this.offsets.settled();
  }
}
