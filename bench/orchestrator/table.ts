/** The bench's markdown table and the number formats it shares with the chart. */
import { type Row, label } from './rows';

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

export function markdownTable(rows: Row[]): string {
  const nullEps = rows.find((r) => r.mode === 'null')?.result?.events_per_s;
  const head = [
    'target',
    'mode',
    'events acked',
    'accepted events/s',
    'vs null server',
    'p50 ack (ms)',
    'p99 ack (ms)',
    'p999 ack (ms)',
    'freshness after last ack',
    'max consumer lag',
    'verification',
    'client CPU',
    'server CPU',
    'errors',
  ];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const r of rows) {
    const g = r.result;
    const isNull = r.mode === 'null';
    if (!r.ran || !g || g.events_per_s === undefined) {
      const cells = head.map(() => '–');
      cells[0] = r.target;
      cells[1] = label(r);
      cells[10] = `FAILED: ${(r.error ?? g?.error ?? 'no result').split('\n')[0]}`;
      lines.push(`| ${cells.join(' | ')} |`);
      continue;
    }
    const ratio = nullEps ? `${((g.events_per_s / nullEps) * 100).toFixed(1)}%` : '–';
    const fresh = isNull ? 'n/a' : g.freshness?.converged ? `${fmtMs(g.freshness.after_last_ack_ms)} ms` : `not converged`;
    const ver = isNull
      ? 'n/a (null)'
      : g.verification
        ? g.verification.ok
          ? `OK (${g.verification.checked_customers} customers)`
          : `MISMATCH (${g.verification.mismatch_count})`
        : `not run${g.aborted ? `: ${g.aborted}` : ''}`;
    const errs =
      g.errors && Object.keys(g.errors).length
        ? Object.entries(g.errors)
            .map(([k, v]) => `${k}×${v}`)
            .join(' ')
        : '0';
    lines.push(
      `| ${r.target} | ${label(r)} | ${fmtInt(g.events_acked)} | ${fmtInt(g.events_per_s)} | ${ratio} | ` +
        `${fmtMs(g.ack_latency_ms?.p50)} | ${fmtMs(g.ack_latency_ms?.p99)} | ${fmtMs(g.ack_latency_ms?.p999)} | ${fresh} | ${lagCell(r)} | ${ver} | ` +
        `${g.client_cpu ? `${g.client_cpu.pct_of_one_core}%` : '–'} | ` +
        `${r.server_cpu_pct_of_one_core != null ? `${r.server_cpu_pct_of_one_core}%` : '–'} | ${errs} |`,
    );
  }
  return lines.join('\n');
}
