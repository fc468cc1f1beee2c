/**
 * Appending to the event log from another thread, through a MessagePort the log's producer hands out
 * (LogProducer.appendPort). The embedded log's writer runs on a thread of its own (embedded-log/writer-thread.ts), so
 * a gateway thread's records reach it and their acknowledgement comes back without passing through the main thread,
 * whose event loop also carries the aggregator's work and would otherwise delay every acknowledgement.
 */
import type { MessagePort } from 'node:worker_threads';
import { ServiceUnavailableError } from '../errors';

/** Records of one request or batch, each in a buffer of its own (transferred, not copied). */
export type PortRecords = Array<[partition: number, record: Uint8Array]>;

/** To the log's thread: append these records; answer once every one of them is durable (or one failed). */
export interface PortAppend {
  id: number;
  records: PortRecords;
}

/**
 * From the log's thread: `error` is null when every record of the append is durable, else the reason. `invalid` marks
 * an append the log can never take (a partition it does not have, a record over its size limit): the producer's own
 * append rejects those with a RangeError, and so does the port; every other failure is a 503 (retry).
 */
export interface PortAppended {
  id: number;
  error: string | null;
  invalid?: boolean;
}

/** The sending side, on the thread that read the records. One append in flight per call; any number of calls. */
export class PortAppender {
  private readonly waiting = new Map<number, { resolve(): void; reject(err: Error): void }>();
  private nextId = 1;
  private closed = false;
  /** Set by close() while appends are still waiting for their answer. */
  private drained: (() => void) | null = null;

  constructor(private readonly port: MessagePort) {
    port.on('message', (reply: PortAppended) => {
      const w = this.waiting.get(reply.id);
      if (!w) return;
      this.waiting.delete(reply.id);
      if (reply.error === null) w.resolve();
      else w.reject(reply.invalid ? new RangeError(reply.error) : new ServiceUnavailableError(reply.error));
      if (this.waiting.size === 0) this.drained?.();
    });
    // The log's thread closes its end only once every append it took is answered (writer-thread.ts): whatever is
    // still waiting then was never taken, so it is not durable and may be refused.
    port.on('close', () => {
      this.closed = true;
      this.failWaiting('The event log is closed.');
      this.drained?.();
    });
  }

  /**
   * Resolves once every record is durable; rejects otherwise (nothing acknowledged): with RangeError for an append
   * the log can never take, with ServiceUnavailableError for the rest.
   * Each record's buffer is transferred: it must own its ArrayBuffer (see ingest's `transferable`, which also gives
   * the transfer list, so the caller need not derive it again).
   */
  append(records: PortRecords, transfer: ArrayBuffer[] = transferList(records)): Promise<void> {
    if (this.closed) return Promise.reject(new ServiceUnavailableError('The event log is closed.'));
    const id = this.nextId++;
    return new Promise<void>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.port.postMessage({ id, records } satisfies PortAppend, transfer);
    });
  }

  /**
   * Refuses new appends, waits for the answers of those already sent, then closes the port. Those are never refused
   * here: the log's thread may still write them, and a 503 for a record that becomes durable would make its client
   * send it again. If the log never answers, neither does this (the caller's own deadline decides).
   */
  close(): Promise<void> {
    this.closed = true;
    return new Promise<void>((resolve) => {
      const done = () => {
        this.drained = null;
        this.port.close();
        resolve();
      };
      if (this.waiting.size === 0) done();
      else this.drained = done;
    });
  }

  private failWaiting(message: string): void {
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) w.reject(new ServiceUnavailableError(message));
  }
}

/** The distinct ArrayBuffers of the records. */
function transferList(records: PortRecords): ArrayBuffer[] {
  return [...new Set(records.map(([, bytes]) => bytes.buffer as ArrayBuffer))];
}
