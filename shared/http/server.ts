/**
 * A small HTTP layer over uWebSockets.js that speaks Stripe's conventions: a Request-Id on every response, the
 * Stripe-Version echoed, errors rendered as v1 or v2 error objects, bodies read with a size limit, and no handler
 * exception ever escaping to crash the process.
 */
import uWS from '@trufflesuite/uws-js-unofficial';
import { newRequestId } from '../ids';
import { ApiError, PayloadTooLargeError, RouteNotFoundError, StripeError } from '../errors';
import { log } from '../logger';

export type ApiFlavor = 'v1' | 'v2';

export interface HttpRequest {
  method: string;
  path: string;
  query: string;
  params: string[];
  authorization: string;
  contentType: string;
  stripeVersion: string;
  idempotencyKey: string;
  body: Buffer;
  requestId: string;
  flavor: ApiFlavor;
}

export interface HttpResult {
  status: number;
  /** JSON text, already serialized (handlers often serialize once and keep the text for idempotent replays). */
  body: string;
  headers?: Record<string, string>;
}

export type RouteHandler = (req: HttpRequest) => Promise<HttpResult> | HttpResult;

export const CURRENT_API_VERSION = '2026-10-28.endive';

const STATUS_TEXT: Record<number, string> = {
  200: '200 OK',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  402: '402 Payment Required',
  403: '403 Forbidden',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  409: '409 Conflict',
  413: '413 Payload Too Large',
  429: '429 Too Many Requests',
  500: '500 Internal Server Error',
  503: '503 Service Unavailable',
};

export function json(status: number, value: unknown, headers?: Record<string, string>): HttpResult {
  return { status, body: JSON.stringify(value), headers };
}

export function errorResult(err: StripeError, flavor: ApiFlavor): HttpResult {
  const headers: Record<string, string> = { ...(err.headers ?? {}) };
  if (err.shouldRetry !== undefined) headers['Stripe-Should-Retry'] = String(err.shouldRetry);
  return json(err.status, flavor === 'v2' ? err.toV2Body() : err.toV1Body(), headers);
}

type Method = 'get' | 'post' | 'del';

export class HttpServer {
  private readonly app = uWS.App();
  private listenSocket: uWS.us_listen_socket | null = null;
  private inFlight = 0;
  private draining: (() => void) | null = null;

  constructor(private readonly maxBodyBytes: number) {
    this.app.any('/*', (res, req) => {
      const method = req.getMethod().toUpperCase();
      const path = req.getUrl();
      const flavor: ApiFlavor = path.startsWith('/v2/') ? 'v2' : 'v1';
      const requestId = newRequestId();
      const stripeVersion = req.getHeader('stripe-version');
      res.onAborted(() => undefined);
      this.send(res, errorResult(new RouteNotFoundError(method, path), flavor), requestId, stripeVersion, '');
    });
  }

  route(method: 'GET' | 'POST' | 'DELETE', pattern: string, handler: RouteHandler): this {
    const flavor: ApiFlavor = pattern.startsWith('/v2/') ? 'v2' : 'v1';
    const m: Method = method === 'GET' ? 'get' : method === 'POST' ? 'post' : 'del';
    const paramCount = (pattern.match(/\/:/g) ?? []).length;
    this.app[m](pattern, (res, req) => this.guard(res, () => this.accept(res, req, method, flavor, paramCount, handler)));
    return this;
  }

  /** Nothing thrown inside a uWS callback may reach the process: it would crash it. */
  private guard(res: uWS.HttpResponse, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      log.error('request failed before dispatch', { err: String((err as Error)?.stack ?? err) });
      try {
        res.cork(() => res.writeStatus('500 Internal Server Error').writeHeader('Content-Type', 'application/json').end(JSON.stringify(new ApiError().toV1Body()), true));
      } catch {
        /* the connection is gone */
      }
    }
  }

  private accept(res: uWS.HttpResponse, req: uWS.HttpRequest, method: string, flavor: ApiFlavor, paramCount: number, handler: RouteHandler): void {
    {
      // uWS request objects are only valid synchronously: copy everything needed now.
      const params: string[] = [];
      for (let i = 0; i < paramCount; i++) params.push(decodePathSegment(req.getParameter(i)));
      const request: HttpRequest = {
        method,
        path: req.getUrl(),
        query: req.getQuery() ?? '',
        params,
        authorization: req.getHeader('authorization'),
        contentType: req.getHeader('content-type'),
        stripeVersion: req.getHeader('stripe-version'),
        idempotencyKey: req.getHeader('idempotency-key'),
        body: EMPTY,
        requestId: newRequestId(),
        flavor,
      };
      const state = { aborted: false };
      res.onAborted(() => {
        state.aborted = true;
      });
      this.inFlight++;
      if (method === 'GET' || method === 'DELETE') {
        this.dispatch(res, request, handler, state);
        return;
      }
      this.readBody(res, request, handler, state);
    }
  }

  private readBody(res: uWS.HttpResponse, request: HttpRequest, handler: RouteHandler, state: { aborted: boolean }): void {
    let chunks: Buffer[] | null = null;
    let first: Buffer | null = null;
    let size = 0;
    let rejected = false;
    res.onData((ab, isLast) => this.guard(res, () => {
      if (rejected) return;
      size += ab.byteLength;
      if (size > this.maxBodyBytes) {
        rejected = true;
        if (!state.aborted) {
          state.aborted = true;
          this.send(res, errorResult(new PayloadTooLargeError(this.maxBodyBytes), request.flavor), request.requestId, request.stripeVersion, request.idempotencyKey, true);
        }
        this.done();
        return;
      }
      // uWS reuses the ArrayBuffer after this callback returns: copy.
      const chunk = Buffer.from(ab.slice(0));
      if (isLast) {
        if (first === null) request.body = chunk;
        else {
          (chunks ??= [first]).push(chunk);
          request.body = Buffer.concat(chunks, size);
        }
        this.dispatch(res, request, handler, state);
      } else if (first === null) first = chunk;
      else (chunks ??= [first]).push(chunk);
    }));
  }

  private dispatch(res: uWS.HttpResponse, request: HttpRequest, handler: RouteHandler, state: { aborted: boolean }): void {
    let result: Promise<HttpResult> | HttpResult;
    try {
      result = handler(request);
    } catch (err) {
      result = this.failure(err, request);
    }
    if (result instanceof Promise) {
      result.then(
        (r) => this.finish(res, request, r, state),
        (err) => this.finish(res, request, this.failure(err, request), state),
      );
    } else this.finish(res, request, result, state);
  }

  private failure(err: unknown, request: HttpRequest): HttpResult {
    if (err instanceof StripeError) return errorResult(err, request.flavor);
    log.error('unhandled error in handler', { path: request.path, requestId: request.requestId, err: String((err as Error)?.stack ?? err) });
    return errorResult(new ApiError(), request.flavor);
  }

  private finish(res: uWS.HttpResponse, request: HttpRequest, result: HttpResult, state: { aborted: boolean }): void {
    if (!state.aborted) this.send(res, result, request.requestId, request.stripeVersion, request.idempotencyKey);
    this.done();
  }

  private done(): void {
    this.inFlight--;
    if (this.inFlight === 0 && this.draining) this.draining();
  }

  private send(res: uWS.HttpResponse, result: HttpResult, requestId: string, stripeVersion: string, idempotencyKey: string, close = false): void {
    res.cork(() => {
      res.writeStatus(STATUS_TEXT[result.status] ?? `${result.status} Status`);
      res.writeHeader('Content-Type', 'application/json');
      res.writeHeader('Request-Id', requestId);
      res.writeHeader('Stripe-Version', stripeVersion || CURRENT_API_VERSION);
      if (idempotencyKey) res.writeHeader('Idempotency-Key', idempotencyKey);
      if (result.headers) for (const k in result.headers) res.writeHeader(k, result.headers[k]);
      res.end(result.body, close);
    });
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.app.listen(host, port, (socket) => {
        if (!socket) return reject(new Error(`cannot listen on ${host}:${port}`));
        this.listenSocket = socket;
        resolve(uWS.us_socket_local_port(socket as unknown as uWS.us_socket));
      });
    });
  }

  /** Stops accepting connections and waits (bounded) for requests in flight. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (this.listenSocket) uWS.us_listen_socket_close(this.listenSocket);
    this.listenSocket = null;
    if (this.inFlight > 0) {
      await new Promise<void>((resolve) => {
        this.draining = resolve;
        setTimeout(resolve, timeoutMs).unref();
      });
    }
  }
}

const EMPTY = Buffer.alloc(0);

/** A path parameter, percent-decoded; a malformed escape is kept as sent (it then matches no object: a 404). */
function decodePathSegment(raw: string): string {
  if (raw.indexOf('%') === -1) return raw;
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}
