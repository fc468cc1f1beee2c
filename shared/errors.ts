/**
 * One error hierarchy for the whole product. Every failure a client can see is a StripeError; the HTTP layer renders it
 * as Stripe's v1 (`{error:{type,code,message,param}}`) or v2 (`{error:{type?,code,message}}`) error object. The status
 * codes follow Stripe's table because the official clients pick the exception class from the status.
 */
export type V1ErrorType = 'api_error' | 'card_error' | 'idempotency_error' | 'invalid_request_error';

export interface StripeErrorOptions {
  code?: string;
  param?: string;
  /** v2 error objects carry a `type` only for some codes (e.g. temporary_session_expired). */
  v2Type?: string;
  /** Adds `Stripe-Should-Retry` to the response. */
  shouldRetry?: boolean;
  /** Extra headers, e.g. Retry-After on 503. */
  headers?: Record<string, string>;
}

export class StripeError extends Error {
  readonly status: number;
  readonly type: V1ErrorType;
  readonly code?: string;
  readonly param?: string;
  readonly v2Type?: string;
  readonly shouldRetry?: boolean;
  readonly headers?: Record<string, string>;

  constructor(status: number, type: V1ErrorType, message: string, opts: StripeErrorOptions = {}) {
    super(message);
    this.name = new.target.name;
    this.status = status;
    this.type = type;
    this.code = opts.code;
    this.param = opts.param;
    this.v2Type = opts.v2Type;
    this.shouldRetry = opts.shouldRetry;
    this.headers = opts.headers;
  }

  docUrl(): string | undefined {
    return this.code ? `https://docs.stripe.com/error-codes/${this.code.replace(/_/g, '-')}` : undefined;
  }

  toV1Body(): { error: Record<string, unknown> } {
    const error: Record<string, unknown> = { type: this.type, message: this.message };
    if (this.code) error.code = this.code;
    if (this.param) error.param = this.param;
    const doc = this.docUrl();
    if (doc) error.doc_url = doc;
    return { error };
  }

  toV2Body(): { error: Record<string, unknown> } {
    const error: Record<string, unknown> = { code: this.code ?? this.type, message: this.message };
    if (this.v2Type) error.type = this.v2Type;
    const doc = this.docUrl();
    if (doc) error.doc_url = doc;
    return { error };
  }
}

export class InvalidRequestError extends StripeError {
  constructor(message: string, opts: StripeErrorOptions = {}) {
    super(400, 'invalid_request_error', message, opts);
  }
}

export class MissingParamError extends InvalidRequestError {
  constructor(param: string) {
    super(`Missing required param: ${param}.`, { code: 'parameter_missing', param });
  }
}

export class UnknownParamError extends InvalidRequestError {
  constructor(param: string) {
    super(`Received unknown parameter: ${param}`, { code: 'parameter_unknown', param });
  }
}

export class InvalidParamError extends InvalidRequestError {
  constructor(param: string, message: string, code = 'parameter_invalid') {
    super(message, { code, param });
  }
}

export class NotFoundError extends StripeError {
  constructor(message: string, param = 'id', code = 'resource_missing') {
    super(404, 'invalid_request_error', message, { code, param });
  }
}

export class RouteNotFoundError extends StripeError {
  constructor(method: string, path: string) {
    super(
      404,
      'invalid_request_error',
      `Unrecognized request URL (${method}: ${path}). Please see https://docs.stripe.com/api or we can help at https://support.stripe.com/.`,
    );
  }
}

export class AuthenticationError extends StripeError {
  constructor(message: string, opts: StripeErrorOptions = {}) {
    super(401, 'invalid_request_error', message, opts);
  }
}

export class PermissionError extends StripeError {
  constructor(message: string) {
    super(403, 'invalid_request_error', message);
  }
}

export class IdempotencyError extends StripeError {
  constructor(message: string) {
    super(400, 'idempotency_error', message, { v2Type: 'idempotency_error' });
  }
}

export class ConflictError extends StripeError {
  constructor(message: string, code = 'lock_timeout') {
    super(409, 'invalid_request_error', message, { code, shouldRetry: true });
  }
}

export class PayloadTooLargeError extends StripeError {
  constructor(limit: number) {
    super(413, 'invalid_request_error', `Request body is too large: the limit is ${limit} bytes.`, { code: 'request_too_large' });
  }
}

/**
 * A request that breaks HTTP/1.1 itself (RFC 9112): a malformed request line or header, conflicting framing, a coding
 * we do not speak, a limit exceeded. Answered with this status and the connection closed, because after a framing
 * error nothing later on the connection can be trusted to start where we think it does.
 */
export class HttpProtocolError extends StripeError {
  constructor(status: number, message: string) {
    super(status, 'invalid_request_error', message);
  }
}

export class RateLimitError extends StripeError {
  constructor(message: string, code = 'rate_limit') {
    super(429, 'invalid_request_error', message, { code });
  }
}

/** The event log or the store cannot take work right now: the client should retry (invariant 8). */
export class ServiceUnavailableError extends StripeError {
  constructor(message: string, retryAfterSeconds = 1) {
    super(503, 'api_error', message, { shouldRetry: true, headers: { 'Retry-After': String(retryAfterSeconds) } });
  }
}

export class ApiError extends StripeError {
  constructor(message = 'An unknown error occurred while processing your request.') {
    super(500, 'api_error', message);
  }
}

/** v2 meter-event validation errors: Stripe pins the `code`; we answer 400. */
export class MeterEventError extends StripeError {
  constructor(code: string, message: string, param?: string) {
    super(400, 'invalid_request_error', message, { code, param });
  }
}

export class SessionExpiredError extends StripeError {
  constructor() {
    super(401, 'invalid_request_error', 'The temporary session token has expired.', {
      code: 'billing_meter_event_session_expired',
      v2Type: 'temporary_session_expired',
    });
  }
}

/** Thrown by stores when a uniqueness constraint is violated; handlers translate it into a StripeError. */
export class UniqueViolation extends Error {
  constructor(readonly key: string) {
    super(`unique constraint violated: ${key}`);
    this.name = 'UniqueViolation';
  }
}

export function asStripeError(err: unknown): StripeError {
  if (err instanceof StripeError) return err;
  return new ApiError();
}
