/**
 * What the Kafka log (index.ts, through producer-host.ts) and its producer thread (producer-thread.ts) say to each
 * other. The appends themselves travel on ports of their own (../append-port.ts).
 */
import type { MessagePort } from 'node:worker_threads';
import type { KafkaLogStats } from './common';
import type { ResolvedOptions } from './settings';

export interface ProducerThreadInit {
  opts: ResolvedOptions;
  topic: string;
  partitions: number;
  maxRecordBytes: number;
  maxBatchBytes: number;
  /** A module of ProducerThreadFaults hooks to load (tests only). */
  faultsModule?: string;
}

/** Test-only hooks of the producer thread. */
export interface ProducerThreadFaults {
  /** Called as each append arrives on a port, before it is taken (a test may end the thread here). */
  beforeAppend?(records: number): void;
}

export type ToProducerThread =
  /** A port another thread appends on. */
  | { t: 'connect'; port: MessagePort }
  /** Refuse new appends, finish those taken, close the ports and the producer, then exit. */
  | { t: 'close' };

export type FromProducerThread =
  /** A produce request Kafka acknowledged (records, seconds), and the thread's counters after it. */
  | { t: 'durable'; records: number; seconds: number; counters: KafkaLogStats }
  /** The thread's counters, when they changed without a durable write (failed sends, refused appends). */
  | { t: 'counters'; counters: KafkaLogStats }
  | { t: 'closed' };
