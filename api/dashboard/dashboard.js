/*
 * meterd's dashboard (served at /dashboard). Everything it shows comes from this server's public API, called with the
 * API key typed in (kept in sessionStorage for this tab only), plus /dashboard/api/live for the live counters. Charts
 * are uPlot (served by meterd from its node_modules). window.meterdDashboard exposes the charts and their data, for
 * tests and for the browser console.
 */
(() => {
  const KEY_ITEM = 'meterd.dashboard.key';
  const LIVE_POINTS = 150;
  const LIVE_EVERY_MS = 2000;
  const EVENTS_EVERY_MS = 5000;
  const ERROR_REPORT_TYPES = ['v1.billing.meter.error_report_triggered', 'v1.billing.meter.no_meter_found'];

  const $ = (id) => document.getElementById(id);
  const state = { key: null, liveTimer: null, eventsTimer: null, previous: null, live: [[], [], [], [], [], []], charts: {} };
  const exposed = { charts: state.charts, usage: null, lastLive: null };
  window.meterdDashboard = exposed;

  async function api(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [k, v] of Object.entries(params ?? {})) {
      if (Array.isArray(v)) for (const item of v) url.searchParams.append(`${k}[]`, String(item));
      else if (v !== undefined && v !== '') url.searchParams.set(k, String(v));
    }
    const res = await fetch(url, { headers: { Authorization: `Bearer ${state.key}` }, cache: 'no-store' });
    const text = await res.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
    if (!res.ok) {
      const message = body?.error?.message ?? `HTTP ${res.status}`;
      const err = new Error(message);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  function cell(row, text, className) {
    const td = document.createElement('td');
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function chartWidth(el) {
    return Math.max(300, el.clientWidth || el.parentElement.clientWidth || 600);
  }

  function makeChart(id, title, series, opts) {
    const el = $(id);
    const chart = new uPlot(
      {
        title,
        width: chartWidth(el),
        height: 220,
        series: [{}, ...series],
        axes: [{}, { size: 70 }],
        ...opts,
      },
      [[], ...series.map(() => [])],
      el,
    );
    state.charts[id] = chart;
    return chart;
  }

  /** The q-quantile of a histogram (per-bucket counts, last one +Inf), interpolated inside its bucket. */
  function quantile(bounds, counts, q) {
    const total = counts.reduce((a, b) => a + b, 0);
    if (total === 0) return null;
    const rank = q * total;
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      if (seen + counts[i] >= rank && counts[i] > 0) {
        if (i >= bounds.length) return bounds[bounds.length - 1];
        const lower = i === 0 ? 0 : bounds[i - 1];
        return lower + (bounds[i] - lower) * ((rank - seen) / counts[i]);
      }
      seen += counts[i];
    }
    return bounds[bounds.length - 1];
  }

  function delta(now, before) {
    return now.counts.map((c, i) => c - (before ? before.counts[i] : 0));
  }

  function fmt(n, digits) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    return n.toLocaleString('en-US', { maximumFractionDigits: digits ?? 0 });
  }

  async function pollLive() {
    try {
      const now = await api('/dashboard/api/live');
      exposed.lastLive = now;
      const before = state.previous;
      state.previous = now;
      $('live-role').textContent = `(role ${now.role})`;
      const lag = now.consumer_lag.reduce((a, p) => a + p.records, 0);
      $('tile-lag').textContent = now.consumer_lag.length ? fmt(lag) : '–';
      $('tile-conns').textContent = fmt(now.stream_connections);
      renderDeliveries(now.webhook_deliveries);
      if (before) {
        const seconds = (now.time_ms - before.time_ms) / 1000;
        const rate = (now.events_accepted - before.events_accepted) / seconds;
        const ack = delta(now.ack_latency, before.ack_latency);
        const p50 = quantile(now.ack_latency.bounds, ack, 0.5);
        const p99 = quantile(now.ack_latency.bounds, ack, 0.99);
        const fresh = quantile(now.freshness.bounds, delta(now.freshness, before.freshness), 0.99);
        $('tile-rate').textContent = fmt(rate);
        $('tile-ack').textContent = p50 === null ? '–' : `${fmt(p50 * 1000, 1)} / ${fmt(p99 * 1000, 1)}`;
        $('tile-fresh').textContent = fresh === null ? '–' : fmt(fresh, 2);
        $('tile-rejected').textContent = fmt((now.requests_rejected - before.requests_rejected) / seconds, 1);
        const [t, rates, p50s, p99s, lags, freshs] = state.live;
        t.push(now.time_ms / 1000);
        rates.push(rate);
        p50s.push(p50 === null ? null : p50 * 1000);
        p99s.push(p99 === null ? null : p99 * 1000);
        lags.push(now.consumer_lag.length ? lag : null);
        freshs.push(fresh);
        for (const a of state.live) if (a.length > LIVE_POINTS) a.shift();
        state.charts['chart-rate'].setData([t, rates]);
        state.charts['chart-ack'].setData([t, p50s, p99s]);
        state.charts['chart-lag'].setData([t, lags, freshs]);
      }
    } catch (err) {
      if (err.status === 401) return logout(err.message);
    }
    state.liveTimer = setTimeout(pollLive, LIVE_EVERY_MS);
  }

  function renderDeliveries(list) {
    const body = $('deliveries-body');
    body.replaceChildren();
    for (const d of list) {
      const row = document.createElement('tr');
      cell(row, new Date(d.at).toISOString().replace('T', ' ').slice(0, 19));
      cell(row, `${d.event_type} ${d.event}`);
      cell(row, d.url);
      cell(row, String(d.attempt));
      cell(row, d.error ? `${d.outcome}: ${d.error}` : d.outcome, d.error ? 'error' : 'ok');
      body.appendChild(row);
    }
    if (list.length === 0) {
      const row = document.createElement('tr');
      cell(row, 'no delivery attempts by this process yet', 'muted').colSpan = 5;
      body.appendChild(row);
    }
  }

  async function pollEvents() {
    try {
      const page = await api('/v2/core/events', { limit: 10, types: ERROR_REPORT_TYPES });
      const body = $('events-body');
      body.replaceChildren();
      for (const ev of page.data) {
        const row = document.createElement('tr');
        row.className = 'core-event';
        cell(row, ev.created.replace('T', ' ').slice(0, 19));
        cell(row, ev.type);
        cell(row, ev.related_object?.id ?? '');
        const reason = ev.data?.reason;
        const codes = reason ? reason.error_types.map((e) => `${e.code} × ${e.error_count}`).join(', ') : '';
        cell(row, reason ? `${reason.error_count}: ${codes}` : (ev.data?.developer_message_summary ?? ''));
        body.appendChild(row);
      }
      if (page.data.length === 0) {
        const row = document.createElement('tr');
        cell(row, 'no error reports', 'muted').colSpan = 4;
        body.appendChild(row);
      }
    } catch (err) {
      if (err.status === 401) return logout(err.message);
    }
    state.eventsTimer = setTimeout(pollEvents, EVENTS_EVERY_MS);
  }

  async function loadMeters() {
    const meters = await api('/v1/billing/meters', { limit: 100 });
    const select = $('usage-meter');
    select.replaceChildren();
    for (const m of meters.data) {
      const opt = document.createElement('option');
      opt.value = m.id;
      opt.textContent = `${m.display_name} (${m.event_name}, ${m.default_aggregation.formula})${m.status === 'active' ? '' : ' – inactive'}`;
      select.appendChild(opt);
    }
    return meters.data;
  }

  async function showUsage(event) {
    event.preventDefault();
    const meter = $('usage-meter').value;
    const customer = $('usage-customer').value.trim();
    const grouping = $('usage-grouping').value;
    const unit = grouping === 'day' ? 86400 : 3600;
    const end = Math.ceil(Date.now() / 1000 / unit) * unit;
    const start = end - Math.max(unit, Number($('usage-window').value) * 3600);
    const status = $('usage-status');
    status.textContent = 'loading…';
    try {
      const summaries = [];
      let startingAfter;
      for (let page = 0; page < 20; page++) {
        const list = await api(`/v1/billing/meters/${encodeURIComponent(meter)}/event_summaries`, {
          customer,
          start_time: start,
          end_time: Math.min(end, start + 35 * 86400),
          value_grouping_window: grouping,
          limit: 100,
          starting_after: startingAfter,
        });
        summaries.push(...list.data);
        if (!list.has_more || list.data.length === 0) break;
        startingAfter = list.data[list.data.length - 1].id;
      }
      summaries.sort((a, b) => a.start_time - b.start_time);
      const xs = summaries.map((s) => s.start_time);
      const ys = summaries.map((s) => Number(s.aggregated_value));
      state.charts['chart-usage'].setData([xs, ys]);
      state.charts['chart-usage'].setScale('x', { min: start, max: end });
      exposed.usage = { meter, customer, grouping, start, end, summaries, plotted: state.charts['chart-usage'].data };
      const sum = ys.reduce((a, b) => a + b, 0);
      status.textContent = `${summaries.length} ${grouping}${summaries.length === 1 ? '' : 's'} with usage, total ${fmt(sum, 6)}`;
      status.className = 'muted';
    } catch (err) {
      status.textContent = err.message;
      status.className = 'error';
    }
  }

  function logout(message) {
    clearTimeout(state.liveTimer);
    clearTimeout(state.eventsTimer);
    sessionStorage.removeItem(KEY_ITEM);
    state.key = null;
    state.previous = null;
    $('app').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('whoami').textContent = '';
    $('login-error').textContent = message ?? '';
  }

  async function open(key) {
    state.key = key;
    try {
      await loadMeters();
    } catch (err) {
      logout(err.status === 401 ? 'This key was not accepted.' : err.message);
      return;
    }
    sessionStorage.setItem(KEY_ITEM, key);
    $('login').hidden = true;
    $('app').hidden = false;
    $('logout').hidden = false;
    $('whoami').textContent = `${key.startsWith('sk_live_') ? 'live' : 'test'} mode key …${key.slice(-4)}`;
    if (!state.charts['chart-rate']) {
      makeChart('chart-rate', 'Accepted events/s', [{ label: 'events/s', stroke: '#2563eb', width: 2 }]);
      makeChart('chart-ack', 'Ack latency (ms)', [
        { label: 'p50', stroke: '#16a34a', width: 2 },
        { label: 'p99', stroke: '#dc2626', width: 2 },
      ]);
      makeChart(
        'chart-lag',
        'Consumer lag (records) and freshness p99 (s)',
        [
          { label: 'lag', stroke: '#ea580c', width: 2, scale: 'records' },
          { label: 'freshness p99', stroke: '#0891b2', width: 2, scale: 's' },
        ],
        { axes: [{}, { scale: 'records', size: 70 }, { scale: 's', side: 1, size: 50, grid: { show: false } }] },
      );
      makeChart(
        'chart-usage',
        'Usage per window',
        [
          {
            label: 'aggregated value',
            stroke: '#7c3aed',
            fill: 'rgba(124,58,237,0.25)',
            paths: uPlot.paths.bars({ size: [0.8, 60] }),
            points: { show: false },
          },
        ],
        // Bars start at zero (or below it, for negative usage).
        { scales: { y: { range: (_u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] } } },
      );
    }
    pollLive();
    pollEvents();
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const key = $('api-key').value.trim();
      $('api-key').value = '';
      if (key) open(key);
    });
    $('logout').addEventListener('click', () => logout());
    $('usage-form').addEventListener('submit', showUsage);
    const saved = sessionStorage.getItem(KEY_ITEM);
    if (saved) open(saved);
  });
})();
