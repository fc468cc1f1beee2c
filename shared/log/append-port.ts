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

/** From the log's thread: `error` is null when every record of the append is durable, else the reason (a 503's message). */
export interface PortAppended {
  id: number;
  error: string | null;
}

/** The sending side, on the thread that read the records. One append in flight per call; any number of calls. */
export class PortAppender {
  private readonly waiting = new Map<number, { resolve(): void; reject(err: Error): void }>();
  private nextId = 1;
  private closed = false;

  constructor(private readonly port: MessagePort) {
    port.on('message', (reply: PortAppended) => {
      const w = this.waiting.get(reply.id);
      if (!w) return;
      this.waiting.delete(reply.id);
      if (reply.error === null) w.resolve();
      else w.reject(new ServiceUnavailableError(reply.error));
    });
    // The log's thread closes its end when the log closes: whatever is still waiting was not made durable.
    port.on('close', () => {
      this.closed = true;
      this.failWaiting('The event log is closed.');
    });
  }

  /**
   * Resolves once every record is durable; rejects with ServiceUnavailableError otherwise (nothing acknowledged).
   * Each record's buffer is transferred: it must own its ArrayBuffer (see ingest's `transferable`).
   */
  append(records: PortRecords): Promise<void> {
    if (this.closed) return Promise.reject(new ServiceUnavailableError('The event log is closed.'));
    const id = this.nextId++;
    const transfer = [...new Set(records.map(([, bytes]) => bytes.buffer as ArrayBuffer))];
    return new Promise<void>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.port.postMessage({ id, records } satisfies PortAppend, transfer);
    });
  }

  close(): void {
    this.closed = true;
    this.port.close();
    this.failWaiting('The event log is closed.');
  }

  private failWaiting(message: string): void {
    const waiting = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of waiting) w.reject(new ServiceUnavailableError(message));
  }
}
