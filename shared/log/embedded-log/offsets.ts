/**
 * Committed offsets and retention of one partition. commit() persists a group's offset atomically (tmp file, fsync,
 * rename, fsync dir) and then deletes segments whose records are all below the LOWEST committed offset among all
 * groups that have ever committed in that partition (so one group cannot reclaim records another group still needs).
 * The active segment is never deleted. A group that never committed does not hold back reclamation; a reader
 * positioned below the oldest retained segment moves to the oldest retained record.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { offsetFileName, type PartitionSegments, type Segment, syncDir } from './segment-files';
import type { LogContext } from './types';

const fsp = fs.promises;

export class PartitionOffsets {
  /** Serializes offset commits per group. */
  private readonly commitChains = new Map<string, Promise<void>>();

  constructor(
    private readonly log: LogContext,
    private readonly files: PartitionSegments,
    /** Committed offsets of every group that has committed here (as recovered at open). */
    private readonly groupOffsets: Map<string, number>,
  ) {}

  async commit(group: string, offset: number): Promise<void> {
    const prev = this.commitChains.get(group) ?? Promise.resolve();
    const next = prev.then(() => this.writeOffsetFile(group, offset));
    const tail = next.catch(() => undefined);
    this.commitChains.set(group, tail);
    void tail.then(() => {
      if (this.commitChains.get(group) === tail) this.commitChains.delete(group);
    });
    await next;
  }

  private async writeOffsetFile(group: string, offset: number): Promise<void> {
    const dir = this.files.dir;
    const file = path.join(dir, offsetFileName(group));
    const tmp = `${file}.tmp`;
    const fh = await fsp.open(tmp, 'w');
    try {
      await fh.writeFile(`${offset}\n`, 'utf8');
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fsp.rename(tmp, file);
    await syncDir(dir);
    this.log.counters.dirSyncs++;
    this.groupOffsets.set(group, offset);
    await this.reclaim();
  }

  /** The committed offset of `group` (the next offset to read), 0 when it never committed. */
  async read(group: string): Promise<number> {
    try {
      const text = await fsp.readFile(path.join(this.files.dir, offsetFileName(group)), 'utf8');
      const value = Number(text.trim());
      if (!Number.isSafeInteger(value) || value < 0) throw new Error(`corrupt offset file for group ${group}`);
      return value;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw err;
    }
  }

  /** Deletes segments whose records are all below the lowest committed offset. Never the active segment. */
  private async reclaim(): Promise<void> {
    if (this.groupOffsets.size === 0) return;
    const floor = Math.min(...this.groupOffsets.values());
    const segments = this.files.segments;
    const doomed: Segment[] = [];
    while (segments.length > 1 && segments[1].base <= floor) {
      const seg = segments.shift() as Segment;
      seg.deleted = true;
      doomed.push(seg);
    }
    for (const seg of doomed) {
      // Readers holding the file open keep reading it; new readers move to the oldest retained segment.
      await fsp.unlink(seg.path).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
      this.log.counters.segmentsDeleted++;
    }
  }

  /** Resolves once the commits in flight have settled. */
  async settled(): Promise<void> {
    await Promise.all(this.commitChains.values());
  }
}
