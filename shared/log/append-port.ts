/**
 * Appending to the event log from another thread, through a MessagePort the log's producer hands out
 * (LogProducer.appendPort). The embedded log's writer (embedded-log/writer-thread.ts) and the Kafka log's producer
 * (kafka-log/producer-thread.ts) run on threads of their own, so a gateway thread's records reach them and their
 * acknowledgement comes back without passing through the main thread, whose event loop also carries the aggregator's
 * work and would otherwise delay every acknowledgement. PortAppender is the sending side, PortAppendServer the log
 * thread's side; CounterReports carries that thread's counters to the log's stats.
 *
 * Both sides coalesce: the appends a thread makes in one turn of its event loop travel as one message, and the answers
 * the log's thread has ready at once (a group commit settles all of its appends together) go back as one message per
 * port. A message costs its sender a serialization and its receiver a wake-up, whatever it carries.
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

/** What travels on the port: the appends of one turn one way, the answers of one turn the other. */
interface PortAppends {
  appends: PortAppend[];
}
interface PortAnswers {
  answers: PortAppended[];
}

/** The sending side, on the thread that read the records. One append in flight per call; any number of calls. */
export class PortAppender {
  private readonly waiting = new Map<number, { resolve(): void; reject(err: Error): void }>();
  private nextId = 1;
  private closed = false;
  /** Set by close() while appends are still waiting for their answer. */
  private drained: (() => void) | null = null;

  /** Appends made in this turn and not yet posted (a flush is scheduled while there are any), with their buffers. */
  private outgoing: PortAppend[] = [];
  private outgoingTransfer: ArrayBuffer[] = [];

  constructor(private readonly port: MessagePort) {
    port.on('message', (message: PortAnswers) => {
      for (const reply of message.answers) {
        this.settle(reply.id, reply.error === null ? null : reply.invalid ? new RangeError(reply.error) : new ServiceUnavailableError(reply.error));
      }
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
      // After the I/O of this turn: every request read in it has made its append by then.
      if (this.outgoing.length === 0) setImmediate(() => this.flush());
      this.outgoing.push({ id, records });
      for (const buffer of transfer) this.outgoingTransfer.push(buffer);
    });
  }

  /** Resolves (err null) or rejects the append `id` if it is still waiting. */
  private settle(id: number, err: Error | null): void {
    const w = this.waiting.get(id);
    if (!w) return;
    this.waiting.delete(id);
    if (err === null) w.resolve();
    else w.reject(err);
  }

  private flush(): void {
    const appends = this.outgoing;
    const transfer = this.outgoingTransfer;
    this.outgoing = [];
    this.outgoingTransfer = [];
    try {
      this.port.postMessage({ appends } satisfies PortAppends, transfer);
    } catch (err) {
      // Nothing of the message was sent (a buffer that cannot be transferred): its appends fail, as they would have
      // one by one, instead of the error escaping the thread's event loop.
      for (const { id } of appends) this.settle(id, err instanceof Error ? err : new Error(String(err)));
      if (this.waiting.size === 0) this.drained?.();
    }
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

/**
 * The receiving side, on the log's thread (the embedded writer thread, the Kafka producer thread): takes the appends
 * that arrive on its ports and answers each once every record of it has settled. Once told to stop, it refuses what
 * arrives and resolves when every append it took has been answered; only then may the ports close (closePorts), so a
 * sender never sees its port close while an append it sent is being written (a refusal then would make its client send
 * a durable record again).
 */
export class PortAppendServer {
  private readonly ports = new Set<MessagePort>();
  private stopping = false;
  private unanswered = 0;
  private answeredAll: (() => void) | null = null;

  /**
   * `appendAll` appends one request's records (rejecting with RangeError what the log can never take);
   * `beforeAppend` is a test hook, called as each append arrives.
   */
  constructor(
    private readonly appendAll: (records: PortRecords) => Promise<unknown>,
    private readonly beforeAppend?: (records: number) => void,
  ) {}

  /** Whether appends are refused (stop() was called). */
  get closing(): boolean {
    return this.stopping;
  }

  connect(port: MessagePort): void {
    this.ports.add(port);
    port.on('message', (message: PortAppends) => {
      for (const m of message.appends) {
        // Counted until its answer is posted, so that stop() resolves only once every answer is on its way.
        this.unanswered++;
        if (this.stopping) {
          this.answer(port, { id: m.id, error: CLOSED });
          continue;
        }
        let appended: Promise<unknown>;
        try {
          this.beforeAppend?.(m.records.length);
          appended = this.appendAll(m.records);
        } catch (err) {
          appended = Promise.reject(err);
        }
        appended.then(
          () => this.answer(port, { id: m.id, error: null }),
          (err: unknown) => this.answer(port, { id: m.id, error: err instanceof Error ? err.message : String(err), invalid: err instanceof RangeError }),
        );
      }
    });
    port.on('close', () => this.ports.delete(port));
  }

  /**
   * Answers per port (a post is scheduled while there are any), posted together once the appends settled at the same
   * moment (a group commit resolves all of its appends in one go) have all been answered. A microtask, not the next turn: the log's writer does its I/O
   * synchronously, and another partition's write in the same turn would otherwise hold these answers back.
   */
  private readonly answers = new Map<MessagePort, PortAppended[]>();

  private answer(port: MessagePort, answer: PortAppended): void {
    if (this.answers.size === 0) queueMicrotask(() => this.postAnswers());
    const pending = this.answers.get(port);
    if (pending) pending.push(answer);
    else this.answers.set(port, [answer]);
  }

  private postAnswers(): void {
    let posted = 0;
    for (const [port, answers] of this.answers) {
      port.postMessage({ answers } satisfies PortAnswers);
      posted += answers.length;
    }
    this.answers.clear();
    this.unanswered -= posted;
    if (posted > 0 && this.unanswered === 0) this.answeredAll?.();
  }

  /** Refuses what arrives from now on; resolves once every append taken has been answered. */
  stop(): Promise<void> {
    this.stopping = true;
    return new Promise<void>((resolve) => {
      if (this.unanswered === 0) resolve();
      else this.answeredAll = resolve;
    });
  }

  /** Closes every port (after stop() resolved). */
  closePorts(): void {
    for (const port of this.ports) port.close();
  }
}

const CLOSED = 'The event log is closed.';

/** A record's bytes as the log takes them: a Buffer over the same memory (anything else as it is, for the log to refuse). */
export function recordBuffer(bytes: Uint8Array): Buffer {
  if (Buffer.isBuffer(bytes) || !(bytes instanceof Uint8Array)) return bytes as Buffer;
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * The counters of a log's thread, sent to the opening thread when they change: with each durable write (snapshot(),
 * which the write's message carries) and otherwise once a second (refused appends and failed writes change them
 * without a durable write), and a last time on stop().
 */
export class CounterReports<T extends object> {
  private sent = '';
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly counters: T,
    private readonly send: (counters: T) => void,
    everyMs = 1000,
  ) {
    this.timer = setInterval(() => this.report(), everyMs);
    this.timer.unref();
  }

  /** A copy of the counters for a message that carries them: they count as sent. */
  snapshot(): T {
    this.sent = JSON.stringify(this.counters);
    return { ...this.counters };
  }

  /** Sends the counters if they changed since they were last sent. */
  report(): void {
    if (JSON.stringify(this.counters) !== this.sent) this.send(this.snapshot());
  }

  stop(): void {
    clearInterval(this.timer);
    this.report();
  }
}

/** The distinct ArrayBuffers of the records. */
function transferList(records: PortRecords): ArrayBuffer[] {
  return [...new Set(records.map(([, bytes]) => bytes.buffer as ArrayBuffer))];
}
