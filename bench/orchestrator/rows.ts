/** What one bench row holds: the target that ran, the generator's result, the server's processes and CPU. */
import type { KindSeconds, RssRange } from './cpu';
import type { Transport } from './options';

export type Mode = 'null' | 'embedded' | 'distributed';
export type Topology = 'all' | 'split';
export type Role = 'all' | 'gateway' | 'aggregator' | 'api';

export interface Deployment {
  topic: string;
  consumer_group: string;
  clickhouse_database: string;
  database_schema: string;
}

/** The generator's consumer lag report (stream-load.ts, LagSampler.report). */
export interface LagReport {
  health_urls: string[];
  samples: number;
  sample_errors: number;
  first_sample_error?: string;
  max_events: number | null;
  max_seconds_behind: number | null;
  caught_up_after_last_ack_ms: number | null;
  final?: { acked: number; stored: number | null; invalid: number; duplicates: number; insert_retries: number };
  /** rows: [t_ms since load start, acked, stored, lag_events, seconds_behind] */
  series?: { columns: string[]; t0_epoch_ms: number; rows: number[][] };
}

// The generator's JSON result (see stream-load.ts); only the fields used here are typed.
export interface GenResult {
  ok: boolean;
  error?: string;
  events_acked?: number;
  events_per_s?: number;
  requests?: number;
  load_seconds?: number;
  ack_latency_ms?: { p50: number | null; p99: number | null; p999?: number | null };
  errors?: Record<string, number>;
  client_cpu?: { user_s: number; system_s: number; pct_of_one_core: number };
  load_start_epoch_ms?: number;
  load_end_epoch_ms?: number;
  freshness?: { after_last_ack_ms: number | null; converged: boolean } | null;
  probe_freshness_ms?: { p50: number | null; max: number | null; count: number } | null;
  verification?: { ok: boolean; mismatch_count: number; checked_customers: number; reads_per_s?: number } | null;
  lag?: LagReport | null;
  aborted?: string | null;
  [k: string]: unknown;
}

export interface ProcInfo {
  role: Role;
  pid: number | null;
  port: number;
  log: string;
  exit?: string;
}

/** The server's CPU over one window, per thread kind, and what it is divided by. */
export interface ServerCpu {
  /** `load`: first send to last ack; `until stored`: first send until the aggregator(s) had stored every event. */
  window: 'load' | 'until stored';
  window_s: number;
  events: number;
  seconds: KindSeconds;
}

export interface Row {
  target: string;
  mode: Mode;
  transport: Transport;
  topology?: Topology;
  ran: boolean;
  ok: boolean;
  error?: string;
  generator_exit_code?: number | null;
  server_cpu_pct_of_one_core?: number | null;
  server_cpu?: ServerCpu | null;
  /** Peak resident set size of the server's process(es), summed (VmHWM). */
  server_peak_rss_bytes?: number | null;
  /** Their resident set size over the load after its first minute (loads longer than a minute), sampled every 500 ms. */
  server_rss_range?: RssRange | null;
  /** Their resident set size every 5 s from the start of the load: [seconds since the start of the load, bytes]. */
  server_rss_series?: Array<[number, number]>;
  processes?: ProcInfo[];
  deployment?: (Deployment & { cleanup?: Record<string, string> | 'kept' }) | null;
  result?: GenResult | null;
}

/** What ran: a null server, `embedded` or `distributed (all|split)`. */
export function targetName(r: Pick<Row, 'mode' | 'topology' | 'target'>): string {
  return r.mode === 'null' ? r.target : r.mode === 'embedded' ? 'embedded' : `distributed (${r.topology ?? 'all'})`;
}

export function transportName(r: Pick<Row, 'transport'>): string {
  return r.transport === 'ws' ? 'WebSocket' : r.transport === 'ws-raw' ? 'WebSocket (raw frames)' : 'HTTP';
}

/** The row's name in the progress and the chart: the target and the transport. */
export function label(r: Pick<Row, 'mode' | 'topology' | 'target' | 'transport'>): string {
  return `${targetName(r)}, ${transportName(r)}`;
}
