/**
 * Metric families whose hot path is a plain field increment, rendered in the Prometheus text format by prom-client.
 *
 * Why not prom-client's own Counter and Histogram on the request threads: their `inc(labels)` / `observe(labels)`
 * hash the label object on every call. Here a series is bound once (`family.child(...labelValues)`) and counting is
 * `child.inc(n)`: one add on a number field, which V8 inlines. prom-client still does what it is good at: the
 * exposition format (escaping, ordering, content type) and the process and event-loop metrics; each family is
 * registered with it as a custom metric whose `get()` reads the children at scrape time.
 *
 * Every thread has its own instances (a worker thread loads its own copy of this module). A thread that counts
 * (a gateway thread) sends `snapshot()` to the main thread when asked at scrape time; the main thread renders its own
 * values plus those snapshots, summed per series. Nothing is sent per event.
 */
import { Registry, type MetricValue } from 'prom-client';
import { log } from '../logger';

export type MetricKind = 'counter' | 'gauge' | 'histogram';

/** One family's series of one thread: label values joined by SEP, and the value (histograms: buckets…, sum, count). */
export type FamilySnapshot = Array<[key: string, value: number | number[]]>;
export type RegistrySnapshot = Record<string, FamilySnapshot>;

const SEP = '\u0001';
const COLLECT_TIMEOUT_MS = 2000;

export class CounterChild {
  value = 0;
  inc(n = 1): void {
    this.value += n;
  }
}

export class GaugeChild {
  value = 0;
  set(v: number): void {
    this.value = v;
  }
}

export class HistogramChild {
  /** Per-bucket counts (not cumulative); the last is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(private readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }
  /** Counts `v` as `times` observations (things that shared one measurement, e.g. the records of one append). */
  observe(v: number, times = 1): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]) i++;
    this.counts[i] += times;
    this.sum += v * times;
    this.count += times;
  }
}

type Child = CounterChild | GaugeChild | HistogramChild;

abstract class Family<C extends Child> {
  /** Series by label values joined with SEP (a Map: label values are whatever was counted, never object members). */
  protected readonly series = new Map<string, C>();
  /** Runs before a scrape reads the values (gauges computed from state, counters read from elsewhere). */
  collector: (() => void | Promise<void>) | null = null;

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    readonly kind: MetricKind,
  ) {}

  protected abstract create(): C;

  /** The series of these label values, created on first use: bind it once, outside the hot path. */
  child(...labelValues: string[]): C {
    if (labelValues.length !== this.labelNames.length) {
      throw new Error(`${this.name} takes ${this.labelNames.length} label values (${this.labelNames.join(', ')}), got ${labelValues.length}`);
    }
    const key = labelValues.join(SEP);
    let c = this.series.get(key);
    if (!c) this.series.set(key, (c = this.create()));
    return c;
  }

  /** Drops every series (gauges whose label set is recomputed at each scrape, e.g. partitions owned). */
  clear(): void {
    this.series.clear();
  }

  snapshot(): FamilySnapshot {
    const out: FamilySnapshot = [];
    for (const [key, c] of this.series) out.push([key, c instanceof HistogramChild ? [...c.counts, c.sum, c.count] : c.value]);
    return out;
  }

  /** This thread's series merged with other threads' snapshots of the same family (summed per series). */
  merged(remote: FamilySnapshot[]): Map<string, number | number[]> {
    const out = new Map<string, number | number[]>(this.snapshot());
    for (const snap of remote) {
      for (const [key, v] of snap) {
        const have = out.get(key);
        if (have === undefined) out.set(key, Array.isArray(v) ? [...v] : v);
        else if (Array.isArray(have) && Array.isArray(v)) for (let i = 0; i < have.length; i++) have[i] += v[i] ?? 0;
        else if (typeof have === 'number' && typeof v === 'number') out.set(key, have + v);
      }
    }
    return out;
  }

  protected labelsOf(key: string): Record<string, string> {
    return labelsFromKey(this.labelNames, key);
  }

  abstract values(merged: Map<string, number | number[]>): MetricValue<string>[];
}

/** A family of one number per series (counters and gauges). */
abstract class ScalarFamily<C extends CounterChild | GaugeChild> extends Family<C> {
  values(merged: Map<string, number | number[]>): MetricValue<string>[] {
    return [...merged].map(([key, v]) => ({ labels: this.labelsOf(key), value: v as number }));
  }
}

export class Counter extends ScalarFamily<CounterChild> {
  constructor(name: string, help: string, labelNames: readonly string[] = []) {
    super(name, help, labelNames, 'counter');
  }
  protected create(): CounterChild {
    return new CounterChild();
  }
}

export class Gauge extends ScalarFamily<GaugeChild> {
  constructor(name: string, help: string, labelNames: readonly string[] = []) {
    super(name, help, labelNames, 'gauge');
  }
  protected create(): GaugeChild {
    return new GaugeChild();
  }
}

export class Histogram extends Family<HistogramChild> {
  constructor(
    name: string,
    help: string,
    labelNames: readonly string[],
    readonly bounds: readonly number[],
  ) {
    super(name, help, labelNames, 'histogram');
  }
  protected create(): HistogramChild {
    return new HistogramChild(this.bounds);
  }
  values(merged: Map<string, number | number[]>): MetricValue<string>[] {
    const out: MetricValue<string>[] = [];
    const n = this.bounds.length;
    for (const [key, v] of merged) {
      const counts = v as number[];
      const labels = this.labelsOf(key);
      let cumulative = 0;
      for (let i = 0; i <= n; i++) {
        cumulative += counts[i];
        const le = i < n ? String(this.bounds[i]) : '+Inf';
        out.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le }, value: cumulative } as MetricValue<string>);
      }
      out.push({ metricName: `${this.name}_sum`, labels, value: counts[n + 1] } as MetricValue<string>);
      out.push({ metricName: `${this.name}_count`, labels, value: counts[n + 2] } as MetricValue<string>);
    }
    return out;
  }
}

export type AnyFamily = Counter | Gauge | Histogram;

/**
 * The families of one thread. The main thread's registry also renders: `render()` merges the snapshots the other
 * threads sent, and appends what prom-client collects itself (process and event-loop metrics).
 */
export class MetricsRegistry {
  private readonly families: AnyFamily[] = [];
  /** The snapshots of other threads for the scrape being rendered. */
  private remote: RegistrySnapshot[] = [];
  /** Scrapes run one at a time: `remote` belongs to the one rendering. */
  private rendering: Promise<unknown> = Promise.resolve();
  readonly prom = new Registry();

  add<F extends AnyFamily>(family: F): F {
    if (this.families.some((f) => f.name === family.name)) throw new Error(`metric ${family.name} is registered twice`);
    this.families.push(family);
    const type = family.kind;
    this.prom.registerMetric({
      name: family.name,
      help: family.help,
      type,
      get: async () => {
        const remote = this.remote.map((r) => r[family.name] ?? []);
        return { name: family.name, help: family.help, type, aggregator: 'sum', values: family.values(family.merged(remote)) };
      },
      // prom-client's Registry only reads these members of a registered metric.
    } as unknown as Parameters<Registry['registerMetric']>[0]);
    return family;
  }

  /** The families' names, in registration order. */
  names(): string[] {
    return this.families.map((f) => f.name);
  }

  get(name: string): AnyFamily | undefined {
    return this.families.find((f) => f.name === name);
  }

  /**
   * Runs the collectors. One that fails or takes longer than COLLECT_TIMEOUT_MS (a gateway thread that does not answer)
   * leaves its family as the last scrape saw it: a scrape always gets an answer.
   */
  private async collect(): Promise<void> {
    for (const f of this.families) {
      const collector = f.collector;
      if (!collector) continue;
      let timer: NodeJS.Timeout | undefined;
      const bounded = new Promise<void>((resolve) => (timer = setTimeout(resolve, COLLECT_TIMEOUT_MS)));
      const run = Promise.resolve()
        .then(collector)
        .catch((err) => log.warn('metrics collector failed', { metric: f.name, err: String(err) }));
      await Promise.race([run, bounded]);
      clearTimeout(timer);
    }
  }

  /** This thread's values, for the thread that renders them. */
  async snapshot(): Promise<RegistrySnapshot> {
    await this.collect();
    const out: RegistrySnapshot = Object.create(null);
    for (const f of this.families) {
      const s = f.snapshot();
      if (s.length > 0) out[f.name] = s;
    }
    return out;
  }

  /** Scrapes collect and read one at a time: a collector may rebuild a family's series while another reads them. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.rendering.then(fn);
    this.rendering = run.catch(() => undefined);
    return run;
  }

  /** Every family (this thread's values plus `remote`'s), and prom-client's own metrics, in the text format. */
  render(remote: RegistrySnapshot[] = []): Promise<string> {
    return this.exclusive(async () => {
      await this.collect();
      this.remote = remote;
      try {
        return await this.prom.metrics();
      } finally {
        this.remote = [];
      }
    });
  }

  /** Every family's series after merging `remote` (histograms: buckets…, sum, count), for the dashboard's JSON. */
  values(remote: RegistrySnapshot[] = []): Promise<Record<string, Array<{ labels: Record<string, string>; value: number | number[] }>>> {
    return this.exclusive(async () => {
      await this.collect();
      const out: Record<string, Array<{ labels: Record<string, string>; value: number | number[] }>> = Object.create(null);
      for (const f of this.families) {
        const merged = f.merged(remote.map((r) => r[f.name] ?? []));
        out[f.name] = [...merged].map(([key, value]) => ({ labels: labelsFromKey(f.labelNames, key), value }));
      }
      return out;
    });
  }

  get contentType(): string {
    return this.prom.contentType;
  }
}

function labelsFromKey(names: readonly string[], key: string): Record<string, string> {
  const labels: Record<string, string> = {};
  if (names.length === 0) return labels;
  const values = key.split(SEP);
  names.forEach((n, i) => {
    labels[n] = values[i] ?? '';
  });
  return labels;
}
