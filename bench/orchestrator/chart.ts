/** The bench's SVG chart, written by hand (no dependency): throughput, ack latency, consumer lag over time. */
import { type Row, label } from './rows';
import { fmtCompact, fmtInt, fmtMs, lagCell } from './table';

export function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** About `n` round tick values covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, n: number): number[] {
  const span = Math.max(hi - lo, 1e-9);
  const raw = span / Math.max(1, n);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}

export const COLORS = ['#4c78a8', '#f58518', '#54a24b', '#e45756'];

/**
 * One line chart per row with a lag series: events acknowledged (generator) and events stored (sum of the aggregators'
 * `stored`) against seconds since the load started; a dashed line marks the last acknowledgement.
 */
export function lagPanel(rows: Row[], W: number, y0: number): { parts: string[]; height: number } {
  const parts: string[] = [];
  let y = y0;
  const withLag = rows.filter((r) => (r.result?.lag?.series?.rows.length ?? 0) > 1);
  if (withLag.length === 0) return { parts, height: 0 };
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Consumer lag: events acknowledged vs stored by the aggregator(s), over time</text>`);
  y += 10;
  const left = 90;
  const right = W - 30;
  const ph = 150;
  for (const r of withLag) {
    const L = r.result!.lag!;
    const data = L.series!.rows;
    const tMin = Math.min(0, data[0]![0]! / 1000);
    const tMax = Math.max(...data.map((d) => d[0]! / 1000), 1);
    const vMax = Math.max(1, ...data.map((d) => Math.max(d[1]!, d[2]!)));
    const top = y + 30;
    const bottom = top + ph;
    const X = (t: number): number => left + ((t - tMin) / (tMax - tMin)) * (right - left);
    const Y = (v: number): number => bottom - (v / vMax) * ph;
    const title =
      `${label(r)}: max lag ${fmtInt(L.max_events)} events, ~${(L.max_seconds_behind ?? 0).toFixed(2)} s behind; ` +
      (L.caught_up_after_last_ack_ms === null ? 'never caught up' : `caught up ${fmtInt(L.caught_up_after_last_ack_ms)} ms after the last ack`);
    parts.push(`<text x="${left}" y="${y + 18}" font-size="12" font-weight="bold">${esc(title)}</text>`);
    // Grid and axes.
    for (const v of niceTicks(0, vMax, 4)) {
      parts.push(`<line x1="${left}" y1="${Y(v).toFixed(1)}" x2="${right}" y2="${Y(v).toFixed(1)}" stroke="#e5e5e5"/>`);
      parts.push(`<text x="${left - 6}" y="${(Y(v) + 4).toFixed(1)}" font-size="10" text-anchor="end">${fmtCompact(v)}</text>`);
    }
    for (const t of niceTicks(tMin, tMax, 8)) {
      parts.push(`<line x1="${X(t).toFixed(1)}" y1="${bottom}" x2="${X(t).toFixed(1)}" y2="${bottom + 4}" stroke="#333"/>`);
      parts.push(`<text x="${X(t).toFixed(1)}" y="${bottom + 15}" font-size="10" text-anchor="middle">${t}s</text>`);
    }
    parts.push(`<line x1="${left}" y1="${bottom}" x2="${right}" y2="${bottom}" stroke="#333"/>`);
    parts.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${bottom}" stroke="#333"/>`);
    const loadEnd = r.result!.load_seconds;
    if (loadEnd !== undefined && loadEnd <= tMax) {
      parts.push(`<line x1="${X(loadEnd).toFixed(1)}" y1="${top}" x2="${X(loadEnd).toFixed(1)}" y2="${bottom}" stroke="#888" stroke-dasharray="4,3"/>`);
      parts.push(`<text x="${(X(loadEnd) + 4).toFixed(1)}" y="${top + 10}" font-size="10" fill="#666">last ack</text>`);
    }
    const line = (col: number, color: string, dash = ''): void => {
      const pts = data.map((d) => `${X(d[0]! / 1000).toFixed(1)},${Y(d[col]!).toFixed(1)}`).join(' ');
      parts.push(`<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="1.8"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`);
    };
    line(1, COLORS[0]!);
    line(2, COLORS[1]!, '6,3');
    // Legend.
    const ly = bottom + 30;
    parts.push(`<line x1="${left}" y1="${ly - 4}" x2="${left + 24}" y2="${ly - 4}" stroke="${COLORS[0]}" stroke-width="2"/>`);
    parts.push(`<text x="${left + 30}" y="${ly}" font-size="11">acknowledged</text>`);
    parts.push(`<line x1="${left + 130}" y1="${ly - 4}" x2="${left + 154}" y2="${ly - 4}" stroke="${COLORS[1]}" stroke-width="2" stroke-dasharray="6,3"/>`);
    parts.push(`<text x="${left + 160}" y="${ly}" font-size="11">stored (aggregator /healthz)</text>`);
    parts.push(`<text x="${right}" y="${ly}" font-size="10" text-anchor="end" fill="#666">seconds since the load started</text>`);
    y = ly + 22;
  }
  return { parts, height: y - y0 };
}

/** Hand-written SVG: accepted events/s and p50/p99/p999 ack latency per row, then the consumer lag per meterd run. */
export function svgChart(rows: Row[], title: string): string {
  const data = rows
    .filter((r) => r.result?.events_per_s !== undefined)
    .map((r) => ({
      name: label(r),
      eps: r.result!.events_per_s!,
      p50: r.result!.ack_latency_ms?.p50 ?? 0,
      p99: r.result!.ack_latency_ms?.p99 ?? 0,
      p999: r.result!.ack_latency_ms?.p999 ?? 0,
      note:
        r.mode === 'null'
          ? 'baseline'
          : `freshness ${r.result!.freshness?.converged ? `${fmtMs(r.result!.freshness.after_last_ack_ms)} ms` : 'n/a'}, ` +
            `max consumer lag ${lagCell(r)}, verification ${r.result!.verification?.ok ? 'OK' : 'FAILED'}`,
    }));
  const W = 1060;
  const labelW = 330;
  const barH = 26;
  const gap = 14;
  const panelW = W - labelW - 150;
  const colors = COLORS;
  let y = 50;
  const parts: string[] = [];
  parts.push(`<text x="20" y="28" font-size="15" font-weight="bold">${esc(title)}</text>`);

  // Panel 1: events/s.
  const maxEps = Math.max(1, ...data.map((d) => d.eps));
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Accepted events/s (higher is better)</text>`);
  y += 14;
  data.forEach((d, i) => {
    const w = Math.max(1, (d.eps / maxEps) * panelW);
    parts.push(`<text x="${labelW - 8}" y="${y + barH * 0.68}" font-size="13" text-anchor="end">${esc(d.name)}</text>`);
    parts.push(`<rect x="${labelW}" y="${y}" width="${w.toFixed(1)}" height="${barH}" fill="${colors[i % colors.length]}"/>`);
    parts.push(`<text x="${labelW + w + 6}" y="${y + barH * 0.68}" font-size="12">${fmtInt(d.eps)}/s</text>`);
    parts.push(`<text x="${labelW}" y="${y + barH + 12}" font-size="10" fill="#555">${esc(d.note)}</text>`);
    y += barH + gap + 10;
  });

  // Panel 2: latency.
  y += 16;
  const maxLat = Math.max(0.001, ...data.map((d) => Math.max(d.p50, d.p99, d.p999)));
  parts.push(`<text x="20" y="${y}" font-size="14" font-weight="bold">Ack latency per request or batch, ms (lower is better)</text>`);
  y += 14;
  const lh = 16;
  data.forEach((d, i) => {
    parts.push(`<text x="${labelW - 8}" y="${y + lh + 4}" font-size="13" text-anchor="end">${esc(d.name)}</text>`);
    const w50 = Math.max(1, (d.p50 / maxLat) * panelW);
    const w99 = Math.max(1, (d.p99 / maxLat) * panelW);
    parts.push(`<rect x="${labelW}" y="${y}" width="${w50.toFixed(1)}" height="${lh}" fill="${colors[i % colors.length]}"/>`);
    parts.push(`<text x="${labelW + w50 + 6}" y="${y + lh * 0.78}" font-size="11">p50 ${fmtMs(d.p50)}</text>`);
    parts.push(`<rect x="${labelW}" y="${y + lh + 2}" width="${w99.toFixed(1)}" height="${lh}" fill="${colors[i % colors.length]}" fill-opacity="0.55"/>`);
    parts.push(`<text x="${labelW + w99 + 6}" y="${y + lh * 1.78 + 2}" font-size="11">p99 ${fmtMs(d.p99)}</text>`);
    const w999 = Math.max(1, (d.p999 / maxLat) * panelW);
    parts.push(
      `<rect x="${labelW}" y="${y + 2 * (lh + 2)}" width="${w999.toFixed(1)}" height="${lh}" fill="${colors[i % colors.length]}" fill-opacity="0.3"/>`,
    );
    parts.push(`<text x="${labelW + w999 + 6}" y="${y + lh * 2.78 + 4}" font-size="11">p999 ${fmtMs(d.p999)}</text>`);
    y += 3 * lh + gap + 8;
  });

  // Panel 3: consumer lag over time.
  y += 16;
  const lag = lagPanel(rows, W, y);
  parts.push(...lag.parts);
  y += lag.height;
  const H = y + 10;
  return (
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
    `font-family="Helvetica, Arial, sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n${parts.join('\n')}\n</svg>\n`
  );
}
