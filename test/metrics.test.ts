/**
 * Unit: the metrics registry's text format (HELP and TYPE per family, escaped label values, cumulative histogram
 * buckets with +Inf, _sum and _count), the merge of other threads' snapshots into one answer, and the METRICS_TOKEN check.
 */
import t from 'tap';
import { Counter, Gauge, Histogram, MetricsRegistry } from '../shared/metrics/registry';
import { bearerMatches } from '../shared/metrics/endpoint';
import fs from 'node:fs';
import path from 'node:path';
import { registry as meterd } from '../shared/metrics';
import { parseExposition } from './helpers/prometheus';

function fresh() {
  const registry = new MetricsRegistry();
  const accepted = registry.add(new Counter('test_events_total', 'Events accepted.', ['endpoint', 'livemode']));
  const lag = registry.add(new Gauge('test_lag_records', 'Lag.', ['partition']));
  const latency = registry.add(new Histogram('test_latency_seconds', 'Latency.', ['endpoint'], [0.01, 0.1, 1]));
  return { registry, accepted, lag, latency };
}

t.test('counters, gauges and histograms in the text format', async (t) => {
  const { registry, accepted, lag, latency } = fresh();
  const stream = accepted.child('stream', 'false');
  stream.inc(100);
  stream.inc();
  accepted.child('v1', 'true').inc(2);
  lag.child('3').set(42);
  const h = latency.child('stream');
  for (const v of [0.005, 0.01, 0.05, 0.5, 5]) h.observe(v);

  const text = await registry.render();
  t.match(text, /^# HELP test_events_total Events accepted\.\n# TYPE test_events_total counter\n/m);
  const m = parseExposition(text);
  t.equal(m.value('test_events_total', { endpoint: 'stream', livemode: 'false' }), 101);
  t.equal(m.value('test_events_total', { endpoint: 'v1', livemode: 'true' }), 2);
  t.equal(m.value('test_lag_records', { partition: '3' }), 42);
  t.equal(m.types.get('test_latency_seconds'), 'histogram');
  // Buckets are cumulative and `le` is inclusive (0.01 falls in le="0.01"), as Prometheus defines them.
  t.same(
    ['0.01', '0.1', '1', '+Inf'].map((le) => m.value('test_latency_seconds_bucket', { endpoint: 'stream', le })),
    [2, 3, 4, 5],
  );
  t.equal(m.value('test_latency_seconds_count', { endpoint: 'stream' }), 5);
  t.ok(Math.abs(m.value('test_latency_seconds_sum', { endpoint: 'stream' })! - 5.565) < 1e-9);

  // One measurement shared by several things (the records of one append) counts once per thing.
  const shared = latency.child('port');
  shared.observe(0.05, 3);
  shared.observe(2);
  const again = parseExposition(await registry.render());
  t.same(
    ['0.01', '0.1', '1', '+Inf'].map((le) => again.value('test_latency_seconds_bucket', { endpoint: 'port', le })),
    [0, 3, 3, 4],
  );
  t.equal(again.value('test_latency_seconds_count', { endpoint: 'port' }), 4);
  t.ok(Math.abs(again.value('test_latency_seconds_sum', { endpoint: 'port' })! - 2.15) < 1e-9);
});

t.test('label values are escaped', async (t) => {
  const { registry, accepted } = fresh();
  accepted.child('a"b\\c\nd', 'false').inc();
  const text = await registry.render();
  t.match(text, 'test_events_total{endpoint="a\\"b\\\\c\\nd",livemode="false"} 1');
  t.equal(parseExposition(text).value('test_events_total', { endpoint: 'a"b\\c\nd' }), 1);
});

t.test("other threads' snapshots are summed into one answer", async (t) => {
  const main = fresh();
  const thread1 = fresh();
  const thread2 = fresh();
  main.accepted.child('stream', 'false').inc(1);
  thread1.accepted.child('stream', 'false').inc(10);
  thread2.accepted.child('stream', 'false').inc(100);
  thread2.accepted.child('ws', 'true').inc(7);
  thread1.latency.child('stream').observe(0.05);
  thread2.latency.child('stream').observe(2);
  // Snapshots cross threads by structured clone: they must survive a JSON round trip as well.
  const remote = [JSON.parse(JSON.stringify(await thread1.registry.snapshot())), await thread2.registry.snapshot()];
  const m = parseExposition(await main.registry.render(remote));
  t.equal(m.value('test_events_total', { endpoint: 'stream' }), 111);
  t.equal(m.value('test_events_total', { endpoint: 'ws', livemode: 'true' }), 7);
  t.equal(m.value('test_latency_seconds_count', { endpoint: 'stream' }), 2);
  t.equal(m.value('test_latency_seconds_bucket', { endpoint: 'stream', le: '0.1' }), 1);
  t.equal(m.value('test_latency_seconds_bucket', { endpoint: 'stream', le: '+Inf' }), 2);
  // The next scrape without snapshots shows this thread's values only.
  t.equal(parseExposition(await main.registry.render()).value('test_events_total', { endpoint: 'stream' }), 1);
});

t.test('collectors run before each scrape; concurrent scrapes do not mix their snapshots', async (t) => {
  const { registry, lag, accepted } = fresh();
  let scrapes = 0;
  lag.collector = () => {
    scrapes++;
    lag.clear();
    lag.child(String(scrapes)).set(scrapes);
  };
  const a = fresh();
  a.accepted.child('x', 'false').inc(5);
  accepted.child('x', 'false').inc(1);
  const [one, two] = await Promise.all([registry.render([await a.registry.snapshot()]), registry.render()]);
  t.equal(parseExposition(one).value('test_events_total'), 6);
  t.equal(parseExposition(two).value('test_events_total'), 1);
  t.equal(scrapes, 2);
  t.equal(parseExposition(two).value('test_lag_records', { partition: '2' }), 2, 'the gauge set by the latest collection');
});

t.test('a family is bound with exactly its labels, and registered once', async (t) => {
  const { registry, accepted } = fresh();
  t.throws(() => accepted.child('only-one'), /takes 2 label values/);
  t.throws(() => registry.add(new Counter('test_events_total', 'again')), /registered twice/);
  t.equal(accepted.child('a', 'b'), accepted.child('a', 'b'), 'the same series object every time');
});

t.test('METRICS_TOKEN: a bearer token compared exactly', async (t) => {
  t.ok(bearerMatches('Bearer s3cret-token', 's3cret-token'));
  t.ok(bearerMatches('bearer s3cret-token', 's3cret-token'), 'the scheme is case-insensitive');
  t.notOk(bearerMatches('Bearer s3cret-tokem', 's3cret-token'));
  t.notOk(bearerMatches('Bearer s3cret-token-longer', 's3cret-token'));
  t.notOk(bearerMatches('Basic czNjcmV0LXRva2VuOg==', 's3cret-token'));
  t.notOk(bearerMatches('', 's3cret-token'));
});

t.test("every meterd metric is in the README's table, and the Grafana dashboard reads only metrics that exist", async (t) => {
  const root = path.join(__dirname, '..');
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const names = meterd.names();
  t.ok(names.length >= 30);
  for (const name of names) t.ok(readme.includes(`| \`${name}\``), `${name} documented`);
  const grafana = fs.readFileSync(path.join(root, 'deploy', 'grafana', 'meterd.json'), 'utf8');
  const used = new Set([...grafana.matchAll(/\bmeterd_[a-z0-9_]+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, '')));
  for (const name of used) t.ok(names.includes(name), `${name} (Grafana) exists`);
  t.ok(used.size >= 20, `the dashboard uses ${used.size} meterd metrics`);
});

t.test('a failing or hanging collector does not fail or block the scrape', async (t) => {
  const { registry, lag, accepted } = fresh();
  accepted.child('x', 'false').inc(3);
  lag.collector = () => {
    throw new Error('broken');
  };
  t.equal(parseExposition(await registry.render()).value('test_events_total'), 3);
  lag.collector = () => new Promise<void>(() => undefined);
  const started = Date.now();
  t.equal(parseExposition(await registry.render()).value('test_events_total'), 3);
  t.ok(Date.now() - started < 10_000, 'answered after the collector timeout');
});
