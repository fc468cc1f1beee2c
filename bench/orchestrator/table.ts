/** The bench's markdown table and the number formats it shares with the chart. */
import { type Row, targetName, transportName } from './rows';

export function fmtInt(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : Math.round(n).toLocaleString('en-US');
}
export function fmtMs(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : n < 10 ? n.toFixed(2) : n < 100 ? n.toFixed(1) : Math.round(n).toString();
}
export function fmtCompact(n: number): string {
  const a = Math.abs(n);
  if (a >= 1e6) return `${(n / 1e6).toFixed(a >= 1e7 ? 0 : 1)}M`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(a >= 1e4 ? 0 : 1)}k`;
  return String(Math.round(n));
}

export function lagCell(r: Row): string {
  if (r.mode === 'null') return 'n/a';
  const L = r.result?.lag;
  if (!L) return '–';
  if (L.max_events === null) return `no sample${L.first_sample_error ? ` (${L.first_sample_error.split('\n')[0]})` : ''}`;
  return `${fmtInt(L.max_events)} ev / ${(L.max_seconds_behind ?? 0).toFixed(2)} s`;
}

/** The null server's accepted events/s for the row's transport (the generator's ceiling for it), if it ran. */
export function nullBaseline(rows: Row[], r: Row): number | undefined {
  return rows.find((n) => n.mode === 'null' && n.target === 'null server (uWS)' && n.transport === r.transport && n.ok)?.result?.events_per_s;
}

/**
 * End-to-end events/s: the events acknowledged divided by the time from the first send until the aggregator(s) had
 * stored them all, and until every summary was exact.
 */
export function endToEnd(r: Row): { stored: number | null; exact: number | null } {
  const g = r.result;
  if (!g?.events_acked || g.load_seconds === undefined || r.mode === 'null') return { stored: null, exact: null };
  const per = (afterMs: number | null | undefined): number | null =>
    afterMs === null || afterMs === undefined ? null : g.events_acked! / (g.load_seconds! + afterMs / 1000);
  return {
    stored: per(g.lag?.caught_up_after_last_ack_ms),
    exact: g.freshness?.converged ? per(g.freshness.after_last_ack_ms) : null,
  };
}

/** CPU-seconds per million events of one thread kind; `–` when unknown. */
function perMillion(seconds: number | undefined, events: number): string {
  if (seconds === undefined || !events) return '–';
  const v = seconds / (events / 1e6);
  return v < 10 ? v.toFixed(2) : v.toFixed(1);
}

function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) return '–';
  return n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(2)} GiB` : `${Math.round(n / 1024 ** 2)} MiB`;
}

export const TABLE_HEAD = [
  'target',
  'transport',
  'events acked',
  'accepted events/s',
  'vs null server',
  'end-to-end events/s (all stored / summaries exact)',
  'ack p50 / p99 / p999 (ms)',
  'freshness after last ack',
  'max consumer lag',
  'server CPU-s per M events: gateway / log writer / main / aggregator / ClickHouse / V8+libuv = total',
  'generator CPU-s per M events',
  'server RSS: peak (range after the first minute)',
  'verification (and the summary reads of its exactness pass, 16 at once)',
  'errors',
];

/** Peak RSS, and over a load longer than a minute the range after its first minute (whether memory stays flat). */
function rssCell(r: Row): string {
  const peak = fmtBytes(r.server_peak_rss_bytes);
  const range = r.server_rss_range;
  return range ? `${peak} (${fmtBytes(range.min_bytes)}–${fmtBytes(range.max_bytes)})` : peak;
}

/** The run's one table: a row per target and transport (markdown). */
export function markdownTable(rows: Row[]): string {
  const head = TABLE_HEAD;
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const g = r.result;
    const isNull = r.mode === 'null';
    const target = targetName(r);
    const transport = transportName(r);
    if (!r.ran || !g || g.events_per_s === undefined) {
      const cells = head.map(() => '–');
      cells[0] = target;
      cells[1] = transport;
      cells[12] = `FAILED: ${(r.error ?? g?.error ?? 'no result').split('\n')[0]}`;
      lines.push(`| ${cells.join(' | ')} |`);
      continue;
    }
    const base = nullBaseline(rows, r);
    const ratio = base ? `${((g.events_per_s / base) * 100).toFixed(1)}%` : '–';
    const e2e = endToEnd(r);
    const e2eCell = isNull ? 'n/a' : `${fmtInt(e2e.stored)} / ${fmtInt(e2e.exact)}`;
    const lat = g.ack_latency_ms;
    const fresh = isNull ? 'n/a' : g.freshness?.converged ? `${fmtMs(g.freshness.after_last_ack_ms)} ms` : 'not converged';
    const ver = isNull
      ? 'n/a (null)'
      : g.verification
        ? g.verification.ok
          ? `exact (${g.verification.checked_customers} customers${g.verification.reads_per_s ? `, ${fmtInt(g.verification.reads_per_s)} summary reads/s` : ''})`
          : `MISMATCH (${g.verification.mismatch_count} customers)`
        : `not run${g.aborted ? `: ${g.aborted}` : ''}`;
    const errs =
      g.errors && Object.keys(g.errors).length
        ? Object.entries(g.errors)
            .map(([k, v]) => `${k}×${v}`)
            .join(' ')
        : '0';
    const c = r.server_cpu;
    const cpu = c
      ? `${[c.seconds.gateway, c.seconds.log ?? 0, c.seconds.main, c.seconds.aggregator, c.seconds.clickhouse, c.seconds.helpers].map((v) => perMillion(v, c.events)).join(' / ')} = ` +
        `${perMillion(
          Object.values(c.seconds).reduce((a, b) => a + b, 0),
          c.events,
        )}${c.window === 'until stored' ? '' : ' (load)'}`
      : '–';
    const genCpu = g.client_cpu && g.events_acked ? perMillion(g.client_cpu.user_s + g.client_cpu.system_s, g.events_acked) : '–';
    lines.push(
      `| ${target} | ${transport} | ${fmtInt(g.events_acked)} | ${fmtInt(g.events_per_s)} | ${ratio} | ${e2eCell} | ` +
        `${fmtMs(lat?.p50)} / ${fmtMs(lat?.p99)} / ${fmtMs(lat?.p999)} | ${fresh} | ${lagCell(r)} | ${cpu} | ${genCpu} | ` +
        `${rssCell(r)} | ${ver} | ${errs} |`,
    );
  }
  return lines.join('\n');
}
