/**
 * meterd's metrics: every family, defined once for every role and thread (README, "Metrics", lists them all).
 * Each thread that loads this module has its own values; the main thread renders them with the gateway threads'
 * snapshots (registry.ts).
 */
import { performance } from 'node:perf_hooks';
import { collectDefaultMetrics } from 'prom-client';
import type { HttpResult, RouteHandler } from '../http/server';
import { Counter, type CounterChild, Gauge, Histogram, type HistogramChild, MetricsRegistry } from './registry';

export { MetricsRegistry, type RegistrySnapshot } from './registry';

export const registry = new MetricsRegistry();

/** Latency buckets in seconds: 0.25 ms to 10 s, for acks, appends and fsyncs. */
export const LATENCY_BUCKETS = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Durations of work that takes longer: flushes, freshness, webhook attempts (1 ms to 60 s). */
const SLOW_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60];
const SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/** The meter event endpoints, as the `endpoint` label names them. */
export type IngestEndpoint =
  | 'v1_meter_events'
  | 'v2_meter_events'
  | 'v2_meter_event_stream'
  | 'v2_meter_event_stream_ws'
  | 'v1_meter_event_adjustments'
  | 'v2_meter_event_adjustments';

export const metrics = {
  eventsAccepted: registry.add(
    new Counter('meterd_events_accepted_total', 'Meter events (and adjustments) accepted: durable in the event log and acknowledged.', [
      'endpoint',
      'livemode',
    ]),
  ),
  batchesAccepted: registry.add(
    new Counter('meterd_batches_accepted_total', 'Requests (or WebSocket batches) of meter events accepted.', ['endpoint', 'livemode']),
  ),
  rejected: registry.add(
    new Counter('meterd_requests_rejected_total', 'Requests (or WebSocket batches) of meter events rejected, by error code; nothing of them was stored.', [
      'endpoint',
      'code',
    ]),
  ),
  ackLatency: registry.add(
    new Histogram(
      'meterd_ack_latency_seconds',
      'From a request (or batch) read to its answer: the synchronous checks, the log append and its fsync (or Kafka acks).',
      ['endpoint'],
      LATENCY_BUCKETS,
    ),
  ),
  summaryReads: registry.add(
    new Counter('meterd_summary_reads_total', 'Meter event summary reads: one per customer and range asked for (summary requests, invoice lines).'),
  ),
  summaryQueries: registry.add(
    new Counter(
      'meterd_summary_queries_total',
      'Analytics store queries that answered the summary reads: concurrent reads of one meter and range share one query.',
    ),
  ),
  idempotencyReplays: registry.add(new Counter('meterd_idempotency_replays_total', 'Saved answers replayed for a retried Idempotency-Key.', ['store'])),
  logAppends: registry.add(new Counter('meterd_log_appends_total', 'Records appended to the event log (one per request or batch and partition).')),
  logAppendBytes: registry.add(new Counter('meterd_log_append_bytes_total', 'Bytes of the records appended to the event log.')),
  logAppendSeconds: registry.add(
    new Histogram(
      'meterd_log_append_seconds',
      'From an append to the record being durable (group commit wait, write, fsync or Kafka acks=all).',
      [],
      LATENCY_BUCKETS,
    ),
  ),
  logErrors: registry.add(
    new Counter('meterd_log_errors_total', 'Failed event log operations (the Kafka client in the distributed mode), by operation.', ['operation']),
  ),
  logGroupCommitRecords: registry.add(
    new Histogram(
      'meterd_log_group_commit_records',
      'Records written per durable write: per fdatasync of the embedded log, per produce request to Kafka.',
      [],
      SIZE_BUCKETS,
    ),
  ),
  logSyncSeconds: registry.add(
    new Histogram(
      'meterd_log_sync_seconds',
      'Time of one durable write: write + fdatasync of a group (embedded), one produce request with acks=all (Kafka).',
      [],
      LATENCY_BUCKETS,
    ),
  ),
  consumerLag: registry.add(
    new Gauge('meterd_consumer_lag_records', 'Log records of a partition not yet stored by the aggregator owning it (log end offset − stored watermark).', [
      'partition',
    ]),
  ),
  consumerOffset: registry.add(new Gauge('meterd_consumer_offset', 'Per owned partition: the next offset the aggregator reads.', ['partition'])),
  storedOffset: registry.add(
    new Gauge('meterd_aggregator_stored_offset', 'Per owned partition: the offset below which everything is in the analytics store (the watermark).', [
      'partition',
    ]),
  ),
  dedupIdentifiers: registry.add(
    new Gauge(
      'meterd_dedup_index_identifiers',
      'Per owned partition: identifiers held by the dedup index, in memory and in runs on disk (those received within the dedup window).',
      ['partition'],
    ),
  ),
  dedupBytes: registry.add(
    new Gauge('meterd_dedup_index_bytes', 'Per owned partition: memory of the dedup index: its tables and the filter of its runs on disk.', ['partition']),
  ),
  dedupRuns: registry.add(
    new Gauge('meterd_dedup_index_runs', 'Per owned partition: runs of identifiers the dedup index keeps on disk (DEDUP_MEMORY_IDENTIFIERS).', ['partition']),
  ),
  eventsStored: registry.add(new Counter('meterd_aggregator_events_stored_total', 'Events counted into the analytics store (after dedup).')),
  flushSeconds: registry.add(
    new Histogram('meterd_aggregator_flush_seconds', 'Time of one aggregator flush: the raw, cancellation and rollup inserts.', [], SLOW_BUCKETS),
  ),
  flushRows: registry.add(new Counter('meterd_aggregator_flush_rows_total', 'Rows inserted into the analytics store by flushes, by table.', ['table'])),
  freshness: registry.add(
    new Histogram(
      'meterd_aggregator_freshness_seconds',
      'Per flush: from the oldest event it holds being received to that event being in its summary.',
      [],
      SLOW_BUCKETS,
    ),
  ),
  dedupHits: registry.add(new Counter('meterd_aggregator_dedup_hits_total', 'Events dropped as duplicates of an identifier seen within the dedup window.')),
  cancellations: registry.add(new Counter('meterd_aggregator_cancellations_total', 'Events cancelled by an adjustment (applied to the summaries).')),
  validationErrors: registry.add(
    new Counter('meterd_aggregator_validation_errors_total', 'Streamed events invalid against their meter (asynchronous validation), by error code.', ['code']),
  ),
  analyticsErrors: registry.add(
    new Counter('meterd_clickhouse_errors_total', 'Failed ClickHouse operations (chdb or the server), by operation.', ['operation']),
  ),
  webhookAttempts: registry.add(new Counter('meterd_webhook_attempts_total', 'Webhook delivery attempts, by result (success: a 2xx answer).', ['result'])),
  webhookDeliveries: registry.add(
    new Counter(
      'meterd_webhook_deliveries_total',
      'Webhook deliveries finished, by outcome: delivered, abandoned (attempts exhausted), dropped (endpoint disabled or deleted).',
      ['outcome'],
    ),
  ),
  webhookRetries: registry.add(new Counter('meterd_webhook_retries_total', 'Failed webhook attempts rescheduled with backoff.')),
  webhookSeconds: registry.add(new Histogram('meterd_webhook_attempt_seconds', 'Time of one webhook delivery attempt.', [], SLOW_BUCKETS)),
  streamConnections: registry.add(new Gauge('meterd_stream_connections', 'Open WebSocket stream connections.')),
  streamBatchesInFlight: registry.add(new Gauge('meterd_stream_batches_in_flight', 'WebSocket batches read and not yet answered.')),
  eventLoopBusy: registry.add(
    new Counter('meterd_event_loop_busy_seconds_total', "Time a thread's event loop was busy (rate() of it is the thread's utilization).", ['thread']),
  ),
  info: registry.add(new Gauge('meterd_info', 'Always 1: the role and mode of this process.', ['role', 'mode'])),
};

/** The bound series of one ingest endpoint: counting on the request path is then one add on a field. */
export interface IngestSeries {
  /** Index 0: test mode, 1: live mode. */
  events: [CounterChild, CounterChild];
  batches: [CounterChild, CounterChild];
  latency: HistogramChild;
  endpoint: IngestEndpoint;
}

export function ingestSeries(endpoint: IngestEndpoint): IngestSeries {
  return {
    endpoint,
    events: [metrics.eventsAccepted.child(endpoint, 'false'), metrics.eventsAccepted.child(endpoint, 'true')],
    batches: [metrics.batchesAccepted.child(endpoint, 'false'), metrics.batchesAccepted.child(endpoint, 'true')],
    latency: metrics.ackLatency.child(endpoint),
  };
}

/** Counts one accepted request or batch of `events` events answered `startedMs` (performance.now()) after it was read. */
export function countAccepted(series: IngestSeries, livemode: boolean, events: number, startedMs: number): void {
  const m = livemode ? 1 : 0;
  series.events[m].value += events;
  series.batches[m].value++;
  series.latency.observe((performance.now() - startedMs) / 1000);
}

/** Counts a rejected request or batch by its Stripe error code (or type when it has none). */
export function countRejected(endpoint: IngestEndpoint, err: unknown): void {
  const e = err as { code?: string; type?: string } | null;
  const code = (e && typeof e === 'object' && (e.code || e.type)) || 'api_error';
  metrics.rejected.child(endpoint, String(code).slice(0, 64)).inc();
}

/** The Stripe error object of an error answer, for its code. */
function errorOf(result: HttpResult): { code?: string; type?: string } {
  try {
    const body = JSON.parse(result.body) as { error?: { code?: string; type?: string } };
    return body.error ?? {};
  } catch {
    return {};
  }
}

/**
 * A meter event route whose failures are counted by error code (accepted requests are counted where they are): both
 * errors thrown and error answers returned (apiEndpoint renders Stripe errors itself, in the request's API version).
 */
export function countingRejections(endpoint: IngestEndpoint, handler: RouteHandler): RouteHandler {
  return async (req) => {
    let result: HttpResult;
    try {
      result = await handler(req);
    } catch (err) {
      countRejected(endpoint, err);
      throw err;
    }
    if (result.status >= 400) countRejected(endpoint, errorOf(result));
    return result;
  };
}

/** This thread's event loop busy time, under the name `thread`, read at each scrape. */
export function trackEventLoop(thread: string): void {
  const busy = metrics.eventLoopBusy.child(thread);
  const previous = metrics.eventLoopBusy.collector;
  metrics.eventLoopBusy.collector = async () => {
    await previous?.();
    busy.value = performance.eventLoopUtilization().active / 1000;
  };
}

let processMetrics = false;
/** prom-client's process and Node.js metrics (CPU, memory, heap, GC, handles, event-loop lag): the main thread's. */
export function collectProcessMetrics(): void {
  if (processMetrics) return;
  processMetrics = true;
  collectDefaultMetrics({ register: registry.prom });
}
