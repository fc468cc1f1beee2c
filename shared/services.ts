/**
 * What request handlers and the aggregator are given: the drivers chosen once at start-up, behind their interfaces.
 */
import type { Config } from './config';
import type { StateStore } from './state-store';
import type { AnalyticsStore } from './analytics-store';
import type { LogProducer } from './log';
import type { MeterRegistry } from './meters';
import type { Authenticator } from './http/auth';
import type { Idempotency } from './http/idempotency';
import type { ApiVersioning } from './versioning/versioning';

export interface Services {
  config: Config;
  state: StateStore;
  analytics: AnalyticsStore;
  meters: MeterRegistry;
  auth: Authenticator;
  /** Durable Idempotency-Key records (control-plane endpoints). */
  idempotency: Idempotency;
  /** Bounded in-memory Idempotency-Key records (meter event endpoints). */
  hotIdempotency: Idempotency;
  producer: LogProducer;
  /** API versions: each account's default, the request's version, responses and events rendered in it. */
  versioning: ApiVersioning;
  /** Milliseconds since the epoch; tests of the time rules replace it. */
  now(): number;
}
