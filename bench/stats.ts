/** Latency statistics of the bench: a log-bucketed histogram and rounding helpers (no dependencies). */

/** Log-bucketed latency histogram: 32 buckets per power of two of microseconds (~2.2% resolution), no deps. */
export class LogHistogram {
  private static readonly PER_OCTAVE = 32;
  private readonly counts = new Float64Array(40 * LogHistogram.PER_OCTAVE);
  n = 0;
  sum = 0;
  max = 0;
  min = Infinity;

  record(ms: number): void {
    const us = ms * 1000;
    let i = us <= 1 ? 0 : Math.ceil(Math.log2(us) * LogHistogram.PER_OCTAVE);
    if (i >= this.counts.length) i = this.counts.length - 1;
    this.counts[i]!++;
    this.n++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
    if (ms < this.min) this.min = ms;
  }

  /** Upper bound of the bucket holding the q-quantile, in ms (clamped to the observed max). */
  quantile(q: number): number | null {
    if (this.n === 0) return null;
    const target = Math.max(1, Math.ceil(q * this.n));
    let cum = 0;
    for (let i = 0; i < this.counts.length; i++) {
      cum += this.counts[i]!;
      if (cum >= target) return Math.min(this.max, 2 ** (i / LogHistogram.PER_OCTAVE) / 1000);
    }
    return this.max;
  }

  summary(): Record<string, number | null> {
    return {
      count: this.n,
      mean: this.n ? round(this.sum / this.n, 3) : null,
      min: this.n ? round(this.min, 3) : null,
      p50: rnd(this.quantile(0.5)),
      p90: rnd(this.quantile(0.9)),
      p99: rnd(this.quantile(0.99)),
      p999: rnd(this.quantile(0.999)),
      max: this.n ? round(this.max, 3) : null,
    };
  }
}

export function round(x: number, d: number): number {
  const f = 10 ** d;
  return Math.round(x * f) / f;
}
export function rnd(x: number | null): number | null {
  return x === null ? null : round(x, 3);
}
