/**
 * The operator's dashboard, served by the API role: `GET /dashboard` and its static assets (api/dashboard/, and uPlot
 * from node_modules, read once at start; nothing from a CDN), plus `GET /dashboard/api/live`, the JSON the page polls
 * for the live panels. The page holds no secret: the API key is typed into it, kept in the tab's sessionStorage at most,
 * and sent as a bearer token with each call; every data call goes through the public API with that key.
 */
import fs from 'node:fs';
import path from 'node:path';
import { apiEndpoint } from '../shared/http/endpoints';
import { json, type HttpResult, type HttpServer } from '../shared/http/server';
import { type RegistrySnapshot, registry } from '../shared/metrics';
import type { RemoteSnapshots } from '../shared/metrics/endpoint';
import type { Services } from '../shared/services';
import { recentDeliveryAttempts } from './billing/recent-deliveries';

/** The page's sources live next to this module's source (dist/api/dashboard.js → api/dashboard/). */
const ASSET_DIR = [path.join(__dirname, 'dashboard'), path.resolve(__dirname, '..', '..', 'api', 'dashboard')].find((d) =>
  fs.existsSync(path.join(d, 'index.html')),
);

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-cache',
};

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

function asset(file: string): HttpResult {
  const body = fs.readFileSync(file, 'utf8');
  return { status: 200, body, contentType: TYPES[path.extname(file)], headers: SECURITY_HEADERS };
}

type Series = Array<{ labels: Record<string, string>; value: number | number[] }>;

function total(series: Series | undefined, where: (labels: Record<string, string>) => boolean = () => true): number {
  let n = 0;
  for (const s of series ?? []) if (typeof s.value === 'number' && where(s.labels)) n += s.value;
  return n;
}

/** A histogram's series merged into one: per-bucket counts (the last is +Inf), sum and count. */
function histogram(series: Series | undefined, bounds: readonly number[]): { bounds: readonly number[]; counts: number[]; sum: number; count: number } {
  const counts = new Array<number>(bounds.length + 1).fill(0);
  let sum = 0;
  let count = 0;
  for (const s of series ?? []) {
    const v = s.value as number[];
    for (let i = 0; i <= bounds.length; i++) counts[i] += v[i];
    sum += v[bounds.length + 1];
    count += v[bounds.length + 2];
  }
  return { bounds, counts, sum, count };
}

/** What the live panels show: this process's counters (gateway threads included), for the page to turn into rates. */
async function live(account: string, remote: RegistrySnapshot[], s: Services): Promise<Record<string, unknown>> {
  const v = await registry.values(remote);
  const boundsOf = (name: string) => (registry.get(name) as { bounds: readonly number[] }).bounds;
  const lag = (v.meterd_consumer_lag_records ?? []).map((x) => ({ partition: Number(x.labels.partition), records: x.value as number }));
  return {
    object: 'dashboard.live',
    time_ms: Date.now(),
    role: s.config.role,
    events_accepted: total(v.meterd_events_accepted_total, (l) => !l.endpoint.includes('adjustments')),
    requests_rejected: total(v.meterd_requests_rejected_total),
    events_stored: total(v.meterd_aggregator_events_stored_total),
    dedup_hits: total(v.meterd_aggregator_dedup_hits_total),
    validation_errors: total(v.meterd_aggregator_validation_errors_total),
    webhook_attempts_failed: total(v.meterd_webhook_attempts_total, (l) => l.result === 'failure'),
    stream_connections: total(v.meterd_stream_connections),
    ack_latency: histogram(v.meterd_ack_latency_seconds, boundsOf('meterd_ack_latency_seconds')),
    freshness: histogram(v.meterd_aggregator_freshness_seconds, boundsOf('meterd_aggregator_freshness_seconds')),
    consumer_lag: lag.sort((a, b) => a.partition - b.partition),
    webhook_deliveries: recentDeliveryAttempts(account),
  };
}

export function registerDashboardRoutes(http: HttpServer, s: Services, remote: RemoteSnapshots): void {
  if (!ASSET_DIR) throw new Error('the dashboard assets (api/dashboard/) are missing from the package');
  const uplotDir = path.dirname(require.resolve('uplot/dist/uPlot.iife.min.js'));
  const files: Record<string, string> = {
    '/dashboard': path.join(ASSET_DIR, 'index.html'),
    '/dashboard/dashboard.js': path.join(ASSET_DIR, 'dashboard.js'),
    '/dashboard/dashboard.css': path.join(ASSET_DIR, 'dashboard.css'),
    '/dashboard/uPlot.iife.min.js': path.join(uplotDir, 'uPlot.iife.min.js'),
    '/dashboard/uPlot.min.css': path.join(uplotDir, 'uPlot.min.css'),
  };
  for (const [route, file] of Object.entries(files)) {
    const result = asset(file);
    http.route('GET', route, () => result);
  }
  const page = asset(files['/dashboard']);
  http.route('GET', '/dashboard/', () => page);
  http.route(
    'GET',
    '/dashboard/api/live',
    apiEndpoint(s, async (p) => {
      const result = json(200, await live(p.account, await remote(), s));
      result.headers = { 'Cache-Control': 'no-store' };
      return result;
    }),
  );
}
