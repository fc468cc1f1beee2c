/**
 * What the main thread and the gateway threads say to each other (ingest/gateway-thread.ts, ingest/gateway-threads.ts).
 * Gateway threads own the sockets: they parse HTTP and WebSocket frames, verify session tokens, read and encode stream
 * events into log records, and append them on the log's append port where it has one (shared/log/append-port.ts). The
 * main thread owns everything stateful: the log producer, idempotency records, and every other route, which a gateway
 * thread forwards to it as a request and renders the result of.
 */
import type { MessagePort } from 'node:worker_threads';
import { StripeError, type V1ErrorType } from '../shared/errors';
import type { Principal } from '../shared/http/auth';
import type { KeyedRequest } from '../shared/http/idempotency';
import type { ApiFlavor, HttpResult } from '../shared/http/server';
import type { RegistrySnapshot } from '../shared/metrics';

export interface GatewayThreadInit {
  index: number;
  host: string;
  port: number;
  /** The listening socket the first thread opened; the others listen on it too. */
  fd: number | null;
  maxBodyBytes: number;
  idleTimeoutSeconds: number;
  requestTimeoutSeconds: number;
  /** The key that signs meter event session tokens (base64). */
  sessionSecret: string;
  sessionTtlMs: number;
  /** Partitions of the event log: records are built per partition where the events are read. */
  partitions: number;
  /**
   * Whether this process serves the meter event stream (ROLE all or gateway). Without it, stream requests and upgrades
   * are forwarded like every other route, and the main thread's router answers them as it would without threads.
   */
  serveStream: boolean;
  /** The log's append port (LogProducer.appendPort), when it has one: unkeyed stream records are appended on it. */
  logPort: MessagePort | null;
  logLevel: 'debug' | 'info' | 'warn' | 'error';
}

/** An HTTP request as the main thread's router takes it; the body is a copy the thread transferred. */
export interface ForwardedRequest {
  method: string;
  path: string;
  query: string;
  authorization: string;
  contentType: string;
  stripeVersion: string;
  idempotencyKey: string;
  body: Uint8Array;
  requestId: string;
  flavor: ApiFlavor;
}

/** Log records of one request or batch, each in its own transferred buffer. */
export type TransferredRecords = Array<[partition: number, record: Uint8Array]>;

export type ToMain =
  | { t: 'listening'; port: number; fd: number }
  | { t: 'failed'; message: string }
  | { t: 'forward'; id: number; request: ForwardedRequest }
  /** An HTTP stream request, read and encoded: the main thread applies its Idempotency-Key and appends. */
  | { t: 'stream'; id: number; principal: Principal; keyed: KeyedRequest | null; records: TransferredRecords }
  /** A WebSocket batch, read and encoded: the main thread appends it (when the log has no append port). */
  | { t: 'batch'; id: number; records: TransferredRecords }
  | { t: 'stats'; id: number; stats: StreamSocketStats }
  /** This thread's metric values, asked for at each scrape of /metrics. */
  | { t: 'metrics'; id: number; snapshot: RegistrySnapshot }
  | { t: 'closed' };

/** The WebSocket stream's figures, for /healthz. */
export interface StreamSocketStats {
  connections: number;
  batchesInFlight: number;
  peakBatchesInFlightPerConnection: number;
}

export type ToThread =
  | { t: 'result'; id: number; result: HttpResult }
  | { t: 'appended'; id: number; error: SerializedError | null }
  | { t: 'stats'; id: number }
  | { t: 'metrics'; id: number }
  | { t: 'close' };

export interface SerializedError {
  status: number;
  type: V1ErrorType;
  message: string;
  code?: string;
  param?: string;
  shouldRetry?: boolean;
}

export function serializeError(err: StripeError): SerializedError {
  return { status: err.status, type: err.type, message: err.message, code: err.code, param: err.param, shouldRetry: err.shouldRetry };
}

export function deserializeError(e: SerializedError): StripeError {
  return new StripeError(e.status, e.type, e.message, { code: e.code, param: e.param, shouldRetry: e.shouldRetry });
}

/**
 * Each record in a buffer of its own, so that transferring it moves exactly its bytes: a record that already owns its
 * whole ArrayBuffer (JSON records) is transferred as is, a slice of a larger one (msgpackr's) is copied first.
 */
export function transferable(records: Array<[number, Buffer]>): { records: TransferredRecords; transfer: ArrayBuffer[] } {
  const out: TransferredRecords = new Array(records.length);
  const transfer: ArrayBuffer[] = new Array(records.length);
  for (let i = 0; i < records.length; i++) {
    const record = records[i][1];
    let own: Uint8Array = record;
    if (record.byteOffset !== 0 || record.byteLength !== record.buffer.byteLength) {
      own = new Uint8Array(record.length);
      own.set(record);
    }
    out[i] = [records[i][0], own];
    transfer[i] = own.buffer as ArrayBuffer;
  }
  return { records: out, transfer };
}
