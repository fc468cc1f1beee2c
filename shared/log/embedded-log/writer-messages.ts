/**
 * What the embedded log's main side (index.ts) and its writer thread (writer-thread.ts) say to each other.
 */
import type { MessagePort } from 'node:worker_threads';
import type { Segment } from './segment-files';
import type { EmbeddedLogStats } from './types';

export interface WriterThreadInit {
  segmentBytes: number;
  /** A module of EmbeddedLogFaults hooks to load (tests only). */
  faultsModule?: string;
  /** Each partition as recovery left it: the writer continues from its durable end. */
  partitions: Array<{ id: number; dir: string; segments: Segment[]; durableNext: number }>;
}

export type ToWriter =
  /** An append of the main thread; answered with its offset. */
  | { t: 'append'; id: number; partition: number; value: Uint8Array }
  /** A port another thread appends on (append-port.ts). */
  | { t: 'connect'; port: MessagePort }
  /** Answered once nothing is queued or being written. */
  | { t: 'idle'; id: number }
  /** Finish what was received, close the segment files and the ports, then exit. */
  | { t: 'close' };

/**
 * A partition after a durable write: its durable end and active segment (a base the mirror does not know means the
 * writer rotated: the mirror's active segment is sealed at the size it last had), the write's record count and time,
 * and the writer's counters.
 */
export interface DurableMirror {
  partition: number;
  durableNext: number;
  base: number;
  path: string;
  size: number;
  records: number;
  seconds: number;
  counters: EmbeddedLogStats;
}

export type FromWriter =
  | { t: 'ready' }
  | { t: 'failed'; message: string }
  | { t: 'durable'; mirror: DurableMirror }
  /** The writer's counters, when they changed without a durable write (refused appends, failed writes). */
  | { t: 'counters'; counters: EmbeddedLogStats }
  | { t: 'appended'; id: number; offset: number; error: string | null }
  | { t: 'idle'; id: number }
  | { t: 'closed' };
