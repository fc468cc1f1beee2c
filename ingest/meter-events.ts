/**
 * The meter event endpoints: v1 and v2 single events, the v2 session + stream pair, and adjustments. Each accepted
 * request becomes one log record per partition it touches; the response is sent only once every record is durable
 * (invariant 1). Identifier dedup happens downstream in the aggregators (invariant 2: claim after write).
 */
import type { HttpServer, HttpRequest, HttpResult } from '../shared/http/server';
import { json } from '../shared/http/server';
import { checkApiVersion } from '../shared/versioning/releases';
import { apiEndpoint } from '../shared/http/endpoints';
import type { Services } from '../shared/services';
import type { Principal } from '../shared/http/auth';
import { ParamReader, type Params } from '../shared/wire/form';
import { ownValue } from '../shared/wire/dict';
import { InvalidRequestError, MeterEventError } from '../shared/errors';
import { validateMeterValue } from '../shared/decimal';
import { newId } from '../shared/ids';
import { encodeRecord, partitionFor, RecordKind, type CancelTuple, type EventTuple } from '../shared/event-record';
import type { MeterInfo } from '../shared/meters';
import type { MeterEventSocketServer } from './ws-stream';
import { encodeEventRecords, encodeSocketBatchRecords, encodeStreamRecords, type PartitionRecord, type SocketBatch } from './records';
import { countAccepted, countingRejections, ingestSeries } from '../shared/metrics';
import { checkTimestampRange, generatedIdentifier, missing, parseV2Timestamp, readPayload, readStreamRequest, requireString } from './stream-events';

/** The stream's answer: an empty object, as Stripe's. */
export const STREAM_ACCEPTED: HttpResult = { status: 200, body: '{}' };

const V1_EVENTS = ingestSeries('v1_meter_events');
const V2_EVENTS = ingestSeries('v2_meter_events');
const STREAM = ingestSeries('v2_meter_event_stream');
const ADJUSTMENTS = { v1: ingestSeries('v1_meter_event_adjustments'), v2: ingestSeries('v2_meter_event_adjustments') };

/** Synchronous validation against the meter (v1 and v2 meter_events). */
async function validateAgainstMeter(s: Services, p: Principal, eventName: string, payload: Record<string, string>): Promise<MeterInfo> {
  const meter = await s.meters.resolve(p.account, eventName);
  if (!meter) throw new MeterEventError('no_meter', `A meter must exist to submit events: no meter has event_name '${eventName}'.`, 'event_name');
  if (!meter.active)
    throw new MeterEventError('archived_meter', `The meter must be Active to submit events: the meter '${meter.id}' is inactive.`, 'event_name');
  const customer = ownValue(payload, meter.customerKey);
  if (customer === undefined || customer === '') {
    throw new MeterEventError(
      'payload_no_customer_defined',
      `The payload must have a reference to the customer: payload[${meter.customerKey}] is missing.`,
      `payload[${meter.customerKey}]`,
    );
  }
  const value = ownValue(payload, meter.valueKey);
  if (value === undefined || value === '') {
    if (meter.formula !== 'count') {
      throw new MeterEventError(
        'payload_no_value_defined',
        `The payload must have a value: payload[${meter.valueKey}] is missing.`,
        `payload[${meter.valueKey}]`,
      );
    }
  } else {
    const v = validateMeterValue(value);
    if (!v.ok) throw new MeterEventError('payload_invalid_value', v.message, `payload[${meter.valueKey}]`);
  }
  return meter;
}

/**
 * Appends the events of one request or batch: one record per partition it touches (split at the record size limit),
 * all durable before this resolves.
 */
export async function appendEvents(s: Services, p: Principal, receivedMs: number, validated: boolean, events: EventTuple[]): Promise<void> {
  await appendRecords(s, encodeEventRecords(p, receivedMs, validated, events, s.producer.partitions));
}

/** Appends the records of a WebSocket batch read on the main thread (GATEWAY_THREADS=0). */
export async function appendSocketBatch(s: Services, p: Principal, receivedMs: number, batch: SocketBatch): Promise<void> {
  await appendRecords(s, encodeSocketBatchRecords(p, receivedMs, batch, s.producer.partitions));
}

async function appendRecords(s: Services, records: PartitionRecord[]): Promise<void> {
  if (records.length === 1) await s.producer.append(records[0][0], records[0][1]);
  else await Promise.all(records.map(([part, record]) => s.producer.append(part, record)));
}

async function appendCancel(s: Services, p: Principal, receivedMs: number, cancel: CancelTuple): Promise<void> {
  const part = partitionFor(p.account, cancel[1], s.producer.partitions);
  await s.producer.append(part, encodeRecord({ kind: RecordKind.Adjustments, account: p.account, livemode: p.livemode, receivedMs, cancels: [cancel] }));
}

async function createV1MeterEvent(s: Services, p: Principal, req: HttpRequest, params: Params): Promise<HttpResult> {
  const started = performance.now();
  const r = new ParamReader(params);
  r.assertNoUnknown(['event_name', 'payload', 'identifier', 'timestamp', 'expand']);
  const eventName = r.string('event_name', { required: true, maxLength: 100 })!;
  const payload = r.stringMap('payload', { required: true, maxValueLength: 100 })!;
  const identifier = r.string('identifier', { maxLength: 100 }) || generatedIdentifier(p.account, req.idempotencyKey, 0);
  const nowMs = s.now();
  const ts = r.integer('timestamp', { min: 0 });
  const timestampMs = ts === undefined ? nowMs : ts * 1000;
  if (ts !== undefined) checkTimestampRange(timestampMs, nowMs, 'timestamp');
  await validateAgainstMeter(s, p, eventName, payload);
  await appendEvents(s, p, nowMs, true, [[eventName, identifier, timestampMs, payload]]);
  countAccepted(V1_EVENTS, p.livemode, 1, started);
  return json(200, {
    object: 'billing.meter_event',
    created: Math.floor(nowMs / 1000),
    event_name: eventName,
    identifier,
    livemode: p.livemode,
    payload,
    timestamp: Math.floor(timestampMs / 1000),
  });
}

async function createV2MeterEvent(s: Services, p: Principal, req: HttpRequest, params: Params): Promise<HttpResult> {
  const started = performance.now();
  const body = params as Record<string, unknown>;
  for (const k in body) {
    if (k !== 'event_name' && k !== 'payload' && k !== 'identifier' && k !== 'timestamp') {
      throw new InvalidRequestError(`Received unknown parameter: ${k}`, { code: 'parameter_unknown', param: k });
    }
  }
  const eventName = requireString(body.event_name, 'event_name', 100, true)!;
  const payload = readPayload(body.payload === undefined ? missing('payload') : body.payload, 'payload');
  const identifier = requireString(body.identifier, 'identifier', 100, false) || generatedIdentifier(p.account, req.idempotencyKey, 0);
  const nowMs = s.now();
  const timestampMs = body.timestamp === undefined ? nowMs : parseV2Timestamp(body.timestamp, 'timestamp');
  if (body.timestamp !== undefined) checkTimestampRange(timestampMs, nowMs, 'timestamp');
  await validateAgainstMeter(s, p, eventName, payload);
  await appendEvents(s, p, nowMs, true, [[eventName, identifier, timestampMs, payload]]);
  countAccepted(V2_EVENTS, p.livemode, 1, started);
  return json(200, {
    object: 'v2.billing.meter_event',
    created: new Date(nowMs).toISOString(),
    event_name: eventName,
    identifier,
    livemode: p.livemode,
    payload,
    timestamp: new Date(timestampMs).toISOString(),
  });
}

/** The HTTP stream; the rules of each event are in readStreamEvents. */
async function stream(s: Services, req: HttpRequest): Promise<HttpResult> {
  const started = performance.now();
  const nowMs = s.now();
  const principal = s.auth.sessionToken(req, nowMs);
  if (req.stripeVersion) checkApiVersion(req.stripeVersion);
  return s.hotIdempotency.run(principal, req, async () => {
    const { events, raw } = readStreamRequest(req.body, principal.account, req.idempotencyKey, nowMs);
    await appendRecords(s, encodeStreamRecords(principal, nowMs, events, raw, req.body, s.producer.partitions));
    countAccepted(STREAM, principal.livemode, events.length, started);
    return STREAM_ACCEPTED;
  });
}

async function createAdjustment(s: Services, p: Principal, flavor: 'v1' | 'v2', params: Params): Promise<HttpResult> {
  const started = performance.now();
  let eventName: string;
  let identifier: string | undefined;
  if (flavor === 'v1') {
    const r = new ParamReader(params);
    r.assertNoUnknown(['event_name', 'type', 'cancel', 'expand']);
    eventName = r.string('event_name', { required: true, maxLength: 100 })!;
    r.string('type', { required: true, enum: ['cancel'] });
    const cancel = r.object('cancel');
    if (cancel) {
      cancel.assertNoUnknown(['identifier']);
      identifier = cancel.string('identifier', { maxLength: 100 });
    }
  } else {
    const body = params as Record<string, unknown>;
    for (const k in body) {
      if (k !== 'event_name' && k !== 'type' && k !== 'cancel')
        throw new InvalidRequestError(`Received unknown parameter: ${k}`, { code: 'parameter_unknown', param: k });
    }
    eventName = requireString(body.event_name, 'event_name', 100, true)!;
    const type = requireString(body.type, 'type', 20, true);
    if (type !== 'cancel') throw new InvalidRequestError(`Invalid type: must be one of cancel.`, { param: 'type' });
    const cancel = body.cancel;
    if (cancel === undefined) missing('cancel');
    if (cancel === null || typeof cancel !== 'object' || Array.isArray(cancel))
      throw new InvalidRequestError('Invalid object: cancel must be an object.', { param: 'cancel' });
    for (const k in cancel as object)
      if (k !== 'identifier') throw new InvalidRequestError(`Received unknown parameter: cancel[${k}]`, { code: 'parameter_unknown', param: `cancel[${k}]` });
    identifier = requireString((cancel as Record<string, unknown>).identifier, 'cancel[identifier]', 100, true);
  }
  if (!identifier) {
    throw new MeterEventError(
      'invalid_cancel_configuration',
      'The adjustment configuration is invalid for the adjustment type: cancel[identifier] is required.',
      'cancel[identifier]',
    );
  }
  const meter = await s.meters.resolve(p.account, eventName);
  if (!meter) throw new MeterEventError('no_meter', `A meter must exist to submit events: no meter has event_name '${eventName}'.`, 'event_name');
  const nowMs = s.now();
  await appendCancel(s, p, nowMs, [eventName, identifier]);
  countAccepted(ADJUSTMENTS[flavor], p.livemode, 1, started);
  if (flavor === 'v1') {
    return json(200, {
      object: 'billing.meter_event_adjustment',
      cancel: { identifier },
      event_name: eventName,
      livemode: p.livemode,
      status: 'pending',
      type: 'cancel',
    });
  }
  return json(200, {
    id: newId('mtradj', p.livemode),
    object: 'v2.billing.meter_event_adjustment',
    cancel: { identifier },
    created: new Date(nowMs).toISOString(),
    event_name: eventName,
    livemode: p.livemode,
    status: 'pending',
    type: 'cancel',
  });
}

/** Registers the meter event endpoints; `sockets` serves the WebSocket form of the stream on the stream's path. */
export function registerMeterEventRoutes(http: HttpServer, s: Services, sockets: MeterEventSocketServer): void {
  http.route(
    'POST',
    '/v1/billing/meter_events',
    countingRejections(
      V1_EVENTS.endpoint,
      apiEndpoint(s, (p, req, params) => createV1MeterEvent(s, p, req, params), s.hotIdempotency),
    ),
  );
  http.route(
    'POST',
    '/v2/billing/meter_events',
    countingRejections(
      V2_EVENTS.endpoint,
      apiEndpoint(s, (p, req, params) => createV2MeterEvent(s, p, req, params), s.hotIdempotency),
    ),
  );
  http.route(
    'POST',
    '/v1/billing/meter_event_adjustments',
    countingRejections(
      ADJUSTMENTS.v1.endpoint,
      apiEndpoint(s, (p, _req, params) => createAdjustment(s, p, 'v1', params), s.hotIdempotency),
    ),
  );
  http.route(
    'POST',
    '/v2/billing/meter_event_adjustments',
    countingRejections(
      ADJUSTMENTS.v2.endpoint,
      apiEndpoint(s, (p, _req, params) => createAdjustment(s, p, 'v2', params), s.hotIdempotency),
    ),
  );
  http.route(
    'POST',
    '/v2/billing/meter_event_stream',
    countingRejections(STREAM.endpoint, (req) => stream(s, req)),
  );
  http.upgradeRoute('/v2/billing/meter_event_stream', sockets.handshake);
  registerSessionRoute(http, s);
}

/** Sessions are created through the API role too: clients get their token where they manage meters. */
export function registerSessionRoute(http: HttpServer, s: Services): void {
  http.route(
    'POST',
    '/v2/billing/meter_event_session',
    apiEndpoint(s, (p, _req, params) => {
      for (const k in params) throw new InvalidRequestError(`Received unknown parameter: ${k}`, { code: 'parameter_unknown', param: k });
      const nowMs = s.now();
      const session = s.auth.issueSession(p, newId('mes', p.livemode), nowMs);
      return json(200, {
        id: session.id,
        object: 'v2.billing.meter_event_session',
        authentication_token: session.token,
        created: new Date(session.createdMs).toISOString(),
        expires_at: new Date(session.expiresMs).toISOString(),
        livemode: p.livemode,
      });
    }),
  );
}
