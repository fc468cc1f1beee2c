/**
 * The configuration loader: defaults, every problem reported at once, and the process's start-up answer to a bad
 * configuration (one line per problem, exit code 2, no stack trace).
 */
import t from 'tap';
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import { ConfigError, loadConfig } from '../shared/config';
import { MAIN, tempDir } from './helpers/server';

t.test('defaults', async (t) => {
  const c = loadConfig({});
  t.equal(c.port, 12111);
  t.equal(c.role, 'all');
  t.equal(c.maxBodyBytes, 1024 * 1024);
  t.equal(c.httpIdleTimeoutS, 65);
  t.equal(c.httpRequestTimeoutS, 30);
  t.equal(c.webhookMaxAttempts, 16);
  t.equal(c.startupWaitMs, 60_000);
  t.same(c.apiKeys, []);
  t.equal(c.gatewayThreads, os.availableParallelism(), 'a gateway thread per core');
  t.equal(loadConfig({ GATEWAY_THREADS: '0' }).gatewayThreads, 0, '0: HTTP on the main thread');
  t.equal(c.aggregatorNice, 10, 'aggregation yields to acknowledgement by default');
  t.equal(loadConfig({ AGGREGATOR_NICE: '0' }).aggregatorNice, 0);
});

t.test('every problem at once', async (t) => {
  let err: unknown;
  try {
    loadConfig({
      API_KEYS: 'sk_test_goodgoodgood,nope',
      PORT: '70000',
      FLUSH_EVENTS: 'many',
      ROLE: 'boss',
      LOG_LEVEL: 'loud',
      KAFKA_BROKERS: 'k:1',
      KAFKA_SSL: 'maybe',
      KAFKA_PARTITIONS: '0',
      GATEWAY_THREADS: '-1',
      AGGREGATOR_NICE: '20',
    });
  } catch (e) {
    err = e;
  }
  t.ok(err instanceof ConfigError, 'a ConfigError');
  const problems = (err as ConfigError).problems;
  for (const name of ['API_KEYS', 'PORT', 'FLUSH_EVENTS', 'ROLE', 'LOG_LEVEL', 'KAFKA_SSL', 'KAFKA_PARTITIONS', 'GATEWAY_THREADS', 'AGGREGATOR_NICE']) {
    t.ok(
      problems.some((p) => p.startsWith(name) || p.includes(` ${name}`)),
      `names ${name}`,
    );
  }
  t.equal(problems.length, 9, 'one problem each');
  t.ok(
    problems.every((p) => /expected/.test(p)),
    'each says what is expected',
  );
  t.notOk(problems.join(' ').includes('sk_test_goodgoodgood'), 'a valid key is never printed');
});

t.test('METRICS_TOKEN: unset (or blank) leaves /metrics open; a token with spaces is refused', async (t) => {
  t.equal(loadConfig({}).metricsToken, null);
  t.equal(loadConfig({ METRICS_TOKEN: '  ' }).metricsToken, null);
  t.equal(loadConfig({ METRICS_TOKEN: 'scrape-Me_1' }).metricsToken, 'scrape-Me_1');
  t.throws(() => loadConfig({ METRICS_TOKEN: 'two words' }), /METRICS_TOKEN is not valid/);
});

t.test('distributed roles need all three servers', async (t) => {
  t.throws(() => loadConfig({ ROLE: 'gateway', KAFKA_BROKERS: 'k:1' }), /CLICKHOUSE_URL, DATABASE_URL/);
});

t.test('the process: one line per problem, exit 2, no stack trace', async (t) => {
  const r = spawnSync(process.execPath, [MAIN], {
    env: { ...process.env, DATA_DIR: tempDir(), API_KEYS: 'bad', MAX_BODY_BYTES: '-5', KAFKA_BROKERS: '' },
    encoding: 'utf8',
    timeout: 20_000,
  });
  t.equal(r.status, 2, 'exit code 2');
  const lines = r.stderr.trim().split('\n');
  t.equal(lines.length, 3, `two problems and a summary line:\n${r.stderr}`);
  t.match(lines[0], /^meterd: configuration error: API_KEYS/);
  t.match(lines[1], /^meterd: configuration error: MAX_BODY_BYTES="-5" is not valid: expected an integer >= 1024/);
  t.match(lines[2], /not started \(2 configuration errors/);
  t.notMatch(r.stderr, /\bat .*\.js:\d+/, 'no stack trace');
});
