/**
 * Preloaded into the benchmarked server (`NODE_OPTIONS=--require …/thread-tags.js`, set by the bench only): every
 * JavaScript thread appends `<tid> <role>` to the file named by BENCH_THREAD_TAGS, so the bench can tell gateway
 * threads from aggregator workers in /proc/<pid>/task/* (Node names every thread `node`). A thread learns its own tid
 * from /proc/thread-self. Roles: `main`; `gateway` (a gateway thread: its workerData carries the listening socket's
 * index and the session secret); `log` (the log's writer: the embedded log's writer thread, whose workerData carries
 * the segment size and the partitions, or the Kafka log's producer thread, whose workerData carries the topic and the
 * batch limit); `worker` (any other worker thread: the aggregator's piscina pool).
 */
import * as fs from 'node:fs';
import { isMainThread, workerData } from 'node:worker_threads';

const file = process.env.BENCH_THREAD_TAGS;
if (file) {
  try {
    const tid = /task\/(\d+)$/.exec(fs.readlinkSync('/proc/thread-self'))?.[1];
    const data = workerData as Record<string, unknown> | null | undefined;
    const has = (...keys: string[]) => !!data && typeof data === 'object' && keys.every((k) => k in data);
    const role = isMainThread
      ? 'main'
      : has('sessionSecret', 'index')
        ? 'gateway'
        : has('segmentBytes', 'partitions') || has('topic', 'maxBatchBytes')
          ? 'log'
          : 'worker';
    if (tid) fs.appendFileSync(file, `${tid} ${role}\n`);
  } catch {
    // not Linux, or no /proc: the bench then reports these threads as helpers
  }
}
