/**
 * Idempotency-Key across processes (distributed mode): two API processes on one PostgreSQL receive the same keyed
 * POST at once, as a load balancer spreading a client's retries would. The key executes once: the process that
 * claimed it in the store executes, the other answers 409 idempotency_key_in_use, which the official client retries
 * and which then replays the saved answer.
 */
import t from 'tap';
import { DISTRIBUTED } from './helpers/server';
import { Cluster } from './helpers/cluster';

t.test('one key sent to two API processes at once executes once', { skip: !DISTRIBUTED && 'distributed mode only' }, async (t) => {
  const cluster = new Cluster(t, 'idem', {});
  t.teardown(() => cluster.stopAll());
  const [one, two] = await Promise.all([cluster.start('api-1', 'api'), cluster.start('api-2', 'api')]);
  const run = Math.random().toString(36).slice(2, 10);
  const keys = Array.from({ length: 25 }, (_, i) => `idem-processes-${run}-${i}`);
  const pairs = await Promise.all(
    keys.map((idempotencyKey, i) =>
      Promise.all(
        [one, two].map((server) => server.stripe().customers.create({ name: `Processes ${run} ${i}`, email: `${run}-${i}@example.com` }, { idempotencyKey })),
      ),
    ),
  );
  for (const [i, [a, b]] of pairs.entries()) t.equal(a.id, b.id, `key ${i}: both processes answer the same customer`);
  const created = await one.stripe().customers.list({ limit: 100 }).autoPagingToArray({ limit: 1000 });
  const ours = created.filter((c) => c.name?.startsWith(`Processes ${run} `));
  t.equal(ours.length, keys.length, 'one customer per key, however the two requests met');
  t.same(cluster.exits, [], 'no process exited');
});
