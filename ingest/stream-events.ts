/**
 * Reading meter events from a request body: the parameter rules every meter event endpoint shares, and the one reader
 * of a stream batch that both the HTTP stream and the WebSocket stream use, so that the two accept exactly the same
 * events with exactly the same errors.
 */
import crypto from 'node:crypto';
import { InvalidRequestError, MeterEventError } from '../shared/errors';
import { MAX_EVENTS_PER_RECORD, MAX_FUTURE_MS, MAX_PAST_MS, v2TimestampMs, type EventTuple } from '../shared/event-record';
import { newDict } from '../shared/wire/dict';
import { parseJsonBody } from '../shared/wire/form';

/**
 * An identifier for an event sent without one. With an Idempotency-Key it is derived from the key, so the client's
 * retry of the same request produces the same identifier and the event is still counted once. The HTTP endpoints keep
 * this derivation (one SHA-256 per event) so that a request retried across an upgrade still dedupes against the
 * identifiers an earlier version wrote; the WebSocket stream derives its own (see SocketBatchIdentifiers).
 */
export function generatedIdentifier(account: string, idempotencyKey: string, index: number): string {
  if (!idempotencyKey) return crypto.randomUUID();
  const h = crypto.createHash('sha256').update(`${account}\u0000${idempotencyKey}\u0000${index}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** Gives the identifier of the event at an index of a batch or request, for events sent without one. */
export type IdentifierDerivation = (index: number) => string;

/** The tag that starts every identifier of SocketBatchIdentifiers: the version of the derivation. */
export const SOCKET_IDENTIFIER_TAG = 'ws1-';

/**
 * The identifiers of a WebSocket batch's events sent without one: `ws1-<128 bits of SHA-256(account, batch id), hex>-
 * <index>` (at most 4 + 32 + 1 + 3 = 40 characters). One hash per batch, and only for a batch that needs one; the
 * index is appended, so the same batch resent with the same id gets the same identifiers, and two batches or accounts
 * share none unless their 128-bit hashes collide. Earlier versions hashed every event into a UUID-shaped identifier:
 * a batch stored but not acknowledged by one of them and resent to this one is counted twice (see the README,
 * "What the server guarantees"); the tag keeps the two shapes apart.
 */
export class SocketBatchIdentifiers {
  private base: string | null = null;

  constructor(
    private readonly account: string,
    private readonly batchId: string,
  ) {}

  /** `ws1-<32 hex digits>-`, to which an event's index is appended. */
  get prefix(): string {
    if (this.base === null) {
      const h = crypto.createHash('sha256').update(`${this.account}\u0000ws:${this.batchId}`).digest('hex');
      this.base = `${SOCKET_IDENTIFIER_TAG}${h.slice(0, 32)}-`;
    }
    return this.base;
  }

  readonly derive: IdentifierDerivation = (index) => this.prefix + index;

  /** The prefix, if any identifier was derived. */
  get derivedPrefix(): string | null {
    return this.base;
  }
}

/** v2 timestamps: RFC 3339; a string of digits is taken as unix seconds (what stripe-node sends for a JS Date). */
export function parseV2Timestamp(value: unknown, param: string, integerSeconds = false): number {
  // msgpack has integers: the WebSocket stream takes unix seconds as a number too.
  const ms = v2TimestampMs(value, integerSeconds);
  if (ms !== null) return ms;
  if (typeof value !== 'string' || value === '') throw new InvalidRequestError(`Invalid timestamp: must be an RFC 3339 date-time string.`, { param });
  throw new InvalidRequestError(`Invalid timestamp: ${JSON.stringify(value.slice(0, 40))} is not an RFC 3339 date-time (e.g. 2026-12-05T12:00:00Z).`, {
    param,
  });
}

export function checkTimestampRange(timestampMs: number, nowMs: number, param: string): void {
  if (timestampMs < nowMs - MAX_PAST_MS) {
    throw new MeterEventError('timestamp_too_far_in_past', 'The timestamp must be within the past 35 calendar days.', param);
  }
  if (timestampMs > nowMs + MAX_FUTURE_MS) {
    throw new MeterEventError('timestamp_in_future', 'The timestamp cannot be more than 5 minutes in the future.', param);
  }
}

/** Payload values are strings; JSON numbers are accepted and kept in their decimal text. */
export function readPayload(raw: unknown, param: string): Record<string, string> {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw))
    throw new InvalidRequestError(`Invalid object: ${param} must be a map of strings.`, { param });
  const out = newDict<string>();
  let n = 0;
  for (const k of Object.keys(raw)) {
    const v = (raw as Record<string, unknown>)[k];
    if (typeof v === 'string') out[k] = v;
    else if (typeof v === 'number' && Number.isFinite(v)) out[k] = String(v);
    else throw new InvalidRequestError(`Invalid string: ${param}[${k}] must be a string.`, { param: `${param}[${k}]` });
    if (out[k].length > 100) throw new InvalidRequestError(`Invalid string: ${param}[${k}] must be at most 100 characters.`, { param: `${param}[${k}]` });
    if (++n > 50) throw new InvalidRequestError(`Invalid object: ${param} may have at most 50 keys.`, { param });
  }
  if (n === 0) throw new InvalidRequestError(`Invalid object: ${param} cannot be empty.`, { param });
  return out;
}

export function requireString(v: unknown, param: string, maxLength: number, required: boolean): string | undefined {
  if (v === undefined || v === null) {
    if (required) throw new InvalidRequestError(`Missing required param: ${param}.`, { code: 'parameter_missing', param });
    return undefined;
  }
  if (typeof v !== 'string') throw new InvalidRequestError(`Invalid string: ${param} must be a string.`, { param });
  if (v.length > maxLength) throw new InvalidRequestError(`Invalid string: ${param} must be at most ${maxLength} characters.`, { param });
  if (required && v === '') throw new InvalidRequestError(`Invalid string: ${param} cannot be empty.`, { param });
  return v;
}

export function missing(param: string): never {
  throw new InvalidRequestError(`Missing required param: ${param}.`, { code: 'parameter_missing', param });
}

export interface StreamBatchRules {
  /** Most events one batch may hold. */
  maxEvents: number;
  /** Accept integer unix seconds as timestamps (msgpack frames). */
  integerSeconds: boolean;
}

/**
 * The events of one stream batch, with structural checks only (what cannot even be recorded is refused now); meter,
 * customer, value and timestamp rules are checked asynchronously by the aggregator and reported as v2 core events, as
 * Stripe does. Events without an identifier get the one `derive` gives their index.
 */
export function readStreamEvents(raw: unknown, derive: IdentifierDerivation, nowMs: number, rules: StreamBatchRules): EventTuple[] {
  if (raw === undefined) missing('events');
  if (!Array.isArray(raw)) throw new InvalidRequestError('Invalid array: events must be an array of events.', { param: 'events' });
  if (raw.length === 0) throw new InvalidRequestError('Invalid array: events must contain at least one event.', { param: 'events' });
  if (raw.length > rules.maxEvents) {
    throw new InvalidRequestError(`Invalid array: events can contain at most ${rules.maxEvents} events, got ${raw.length}.`, { param: 'events' });
  }
  const events: EventTuple[] = new Array(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const e = raw[i] as Record<string, unknown>;
    const param = `events[${i}]`;
    if (e === null || typeof e !== 'object' || Array.isArray(e)) throw new InvalidRequestError(`Invalid object: ${param} must be an object.`, { param });
    for (const k in e) {
      if (k !== 'event_name' && k !== 'payload' && k !== 'identifier' && k !== 'timestamp') {
        throw new InvalidRequestError(`Received unknown parameter: ${param}[${k}]`, { code: 'parameter_unknown', param: `${param}[${k}]` });
      }
    }
    const eventName = requireString(e.event_name, `${param}[event_name]`, 100, true)!;
    const payload = readPayload(e.payload === undefined ? missing(`${param}[payload]`) : e.payload, `${param}[payload]`);
    const identifier = requireString(e.identifier, `${param}[identifier]`, 100, false) || derive(i);
    const timestampMs = e.timestamp === undefined ? nowMs : parseV2Timestamp(e.timestamp, `${param}[timestamp]`, rules.integerSeconds);
    events[i] = [eventName, identifier, timestampMs, payload];
  }
  return events;
}

/** The HTTP stream: Stripe's limit of 100 events per request. */
const HTTP_STREAM_RULES: StreamBatchRules = { maxEvents: MAX_EVENTS_PER_RECORD, integerSeconds: false };

/** A stream batch read: the checked events, and the list they were read from, as parsed. */
export interface StreamBatch {
  events: EventTuple[];
  raw: unknown[];
}

/** The events of a `POST /v2/billing/meter_event_stream` body (JSON `{events: [...]}`). */
export function readStreamRequest(body: Buffer, account: string, idempotencyKey: string, nowMs: number): StreamBatch {
  const params = parseJsonBody(body) as Record<string, unknown>;
  for (const k in params) if (k !== 'events') throw new InvalidRequestError(`Received unknown parameter: ${k}`, { code: 'parameter_unknown', param: k });
  const derive = (i: number) => generatedIdentifier(account, idempotencyKey, i);
  return { events: readStreamEvents(params.events, derive, nowMs, HTTP_STREAM_RULES), raw: params.events as unknown[] };
}
