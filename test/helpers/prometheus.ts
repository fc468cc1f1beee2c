/**
 * A reader of the Prometheus text exposition format (version 0.0.4), strict enough to fail a test on a malformed
 * line: every sample line is `name{label="value",...} number`, every family has one HELP and one TYPE line.
 */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Exposition {
  samples: Sample[];
  types: Map<string, string>;
  help: Map<string, string>;
  /** The value of the one sample with this name whose labels include `labels`, or undefined; throws when several match. */
  value(name: string, labels?: Record<string, string>): number | undefined;
  /** The sum over the samples with this name whose labels include `labels`. */
  sum(name: string, labels?: Record<string, string>): number;
}

// prom-client writes NaN as `Nan` (an event-loop lag mean before its first sample); Prometheus parses floats
// case-insensitively, so both are accepted.
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+-]+|NaN|Nan|\+Inf|-Inf)$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/y;

function unescapeLabel(v: string): string {
  return v.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# HELP ')) {
      const [name, ...rest] = line.slice(7).split(' ');
      if (help.has(name)) throw new Error(`two HELP lines for ${name}`);
      help.set(name, rest.join(' '));
      continue;
    }
    if (line.startsWith('# TYPE ')) {
      const [name, type] = line.slice(7).split(' ');
      if (types.has(name)) throw new Error(`two TYPE lines for ${name}`);
      types.set(name, type);
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`malformed sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      LABEL.lastIndex = 0;
      let at = 0;
      while (at < m[2].length) {
        LABEL.lastIndex = at;
        const l = LABEL.exec(m[2]);
        if (!l) throw new Error(`malformed labels: ${line}`);
        labels[l[1]] = unescapeLabel(l[2]);
        at = LABEL.lastIndex;
      }
    }
    samples.push({ name: m[1], labels, value: Number(m[3].replace('+Inf', 'Infinity')) });
  }
  const matching = (name: string, labels: Record<string, string> = {}) =>
    samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return {
    samples,
    types,
    help,
    value(name, labels) {
      const found = matching(name, labels);
      if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`);
      return found[0]?.value;
    },
    sum(name, labels) {
      return matching(name, labels).reduce((n, s) => n + s.value, 0);
    },
  };
}
