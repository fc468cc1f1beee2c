/**
 * CPU time of the server's processes, per thread kind, sampled from /proc/<pid>/task/<tid>/stat every 500 ms.
 *
 * Kinds: `main` (each process's main thread), `gateway` (gateway threads), `log` (the embedded log's writer thread, or the Kafka log's producer thread) and
 * `aggregator` (the aggregator's worker threads), known from the tags that bench/orchestrator/thread-tags.ts writes;
 * `clickhouse` (threads named by
 * chdb, the embedded ClickHouse: any comm other than `node`); `helpers` (the other `node` threads: V8's platform
 * workers (GC, compilation) and libuv's thread pool (fs, fdatasync)).
 */
import * as fs from 'node:fs';

export const CLK_TCK = 100; // USER_HZ on Linux

export const THREAD_KINDS = ['gateway', 'log', 'main', 'aggregator', 'clickhouse', 'helpers'] as const;
export type ThreadKind = (typeof THREAD_KINDS)[number];
export type KindSeconds = Record<ThreadKind, number>;

/** comm and user+system ticks of one /proc/.../stat line (comm may hold spaces and parentheses). */
export function parseStat(text: string): { comm: string; ticks: number } | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return null;
  const f = text.slice(close + 2).split(' ');
  const ticks = Number(f[11]) + Number(f[12]);
  return Number.isFinite(ticks) ? { comm: text.slice(open + 1, close), ticks } : null;
}

/** The tags file of thread-tags.ts: tid -> role. */
export function parseTags(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const line of text.split('\n')) {
    const m = /^(\d+) (\w+)$/.exec(line.trim());
    if (m) out.set(Number(m[1]), m[2]!);
  }
  return out;
}

export function threadKind(pid: number, tid: number, comm: string, tag: string | undefined): ThreadKind {
  if (tid === pid || tag === 'main') return 'main';
  if (tag === 'gateway') return 'gateway';
  if (tag === 'log') return 'log';
  if (tag === 'worker') return 'aggregator';
  return comm === 'node' ? 'helpers' : 'clickhouse';
}

export function zeroKinds(): KindSeconds {
  return { gateway: 0, log: 0, main: 0, aggregator: 0, clickhouse: 0, helpers: 0 };
}

/**
 * One sample: when, the cumulative ticks of every thread seen so far (exited threads keep their last count), and the
 * processes' resident set size then (VmRSS, summed; null when none could be read).
 */
export interface ThreadSample {
  t: number;
  ticks: Map<string, { pid: number; tid: number; comm: string; ticks: number }>;
  rss?: number | null;
}

/** Seconds of CPU per kind between two epoch-ms instants, interpolated between the samples around them. */
export function kindSecondsBetween(samples: ThreadSample[], tags: Map<number, string>, t0: number, t1: number): KindSeconds | null {
  if (samples.length < 2 || t1 <= t0) return null;
  const totals = samples.map((s) => {
    const k = zeroKinds();
    for (const th of s.ticks.values()) k[threadKind(th.pid, th.tid, th.comm, tags.get(th.tid))] += th.ticks / CLK_TCK;
    return { t: s.t, k };
  });
  const at = (t: number): KindSeconds => {
    if (t <= totals[0]!.t) return totals[0]!.k;
    for (let i = 1; i < totals.length; i++) {
      if (totals[i]!.t >= t) {
        const a = totals[i - 1]!;
        const b = totals[i]!;
        const f = (t - a.t) / Math.max(1, b.t - a.t);
        const out = zeroKinds();
        for (const kind of THREAD_KINDS) out[kind] = a.k[kind] + (b.k[kind] - a.k[kind]) * f;
        return out;
      }
    }
    return totals[totals.length - 1]!.k;
  };
  const a = at(t0);
  const b = at(t1);
  const out = zeroKinds();
  for (const kind of THREAD_KINDS) out[kind] = Math.max(0, b[kind] - a[kind]);
  return out;
}

/** Samples every thread of the given processes from /proc every 500 ms (Linux only; elsewhere it stays empty). */
export class ThreadCpu {
  readonly samples: ThreadSample[] = [];
  private readonly last = new Map<string, { pid: number; tid: number; comm: string; ticks: number }>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly pids: number[],
    private readonly tagsFile: string | null,
  ) {}

  start(): void {
    if (process.platform !== 'linux') return;
    this.sample();
    this.timer = setInterval(() => this.sample(), 500);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (process.platform === 'linux') this.sample();
  }

  private sample(): void {
    for (const pid of this.pids) {
      let tids: string[];
      try {
        tids = fs.readdirSync(`/proc/${pid}/task`);
      } catch {
        continue; // exited
      }
      for (const tid of tids) {
        try {
          const st = parseStat(fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1'));
          if (st) this.last.set(`${pid}/${tid}`, { pid, tid: Number(tid), comm: st.comm, ticks: st.ticks });
        } catch {
          // the thread ended between the listing and the read
        }
      }
    }
    this.samples.push({ t: Date.now(), ticks: new Map(this.last), rss: currentRss(this.pids) });
  }

  /** The sampled resident set sizes, [epoch ms, bytes]. */
  rssSeries(): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (const s of this.samples) if (typeof s.rss === 'number') out.push([s.t, s.rss]);
    return out;
  }

  tags(): Map<number, string> {
    if (!this.tagsFile) return new Map();
    try {
      return parseTags(fs.readFileSync(this.tagsFile, 'utf8'));
    } catch {
      return new Map();
    }
  }

  /** CPU-seconds per kind between two epoch-ms instants. */
  between(t0: number, t1: number): KindSeconds | null {
    return kindSecondsBetween(this.samples, this.tags(), t0, t1);
  }
}

/** Peak resident set size (VmHWM) of the processes, summed, in bytes; null when unreadable. */
export function peakRss(pids: number[]): number | null {
  return statusSum(pids, /VmHWM:\s+(\d+) kB/);
}

/** Resident set size now (VmRSS) of the processes, summed, in bytes; null when unreadable. */
export function currentRss(pids: number[]): number | null {
  return statusSum(pids, /VmRSS:\s+(\d+) kB/);
}

/**
 * The resident set size over a load, from samples ([epoch ms, bytes]) between `t0` and `t1`: its range once `warmupMs`
 * have passed (the steady state, where "flat" is judged), and its last value. Null without a sample after the warm-up.
 */
export function rssRange(series: Array<[number, number]>, t0: number, t1: number, warmupMs: number): RssRange | null {
  let min = Infinity;
  let max = -Infinity;
  let last: number | null = null;
  let n = 0;
  for (const [t, bytes] of series) {
    if (t < t0 + warmupMs || t > t1) continue;
    min = Math.min(min, bytes);
    max = Math.max(max, bytes);
    last = bytes;
    n++;
  }
  return n === 0 || last === null ? null : { from_s: warmupMs / 1000, min_bytes: min, max_bytes: max, last_bytes: last, samples: n };
}

export interface RssRange {
  /** Seconds after the start of the load the range begins. */
  from_s: number;
  min_bytes: number;
  max_bytes: number;
  last_bytes: number;
  samples: number;
}

function statusSum(pids: number[], field: RegExp): number | null {
  let sum = 0;
  let any = false;
  for (const pid of pids) {
    try {
      const m = field.exec(fs.readFileSync(`/proc/${pid}/status`, 'latin1'));
      if (m) {
        sum += Number(m[1]) * 1024;
        any = true;
      }
    } catch {
      // exited
    }
  }
  return any ? sum : null;
}
