/**
 * The main thread's side of the gateway threads (see gateway-thread.ts): starts them on one shared listening socket,
 * appends the records they send, runs forwarded requests through the main thread's router, and stops them in order.
 *
 * A gateway thread that dies unexpectedly takes the shared listening socket with it, so the process exits (with code
 * 1, for its supervisor to restart it): every acknowledged event is already durable in the log.
 */
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { ApiError, StripeError } from '../shared/errors';
import { errorResult, type HttpRequest, type HttpResult, type HttpServer } from '../shared/http/server';
import { log } from '../shared/logger';
import type { Services } from '../shared/services';
import { serializeError, type GatewayThreadInit, type StreamSocketStats, type ToMain, type ToThread, type TransferredRecords } from './gateway-messages';
import { STREAM_ACCEPTED } from './meter-events';
import type { RegistrySnapshot } from '../shared/metrics';

export interface GatewayThreadOptions {
  threads: number;
  host: string;
  port: number;
  sessionSecret: Buffer;
  /** The process serves the meter event stream (ROLE all or gateway): the threads take it, appending to the log. */
  serveStream: boolean;
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

export class GatewayThreads {
  private readonly workers: Worker[] = [];
  private closing = false;
  private readonly statsWaiting = new Map<number, (stats: StreamSocketStats) => void>();
  private readonly metricsWaiting = new Map<number, (snapshot: RegistrySnapshot) => void>();
  private nextStatsId = 1;

  constructor(
    private readonly http: HttpServer,
    private readonly s: Services,
  ) {}

  /** Starts the threads; resolves with the port once all of them listen. */
  async start(opts: GatewayThreadOptions): Promise<number> {
    const { config } = this.s;
    const base: Omit<GatewayThreadInit, 'index' | 'fd' | 'logPort'> = {
      host: opts.host,
      port: opts.port,
      maxBodyBytes: config.maxBodyBytes,
      idleTimeoutSeconds: config.httpIdleTimeoutS,
      requestTimeoutSeconds: config.httpRequestTimeoutS,
      sessionSecret: opts.sessionSecret.toString('base64'),
      sessionTtlMs: config.sessionTtlMs,
      partitions: this.s.producer.partitions,
      logLevel: config.logLevel,
      serveStream: opts.serveStream,
    };
    // Only a process that serves the stream appends from its threads (and starts a log thread for them if the log
    // has one).
    const logPort = () => (opts.serveStream ? (this.s.producer.appendPort?.() ?? null) : null);
    const first = await this.spawn({ ...base, index: 0, fd: null, logPort: logPort() });
    await Promise.all(Array.from({ length: opts.threads - 1 }, (_, i) => this.spawn({ ...base, index: i + 1, fd: first.fd, logPort: logPort() })));
    return first.port;
  }

  private spawn(init: GatewayThreadInit): Promise<{ port: number; fd: number }> {
    const worker = new Worker(path.join(__dirname, 'gateway-thread.js'), { workerData: init, transferList: init.logPort ? [init.logPort] : [] });
    this.workers.push(worker);
    return new Promise((resolve, reject) => {
      let listening = false;
      worker.on('message', (message: ToMain) => {
        if (message.t === 'listening') {
          listening = true;
          resolve({ port: message.port, fd: message.fd });
        } else if (message.t === 'failed') reject(new Error(message.message));
        else this.onMessage(worker, message);
      });
      worker.on('error', (err) => log.error('gateway thread failed', { thread: init.index, err: String(err?.stack ?? err) }));
      worker.on('exit', (code) => {
        if (!listening) {
          reject(new Error(`gateway thread ${init.index} exited (code ${code}) before listening`));
          return;
        }
        if (this.closing) return;
        log.error('gateway thread exited; stopping the process (every acknowledged event is durable)', { thread: init.index, code });
        process.exit(1);
      });
    });
  }

  private onMessage(worker: Worker, message: ToMain): void {
    switch (message.t) {
      case 'forward': {
        const { request } = message;
        const req: HttpRequest = { ...request, body: asBuffer(request.body), params: [] };
        Promise.resolve(this.http.handle(req)).then((result) => post(worker, { t: 'result', id: message.id, result }));
        return;
      }
      case 'stream': {
        const { principal, keyed, records } = message;
        const append = async (): Promise<HttpResult> => {
          await this.append(records);
          return STREAM_ACCEPTED;
        };
        (keyed ? this.s.hotIdempotency.runKeyed(principal, keyed, append) : append()).then(
          (result) => post(worker, { t: 'result', id: message.id, result }),
          (err) => post(worker, { t: 'result', id: message.id, result: errorResult(asStripeError(err), 'v2') }),
        );
        return;
      }
      case 'stats':
        this.statsWaiting.get(message.id)?.(message.stats);
        this.statsWaiting.delete(message.id);
        return;
      case 'metrics':
        this.metricsWaiting.get(message.id)?.(message.snapshot);
        this.metricsWaiting.delete(message.id);
        return;
      case 'batch':
        this.append(message.records).then(
          () => post(worker, { t: 'appended', id: message.id, error: null }),
          (err) => post(worker, { t: 'appended', id: message.id, error: serializeError(asStripeError(err)) }),
        );
        return;
      default:
        return;
    }
  }

  /** The WebSocket stream's figures over all threads. */
  async streamStats(): Promise<StreamSocketStats> {
    const all = await Promise.all(
      this.workers.map(
        (worker) =>
          new Promise<StreamSocketStats>((resolve) => {
            const id = this.nextStatsId++;
            this.statsWaiting.set(id, resolve);
            post(worker, { t: 'stats', id });
          }),
      ),
    );
    return {
      connections: all.reduce((n, x) => n + x.connections, 0),
      batchesInFlight: all.reduce((n, x) => n + x.batchesInFlight, 0),
      peakBatchesInFlightPerConnection: Math.max(0, ...all.map((x) => x.peakBatchesInFlightPerConnection)),
    };
  }

  /** Every thread's metric values (one message per thread per scrape; a thread that does not answer in 2 s is left out). */
  async metricSnapshots(): Promise<RegistrySnapshot[]> {
    const all = await Promise.all(
      this.workers.map(
        (worker) =>
          new Promise<RegistrySnapshot | null>((resolve) => {
            const id = this.nextStatsId++;
            const timer = setTimeout(() => {
              this.metricsWaiting.delete(id);
              resolve(null);
            }, 2000);
            this.metricsWaiting.set(id, (snapshot) => {
              clearTimeout(timer);
              resolve(snapshot);
            });
            post(worker, { t: 'metrics', id });
          }),
      ),
    );
    return all.filter((s): s is RegistrySnapshot => s !== null);
  }

  private append(records: TransferredRecords): Promise<unknown> {
    const producer = this.s.producer;
    if (records.length === 1) return producer.append(records[0][0], asBuffer(records[0][1]));
    return Promise.all(records.map(([part, bytes]) => producer.append(part, asBuffer(bytes))));
  }

  /** Each thread stops accepting, answers what it has read (the main thread still serves it), then exits. */
  async close(timeoutMs = 15_000): Promise<void> {
    this.closing = true;
    await Promise.all(
      this.workers.map(
        (worker) =>
          new Promise<void>((resolve) => {
            const timer = setTimeout(() => worker.terminate().then(() => resolve()), timeoutMs);
            worker.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            post(worker, { t: 'close' });
          }),
      ),
    );
  }
}

function post(worker: Worker, message: ToThread): void {
  try {
    worker.postMessage(message);
  } catch {
    // The thread is gone; its client saw the connection close.
  }
}

function asStripeError(err: unknown): StripeError {
  if (err instanceof StripeError) return err;
  log.error('append from a gateway thread failed', { err: String((err as Error)?.stack ?? err) });
  return new ApiError();
}
