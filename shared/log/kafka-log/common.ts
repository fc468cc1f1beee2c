/**
 * What the producer, the consumer and the topic administration of the Kafka driver share: the counters, the view of
 * the log they run against (KafkaLogContext, so that they do not import the entry point), the record size overheads,
 * and small helpers (timeouts, error text).
 */
import type { MessagePort } from 'node:worker_threads';
import type { Admin, Kafka } from 'kafkajs';
import type { DurableWriteObserver, LogConsumer, LogProducer } from '../../log';
import type { ResolvedOptions } from './settings';

/** Record batch header (61 bytes) plus slack; per-record framing is counted with RECORD_OVERHEAD. */
export const BATCH_OVERHEAD = 256;
export const RECORD_OVERHEAD = 32;

export interface KafkaLogStats {
  /** Appends accepted into the producer queue. */
  appends: number;
  /** Appends acknowledged by Kafka. */
  acknowledged: number;
  /** Appends rejected because a send failed (or the producer was closed). */
  rejected: number;
  /** Appends rejected at once because the pending bound was reached. */
  overloaded: number;
  /** Produce requests issued (one per group-commit send). */
  sends: number;
  /** Sends that failed or timed out. */
  sendFailures: number;
  /** kafkajs producers connected (the first one, then one after each failed send). */
  producerConnects: number;
  /** Largest number of records in one send. */
  maxSendRecords: number;
  /** Record value bytes acknowledged. */
  bytes: number;
  /** Records returned by poll(). */
  polled: number;
  /** Records fetched but dropped: below a seek, or fetched again (already queued). */
  skipped: number;
  /** Group joins seen by the consumers. */
  groupJoins: number;
}

/** What the producer and the consumer use of the log that made them. */
export interface KafkaLogContext {
  readonly opts: ResolvedOptions;
  readonly kafka: Kafka;
  readonly admin: Admin;
  readonly topic: string;
  readonly partitions: number;
  /** Largest record value append() takes (from the topic's max.message.bytes). */
  readonly maxRecordBytes: number;
  /** Largest sum of record values (framing estimated) sent to one partition in one request. */
  readonly maxBatchBytes: number;
  readonly counters: KafkaLogStats;
  /** Told of each produce request acknowledged (see EventLog.observeDurableWrites). */
  readonly onDurableWrite: DurableWriteObserver | null;
  removeProducer(p: LogProducer): void;
  removeConsumer(c: LogConsumer): void;
  /** A port on the log's producer thread (KafkaLogOptions.producerThread), or undefined without one. */
  appendPort?(): MessagePort | undefined;
}

/** What a producer uses of the log: the log itself, or its stand-in on the producer thread (producer-thread.ts). */
export type ProducerContext = Pick<
  KafkaLogContext,
  'opts' | 'kafka' | 'topic' | 'partitions' | 'maxRecordBytes' | 'maxBatchBytes' | 'counters' | 'onDurableWrite' | 'removeProducer' | 'appendPort'
>;

export function zeroCounters(): KafkaLogStats {
  return {
    appends: 0,
    acknowledged: 0,
    rejected: 0,
    overloaded: 0,
    sends: 0,
    sendFailures: 0,
    producerConnects: 0,
    maxSendRecords: 0,
    bytes: 0,
    polled: 0,
    skipped: 0,
    groupJoins: 0,
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function errType(err: unknown): string | undefined {
  const e = err as { type?: unknown; errors?: unknown[] } | null;
  if (e && typeof e.type === 'string') return e.type;
  if (e && Array.isArray(e.errors) && e.errors.length > 0) return errType(e.errors[0]);
  return undefined;
}

export function checkOffset(offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset ${offset}`);
}

/** Rejects after `ms`; the timer is cleared when `p` settles. */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}
