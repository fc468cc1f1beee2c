/**
 * The HTTP layer: a strict HTTP/1.1 server (parser.ts, connection.ts) that speaks Stripe's conventions: a Request-Id
 * on every response, the Stripe-Version echoed, errors rendered as v1 or v2 error objects, bodies read with a size
 * limit, every request answered in order, and no handler exception ever escaping to crash the process.
 *
 * Why not uWebSockets.js for HTTP: uWS closes a connection when a request arrives while an earlier response on it is
 * still pending ("async pipelining" is refused by design), so a pipelined request behind a meter event (whose answer
 * waits for an fsync) could be stored and never answered. Answering in order needs a connection layer that queues.
 */
import net from 'node:net';
import { newRequestId } from '../ids';
import { ApiError, HttpProtocolError, RouteNotFoundError, StripeError } from '../errors';
import { log } from '../logger';
import { Connection, type ConnectionOwner, type UpgradeTakeover } from './connection';
import { DEFAULT_LIMITS, type HttpLimits, type RequestHead } from './parser';
import { CURRENT_API_VERSION, isKnownVersion } from '../versioning/releases';

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
  /** The API version the body was rendered in, when the handler decided it (else the request's, if valid). */
  stripeVersion?: string;
  /** `application/json` unless set (the /metrics text, the dashboard's assets). */
  contentType?: string;
}

export type RouteHandler = (req: HttpRequest) => Promise<HttpResult> | HttpResult;

/**
 * Decides on an upgrade request (synchronously: nothing else on the connection may be answered before it): returns
 * the function that takes the socket over, or throws a StripeError that is rendered as the HTTP answer.
 */
export type UpgradeHandler = (req: HttpRequest, head: RequestHead) => UpgradeTakeover;

export { CURRENT_API_VERSION } from '../versioning/releases';

const STATUS_TEXT: Record<number, string> = {
  200: '200 OK',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  402: '402 Payment Required',
  403: '403 Forbidden',
  404: '404 Not Found',
  405: '405 Method Not Allowed',
  408: '408 Request Timeout',
  409: '409 Conflict',
  413: '413 Content Too Large',
  414: '414 URI Too Long',
  417: '417 Expectation Failed',
  429: '429 Too Many Requests',
  431: '431 Request Header Fields Too Large',
  500: '500 Internal Server Error',
  501: '501 Not Implemented',
  503: '503 Service Unavailable',
  505: '505 HTTP Version Not Supported',
};

export function json(status: number, value: unknown, headers?: Record<string, string>): HttpResult {
  return { status, body: JSON.stringify(value), headers };
}

export function errorResult(err: StripeError, flavor: ApiFlavor): HttpResult {
  const headers: Record<string, string> = { ...(err.headers ?? {}) };
  if (err.shouldRetry !== undefined) headers['Stripe-Should-Retry'] = String(err.shouldRetry);
  return json(err.status, flavor === 'v2' ? err.toV2Body() : err.toV1Body(), headers);
}

export interface HttpServerOptions extends Partial<HttpLimits> {
  /** Seconds an idle keep-alive connection is kept open; clients are told one less with `Keep-Alive: timeout=N`. */
  idleTimeoutSeconds?: number;
  /** Seconds a client has to send a whole request once it has started one (slow clients get 408). */
  requestTimeoutSeconds?: number;
}

export const DEFAULT_IDLE_TIMEOUT_S = 65;
export const DEFAULT_REQUEST_TIMEOUT_S = 30;
/** Methods with routes; HEAD is GET without the body. */
const ALLOWED_METHODS = 'GET, HEAD, POST, DELETE';
/**
 * HTTP's registered methods (RFC 9110, 5789): those without a route get Stripe's 404 "Unrecognized request URL", as
 * on api.stripe.com; a method outside this list (`FOO`, or `get`: methods are case-sensitive) gets 405 with Allow.
 */
const EMPTY_BODY = Buffer.alloc(0);
const STANDARD_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']);

interface Route {
  segments: string[];
  /** Indexes of `:param` segments. */
  params: number[];
  handler: RouteHandler;
  flavor: ApiFlavor;
}

interface MethodRoutes {
  exact: Map<string, Route>;
  patterns: Route[];
}

export class HttpServer implements ConnectionOwner {
  readonly limits: HttpLimits;
  private readonly server: net.Server;
  private readonly routes = new Map<string, MethodRoutes>();
  private readonly upgrades = new Map<string, UpgradeHandler>();
  private fallbackHandler: RouteHandler | null = null;
  private readonly connections = new Set<Connection>();
  private readonly idleMs: number;
  private readonly requestMs: number;
  private readonly keepAliveHeader: string;
  private sweeper: NodeJS.Timeout | null = null;
  private inFlight = 0;
  private draining: (() => void) | null = null;
  private closing = false;
  private dateHeader = '';
  private dateSecond = 0;

  constructor(options: HttpServerOptions | number = {}) {
    const opts: HttpServerOptions = typeof options === 'number' ? { maxBodyBytes: options } : options;
    this.limits = {
      maxRequestLineBytes: opts.maxRequestLineBytes ?? DEFAULT_LIMITS.maxRequestLineBytes,
      maxHeaderBytes: opts.maxHeaderBytes ?? DEFAULT_LIMITS.maxHeaderBytes,
      maxHeaderCount: opts.maxHeaderCount ?? DEFAULT_LIMITS.maxHeaderCount,
      maxBodyBytes: opts.maxBodyBytes ?? DEFAULT_LIMITS.maxBodyBytes,
    };
    const idleS = Math.max(2, opts.idleTimeoutSeconds ?? DEFAULT_IDLE_TIMEOUT_S);
    this.idleMs = idleS * 1000;
    this.requestMs = Math.max(1, opts.requestTimeoutSeconds ?? DEFAULT_REQUEST_TIMEOUT_S) * 1000;
    this.keepAliveHeader = `Keep-Alive: timeout=${idleS - 1}\r\n`;
    // allowHalfOpen: a client that sends its requests and then shuts its side down still gets every answer.
    this.server = net.createServer({ allowHalfOpen: true, noDelay: true }, (socket) => {
      if (this.closing) {
        socket.destroy();
        return;
      }
      this.connections.add(new Connection(socket, this, Date.now()));
    });
    this.server.on('error', (err) => log.error('http server error', { err: String(err) }));
  }

  route(method: 'GET' | 'POST' | 'DELETE', pattern: string, handler: RouteHandler): this {
    const flavor: ApiFlavor = pattern.startsWith('/v2/') ? 'v2' : 'v1';
    let table = this.routes.get(method);
    if (!table) this.routes.set(method, (table = { exact: new Map(), patterns: [] }));
    const segments = pattern.split('/');
    const params: number[] = [];
    segments.forEach((seg, i) => {
      if (seg.startsWith(':')) params.push(i);
    });
    const route: Route = { segments, params, handler, flavor };
    if (params.length === 0) table.exact.set(pattern, route);
    else table.patterns.push(route);
    return this;
  }

  /** A path whose GET upgrade requests switch protocols (WebSocket); its other requests are routed as usual. */
  upgradeRoute(path: string, handler: UpgradeHandler): this {
    this.upgrades.set(path, handler);
    return this;
  }

  /** ConnectionOwner */
  upgradesTo(head: RequestHead): boolean {
    return !this.closing && this.upgrades.has(head.path);
  }

  /** ConnectionOwner: an accepted upgrade request. */
  upgrade(head: RequestHead): string | UpgradeTakeover {
    const request = this.request(head, EMPTY_BODY);
    try {
      return this.upgrades.get(head.path)!(request, head);
    } catch (err) {
      return this.render(this.failure(err, request), request, false, true);
    }
  }

  private request(head: RequestHead, body: Buffer): HttpRequest {
    const h = head.headers;
    return {
      method: head.method === 'HEAD' ? 'GET' : head.method,
      path: head.path,
      query: head.query,
      params: [],
      authorization: h.authorization ?? '',
      contentType: h['content-type'] ?? '',
      stripeVersion: h['stripe-version'] ?? '',
      idempotencyKey: h['idempotency-key'] ?? '',
      body,
      requestId: newRequestId(),
      flavor: head.path.startsWith('/v2/') ? 'v2' : 'v1',
    };
  }

  private match(method: string, path: string): { route: Route; params: string[] } | null {
    const table = this.routes.get(method);
    if (!table) return null;
    const exact = table.exact.get(path);
    if (exact) return { route: exact, params: [] };
    let segs: string[] | null = null;
    for (const route of table.patterns) {
      segs ??= path.split('/');
      if (segs.length !== route.segments.length) continue;
      let ok = true;
      for (let i = 0; i < segs.length && ok; i++) {
        const want = route.segments[i];
        ok = want.charCodeAt(0) === 58 /* : */ ? segs[i].length > 0 : want === segs[i];
      }
      if (ok) return { route, params: route.params.map((i) => decodePathSegment(segs![i])) };
    }
    return null;
  }

  /** ConnectionOwner: one complete request. */
  dispatch(head: RequestHead, body: Buffer, answer: (response: Buffer | string, close: boolean) => void): void {
    const isHead = head.method === 'HEAD';
    const request = this.request(head, body);
    const { method, flavor } = request;
    const reply = (result: HttpResult) => answer(this.render(result, request, isHead, head.close), head.close);
    if (!STANDARD_METHODS.has(method)) {
      const err = new HttpProtocolError(405, `Method ${method.slice(0, 20)} is not supported on ${head.path.slice(0, 200)}: use GET, HEAD, POST or DELETE.`);
      const result = errorResult(err, flavor);
      result.headers = { ...result.headers, Allow: ALLOWED_METHODS };
      reply(result);
      return;
    }
    this.inFlight++;
    const finish = (result: HttpResult) => {
      this.inFlight--;
      reply(result);
      if (this.inFlight === 0 && this.draining) this.draining();
    };
    const result = this.handle(request);
    if (result instanceof Promise) result.then(finish);
    else finish(result);
  }

  /**
   * Routes one request and runs its handler; never throws or rejects (a failure is its error result). Requests that
   * no route matches go to the fallback if one is set (a gateway thread forwards them to the main thread), else 404.
   */
  handle(request: HttpRequest): Promise<HttpResult> | HttpResult {
    const found = this.match(request.method, request.path);
    let handler: RouteHandler;
    if (found) {
      request.params = found.params;
      request.flavor = found.route.flavor;
      handler = found.route.handler;
    } else if (this.fallbackHandler) handler = this.fallbackHandler;
    else return errorResult(new RouteNotFoundError(request.method, request.path), request.flavor);
    let result: Promise<HttpResult> | HttpResult;
    try {
      result = handler(request);
    } catch (err) {
      return this.failure(err, request);
    }
    if (result instanceof Promise) return result.catch((err) => this.failure(err, request));
    return result;
  }

  /** Handles every request that no route matches. */
  fallback(handler: RouteHandler): this {
    this.fallbackHandler = handler;
    return this;
  }

  /** ConnectionOwner: the answer to what broke the protocol. */
  protocolError(err: HttpProtocolError, head: RequestHead | null, path: string | null): string {
    const flavor: ApiFlavor = (head?.path ?? path ?? '').startsWith('/v2/') ? 'v2' : 'v1';
    const request = { requestId: newRequestId(), stripeVersion: head?.headers['stripe-version'] ?? '', idempotencyKey: '' };
    const result = errorResult(err, flavor);
    if (err.status === 405) result.headers = { ...result.headers, Allow: ALLOWED_METHODS };
    return this.render(result, request, head?.method === 'HEAD', true);
  }

  connectionClosed(conn: Connection): void {
    this.connections.delete(conn);
  }

  private failure(err: unknown, request: HttpRequest): HttpResult {
    if (err instanceof StripeError) return errorResult(err, request.flavor);
    log.error('unhandled error in handler', { path: request.path, requestId: request.requestId, err: String((err as Error)?.stack ?? err) });
    return errorResult(new ApiError(), request.flavor);
  }

  private render(result: HttpResult, request: Pick<HttpRequest, 'requestId' | 'stripeVersion' | 'idempotencyKey'>, isHead: boolean, close: boolean): string {
    // A version that does not exist is never echoed: nothing was rendered in it.
    const version = result.stripeVersion ?? (isKnownVersion(request.stripeVersion) ? request.stripeVersion : CURRENT_API_VERSION);
    let head = `HTTP/1.1 ${STATUS_TEXT[result.status] ?? `${result.status} Status`}\r\nContent-Type: ${result.contentType ?? 'application/json'}\r\nContent-Length: ${Buffer.byteLength(result.body)}\r\nRequest-Id: ${request.requestId}\r\nStripe-Version: ${version}\r\n`;
    if (request.idempotencyKey) head += `Idempotency-Key: ${request.idempotencyKey}\r\n`;
    if (result.headers) for (const k in result.headers) head += `${k}: ${result.headers[k]}\r\n`;
    head += this.date();
    head += close || this.closing ? 'Connection: close\r\n\r\n' : `${this.keepAliveHeader}\r\n`;
    return isHead ? head : head + result.body;
  }

  private date(): string {
    const now = Date.now();
    const second = Math.floor(now / 1000);
    if (second !== this.dateSecond) {
      this.dateSecond = second;
      this.dateHeader = `Date: ${new Date(now).toUTCString()}\r\n`;
    }
    return this.dateHeader;
  }

  /** Idle keep-alive connections are closed after the idle timeout; a request that stalls half-sent gets 408. */
  private sweep(): void {
    const now = Date.now();
    for (const conn of this.connections) {
      if (conn.midRequest) {
        if (now - conn.requestStartMs > this.requestMs) conn.requestTimeout();
      } else if (conn.idle && now - conn.lastActivityMs > this.idleMs) conn.closeIdle();
    }
  }

  /** Listens on host:port, or on a listening socket another thread opened (`fd`), so that threads share a port. */
  listen(host: string, port: number, fd?: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(new Error(`cannot listen on ${host}:${port}: ${err.message}`));
      this.server.once('error', onError);
      const options = fd === undefined ? { host, port, backlog: 1024 } : { fd };
      this.server.listen(options, () => {
        this.server.off('error', onError);
        this.sweeper = setInterval(() => this.sweep(), 1000);
        this.sweeper.unref();
        resolve((this.server.address() as net.AddressInfo).port);
      });
    });
  }

  /** The listening socket's file descriptor, for other threads to listen on (see listen). */
  get listeningFd(): number {
    const handle = (this.server as unknown as { _handle?: { fd?: number } })._handle;
    if (handle?.fd === undefined || handle.fd < 0) throw new Error('the HTTP server has no listening file descriptor');
    return handle.fd;
  }

  /** Stops accepting connections, waits (bounded) for requests in flight, then closes every connection. */
  async close(timeoutMs = 10_000): Promise<void> {
    this.closing = true;
    this.server.close();
    if (this.sweeper) clearInterval(this.sweeper);
    for (const conn of this.connections) conn.closeIdle();
    if (this.inFlight > 0) {
      await new Promise<void>((resolve) => {
        this.draining = resolve;
        setTimeout(resolve, timeoutMs).unref();
      });
    }
    for (const conn of this.connections) conn.closeIdle();
  }
}

/** A path parameter, percent-decoded; a malformed escape is kept as sent (it then matches no object: a 404). */
function decodePathSegment(raw: string): string {
  if (raw.indexOf('%') === -1) return raw;
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}
