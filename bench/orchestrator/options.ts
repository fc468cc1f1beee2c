/** Options of the bench orchestrator (bench/run.ts): one table of flags, from which --help and the parser both come. */
import * as os from 'node:os';
import * as path from 'node:path';
import { Args } from '../args';

interface Flag {
  name: string;
  /** The value's placeholder; none = a flag without value. */
  arg?: string;
  help: string;
}

const FLAGS: Flag[] = [
  { name: 'mode', arg: 'embedded|distributed|both', help: 'which meterd runs (default embedded); the null server runs in every mode' },
  {
    name: 'transport',
    arg: 'LIST',
    help:
      'which streams, comma-separated (default both): http = POST /v2/billing/meter_event_stream from raw keep-alive sockets; ws = the ' +
      'WebSocket stream through the client package (client/, @meterd/stream-client); ws-raw = the WebSocket stream from bare `ws` ' +
      'sockets with msgpack frames patched from a template (no client package, no reconnect: shows what the client package costs); ' +
      'both = http,ws; all = http,ws,ws-raw. A row per target and transport',
  },
  { name: 'topology', arg: 'all|split', help: 'distributed process layout (default all): one process, or gateway + aggregator + api' },
  { name: 'events', arg: 'N', help: 'events per meterd run (default 2,000,000); a run stops at N events or --duration, whichever comes first' },
  { name: 'duration', arg: 'S', help: 'seconds of load per meterd run at most (default 30)' },
  {
    name: 'rate',
    arg: 'R',
    help: "offered load of the meterd runs in events/s (default 0: closed loop, as fast as answered); latency then counts from each batch's scheduled time (no coordinated omission): e.g. half the closed-loop figure for the p99 at half of the maximum. The null servers always run closed loop",
  },
  { name: 'connections', arg: 'N', help: 'HTTP: keep-alive connections, one request in flight each (default 64)' },
  { name: 'batch', arg: 'N', help: 'HTTP: events per request, 1..100 (default 100)' },
  { name: 'client', arg: 'raw|http', help: "HTTP: raw sockets (default) or node:http's keep-alive Agent" },
  { name: 'ws-connections', arg: 'N', help: 'WebSocket (ws and ws-raw): connections (default 4)' },
  { name: 'ws-batch', arg: 'N', help: 'WebSocket: events per batch, 1..1000 (default 1000)' },
  { name: 'ws-inflight', arg: 'N', help: 'WebSocket: batches in flight per connection, 1..64 (default 16)' },
  { name: 'ws-encoding', arg: 'msgpack|json', help: 'WebSocket: frame encoding of the client package (default msgpack; ws-raw sends msgpack only)' },
  {
    name: 'ws-identifiers',
    help: 'WebSocket: give every event an identifier, as the HTTP rows do (default: none, the server derives them from the batch id: one SHA-256 per batch)',
  },
  { name: 'customers', arg: 'N', help: 'distinct customers (default 100)' },
  { name: 'timestamps', help: 'send an explicit timestamp in every event' },
  {
    name: 'poll-mode',
    arg: 'adaptive|all',
    help: 'how the generator polls summaries after the load (default adaptive: one sentinel while behind, then a sweep)',
  },
  { name: 'freshness-timeout', arg: 'S', help: 'deadline for the summaries to converge after the last ack (default 60)' },
  { name: 'health-interval', arg: 'MS', help: 'consumer lag sampling period, GET /healthz of each aggregator (default 250)' },
  { name: 'meter-settle-ms', arg: 'MS', help: 'pause between meter creation and the load (default 2500 with --topology split, else 0)' },
  { name: 'kafka-partitions', arg: 'N', help: "partitions of the run's fresh Kafka topic (default: the server's, 8)" },
  { name: 'keep-data', help: "keep the distributed run's topic, ClickHouse database and PostgreSQL schema" },
  { name: 'null-events', arg: 'N', help: 'events of each null-server run (default max(--events, 10M))' },
  { name: 'null-duration', arg: 'S', help: 'seconds of each null-server run at most (default min(--duration, 5))' },
  { name: 'skip-null', help: 'no null-server rows (then "vs null server" is empty)' },
  { name: 'skip-server', help: 'only the null-server rows' },
  { name: 'chart', help: 'also write an SVG chart (accepted events/s and ack latency per row, consumer lag over time) next to the JSON' },
  { name: 'server-entry', arg: 'PATH', help: "the server's entry point (default <repo>/dist/main.js)" },
  { name: 'data-parent', arg: 'DIR', help: "where each run's temporary DATA_DIR is created (default the OS temp dir)" },
  { name: 'results-dir', arg: 'DIR', help: 'where the JSON, the chart and the server logs go (default <repo>/bench/results, gitignored)' },
  { name: 'quiet', help: 'no progress line' },
  { name: 'help', help: 'this text' },
];

/** Wraps `text` to lines of at most `width` characters. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

export function helpText(): string {
  const col = 36;
  const out = [
    'meterd ingest benchmark',
    '',
    '  npm run bench -- [options]          (= npm run build && node dist/bench/run.js [options])',
    '',
    'Runs the load generator (bench/stream-load.ts) against, one after the other: the null servers (answer without work:',
    "the generator's ceiling), then meterd (embedded, distributed or both), each with the HTTP stream and/or the",
    'WebSocket stream, a fresh server per row. Prints one markdown table (accepted and end-to-end events/s, ack',
    'latency, freshness, consumer lag, server CPU-seconds per million events per thread kind, peak RSS, the exactness',
    'check of every summary) and writes bench/results/<timestamp>.json (plus .svg with --chart and the server logs).',
    'Every option also reads from BENCH_<NAME> (e.g. BENCH_EVENTS=500000). Exit status 0 only if every row verified.',
    '',
    'Options:',
  ];
  for (const f of FLAGS) {
    const head = `  --${f.name}${f.arg ? ` ${f.arg}` : ''}`;
    const body = wrap(f.help, 118 - col);
    out.push(head.length < col ? head.padEnd(col) + body[0] : head);
    for (const l of head.length < col ? body.slice(1) : body) out.push(' '.repeat(col) + l);
  }
  out.push('', 'Examples:');
  out.push('  npm run bench -- --mode both --events 2000000 --duration 20 --chart');
  out.push('  npm run bench -- --transport ws --events 500000 --rate 100000          # WebSocket only, fixed load');
  out.push('  eval "$(deploy/up.sh)"; npm run bench -- --mode distributed --topology split');
  return `${out.join('\n')}\n`;
}

export type Transport = 'http' | 'ws' | 'ws-raw';
const TRANSPORTS: readonly Transport[] = ['http', 'ws', 'ws-raw'];

export interface RunOptions {
  mode: 'embedded' | 'distributed' | 'both';
  transports: Transport[];
  topology: 'all' | 'split';
  events: number;
  duration: number;
  rate: number;
  connections: number;
  batch: number;
  client: 'raw' | 'http';
  wsConnections: number;
  wsBatch: number;
  wsInflight: number;
  wsEncoding: 'msgpack' | 'json';
  wsIdentifiers: boolean;
  customers: number;
  timestamps: boolean;
  pollMode: 'adaptive' | 'all' | null;
  freshnessTimeout: number;
  healthInterval: number;
  meterSettleMs: number | null;
  kafkaPartitions: string | null;
  keepData: boolean;
  nullEvents: number;
  nullDuration: number;
  skipNull: boolean;
  skipServer: boolean;
  chart: boolean;
  serverEntry: string;
  dataParent: string;
  resultsDir: string;
  quiet: boolean;
  help: boolean;
}

function oneOf<T extends string>(name: string, v: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(v)) throw new Error(`--${name} must be ${allowed.join(', ').replace(/, ([^,]*)$/, ' or $1')}, not "${v}"`);
  return v as T;
}

function intIn(name: string, v: number, lo: number, hi: number): number {
  if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`--${name} must be an integer in ${lo}..${hi}`);
  return v;
}

/** Parses and checks the orchestrator's options; throws an Error whose message names the bad option. */
export function parseRunOptions(argv: string[], root: string): RunOptions {
  const booleans = FLAGS.filter((f) => !f.arg).map((f) => f.name);
  const a = new Args(
    argv,
    booleans,
    FLAGS.map((f) => f.name),
  );
  const events = intIn('events', a.num('events', 2_000_000), 1, 2 ** 31 - 1);
  const duration = a.num('duration', 30);
  if (!(duration > 0)) throw new Error('--duration must be > 0 (seconds)');
  const transports: Transport[] = [];
  for (const t of a.str('transport', 'both').split(',')) {
    const v = t.trim();
    const add =
      v === 'both' ? (['http', 'ws'] as const) : v === 'all' ? TRANSPORTS : [oneOf('transport', v, [...TRANSPORTS, 'both', 'all'] as const) as Transport];
    for (const x of add) if (!transports.includes(x)) transports.push(x);
  }
  const rate = a.num('rate', 0);
  if (!(rate >= 0)) throw new Error('--rate must be >= 0 (events/s; 0 = closed loop)');
  const settle = a.str('meter-settle-ms');
  const o: RunOptions = {
    mode: oneOf('mode', a.str('mode', 'embedded'), ['embedded', 'distributed', 'both'] as const),
    transports,
    topology: oneOf('topology', a.str('topology', 'all'), ['all', 'split'] as const),
    events,
    duration,
    rate,
    connections: intIn('connections', a.num('connections', 64), 1, 4096),
    batch: intIn('batch', a.num('batch', 100), 1, 100),
    client: oneOf('client', a.str('client', 'raw'), ['raw', 'http'] as const),
    wsConnections: intIn('ws-connections', a.num('ws-connections', 4), 1, 1024),
    wsBatch: intIn('ws-batch', a.num('ws-batch', 1000), 1, 1000),
    wsInflight: intIn('ws-inflight', a.num('ws-inflight', 16), 1, 64),
    wsEncoding: oneOf('ws-encoding', a.str('ws-encoding', 'msgpack'), ['msgpack', 'json'] as const),
    wsIdentifiers: a.bool('ws-identifiers'),
    customers: intIn('customers', a.num('customers', 100), 1, 1_000_000),
    timestamps: a.bool('timestamps'),
    pollMode: a.str('poll-mode') === undefined ? null : oneOf('poll-mode', a.str('poll-mode')!, ['adaptive', 'all'] as const),
    freshnessTimeout: a.num('freshness-timeout', 60),
    healthInterval: a.num('health-interval', 250),
    meterSettleMs: settle === undefined || settle === '' ? null : a.num('meter-settle-ms', 0),
    kafkaPartitions: a.str('kafka-partitions') ?? null,
    keepData: a.bool('keep-data'),
    nullEvents: intIn('null-events', a.num('null-events', Math.max(events, 10_000_000)), 1, 2 ** 31 - 1),
    nullDuration: a.num('null-duration', Math.min(duration, 5)),
    skipNull: a.bool('skip-null'),
    skipServer: a.bool('skip-server'),
    chart: a.bool('chart'),
    serverEntry: path.resolve(a.str('server-entry', path.join(root, 'dist', 'main.js'))),
    dataParent: path.resolve(a.str('data-parent', os.tmpdir())),
    resultsDir: path.resolve(a.str('results-dir', path.join(root, 'bench', 'results'))),
    quiet: a.bool('quiet'),
    help: a.bool('help'),
  };
  if (!(o.freshnessTimeout > 0)) throw new Error('--freshness-timeout must be > 0 (seconds)');
  if (!(o.healthInterval >= 20)) throw new Error('--health-interval must be >= 20 (ms)');
  if (o.meterSettleMs !== null && !(o.meterSettleMs >= 0)) throw new Error('--meter-settle-ms must be >= 0');
  if (!(o.nullDuration > 0)) throw new Error('--null-duration must be > 0 (seconds)');
  if (o.kafkaPartitions !== null) intIn('kafka-partitions', Number(o.kafkaPartitions), 1, 1024);
  if (o.skipNull && o.skipServer) throw new Error('--skip-null and --skip-server together leave nothing to run');
  return o;
}

/** Every flag the orchestrator knows (for the tests: each one is explained in the help). */
export const RUN_FLAGS = FLAGS.map((f) => f.name);

/** The generator's arguments for one row, from the orchestrator's options. */
export function generatorArgs(o: RunOptions, transport: Transport, events: number, duration: number, rate: number): string[] {
  return [
    '--transport',
    transport,
    '--events',
    String(events),
    '--duration',
    String(duration),
    '--customers',
    String(o.customers),
    ...(transport === 'http'
      ? ['--connections', String(o.connections), '--batch', String(o.batch), '--client', o.client]
      : [
          '--ws-connections',
          String(o.wsConnections),
          '--ws-batch',
          String(o.wsBatch),
          '--ws-inflight',
          String(o.wsInflight),
          '--ws-encoding',
          o.wsEncoding,
          ...(o.wsIdentifiers ? ['--ws-identifiers'] : []),
        ]),
    ...(o.timestamps ? ['--timestamps'] : []),
    ...(rate > 0 ? ['--rate', String(rate)] : []),
    ...(o.pollMode ? ['--poll-mode', o.pollMode] : []),
    '--freshness-timeout',
    String(o.freshnessTimeout),
    ...(o.quiet ? ['--quiet'] : []),
  ];
}
