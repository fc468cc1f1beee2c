/**
 * The bench's pure pieces: option parsing and help (orchestrator and generator), the latency histogram's percentiles,
 * the table and the SVG chart, CPU attribution per thread kind from /proc samples, and the null server's reading of a
 * WebSocket batch's head.
 */
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { pack, unpack } from 'msgpackr';
import { buildFrameTemplate } from '../bench/load/ws-raw-load';
import { progressLine } from '../bench/load/report';
import { writeDigits } from '../bench/load/templates';
import { parseOptions as parseGeneratorOptions, GENERATOR_FLAGS, HELP as GENERATOR_HELP } from '../bench/load/options';
import { peekBatch } from '../bench/frame-head';
import { CLK_TCK, type ThreadSample, kindSecondsBetween, parseStat, parseTags, rssRange, threadKind } from '../bench/orchestrator/cpu';
import { RUN_FLAGS, generatorArgs, helpText, parseRunOptions } from '../bench/orchestrator/options';
import type { Row } from '../bench/orchestrator/rows';
import { svgChart } from '../bench/orchestrator/chart';
import { START_ENV } from '../bench/orchestrator/processes';
import { TABLE_HEAD, endToEnd, markdownTable } from '../bench/orchestrator/table';
import { LogHistogram } from '../bench/stats';

const ROOT = '/repo';

t.test('orchestrator options: defaults, checks, unknown options, help', async (t) => {
  const saved = Object.keys(process.env).filter((k) => k.startsWith('BENCH_'));
  t.same(saved, [], 'no BENCH_* variable leaks into the defaults');
  const o = parseRunOptions([], ROOT);
  t.equal(o.mode, 'embedded');
  t.same(o.transports, ['http', 'ws'], 'both transports by default');
  t.equal(o.events, 2_000_000);
  t.equal(o.duration, 30);
  t.equal(o.nullEvents, 10_000_000);
  t.equal(o.nullDuration, 5);
  t.equal(o.serverEntry, '/repo/dist/main.js');
  t.equal(o.resultsDir, '/repo/bench/results');
  t.equal(o.meterSettleMs, null);

  const w = parseRunOptions(['--transport', 'ws', '--events=20_000', '--duration', '2', '--rate', '5000', '--chart', '--ws-batch', '500'], ROOT);
  t.same(w.transports, ['ws']);
  t.equal(w.events, 20_000);
  t.equal(w.nullEvents, 10_000_000, 'the null run keeps its 10M floor');
  t.equal(w.nullDuration, 2, 'and is bounded by --duration');
  t.equal(w.chart, true);
  t.equal(w.rate, 5000);
  const args = generatorArgs(w, 'ws', w.events, w.duration, w.rate);
  t.same(args.slice(0, 6), ['--transport', 'ws', '--events', '20000', '--duration', '2']);
  t.ok(args.join(' ').includes('--ws-batch 500'), 'WebSocket settings passed');
  t.notOk(args.includes('--connections'), 'no HTTP settings for a WebSocket row');
  t.ok(args.join(' ').includes('--rate 5000'));
  t.notOk(generatorArgs(w, 'http', 1, 1, 0).includes('--rate'), 'closed loop: no --rate');

  t.throws(() => parseRunOptions(['--bogus', '1'], ROOT), /unknown option --bogus/);
  t.throws(() => parseRunOptions(['--evnets', '1'], ROOT), /unknown option --evnets/, 'a typo is refused, not ignored');
  t.throws(() => parseRunOptions(['--transport', 'grpc'], ROOT), /--transport must be http, ws, ws-raw, both or all/);
  t.same(parseRunOptions(['--transport', 'all'], ROOT).transports, ['http', 'ws', 'ws-raw']);
  t.same(parseRunOptions(['--transport', 'ws-raw,http,ws-raw'], ROOT).transports, ['ws-raw', 'http'], 'a list, without repeats');
  t.throws(() => parseRunOptions(['--mode', 'cloud'], ROOT), /--mode must be/);
  t.throws(() => parseRunOptions(['--batch', '101'], ROOT), /--batch must be an integer in 1\.\.100/);
  t.throws(() => parseRunOptions(['--ws-inflight', '65'], ROOT), /--ws-inflight/);
  t.throws(() => parseRunOptions(['--events'], ROOT), /--events needs a value/);
  t.throws(() => parseRunOptions(['--events', 'lots'], ROOT), /not a number/);
  t.throws(() => parseRunOptions(['--chart=maybe'], ROOT), /takes no value/);
  t.throws(() => parseRunOptions(['--skip-null', '--skip-server'], ROOT), /nothing to run/);
  t.throws(() => parseRunOptions(['stray'], ROOT), /unexpected argument/);
  t.equal(parseRunOptions(['--help'], ROOT).help, true);

  const help = helpText();
  for (const flag of RUN_FLAGS) t.match(help, new RegExp(`--${flag}\\b`), `--help explains --${flag}`);
  t.ok(
    help.split('\n').every((l) => l.length <= 120),
    'help lines fit 120 columns',
  );
});

t.test('generator options: transports, limits, every flag in its help', async (t) => {
  const base = ['--url', 'http://127.0.0.1:9', '--key', 'sk_test_abcdefgh'];
  const o = parseGeneratorOptions(base);
  t.equal(o.transport, 'http');
  t.equal(o.wsBatch, 1000);
  const w = parseGeneratorOptions([...base, '--transport', 'ws', '--ws-connections', '2', '--ws-inflight', '8']);
  t.equal(w.transport, 'ws');
  t.equal(w.wsConnections, 2);
  t.equal(w.wsInflight, 8);
  t.throws(() => parseGeneratorOptions([...base, '--transport', 'quic']), /--transport must be http, ws or ws-raw/);
  t.throws(() => parseGeneratorOptions([...base, '--ws-batch', '1001']), /--ws-batch/);
  t.throws(() => parseGeneratorOptions([...base, '--nope']), /unknown option --nope/);
  t.throws(() => parseGeneratorOptions(['--url', 'http://example.com:80', '--key', 'sk_test_abcdefgh']), /non-loopback/);
  for (const flag of GENERATOR_FLAGS) t.match(GENERATOR_HELP, new RegExp(`--${flag}\\b`), `the generator's help explains --${flag}`);
});

t.test('histogram percentiles stay within the bucket resolution of the exact ones', async (t) => {
  const h = new LogHistogram();
  t.equal(h.quantile(0.5), null, 'empty: no percentile');
  const values: number[] = [];
  // A deterministic spread from 0.05 ms to ~2 s, with a heavy tail.
  for (let i = 1; i <= 10_000; i++) {
    const v = 0.05 + ((i * 7919) % 10_000) / 100 + (i % 1000 === 0 ? 2000 : 0);
    values.push(v);
    h.record(v);
  }
  values.sort((a, b) => a - b);
  const exact = (q: number): number => values[Math.ceil(q * values.length) - 1]!;
  for (const q of [0.5, 0.9, 0.99, 0.999]) {
    const got = h.quantile(q)!;
    t.ok(got >= exact(q) * 0.999 && got <= exact(q) * 1.025, `p${q * 100}: ${got} vs exact ${exact(q)} (≤ 2.5 % above)`);
  }
  t.equal(h.quantile(1), values[values.length - 1], 'p100 is the max');
  const s = h.summary();
  t.equal(s.count, 10_000);
  t.equal(s.max, Math.round(values[values.length - 1]! * 1000) / 1000);
  const one = new LogHistogram();
  one.record(3.3);
  t.equal(one.quantile(0.5), 3.3, 'a single value is its own percentiles (clamped to the max)');
  t.equal(one.quantile(0.999), 3.3);
});

function row(over: Partial<Row> & Pick<Row, 'mode' | 'transport' | 'target'>): Row {
  return { ran: true, ok: true, ...over };
}

const ROWS: Row[] = [
  row({
    target: 'null server (uWS)',
    mode: 'null',
    transport: 'http',
    result: { ok: true, events_acked: 1_000_000, events_per_s: 1_000_000, load_seconds: 1, ack_latency_ms: { p50: 0.5, p99: 1.5, p999: 3 } },
  }),
  row({
    target: 'null server (uWS)',
    mode: 'null',
    transport: 'ws',
    result: { ok: true, events_acked: 1_000_000, events_per_s: 2_000_000, load_seconds: 0.5, ack_latency_ms: { p50: 30, p99: 60, p999: 90 } },
  }),
  row({
    target: 'meterd ×1 (all roles)',
    mode: 'embedded',
    transport: 'http',
    server_peak_rss_bytes: 400 * 1024 * 1024,
    server_rss_range: { from_s: 60, min_bytes: 300 * 1024 * 1024, max_bytes: 350 * 1024 * 1024, last_bytes: 320 * 1024 * 1024, samples: 10 },
    server_cpu: {
      window: 'until stored',
      window_s: 5,
      events: 1_000_000,
      seconds: { gateway: 2, log: 0.5, main: 1, aggregator: 1.5, clickhouse: 1.5, helpers: 2 },
    },
    result: {
      ok: true,
      events_acked: 1_000_000,
      events_per_s: 250_000,
      load_seconds: 4,
      ack_latency_ms: { p50: 5, p99: 40, p999: 120 },
      client_cpu: { user_s: 0.5, system_s: 0.25, pct_of_one_core: 18 },
      freshness: { after_last_ack_ms: 1000, converged: true },
      lag: { health_urls: [], samples: 10, sample_errors: 0, max_events: 120_000, max_seconds_behind: 0.5, caught_up_after_last_ack_ms: 500 },
      verification: { ok: true, mismatch_count: 0, checked_customers: 101, reads_per_s: 540 },
      errors: { '503': 2 },
    },
  }),
  row({
    target: 'meterd ×1 (all roles)',
    mode: 'embedded',
    transport: 'ws',
    result: {
      ok: false,
      events_acked: 500_000,
      events_per_s: 500_000,
      load_seconds: 1,
      ack_latency_ms: { p50: 100, p99: 200, p999: 300 },
      freshness: { after_last_ack_ms: null, converged: false },
      verification: { ok: false, mismatch_count: 3, checked_customers: 101 },
    },
    ok: false,
  }),
  row({
    target: 'meterd ×1 (all roles)',
    mode: 'distributed',
    topology: 'split',
    transport: 'http',
    ran: false,
    ok: false,
    error: 'deploy/up.sh failed\nmore',
  }),
];

t.test('the table: one row per target and transport, ratios against the same transport’s null server', async (t) => {
  const table = markdownTable(ROWS);
  const lines = table.split('\n');
  t.equal(lines.length, 2 + ROWS.length, 'header, separator and a line per row');
  for (const h of TABLE_HEAD) t.ok(lines[0]!.includes(h), `column ${h}`);
  const cells = (i: number): string[] =>
    lines[i]!.split('|')
      .slice(1, -1)
      .map((c) => c.trim());
  t.equal(cells(0).length, TABLE_HEAD.length);
  const embeddedHttp = cells(4);
  t.same(embeddedHttp.slice(0, 5), ['embedded', 'HTTP', '1,000,000', '250,000', '25.0%'], 'vs the HTTP null server');
  t.equal(embeddedHttp[5], '222,222 / 200,000', 'end to end: 1M / 4.5 s stored, 1M / 5 s exact');
  t.equal(embeddedHttp[6], '5.00 / 40.0 / 120');
  t.equal(embeddedHttp[7], '1000 ms');
  t.equal(embeddedHttp[8], '120,000 ev / 0.50 s');
  t.equal(embeddedHttp[9], '2.00 / 0.50 / 1.00 / 1.50 / 1.50 / 2.00 = 8.50', 'CPU-seconds per million events per thread kind');
  t.equal(embeddedHttp[10], '0.75', 'generator CPU-seconds per million events');
  t.equal(embeddedHttp[11], '400 MiB (300 MiB–350 MiB)', 'peak RSS, and its range after the first minute');
  t.equal(embeddedHttp[12], 'exact (101 customers, 540 summary reads/s)', 'exact, with the read rate of the exactness pass');
  t.equal(embeddedHttp[13], '503×2');
  const ws = cells(5);
  t.equal(ws[4], '25.0%', 'the WebSocket row compares with the WebSocket null server');
  t.equal(ws[7], 'not converged');
  t.equal(ws[12], 'MISMATCH (3 customers)');
  const failed = cells(6);
  t.same(failed.slice(0, 2), ['distributed (split)', 'HTTP']);
  t.equal(failed[12], 'FAILED: deploy/up.sh failed', 'first line of the error only');
  t.equal(cells(2)[4], '100.0%');
  t.same(endToEnd(ROWS[0]!), { stored: null, exact: null }, 'no end-to-end figure for a null server');
  t.equal(markdownTable([]).split('\n').length, 2, 'no rows: header only');
});

t.test('the chart: well-formed SVG with a bar per row, the latency and escaped names', async (t) => {
  const withLag: Row = {
    ...ROWS[2]!,
    result: {
      ...ROWS[2]!.result!,
      lag: {
        health_urls: [],
        samples: 3,
        sample_errors: 0,
        max_events: 10,
        max_seconds_behind: 0.1,
        caught_up_after_last_ack_ms: 50,
        series: {
          columns: ['t_ms', 'acked', 'stored', 'lag_events', 'seconds_behind'],
          t0_epoch_ms: 0,
          rows: [
            [-100, 0, 0, 0, 0],
            [1000, 500, 400, 100, 0.1],
            [2000, 1000, 1000, 0, 0],
          ],
        },
      },
    },
  };
  const svg = svgChart([...ROWS.slice(0, 2), withLag, ROWS[4]!], 'a <title> & "quotes"');
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg" width="\d+" height="\d+"/);
  t.ok(svg.trimEnd().endsWith('</svg>'));
  t.ok(svg.includes('a &lt;title&gt; &amp; &quot;quotes&quot;'), 'the title is escaped');
  t.notOk(/<title>/.test(svg), 'no raw markup from data');
  for (const name of ['null server (uWS), HTTP', 'null server (uWS), WebSocket', 'embedded, HTTP']) t.ok(svg.includes(name), `a bar for ${name}`);
  t.ok(svg.includes('1,000,000/s') && svg.includes('250,000/s'), 'accepted events/s printed on the bars');
  t.ok(svg.includes('p999 120'), 'p999 latency drawn');
  t.ok(svg.includes('<polyline'), 'the consumer lag panel is drawn');
  t.notOk(/NaN|undefined|Infinity/.test(svg), 'no broken numbers');
  // Every element opened is closed (the chart has no nesting beyond the root).
  const opened = (svg.match(/<(rect|text|line|polyline)\b/g) ?? []).length;
  const closed = (svg.match(/<\/(text)>|\/>/g) ?? []).length;
  t.equal(opened, closed, 'every element is closed');
});

t.test('CPU per thread kind from /proc samples', async (t) => {
  t.same(parseStat('1234 (node) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 0 0'), { comm: 'node', ticks: 300 });
  t.same(parseStat('77 (Bg Sch) Pool)) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14'), { comm: 'Bg Sch) Pool)', ticks: 23 }, 'comm with spaces and parentheses');
  t.equal(parseStat('garbage'), null);
  const tags = parseTags('100 main\n105 gateway\n106 gateway\n109 worker\n110 log\nnoise\n');
  t.equal(tags.size, 5);
  t.equal(threadKind(100, 100, 'node', undefined), 'main', 'tid = pid is the main thread');
  t.equal(threadKind(100, 105, 'node', tags.get(105)), 'gateway');
  t.equal(threadKind(100, 109, 'node', tags.get(109)), 'aggregator');
  t.equal(threadKind(100, 110, 'node', tags.get(110)), 'log', "the embedded log's writer thread");
  t.equal(threadKind(100, 120, 'MergeMutate', undefined), 'clickhouse');
  t.equal(threadKind(100, 101, 'node', undefined), 'helpers', 'untagged node threads: V8 and libuv');

  const sample = (t: number, ticks: [number, string, number][]): ThreadSample => ({
    t,
    ticks: new Map(ticks.map(([tid, comm, n]) => [`100/${tid}`, { pid: 100, tid, comm, ticks: n }])),
  });
  const samples = [
    sample(0, [
      [100, 'node', 0],
      [105, 'node', 0],
      [120, 'ThreadPool', 0],
    ]),
    sample(1000, [
      [100, 'node', 50],
      [105, 'node', 100],
      [120, 'ThreadPool', 10],
    ]),
    sample(2000, [
      [100, 'node', 150],
      [105, 'node', 100],
      [120, 'ThreadPool', 30],
      [109, 'node', 40],
    ]),
  ];
  const all = kindSecondsBetween(samples, tags, 0, 2000)!;
  t.same(all, { gateway: 100 / CLK_TCK, log: 0, main: 150 / CLK_TCK, aggregator: 40 / CLK_TCK, clickhouse: 30 / CLK_TCK, helpers: 0 });
  const half = kindSecondsBetween(samples, tags, 500, 1500)!;
  t.equal(half.main, (100 - 25) / CLK_TCK, 'interpolated at both ends');
  t.equal(half.gateway, (100 - 50) / CLK_TCK);
  t.equal(kindSecondsBetween(samples.slice(0, 1), tags, 0, 1000), null, 'one sample: unknown');
  t.equal(kindSecondsBetween(samples, tags, 1000, 1000), null, 'empty window: unknown');
});

t.test('RSS range after the warm-up: only samples inside the load, past its first minute', async (t) => {
  const MiB = 1024 * 1024;
  const series: Array<[number, number]> = [
    [1_000, 900 * MiB], // before the load
    [10_000, 200 * MiB],
    [70_000, 500 * MiB],
    [90_000, 450 * MiB],
    [100_000, 480 * MiB],
    [200_000, 9_000 * MiB], // after the load
  ];
  t.same(rssRange(series, 5_000, 120_000, 60_000), { from_s: 60, min_bytes: 450 * MiB, max_bytes: 500 * MiB, last_bytes: 480 * MiB, samples: 3 });
  t.equal(rssRange(series, 5_000, 60_000, 60_000), null, 'a load shorter than the warm-up has no range');
});

t.test("the null server reads a WebSocket batch's id and size without decoding it", async (t) => {
  const ev = { event_name: 'e', payload: { stripe_customer_id: 'cus_1', value: '1' } };
  for (const n of [1, 15, 16, 1000, 70_000]) {
    const head = peekBatch(pack({ id: `batch-${n}`, events: Array.from({ length: n }, () => ev) }));
    t.same(head, { id: `batch-${n}`, events: n }, `${n} events`);
  }
  t.same(peekBatch(pack({ id: 'x'.repeat(100), events: [ev] })), { id: 'x'.repeat(100), events: 1 }, 'a long id (str8)');
  t.equal(peekBatch(pack({ events: [ev], id: 'late' })), null, 'id not first: decode instead');
  t.equal(peekBatch(pack([1, 2])), null, 'not a map');
  t.equal(peekBatch(Buffer.alloc(0)), null, 'empty');
  t.equal(peekBatch(pack({ id: 'cut', events: [ev] }).subarray(0, 6)), null, 'truncated');
});

t.test('ws-raw frames: the template patched in place decodes to the batch it stands for', async (t) => {
  const o = { runId: 'abcd1234', eventName: 'bench_tokens', customerPrefix: 'cus_abcd1234_', timestamps: false, wsIdentifiers: false };
  for (const n of [1, 15, 16, 1000]) {
    const tpl = buildFrameTemplate(n, o, 2);
    const frame = Buffer.from(tpl.frame);
    writeDigits(frame, tpl.idOff, 10, 4_200_000 + n);
    for (let i = 0; i < n; i++) {
      writeDigits(frame, tpl.custOff[i]!, 2, i % 100);
      writeDigits(frame, tpl.valOff[i]!, 3, 100 + (i % 900));
    }
    const m = unpack(frame) as { id: string; events: { event_name: string; payload: Record<string, string> }[] };
    t.equal(m.id, `abcd1234-${String(4_200_000 + n).padStart(10, '0')}`, `${n} events: the id`);
    t.equal(m.events.length, n);
    t.same(m.events[n - 1], {
      event_name: 'bench_tokens',
      payload: { stripe_customer_id: `cus_abcd1234_${String((n - 1) % 100).padStart(2, '0')}`, value: String(100 + ((n - 1) % 900)) },
    });
    t.same(peekBatch(frame), { id: m.id, events: n }, 'and the null server reads its head');
  }
  const ts = buildFrameTemplate(2, { ...o, timestamps: true, wsIdentifiers: true }, 1);
  const frame = Buffer.from(ts.frame);
  frame.write('2026-12-06T20:00:00.000Z', ts.tsOff![1]!, 'latin1');
  writeDigits(frame, ts.identOff![1]!, 10, 77);
  const ev = (unpack(frame) as { events: { timestamp: string; identifier: string; payload: unknown }[] }).events[1]!;
  t.equal(ev.timestamp, '2026-12-06T20:00:00.000Z', 'timestamps patched');
  t.equal(ev.identifier, 'abcd1234-0000000077', 'identifiers patched');
  t.same(ev.payload, { stripe_customer_id: 'cus_abcd1234_0', value: '111' });
});

t.test('the progress line: elapsed, acknowledged, rate now and so far, errors, lag', async (t) => {
  t.equal(
    progressLine({ elapsedS: 10, acked: 1_500_000, rateNow: 160_000.4, errors: 2, lag: { stored: 1_200_000, events: 300_000, secondsBehind: 1.26 } }),
    '  [10.0s] acked 1,500,000 events, 160,000/s now, 150,000/s so far, 2 errors, stored 1,200,000 (lag 300,000 events, 1.3 s behind)',
  );
  t.equal(
    progressLine({ elapsedS: 0, acked: 0, rateNow: 0, errors: 0, lag: null }),
    '  [0.0s] acked 0 events, 0/s now, 0/s so far, 0 errors',
    'no lag sampled, no division by zero',
  );
});

t.test('the bench starts the server with the environment `npm start` sets', async (t) => {
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { scripts: { start: string } };
  for (const [name, value] of Object.entries(START_ENV)) {
    t.ok(pkg.scripts.start.includes(`${name}=\${${name}:-${value}} `), `npm start sets ${name}=${value} unless it is set`);
  }
  t.ok(Object.keys(START_ENV).length > 0);
});
