/**
 * Distributed mode, scaled out: two gateways, two aggregators and one api process on one Kafka topic (6 partitions),
 * one ClickHouse database and one PostgreSQL schema. Load goes through BOTH gateways (session token issued by the api
 * process, valid everywhere since the HMAC secret is in the shared store); both aggregators must own partitions and do
 * work; the summaries read from the api process must equal exactly what was sent.
 *
 * Run with `npm run test:faults` (METERD_TEST_MODE=distributed and the exports of deploy/up.sh); skipped otherwise.
 */
import t from 'tap';
import { DISTRIBUTED } from '../helpers/server';
import { startCluster, verifyExact } from '../helpers/cluster';
import { Load, sleep, waitFor } from '../helpers/load';

const SKIP = DISTRIBUTED ? false : 'METERD_TEST_MODE is not distributed (needs Kafka, ClickHouse and PostgreSQL: eval "$(deploy/up.sh)")';
const PARTITIONS = 6;

t.test('two gateways + two aggregators + one api: load through both gateways, exact summaries', { skip: SKIP, timeout: 240_000 }, async (t) => {
  const started = Date.now();
  const run = await startCluster(t, { prefix: 'scale', partitions: PARTITIONS, gateways: 2, aggregators: 2 });
  const { cluster, client } = run;

  const load = new Load(client, { token: run.token, targets: run.gateways.map((g) => cluster.target(g)), senders: 8 });
  load.start();
  // A few seconds of load, with enough acknowledged events to spread over every partition.
  const loadStart = Date.now();
  await sleep(4000);
  await waitFor(() => client.ackedEvents >= 3000, 20_000);
  t.comment(`${client.ackedEvents} events acknowledged after ${Date.now() - loadStart} ms of load`);

  // verifyExact also requires both aggregators to own a disjoint, non-empty share of the partitions at the end.
  const ok = await verifyExact(t, run, load);

  for (const g of run.gateways) t.ok((client.ackedByTarget.get(g) ?? 0) > 0, `${g} acknowledged events`);
  for (const a of run.aggregators) {
    const h = await cluster.health(a);
    t.ok(
      h.aggregator.stored > 0,
      `${a} stored events of its own partitions (stored ${h.aggregator.stored}, partitions ${Object.keys(h.aggregator.partitions).join(',')})`,
    );
  }
  t.comment(`scale-out: ${ok ? 'exact' : 'NOT exact'}, ${Date.now() - started} ms`);
  await cluster.stopAll();
  t.same(cluster.exits, [], 'every process stopped cleanly');
});
