/**
 * A gateway thread: one of GATEWAY_THREADS threads that share the listening socket. It does the per-event work of the
 * meter event stream where the bytes arrive (HTTP parsing, WebSocket frames, session token checks, JSON or msgpack
 * decoding, the structural checks, encoding the log records). The encoded records go to the log's own append port
 * when it has one (the embedded log's writer thread), else to the main thread, which also takes every stream request
 * with an Idempotency-Key. Every other request is forwarded to the main thread's router as is and its result rendered
 * here, so every route answers exactly as it does without threads.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ApiError } from '../shared/errors';
import { Authenticator, type Principal } from '../shared/http/auth';
import { keyedRequest } from '../shared/http/idempotency';
import { checkApiVersion } from '../shared/versioning/releases';
import { HttpServer, type HttpRequest, type HttpResult } from '../shared/http/server';
import { log } from '../shared/logger';
import { deserializeError, transferable, type GatewayThreadInit, type ToMain, type ToThread, type TransferredRecords } from './gateway-messages';
import { encodeSocketBatchRecords, encodeStreamRecords, type SocketBatch } from './records';
import { readStreamRequest } from './stream-events';
import { MeterEventSocketServer } from './ws-stream';
import { countAccepted, countingRejections, ingestSeries, registry, trackEventLoop } from '../shared/metrics';
import { countedPortAppend } from '../shared/metrics/drivers';
import { PortAppender } from '../shared/log/append-port';
import { STREAM_ACCEPTED } from './meter-events';

export const STREAM_PATH = '/v2/billing/meter_event_stream';

function main(): void {
  const port = parentPort;
  if (!port) throw new Error('gateway-thread.js runs as a worker thread of meterd');
  const init = workerData as GatewayThreadInit;
  log.setLevel(init.logLevel);
  trackEventLoop(`gateway-${init.index}`);
  const auth = new Authenticator([], Buffer.from(init.sessionSecret, 'base64'), init.sessionTtlMs);
  const waiting = new Map<number, (reply: ToThread) => void>();
  let nextId = 1;

  function call(message: ToMain, transfer: ArrayBuffer[] = []): Promise<ToThread> {
    return new Promise((resolve) => {
      waiting.set((message as { id: number }).id, resolve);
      port!.postMessage(message, transfer);
    });
  }

  async function forward(req: HttpRequest): Promise<HttpResult> {
    const body = new Uint8Array(req.body.length);
    body.set(req.body);
    const { params: _params, body: _body, ...rest } = req;
    const reply = await call({ t: 'forward', id: nextId++, request: { ...rest, body } }, [body.buffer]);
    return reply.t === 'result' ? reply.result : { status: 500, body: JSON.stringify(new ApiError().toV1Body()) };
  }

  // The log's own port when it has one (the embedded log's writer thread): records go straight to the writer and the
  // acknowledgement straight back, without waiting for the main thread's event loop.
  const appender = init.logPort ? new PortAppender(init.logPort) : null;
  const appendDirect = (a: PortAppender, records: TransferredRecords, transfer: ArrayBuffer[]) => {
    let bytes = 0;
    for (const [, record] of records) bytes += record.length;
    return countedPortAppend(records.length, bytes, () => a.append(records, transfer));
  };

  async function appendBatch(principal: Principal, receivedMs: number, batch: SocketBatch): Promise<void> {
    const { records, transfer } = transferable(encodeSocketBatchRecords(principal, receivedMs, batch, init.partitions));
    if (appender) return appendDirect(appender, records, transfer);
    const reply = await call({ t: 'batch', id: nextId++, records }, transfer);
    if (reply.t === 'appended' && reply.error) throw deserializeError(reply.error);
  }

  const http = new HttpServer({
    maxBodyBytes: init.maxBodyBytes,
    idleTimeoutSeconds: init.idleTimeoutSeconds,
    requestTimeoutSeconds: init.requestTimeoutSeconds,
  });
  const sockets = new MeterEventSocketServer(auth, appendBatch);
  const streamSeries = ingestSeries('v2_meter_event_stream');
  if (init.serveStream) serveStream();
  http.fallback(forward);

  function serveStream(): void {
    http.route(
      'POST',
      STREAM_PATH,
      countingRejections(streamSeries.endpoint, async (req) => {
        const started = performance.now();
        const nowMs = Date.now();
        const principal = auth.sessionToken(req, nowMs);
        if (req.stripeVersion) checkApiVersion(req.stripeVersion);
        const { events, raw } = readStreamRequest(req.body, principal.account, req.idempotencyKey, nowMs);
        const keyed = req.idempotencyKey ? keyedRequest(req) : null;
        const { records, transfer } = transferable(encodeStreamRecords(principal, nowMs, events, raw, req.body, init.partitions));
        if (appender && !keyed) {
          await appendDirect(appender, records, transfer);
          countAccepted(streamSeries, principal.livemode, events.length, started);
          return STREAM_ACCEPTED;
        }
        const reply = await call({ t: 'stream', id: nextId++, principal, keyed, records }, transfer);
        if (reply.t !== 'result') throw new ApiError();
        const { result } = reply;
        // A replayed answer (Idempotency-Key) stored nothing new; an error answer was rendered by the main thread.
        if (result.status === 200 && !result.headers?.['Idempotent-Replayed']) countAccepted(streamSeries, principal.livemode, events.length, started);
        return result;
      }),
    );
    http.upgradeRoute(STREAM_PATH, sockets.handshake);
  }

  port.on('message', (message: ToThread) => {
    if (message.t === 'metrics') {
      registry.snapshot().then((snapshot) => port.postMessage({ t: 'metrics', id: message.id, snapshot } satisfies ToMain));
      return;
    }
    if (message.t === 'stats') {
      port.postMessage({ t: 'stats', id: message.id, stats: sockets.snapshot() } satisfies ToMain);
      return;
    }
    if (message.t === 'close') {
      Promise.all([http.close(), sockets.close()])
        .catch((err) => log.error('gateway thread close failed', { err: String(err) }))
        // Appends still in flight (requests the close gave up waiting for) get their answers before the port closes;
        // the main thread's deadline for this thread bounds the wait.
        .then(() => appender?.close())
        .finally(() => {
          port.postMessage({ t: 'closed' } satisfies ToMain);
          port.close();
        });
      return;
    }
    const resolve = waiting.get(message.id);
    if (resolve) {
      waiting.delete(message.id);
      resolve(message);
    }
  });

  http.listen(init.host, init.port, init.fd ?? undefined).then(
    (listening) => port.postMessage({ t: 'listening', port: listening, fd: init.fd ?? http.listeningFd } satisfies ToMain),
    (err) => {
      port.postMessage({ t: 'failed', message: String((err as Error)?.message ?? err) } satisfies ToMain);
      port.close();
    },
  );
}

/** The error of an answer the main thread rendered, for counting it by code. */
main();
