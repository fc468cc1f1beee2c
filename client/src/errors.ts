/** The Stripe v2 error object the server sends in an `error` message or an HTTP error body. */
export interface StreamErrorObject {
  type: string;
  code?: string;
  message?: string;
  param?: string;
  [key: string]: unknown;
}

/** `send` / `sendBatch` were called while queued plus in-flight events would exceed `maxQueuedEvents`. */
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
  constructor(
    readonly queuedEvents: number,
    readonly maxQueuedEvents: number,
  ) {
    super(`meter event stream queue is full (${queuedEvents} events queued or in flight, maxQueuedEvents ${maxQueuedEvents})`);
  }
}

/** The server rejected the batch holding the event with `retry: false`: nothing of that batch was stored. */
export class BatchRejectedError extends Error {
  override readonly name = 'BatchRejectedError';
  constructor(
    readonly batchId: string,
    readonly error: StreamErrorObject,
  ) {
    super(`batch ${batchId} rejected: ${error.message ?? error.code ?? error.type}`);
  }
}

/** A single event encodes to a frame larger than the server's frame limit (1 MiB), so it can never be sent. */
export class FrameTooLargeError extends Error {
  override readonly name = 'FrameTooLargeError';
  constructor(
    readonly bytes: number,
    readonly maxFrameBytes: number,
  ) {
    super(`a batch holding this single event encodes to ${bytes} bytes, over the frame limit of ${maxFrameBytes} bytes`);
  }
}

/**
 * The connection holding the batch was closed with 1008 (protocol violation) or 1009 (frame too large): the batch is
 * not resent. Also used for `close({ timeoutMs })` expiring and for sends after `close()`.
 */
export class StreamClosedError extends Error {
  override readonly name = 'StreamClosedError';
  constructor(
    message: string,
    readonly code?: number,
    readonly reason?: string,
  ) {
    super(message);
  }
}

/** A failure that came with an HTTP answer: its status and, when the body held one, Stripe's error object. */
abstract class HttpAnswerError extends Error {
  constructor(
    message: string,
    readonly status?: number,
    readonly error?: StreamErrorObject,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** Creating a meter event session failed (`POST /v2/billing/meter_event_session`, or the `session` callback). */
export class SessionError extends HttpAnswerError {
  override readonly name = 'SessionError';
}

/** The WebSocket upgrade or connection failed (e.g. HTTP 401 on the upgrade, network error, no `ready` in time). */
export class StreamConnectionError extends HttpAnswerError {
  override readonly name = 'StreamConnectionError';
}

/** An `error` message from the server that names no batch (`id: null`), or an unreadable server message. */
export class StreamServerError extends Error {
  override readonly name = 'StreamServerError';
  constructor(
    message: string,
    readonly error?: StreamErrorObject,
  ) {
    super(message);
  }
}
