/** Options of the load generator (bench/stream-load.ts): parsing, checks and the --help text. */
import { randomBytes } from 'node:crypto';
import { Args } from '../args';
import { assertLoopback } from '../raw-http';

export const HELP = `Load generator for the v2 meter event stream (\`POST /v2/billing/meter_event_stream\`).

  node dist/bench/stream-load.js --url http://127.0.0.1:PORT --key sk_test_... [options]

Options (CLI flag, or env BENCH_<UPPER_SNAKE>, e.g. BENCH_EVENTS):
  --url URL               target, loopback only (default http://127.0.0.1:8080): the stream requests go here
  --api-url URL           control plane (meter creation, sessions, summaries), loopback only (default --url); for a
                          split deployment: --url = the gateway, --api-url = the api process
  --health-url URL        repeatable (or comma-separated): a process running an aggregator; its GET /healthz
                          \`aggregator.stored\` is sampled during the load and the convergence, summed over all the
                          URLs, and compared with the events acknowledged so far (consumer lag, see LagSampler)
  --health-interval MS    lag sampling period (default 250)
  --meter-settle-ms MS    wait this long after creating the meter before the load (default 0); a split deployment's
                          aggregator learns new meters by polling the state store, see bench/README.md
  --key KEY               secret API key (default: first of $API_KEYS)
  --events N              total events to send (default 2,000,000)
  --duration S            stop sending after S seconds, whichever comes first (default 30)
  --connections N         keep-alive connections, one request in flight each (default 64)
  --batch N               events per request, 1..100 (default 100)
  --customers N           distinct customers (default 100)
  --meter-event-name E    event_name of the meter (default bench_tokens)
  --meter-id ID           use this existing meter instead of creating/looking one up
  --customer-prefix P     customer id prefix (default cus_<runid>_ so repeated runs never mix)
  --timestamps            send an explicit "timestamp" (now, RFC 3339) in every event
  --client raw|http       raw = hand-written HTTP/1.1 over net sockets (default), http = node:http keep-alive Agent
  --null                  null-server mode: no meter, no freshness/exactness checks
  --no-probe              no sampled freshness probes during the run
  --freshness-timeout S   deadline for the post-run convergence (default 60)
  --poll-interval MS      summary polling period (default 50)
  --poll-mode adaptive|all  post-run polling: all = every pending customer every interval (16 connections);
                          adaptive (default) = one sentinel query per interval while behind, then a doubling sweep
                          (same answer, without loading the server it measures; see Generator.converge)
  --rate R                offered load: send batches on a fixed schedule of R events/s (default 0: as fast as the
                          connections are answered). Latency is measured from each batch's scheduled send time, so
                          a server that falls behind shows its queueing in the p99 instead of slowing the schedule
                          (no coordinated omission); use enough --connections to carry the rate
  --transport http|ws|ws-raw  http (default): POST /v2/billing/meter_event_stream, --connections connections with one
                          request in flight each; ws: the WebSocket stream through the client package
                          (@meterd/stream-client in client/), --ws-connections connections with --ws-inflight batches
                          of --ws-batch events in flight each (identifiers derived by the server from the batch id);
                          ws-raw: the same stream from \`ws\` sockets and msgpack frames patched from a template (no
                          client package: what the server takes when the client costs next to nothing; no reconnect)
  --ws-connections N      WebSocket connections (default 4)
  --ws-batch N            events per WebSocket batch, 1..1000 (default 1000)
  --ws-inflight N         batches in flight per WebSocket connection, 1..64 (default 16)
  --ws-encoding E         msgpack (default) or json frames (ws only; ws-raw sends msgpack)
  --ws-identifiers        WebSocket: give every event an identifier (<runid>-<seq>, as the HTTP load does) instead of
                          letting the server derive one from the batch id (one SHA-256 per batch on the server)
  --quiet                 no progress lines
  --help                  this text

Every event has a unique identifier \`<runid>-<10 digits>\`; bodies are built once per batch size as a template and
only digits are patched in place (identifier, customer, value), in a buffer that also holds the request head, so a
request costs one write syscall. 401 -> new session and resend; 429/503 -> back off (Retry-After) and resend the
same batch; other 5xx / connection errors -> resend up to 10 times (the server dedups by identifier); other 4xx ->
the batch is counted as rejected.

After the load (unless --null): freshness = time from the last acknowledgement until every customer's summary equals
the total acknowledged for it (polled every --poll-interval ms, see --poll-mode); then an exactness pass reading
every customer once more. Sampled freshness: once a second a one-event probe for a dedicated customer, polled
until visible.

Output: human table on stderr, one JSON line on stdout (last line). Exit 0 = OK, 1 = verification failed or the
run aborted, 2 = bad usage.
`;

export interface Endpoint {
  url: URL;
  host: string;
  port: number;
  hostHeader: string;
}

export function endpoint(raw: string, flag: string): Endpoint {
  const url = new URL(raw);
  if (url.protocol !== 'http:') throw new Error(`${flag}: only http:// is supported (${url.protocol})`);
  return { url, host: assertLoopback(url.hostname), port: Number(url.port || 80), hostHeader: url.host };
}

export interface Options {
  url: URL;
  host: string;
  port: number;
  hostHeader: string;
  /** Control plane: meters, sessions, summaries (default: the stream target). */
  api: Endpoint;
  health: Endpoint[];
  healthIntervalMs: number;
  meterSettleMs: number;
  key: string;
  events: number;
  durationS: number;
  connections: number;
  batch: number;
  customers: number;
  eventName: string;
  meterId?: string;
  customerPrefix: string;
  timestamps: boolean;
  client: 'raw' | 'http';
  nullMode: boolean;
  probe: boolean;
  freshnessTimeoutS: number;
  pollIntervalMs: number;
  pollMode: 'adaptive' | 'all';
  quiet: boolean;
  /** Offered events/s; 0 = closed loop (each connection sends its next batch when the last one is answered). */
  rate: number;
  transport: 'http' | 'ws' | 'ws-raw';
  wsConnections: number;
  wsBatch: number;
  wsInflight: number;
  wsEncoding: 'msgpack' | 'json';
  wsIdentifiers: boolean;
  runId: string;
}

/** Flags that take no value. */
const BOOLEANS = ['null', 'no-probe', 'timestamps', 'quiet', 'help', 'ws-identifiers'];
/** Every flag the generator knows (anything else is a usage error). */
export const GENERATOR_FLAGS = [
  ...BOOLEANS,
  'url',
  'api-url',
  'health-url',
  'health-interval',
  'meter-settle-ms',
  'key',
  'events',
  'duration',
  'connections',
  'batch',
  'customers',
  'meter-event-name',
  'meter-id',
  'customer-prefix',
  'client',
  'freshness-timeout',
  'poll-interval',
  'poll-mode',
  'rate',
  'transport',
  'ws-connections',
  'ws-batch',
  'ws-inflight',
  'ws-encoding',
];

/** `--help` was given: the caller prints HELP. */
export function wantsHelp(argv: string[]): boolean {
  return argv.includes('--help') || argv.includes('-h');
}

const SAFE = /^[A-Za-z0-9_\-.:]+$/;

export function parseOptions(argv: string[]): Options {
  const a = new Args(argv, BOOLEANS, GENERATOR_FLAGS);
  const target = endpoint(a.str('url', 'http://127.0.0.1:8080'), '--url');
  const { url, host, port } = target;
  const api = a.str('api-url') ? endpoint(a.str('api-url')!, '--api-url') : target;
  const health = a.list('health-url').map((u) => endpoint(u, '--health-url'));
  const runId = randomBytes(4).toString('hex');
  const key = a.str('key') ?? (process.env.API_KEYS ?? '').split(',')[0]!.trim();
  const nullMode = a.bool('null');
  if (!nullMode && !key) throw new Error('--key (or $API_KEYS) is required');
  const o: Options = {
    url,
    host,
    port,
    hostHeader: url.host,
    api,
    health: nullMode ? [] : health,
    healthIntervalMs: a.num('health-interval', 250),
    meterSettleMs: a.num('meter-settle-ms', 0),
    key: key || 'sk_test_null',
    events: Math.floor(a.num('events', 2_000_000)),
    durationS: a.num('duration', 30),
    connections: Math.floor(a.num('connections', 64)),
    batch: Math.floor(a.num('batch', 100)),
    customers: Math.floor(a.num('customers', 100)),
    eventName: a.str('meter-event-name', 'bench_tokens'),
    meterId: a.str('meter-id'),
    customerPrefix: a.str('customer-prefix', `cus_${runId}_`),
    timestamps: a.bool('timestamps'),
    client: a.str('client', 'raw') as 'raw' | 'http',
    nullMode,
    probe: !nullMode && !a.bool('no-probe'),
    freshnessTimeoutS: a.num('freshness-timeout', 60),
    pollIntervalMs: a.num('poll-interval', 50),
    pollMode: a.str('poll-mode', 'adaptive') as 'adaptive' | 'all',
    quiet: a.bool('quiet'),
    rate: a.num('rate', 0),
    transport: a.str('transport', 'http') as 'http' | 'ws' | 'ws-raw',
    wsConnections: Math.floor(a.num('ws-connections', 4)),
    wsBatch: Math.floor(a.num('ws-batch', 1000)),
    wsInflight: Math.floor(a.num('ws-inflight', 16)),
    wsEncoding: a.str('ws-encoding', 'msgpack') as 'msgpack' | 'json',
    wsIdentifiers: a.bool('ws-identifiers'),
    runId,
  };
  if (o.events < 1 || o.events > 2 ** 31 - 1) throw new Error('--events must be in 1..2^31-1');
  if (!(o.durationS > 0)) throw new Error('--duration must be > 0');
  if (o.connections < 1 || o.connections > 4096) throw new Error('--connections must be in 1..4096');
  if (o.batch < 1 || o.batch > 100) throw new Error('--batch must be in 1..100');
  if (!(o.rate >= 0)) throw new Error('--rate must be >= 0 (events/s; 0 = as fast as answered)');
  if (o.customers < 1 || o.customers > 1_000_000) throw new Error('--customers must be in 1..1,000,000');
  if (o.client !== 'raw' && o.client !== 'http') throw new Error('--client must be raw or http');
  if (o.pollMode !== 'adaptive' && o.pollMode !== 'all') throw new Error('--poll-mode must be adaptive or all');
  if (!(o.healthIntervalMs >= 20)) throw new Error('--health-interval must be >= 20 (ms)');
  if (!(o.meterSettleMs >= 0)) throw new Error('--meter-settle-ms must be >= 0');
  if (!['http', 'ws', 'ws-raw'].includes(o.transport)) throw new Error('--transport must be http, ws or ws-raw');
  if (o.wsConnections < 1 || o.wsConnections > 1024) throw new Error('--ws-connections must be in 1..1024');
  if (o.wsBatch < 1 || o.wsBatch > 1000) throw new Error('--ws-batch must be in 1..1000');
  if (o.wsInflight < 1 || o.wsInflight > 64) throw new Error('--ws-inflight must be in 1..64');
  if (o.wsEncoding !== 'msgpack' && o.wsEncoding !== 'json') throw new Error('--ws-encoding must be msgpack or json');
  if (!SAFE.test(o.eventName)) throw new Error('--meter-event-name: use [A-Za-z0-9_-.:] only');
  if (!SAFE.test(o.customerPrefix)) throw new Error('--customer-prefix: use [A-Za-z0-9_-.:] only');
  return o;
}
