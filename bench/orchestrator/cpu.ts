/** CPU time of the server's processes, sampled from /proc. */
import * as fs from 'node:fs';

export const CLK_TCK = 100; // USER_HZ on Linux

/** Samples the CPU time (user+system, all threads) of processes and their descendants from /proc, every 500 ms. */
export class TreeCpu {
  private readonly samples: [number, number][] = [];
  private timer: NodeJS.Timeout | null = null;
  private readonly rootPids: number[];

  constructor(rootPids: number | number[]) {
    this.rootPids = Array.isArray(rootPids) ? rootPids : [rootPids];
  }

  start(): void {
    if (process.platform !== 'linux') return;
    this.sample();
    this.timer = setInterval(() => this.sample(), 500);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private sample(): void {
    const stats = new Map<number, { ppid: number; ticks: number }>();
    let entries: string[];
    try {
      entries = fs.readdirSync('/proc');
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.charCodeAt(0) < 48 || e.charCodeAt(0) > 57) continue;
      try {
        const s = fs.readFileSync(`/proc/${e}/stat`, 'latin1');
        const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
        stats.set(Number(e), { ppid: Number(f[1]), ticks: Number(f[11]) + Number(f[12]) });
      } catch {
        /* gone */
      }
    }
    const tree = new Set<number>(this.rootPids);
    let grew = true;
    while (grew) {
      grew = false;
      for (const [pid, st] of stats) {
        if (!tree.has(pid) && tree.has(st.ppid)) {
          tree.add(pid);
          grew = true;
        }
      }
    }
    let ticks = 0;
    for (const pid of tree) ticks += stats.get(pid)?.ticks ?? 0;
    if (this.rootPids.every((p) => stats.has(p))) this.samples.push([Date.now(), ticks]);
  }

  private at(t: number): number | null {
    const s = this.samples;
    if (s.length === 0) return null;
    if (t <= s[0]![0]) return s[0]![1];
    for (let i = 1; i < s.length; i++) {
      if (s[i]![0] >= t) {
        const [t0, v0] = s[i - 1]!;
        const [t1, v1] = s[i]!;
        return v0 + ((v1 - v0) * (t - t0)) / Math.max(1, t1 - t0);
      }
    }
    return s[s.length - 1]![1];
  }

  /** CPU use between two epoch-ms instants, in % of one core; null when unknown. */
  pctBetween(t0: number, t1: number): number | null {
    const a = this.at(t0);
    const b = this.at(t1);
    if (a === null || b === null || t1 <= t0) return null;
    return Math.round(((((b - a) / CLK_TCK) * 1000) / (t1 - t0)) * 1000) / 10;
  }
}
