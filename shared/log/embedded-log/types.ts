/**
 * The embedded log's options, test fault hooks and counters, and what its partitions need from the log. Kept apart
 * from index.ts so that the writer, reader and offset modules depend on these shapes and not on the entry point (no
 * import cycle).
 */
import type { DurableWriteObserver } from '../../log';

export interface EmbeddedLogFaults {
  /** Awaited before each group write; throwing (or rejecting) makes the write fail. Test-only. */
  beforeWrite?(partition: number): void | Promise<void>;
  /** Awaited after the write and before the datasync; throwing (or rejecting) makes the datasync fail. Test-only. */
  beforeSync?(partition: number): void | Promise<void>;
}

export interface EmbeddedLogOptions {
  /** Number of partitions (default: the number already on disk, else 1). Must match what is on disk. */
  partitions?: number;
  /** Segment rotation threshold in bytes (default 64 MiB). */
  segmentBytes?: number;
  /** Size of consumer reads (default 1 MiB). */
  readChunkBytes?: number;
  /** Fault injection for tests (the writers then stay on the opening thread). */
  faults?: EmbeddedLogFaults;
  /**
   * Fault injection for tests of the writer thread: the path of a module whose exports are EmbeddedLogFaults, loaded
   * by that thread (functions cannot be sent to it).
   */
  writerThreadFaults?: string;
  /**
   * Runs the writers on a thread of their own (writer-thread.ts): acknowledgements then wait only for the disk, not
   * for the opening thread's event loop, and other threads can append through `appendPort()`.
   */
  writerThread?: boolean;
  /** Told if the writer thread stops without the log being closed (its exit code, and its error if it threw); appends are refused from then on. */
  onWriterThreadExit?: (code: number, error: string | null) => void;
}

export interface EmbeddedLogStats {
  /** Appends accepted into a queue. */
  appends: number;
  /** Appends resolved (durable). */
  acknowledged: number;
  /** Appends rejected. */
  rejected: number;
  /** Group writes issued (one per group). */
  writes: number;
  /** Data syncs of segment files (one per successful group write). */
  fsyncs: number;
  /** Fsyncs of directories (segment creation, offset commits). */
  dirSyncs: number;
  /** Bytes written durably, framing included. */
  bytes: number;
  /** Segment files deleted by reclamation. */
  segmentsDeleted: number;
}

/** The log-wide settings and hooks a partition's writer and offsets use. */
export interface LogContext {
  readonly segmentBytes: number;
  readonly faults: EmbeddedLogFaults | undefined;
  readonly counters: EmbeddedLogStats;
  /**
   * Write and datasync on the calling thread instead of libuv's pool: only on the writer's own thread, which has no
   * other work to delay, while the pool (shared by every thread of the process) also runs chdb's inserts and queries,
   * which hold a pool thread for tens to hundreds of milliseconds and so queue the log's writes behind them.
   */
  readonly blockingIo?: boolean;
  /** Told of each group's write + datasync (see EventLog.observeDurableWrites). */
  readonly onDurableWrite: DurableWriteObserver | null;
  /** Wakes the consumers waiting for records of `partition`. */
  notifyDurable(partition: number): void;
}
