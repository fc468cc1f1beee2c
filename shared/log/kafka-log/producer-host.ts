/**
 * The Kafka log's handle on its producer thread (producer-thread.ts): starts it on the first port asked for, hands out
 * ports for other threads to append on, passes its durable writes to the log's observer and its counters to the
 * log's stats, and closes it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import type { KafkaLogStats } from './common';
import type { FromProducerThread, ProducerThreadInit, ToProducerThread } from './producer-thread-messages';

/**
 * The compiled thread. Tests load this module from its TypeScript source; the thread then runs the build's copy
 * (`npm test` builds first).
 */
function threadFile(): string {
  const beside = path.join(__dirname, 'producer-thread.js');
  if (fs.existsSync(beside)) return beside;
  return path.resolve(__dirname, '../../../dist/shared/log/kafka-log/producer-thread.js');
}

export interface ProducerThreadEvents {
  durable(records: number, seconds: number): void;
  counters(counters: KafkaLogStats): void;
  /** The thread stopped without being closed: its ports are closed, so their pending appends were refused. */
  exit(code: number, error: string | null): void;
}

export class ProducerThread {
  private stopped = false;
  private closing: Promise<void> | null = null;

  private constructor(private readonly worker: Worker) {}

  static start(init: ProducerThreadInit, events: ProducerThreadEvents): ProducerThread {
    const worker = new Worker(threadFile(), { workerData: init });
    const host = new ProducerThread(worker);
    let failure: string | null = null;
    worker.on('message', (m: FromProducerThread) => {
      if (m.t === 'durable') {
        events.counters(m.counters);
        events.durable(m.records, m.seconds);
      } else if (m.t === 'counters') events.counters(m.counters);
    });
    worker.on('error', (err) => {
      failure = String(err?.stack ?? err);
    });
    worker.on('exit', (code) => {
      host.stopped = true;
      if (host.closing === null) events.exit(code, failure);
    });
    return host;
  }

  /** A port another thread appends on (PortAppender); undefined once the thread takes no appends. */
  connect(): MessagePort | undefined {
    if (this.stopped || this.closing) return undefined;
    const { port1, port2 } = new MessageChannel();
    this.post({ t: 'connect', port: port2 }, [port2]);
    return port1;
  }

  /**
   * Lets the thread answer every append it took, close its ports and its producer, and exit. A thread that has not
   * exited `timeoutMs` after it was asked (kafkajs keeping a connection open, a send that never settles) is terminated:
   * its ports close with it, so what it had not answered is refused, as when the thread dies.
   */
  close(timeoutMs = 20_000): Promise<void> {
    this.closing ??= this.stopped
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const deadline = setTimeout(() => void this.worker.terminate(), timeoutMs);
          this.worker.once('exit', () => {
            clearTimeout(deadline);
            resolve();
          });
          this.post({ t: 'close' });
        });
    return this.closing;
  }

  private post(message: ToProducerThread, transfer: MessagePort[] = []): void {
    this.worker.postMessage(message, transfer);
  }
}
