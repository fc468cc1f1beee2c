/**
 * Background priority for the threads that aggregate (AGGREGATOR_NICE): the aggregator's worker threads and the
 * embedded ClickHouse engine's own threads run at a higher Linux nice value than the threads that read requests and
 * append them to the log, so that under a burst the kernel gives the CPU to acknowledging events first; aggregation
 * takes what is left and catches up afterwards (the events wait, durable, in the log).
 *
 * Linux applies nice values per thread (setpriority on a thread id), which is what os.setPriority calls; a thread
 * learns its own id from /proc/thread-self. Raising a nice value needs no privilege. Elsewhere (no /proc) these are
 * no-ops that report false.
 */
import fs from 'node:fs';
import os from 'node:os';
import { log } from './logger';

/** The id of the calling thread, or null where /proc/thread-self does not exist. */
export function currentThreadId(): number | null {
  try {
    const m = /task\/(\d+)$/.exec(fs.readlinkSync('/proc/thread-self'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** The nice value of a thread of this process, or null when it cannot be read. */
export function threadNice(tid: number): number | null {
  try {
    return os.getPriority(tid);
  } catch {
    return null;
  }
}

/** Gives the calling thread nice value `nice` (never lowers one already higher). True if it now has at least that. */
export function lowerCurrentThread(nice: number): boolean {
  const tid = currentThreadId();
  return tid !== null && lowerThread(tid, nice);
}

function lowerThread(tid: number, nice: number): boolean {
  try {
    if (os.getPriority(tid) >= nice) return true;
    os.setPriority(tid, nice);
    return true;
  } catch {
    return false;
  }
}

/**
 * Keeps the threads that a native engine starts in this process (chdb's ClickHouse pools: they name their threads,
 * where Node's own threads are all called `node`) at nice value `nice`. Engines start pool threads on demand, so the
 * process's threads are looked at again every `everyMs`; a thread is only read once. Returns the stop function.
 */
export function lowerEngineThreads(nice: number, everyMs = 1000): () => void {
  if (nice <= 0 || !fs.existsSync('/proc/self/task')) return () => undefined;
  const seen = new Set<string>();
  let failures = 0;
  const sweep = () => {
    let tids: string[];
    try {
      tids = fs.readdirSync('/proc/self/task');
    } catch {
      return;
    }
    for (const tid of tids) {
      if (seen.has(tid)) continue;
      seen.add(tid);
      let name: string;
      try {
        name = fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
      } catch {
        continue; // ended meanwhile
      }
      if (name === 'node') continue;
      if (!lowerThread(Number(tid), nice) && failures++ === 0) log.warn('could not lower the priority of an engine thread', { tid, name, nice });
    }
    // Forget ids of threads that ended, so that a reused id is looked at again.
    if (seen.size > tids.length * 2) {
      const live = new Set(tids);
      for (const tid of seen) if (!live.has(tid)) seen.delete(tid);
    }
  };
  sweep();
  const timer = setInterval(sweep, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
