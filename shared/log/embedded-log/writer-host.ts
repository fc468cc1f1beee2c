/**
 * The main thread's handle on the writer thread (writer-thread.ts): starts it, sends it the main thread's appends,
 * hands out ports for other threads to append on, and passes every durable write to the log's mirror of its
 * partitions (index.ts), and the writer's counters to the log's stats.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MessageChannel, type MessagePort, Worker } from 'node:worker_threads';
import { ServiceUnavailableError } from '../../errors';
import type { EmbeddedLogStats } from './types';
import type { DurableMirror, FromWriter, ToWriter, WriterThreadInit } from './writer-messages';

/**
 * The compiled thread. Tests load this module from its TypeScript source; the thread then runs the build's copy
 * (`npm test` builds first).
 */
function threadFile(): string {
  const beside = path.join(__dirname, 'writer-thread.js');
  if (fs.existsSync(beside)) return beside;
  return path.resolve(__dirname, '../../../dist/shared/log/embedded-log/writer-thread.js');
}

export class WriterThread {
  private readonly appending = new Map<number, { resolve(offset: number): void; reject(err: Error): void }>();
  private readonly idling = new Map<number, () => void>();
  private nextId = 1;
  /** Why appends are refused (closing, or the thread is gone); null while it takes them. */
  private refused: string | null = null;
  private closing: Promise<void> | null = null;
  private onClosed: (() => void) | null = null;

  private constructor(
    private readonly worker: Worker,
    private readonly onDurable: (mirror: DurableMirror) => void,
    private readonly onCounters: (counters: EmbeddedLogStats) => void,
  ) {}

  /**
   * Starts the thread on the partitions as recovery left them; resolves once it has opened their segment files.
   * `onExit` is told if the thread stops without being closed (appends are refused from then on).
   */
  static start(
    init: WriterThreadInit,
    onDurable: (mirror: DurableMirror) => void,
    onCounters: (counters: EmbeddedLogStats) => void,
    onExit: (code: number, error: string | null) => void,
  ): Promise<WriterThread> {
    const worker = new Worker(threadFile(), { workerData: init });
    const host = new WriterThread(worker, onDurable, onCounters);
    return new Promise((resolve, reject) => {
      let started = false;
      worker.on('message', (m: FromWriter) => {
        if (m.t === 'ready') {
          started = true;
          resolve(host);
        } else if (m.t === 'failed') reject(new Error(`the event log's writer could not open its segments: ${m.message}`));
        else host.onMessage(m);
      });
      let failure: string | null = null;
      worker.on('error', (err) => {
        failure = String(err?.stack ?? err);
        if (!started) reject(err);
      });
      worker.on('exit', (code) => {
        const expected = host.closing !== null;
        host.stopped(expected ? 'The event log is closed.' : "The event log's writer stopped.");
        host.onClosed?.();
        if (!started) reject(new Error(`the event log's writer exited (code ${code}) before opening its segments`));
        else if (!expected) onExit(code, failure);
      });
    });
  }

  private onMessage(m: FromWriter): void {
    switch (m.t) {
      case 'durable':
        this.onDurable(m.mirror);
        return;
      case 'counters':
        this.onCounters(m.counters);
        return;
      case 'appended': {
        const w = this.appending.get(m.id);
        if (!w) return;
        this.appending.delete(m.id);
        if (m.error === null) w.resolve(m.offset);
        else w.reject(new ServiceUnavailableError(m.error));
        return;
      }
      case 'idle':
        this.idling.get(m.id)?.();
        this.idling.delete(m.id);
        return;
      default:
        return;
    }
  }

  append(partition: number, value: Buffer): Promise<number> {
    if (this.refused) return Promise.reject(new ServiceUnavailableError(this.refused));
    // A copy in a buffer of its own, transferred: posting a pooled Buffer would clone the whole pool.
    const own = new Uint8Array(value.length);
    own.set(value);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.appending.set(id, { resolve, reject });
      this.post({ t: 'append', id, partition, value: own }, [own.buffer]);
    });
  }

  /** A port another thread appends on (PortAppender); undefined once the thread takes no appends. */
  connect(): MessagePort | undefined {
    if (this.refused || this.closing) return undefined;
    const { port1, port2 } = new MessageChannel();
    this.post({ t: 'connect', port: port2 }, [port2]);
    return port1;
  }

  /** Resolves once everything sent so far has been written (or rejected). */
  idle(): Promise<void> {
    if (this.refused) return Promise.resolve();
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.idling.set(id, resolve);
      this.post({ t: 'idle', id });
    });
  }

  /** Lets the thread finish what it received, close its files and ports, and exit. */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = new Promise<void>((resolve) => {
        if (this.refused) {
          resolve();
          return;
        }
        this.onClosed = resolve;
        this.post({ t: 'close' });
      });
    }
    return this.closing;
  }

  private post(message: ToWriter, transfer: Array<ArrayBuffer | MessagePort> = []): void {
    this.worker.postMessage(message, transfer);
  }

  private stopped(reason: string): void {
    this.refused = reason;
    const appending = [...this.appending.values()];
    this.appending.clear();
    for (const w of appending) w.reject(new ServiceUnavailableError(reason));
    const idling = [...this.idling.values()];
    this.idling.clear();
    for (const w of idling) w();
  }
}
