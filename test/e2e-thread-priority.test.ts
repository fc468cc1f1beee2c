/**
 * AGGREGATOR_NICE: the aggregating threads (the aggregator's worker, the embedded engine's threads) run at a higher
 * nice value than the threads that acknowledge events, and the pipeline still counts exactly. Linux only (/proc).
 */
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import t from 'tap';
import { currentThreadId, threadNice } from '../shared/thread-priority';
import { currentRange, DISTRIBUTED, eventually, ROOT, startServer } from './helpers/server';

const linux = fs.existsSync('/proc/thread-self');

interface ThreadInfo {
  tid: number;
  name: string;
  nice: number;
}

function threadsOf(pid: number): ThreadInfo[] {
  const out: ThreadInfo[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      // Field 19 of stat is the nice value; the name (field 2) may hold spaces, so count from its closing parenthesis.
      const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const nice = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
      out.push({ tid: Number(tid), name, nice });
    } catch {
      // the thread ended meanwhile
    }
  }
  return out;
}

t.test('a thread lowers its own priority and no other thread’s', { skip: !linux && 'no /proc' }, async (t) => {
  const mine = currentThreadId()!;
  const before = threadNice(mine);
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     const p = require(${JSON.stringify(path.join(ROOT, 'dist', 'shared', 'thread-priority.js'))});
     parentPort.postMessage({ tid: p.currentThreadId(), ok: p.lowerCurrentThread(7), again: p.lowerCurrentThread(3) });
     // Stay alive until terminated: the test reads this thread's priority from /proc meanwhile.
     parentPort.on('message', () => undefined);`,
    { eval: true },
  );
  const reply = await new Promise<{ tid: number; ok: boolean; again: boolean }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  t.ok(reply.ok, 'lowered');
  t.ok(reply.again, 'a lower request leaves a higher value as it is');
  t.not(reply.tid, mine, 'the worker is a thread of its own');
  t.equal(threadNice(reply.tid), 7, 'the worker thread runs at nice 7, not 3');
  t.equal(threadNice(mine), before, 'the calling thread is unchanged');
  await worker.terminate();
});

t.test('the server runs aggregation at AGGREGATOR_NICE and acknowledgement at normal priority', { skip: !linux && 'no /proc' }, async (t) => {
  const server = await startServer({ env: { AGGREGATOR_NICE: '6', GATEWAY_THREADS: '2' } });
  t.teardown(() => server.stop());
  const pid = server.proc.pid!;
  const base = threadNice(pid)!;
  const stripe = server.stripe();
  const meter = await stripe.billing.meters.create({
    display_name: 'Niced',
    event_name: 'niced',
    default_aggregation: { formula: 'sum' },
    customer_mapping: { type: 'by_id', event_payload_key: 'stripe_customer_id' },
    value_settings: { event_payload_key: 'value' },
  });
  await Promise.all(
    Array.from({ length: 20 }, (_, i) =>
      stripe.billing.meterEvents.create({ event_name: 'niced', identifier: `n-${i}`, payload: { stripe_customer_id: 'cus_n', value: String(i + 1) } }),
    ),
  );
  const { start, end } = currentRange();
  await eventually(async () => {
    const s = await stripe.billing.meters.listEventSummaries(meter.id, { customer: 'cus_n', start_time: start, end_time: end });
    return s.data.reduce((a, x) => a + x.aggregated_value, 0) === 210;
  }, 20_000);

  // Engine threads start on demand; the server looks at its threads every second.
  let threads: ThreadInfo[] = [];
  await eventually(async () => {
    threads = threadsOf(pid);
    return threads.filter((x) => x.name !== 'node').every((x) => x.nice === base + 6);
  }, 5000);
  const main = threads.find((x) => x.tid === pid)!;
  t.equal(main.nice, base, 'the main thread (log appends) keeps its priority');
  const lowered = threads.filter((x) => x.nice === base + 6);
  const nodeLowered = lowered.filter((x) => x.name === 'node');
  t.equal(nodeLowered.length, 1, 'one JavaScript thread lowered: the aggregator’s worker (AGGREGATOR_THREADS=1)');
  if (DISTRIBUTED) t.equal(lowered.length, 1, 'no engine threads in the distributed mode (ClickHouse is a server)');
  else t.ok(lowered.length > 5, `the embedded engine's threads are lowered too (${lowered.length - 1})`);
  const normal = threads.filter((x) => x.name === 'node' && x.nice === base);
  t.ok(normal.length >= 3, 'the main thread, the gateway threads and Node’s helpers keep their priority');
});

t.test('AGGREGATOR_NICE=0 lowers no thread of its own', { skip: !linux && 'no /proc' }, async (t) => {
  const server = await startServer({ env: { AGGREGATOR_NICE: '0' } });
  t.teardown(() => server.stop());
  const pid = server.proc.pid!;
  const base = threadNice(pid)!;
  await new Promise((r) => setTimeout(r, 1500));
  // The engine's threads keep what the engine gave them (its memory worker asks for -20 where it may).
  t.same(
    threadsOf(pid).filter((x) => x.name === 'node' && x.nice !== base),
    [],
    'no JavaScript or Node thread lowered',
  );
});
