/**
 * The event log: the durable hand-off between the gateway and the aggregators. Two drivers implement it: the embedded
 * segment-file log (default mode) and Kafka (distributed mode). The choice is made once at start-up.
 *
 * A record is an opaque Buffer (a msgpackr-encoded batch of events, see event-record.ts). Offsets are per partition,
 * dense, starting at 0, like Kafka's.
 */
import type { MessagePort } from 'node:worker_threads';

export interface LogRecord {
  partition: number;
  offset: number;
  value: Buffer;
}

export interface LogProducer {
  readonly partitions: number;
  /**
   * Appends one record. Resolves with its offset only once it is durable (fsynced, or acknowledged by every in-sync
   * replica). Appends issued close together share one durable write (group commit). Rejects with
   * ServiceUnavailableError when the log cannot take writes; the caller must then not acknowledge the events.
   */
  append(partition: number, value: Buffer): Promise<number>;
  /**
   * A port on which another thread appends without this thread's event loop in the path (append-port.ts), or
   * undefined when the driver has none (Kafka: its producer lives on this thread).
   */
  appendPort?(): MessagePort | undefined;
  close(): Promise<void>;
}

/** Told which partitions a consumer owns, as a consumer group rebalances. */
export interface AssignmentListener {
  /** Runs before poll() returns any record of these partitions: the place to recover state and seek. */
  assigned(partitions: number[]): Promise<void>;
  /** Runs when these partitions are taken away; poll() returns none of their records afterwards. */
  revoked(partitions: number[]): Promise<void>;
}

export interface LogConsumer {
  /**
   * Starts consuming: joins the consumer group (Kafka) or takes every partition (embedded), and reports the assignment
   * and its changes to the listener. Resolves once the first assignment has been handled.
   */
  subscribe(listener: AssignmentListener): Promise<void>;
  /** Partitions this consumer currently owns. */
  assignment(): number[];
  /** Where reading resumes for a partition: the committed offset (next offset to read), 0 when none. */
  committed(partition: number): Promise<number>;
  /** Positions the read cursor of a partition at `offset` (the next record returned has that offset). */
  seek(partition: number, offset: number): void;
  /**
   * Returns up to `maxRecords` durable records in offset order per partition, waiting up to `maxWaitMs` for the first
   * one. Returns [] on timeout or once closed.
   */
  poll(maxRecords: number, maxWaitMs: number): Promise<LogRecord[]>;
  /**
   * Records that everything below `offset` in `partition` is consumed and may be reclaimed. Durable on resolve.
   */
  commit(partition: number, offset: number): Promise<void>;
  close(): Promise<void>;
}

/** Told of each durable write a producer makes: the records it carried and how long it took (seconds). */
export type DurableWriteObserver = (records: number, seconds: number) => void;

export interface EventLog {
  readonly partitions: number;
  /** Registers the observer of durable writes (group commits): the metrics' hook, so drivers stay unaware of them. */
  observeDurableWrites?(observer: DurableWriteObserver): void;
  /** The offset the next durable record of `partition` gets (the log end), for the consumer lag metric. */
  endOffset?(partition: number): number | Promise<number>;
  producer(): LogProducer;
  consumer(group: string): LogConsumer;
  close(): Promise<void>;
}
