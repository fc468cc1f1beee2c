/**
 * Distributed mode under faults. Each scenario starts its own cluster (one api, gateways, aggregators on one topic /
 * ClickHouse database / PostgreSQL schema), drives it with concurrent senders that retry every request until it is
 * acknowledged (503 -> retry; no answer -> in doubt -> resent with the same identifiers, to a live gateway), breaks
 * something mid-stream, restores it, and then requires the event summaries to equal exactly what was sent (no loss,
 * no double count), and to stay so.
 *
 *  1. kill -9 of one of two aggregators: the other takes its partitions over once the group notices (session timeout)
 *     and the dead one's lease expires.
 *  2. the Kafka broker stopped and restarted: gateways answer 503 + Stripe-Should-Retry: true meanwhile; recovery is
 *     automatic.
 *  3. the ClickHouse server stopped and restarted: gateways keep acknowledging; aggregators pause and catch up
 *     (a: outage shorter than the partition lease, b: longer).
 *  4. one of two gateways SIGKILLed with requests in flight: those are in doubt and resent to the other one.
 *
 * These stop shared servers: they wait until no other tap run is active first, bring the servers back in a teardown
 * whatever happens, and must never run in parallel with other tests (`npm run test:faults` runs them with --jobs 1).
 * Skipped unless METERD_TEST_MODE=distributed.
 */
import t, { type Test } from 'tap';
import { DISTRIBUTED } from '../helpers/server';
import { outage, startCluster, verifyExact, waitForExclusiveServers } from '../helpers/cluster';
import { Load, sleep, waitFor } from '../helpers/load';

const SKIP = DISTRIBUTED ? false : 'METERD_TEST_MODE is not distributed (needs Kafka, ClickHouse and PostgreSQL: eval "$(deploy/up.sh)")';
const PARTITIONS = 4;

/** Load until at least `events` more are acknowledged (and at least `minMs` passed), bounded by `maxMs`. */
async function loadFor(client: { ackedEvents: number }, events: number, minMs: number, maxMs = 20_000): Promise<void> {
  const from = client.ackedEvents;
  const started = Date.now();
  await sleep(minMs);
  await waitFor(() => client.ackedEvents - from >= events, Math.max(0, maxMs - (Date.now() - started)));
}

t.test('1. kill -9 of one of two aggregators mid-stream: the other takes over, summaries exact', { skip: SKIP, timeout: 240_000 }, async (t) => {
  const started = Date.now();
  // Most identifiers leave memory for runs on disk: the survivor must fetch the runs of the partitions it takes over
  // from the state store, where their dead owner put them.
  const run = await startCluster(t, { prefix: 'fault-agg', partitions: PARTITIONS, gateways: 1, aggregators: 2, env: { DEDUP_MEMORY_IDENTIFIERS: '300' } });
  const { cluster, client } = run;
  const load = new Load(client, { token: run.token, targets: run.gateways.map((g) => cluster.target(g)) });
  load.start();
  await loadFor(client, 2000, 2000);

  const victimParts = await cluster.owned('agg2');
  const before = client.ackedEvents;
  await cluster.kill('agg2');
  const killedAt = Date.now();
  t.comment(`agg2 (partitions ${victimParts.join(',')}) SIGKILLed after ${before} acknowledged events`);

  // The survivor must end up with every partition (group session timeout, then the dead lease expires).
  const takeover = await cluster.waitForSplit(['agg1'], PARTITIONS, 60_000);
  t.ok(takeover.ok, `agg1 took over every partition: ${JSON.stringify(takeover.owned)}`);
  t.comment(`take-over after ${Date.now() - killedAt} ms; ${client.ackedEvents - before} events acknowledged meanwhile`);
  // Some more load on the survivor's new partitions.
  await loadFor(client, 1000, 1500);

  await verifyExact(t, run, load);
  const metrics = (await cluster.server('agg1').request('GET', '/metrics', { key: null })).text;
  const runs = [...metrics.matchAll(/meterd_dedup_index_runs\{[^}]*\} (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
  t.ok(runs > 0, `the survivor holds identifiers in runs on disk (${runs} runs)`);
  await cluster.stopAll();
  t.comment(`scenario 1: ${Date.now() - started} ms`);
});

t.test(
  '2. Kafka broker stopped and restarted mid-stream: 503 + Stripe-Should-Retry, automatic recovery, summaries exact',
  { skip: SKIP, timeout: 480_000 },
  async (t) => {
    const started = Date.now();
    const kafka = outage(t, 'kafka');
    await waitForExclusiveServers(t); // before the load starts (down() checks again)
    const run = await startCluster(t, { prefix: 'fault-kafka', partitions: PARTITIONS, gateways: 1, aggregators: 2 });
    const { cluster, client } = run;
    const load = new Load(client, { token: run.token, targets: run.gateways.map((g) => cluster.target(g)) });
    load.start();
    await loadFor(client, 2000, 2000);

    const ackedBefore = client.ackedEvents;
    const downMs = await kafka.down();
    const downAt = Date.now();
    t.comment(`Kafka stopped in ${downMs} ms after ${ackedBefore} acknowledged events (${client.ackedEvents} now)`);
    const got503 = await waitFor(() => client.retryable503 > 0, 20_000);
    t.ok(got503, `the gateway answered 503 with Stripe-Should-Retry: true while Kafka was down (${client.retryable503} so far)`);
    // Down for longer than the consumer session timeout (6 s here).
    await sleep(Math.max(0, 7000 - (Date.now() - downAt)));
    const ackedWhileDown = client.ackedEvents;

    const upMs = await kafka.up();
    const upAt = Date.now();
    t.comment(`Kafka down for ${upAt - downAt - upMs} ms + ${upMs} ms to restart; ${client.retryable503} retryable 503s`);
    const resumed = await waitFor(() => client.ackedEvents > ackedWhileDown + 500, 60_000);
    t.ok(resumed, `the gateway acknowledges again after the restart (${Date.now() - upAt} ms)`);
    const split = await cluster.waitForSplit(run.aggregators, PARTITIONS, 60_000);
    t.ok(split.ok, `the aggregators own every partition again: ${JSON.stringify(split.owned)}`);
    await loadFor(client, 1000, 2000);

    await verifyExact(t, run, load);
    await cluster.stopAll();
    t.comment(`scenario 2: ${Date.now() - started} ms`);
  },
);

/**
 * ClickHouse down mid-stream, then back. `lease` is AGGREGATOR_LEASE_SECONDS, `holdMs` how long the server stays down
 * after deploy/down.sh returned (its restart adds a couple of seconds): 3a is an outage shorter than the lease, 3b one
 * longer than it (what a ClickHouse restart easily takes with the default 20 s lease).
 */
async function clickhouseOutage(t: Test, lease: number, holdMs: number): Promise<void> {
  const started = Date.now();
  const clickhouse = outage(t, 'clickhouse');
  await waitForExclusiveServers(t); // before the load starts (down() checks again)
  const run = await startCluster(t, {
    prefix: 'fault-ch',
    partitions: PARTITIONS,
    gateways: 1,
    aggregators: 2,
    env: { AGGREGATOR_LEASE_SECONDS: String(lease) },
  });
  const { cluster, client } = run;
  const load = new Load(client, { token: run.token, targets: run.gateways.map((g) => cluster.target(g)) });
  load.start();
  await loadFor(client, 2000, 2000);

  const downMs = await clickhouse.down();
  const downAt = Date.now();
  const ackedAtDown = client.ackedEvents;
  const errorsAtDown = client.unexpected.length + client.retryable503;
  t.comment(`ClickHouse stopped in ${downMs} ms; ${ackedAtDown} events acknowledged so far`);
  await loadFor(client, 1000, holdMs, holdMs + 10_000);
  const ackedWhileDown = client.ackedEvents - ackedAtDown;
  t.ok(ackedWhileDown > 0, `the gateway kept acknowledging while ClickHouse was down (${ackedWhileDown} events in ${Date.now() - downAt} ms)`);
  t.equal(client.unexpected.length + client.retryable503, errorsAtDown, 'no error answers while ClickHouse was down');

  const upMs = await clickhouse.up();
  t.comment(`ClickHouse down for ${Date.now() - downAt - upMs} ms + ${upMs} ms to restart (lease ${lease} s)`);
  await loadFor(client, 1000, 2000);

  // (verifyExact also requires every partition to be owned again at the end.)
  await verifyExact(t, run, load);
  for (const a of run.aggregators) {
    const lost = cluster.grepLogs(a, /lease lost|waiting for the previous owner/);
    if (lost.length) t.comment(`${a} lease events:\n${lost.slice(0, 10).join('\n')}`);
  }
  await cluster.stopAll();
  t.comment(`scenario 3 (lease ${lease} s): ${Date.now() - started} ms`);
}

t.test(
  '3a. ClickHouse stopped and restarted mid-stream, outage shorter than the lease: gateways keep acknowledging, aggregators catch up, summaries exact',
  { skip: SKIP, timeout: 480_000 },
  (t) => clickhouseOutage(t, 30, 3000),
);

t.test(
  '3b. ClickHouse stopped and restarted mid-stream, outage longer than the lease: gateways keep acknowledging, aggregators catch up, summaries exact',
  { skip: SKIP, timeout: 480_000 },
  (t) => clickhouseOutage(t, 5, 8000),
);

t.test(
  '4. a gateway SIGKILLed mid-batch while the other keeps serving: in-doubt requests resent, summaries exact',
  { skip: SKIP, timeout: 240_000 },
  async (t) => {
    const started = Date.now();
    const run = await startCluster(t, { prefix: 'fault-gw', partitions: PARTITIONS, gateways: 2, aggregators: 1 });
    const { cluster, client } = run;
    const load = new Load(client, { token: run.token, targets: run.gateways.map((g) => cluster.target(g)) });
    load.start();
    await loadFor(client, 2000, 2000);

    // Kill gw1 while requests are in flight on it: freeze it first, so that they certainly get no answer (a request
    // "in flight" from the client's side may otherwise be answered in the moment before the kill lands).
    process.kill(cluster.server('gw1').proc.pid!, 'SIGSTOP');
    await waitFor(() => (load.inFlight.get('gw1') ?? 0) >= 2, 5000);
    const inFlight = load.inFlight.get('gw1') ?? 0;
    const errorsBefore = client.networkErrors;
    const ackedBefore = client.ackedEvents;
    await cluster.kill('gw1');
    // What a load balancer does once its health check fails: new requests go to gw2 only.
    load.targets = [cluster.target('gw2')];
    t.comment(`gw1 SIGKILLed with ${inFlight} requests in flight, after ${ackedBefore} acknowledged events`);
    await loadFor(client, 1500, 2000);
    t.ok(
      client.networkErrors > errorsBefore,
      `requests to the dead gateway failed without an answer (${client.networkErrors - errorsBefore}) and were resent to gw2`,
    );

    await verifyExact(t, run, load);
    await cluster.stopAll();
    t.comment(`scenario 4: ${Date.now() - started} ms`);
  },
);
