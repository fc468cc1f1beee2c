/**
 * End-to-end: meter event summaries. Formulas (sum, count, last), exact decimals, custom payload keys,
 * value_grouping_window hour/day with ordering and pagination, range validation, pre-aggregated meters
 * (event_time_window) and per-customer isolation, driven with the official stripe client against the real server.
 *
 * Server choices (api/summaries.ts header): summaries are listed newest first; with a value_grouping_window only
 * windows that hold counted events are listed; without one, exactly one summary is returned (0 when no usage).
 */
import t, { type Test } from 'tap';
import type Stripe from 'stripe';
import { startServer, eventually, type TestServer } from './helpers/server';
import { uniqueName, expectError } from './helpers/assertions';
import { parseExposition } from './helpers/prometheus';

const HOUR = 3600;
const DAY = 86400;
const nowS = () => Math.floor(Date.now() / 1000);

t.test('meter event summaries end to end', async (t) => {
  const server: TestServer = await startServer();
  t.teardown(() => server.stop());
  const stripe = server.stripe();

  const NOW = nowS();
  const THIS_HOUR = Math.floor(NOW / HOUR) * HOUR;
  const TODAY = Math.floor(NOW / DAY) * DAY;
  const THIS_MINUTE = Math.floor(NOW / 60) * 60;
  /** Minute-aligned [start, end) covering the last 35 days and the next 10 minutes. */
  const WIDE = { start: THIS_MINUTE - 35 * DAY + 60, end: THIS_MINUTE + 600 };

  async function meter(prefix: string, extra: Partial<Stripe.Billing.MeterCreateParams> = {}): Promise<Stripe.Billing.Meter> {
    return stripe.billing.meters.create({ display_name: prefix, event_name: uniqueName(prefix), default_aggregation: { formula: 'sum' }, ...extra });
  }

  async function send(m: Stripe.Billing.Meter, customer: string, value: string | null, timestamp?: number): Promise<void> {
    const payload: Record<string, string> = { [m.customer_mapping.event_payload_key]: customer };
    if (value !== null) payload[m.value_settings.event_payload_key] = value;
    await stripe.billing.meterEvents.create({ event_name: m.event_name, payload, ...(timestamp === undefined ? {} : { timestamp }) });
  }

  async function summaries(
    m: Stripe.Billing.Meter,
    customer: string,
    range: { start: number; end: number } = WIDE,
    extra: Partial<Stripe.Billing.MeterListEventSummariesParams> = {},
  ): Promise<Stripe.ApiList<Stripe.Billing.MeterEventSummary>> {
    return stripe.billing.meters.listEventSummaries(m.id, { customer, start_time: range.start, end_time: range.end, ...extra });
  }

  async function total(m: Stripe.Billing.Meter, customer: string, range: { start: number; end: number } = WIDE): Promise<number | undefined> {
    const list = await summaries(m, customer, range);
    return list.data.length === 1 ? list.data[0].aggregated_value : undefined;
  }

  /** Polls `read` until it returns `expected` (JSON-equal) or 10 s pass; returns the last value read. */
  async function until<V>(read: () => Promise<V>, expected: V, timeoutMs = 10_000): Promise<V> {
    let last!: V;
    const want = JSON.stringify(expected);
    await eventually(async () => JSON.stringify((last = await read())) === want, timeoutMs, 50).catch(() => undefined);
    return last;
  }

  function totalUntil(expected: number, m: Stripe.Billing.Meter, customer: string, range: { start: number; end: number } = WIDE) {
    return until(() => total(m, customer, range), expected as number | undefined);
  }

  /** The [start, end, value] triples of a grouped summary list, polled until they equal `expected` (or 10 s pass). */
  function windowsUntil(
    expected: Array<[number, number, number]>,
    m: Stripe.Billing.Meter,
    customer: string,
    range: { start: number; end: number },
    extra: Partial<Stripe.Billing.MeterListEventSummariesParams>,
  ) {
    return until(async () => windows(await summaries(m, customer, range, extra)), expected as Array<number[]>);
  }

  /** Asserts the grouped summaries of a range (polling until they match, as aggregation is asynchronous). */
  async function checkWindows(
    tt: Test,
    what: string,
    expected: Array<[number, number, number]>,
    m: Stripe.Billing.Meter,
    customer: string,
    range: { start: number; end: number },
    extra: Partial<Stripe.Billing.MeterListEventSummariesParams>,
  ): Promise<void> {
    tt.same(await windowsUntil(expected, m, customer, range, extra), expected, what);
  }

  /**
   * Sends one event (value 1, now) for a fresh customer and waits until it is aggregated: the log is consumed in
   * order, so every event sent before it has then been aggregated too.
   */
  async function flushed(m: Stripe.Billing.Meter): Promise<void> {
    const customer = uniqueName('cus_sentinel');
    await send(m, customer, '1');
    await eventually(async () => (await total(m, customer)) === 1, 10_000, 50).catch(() => {
      throw new Error(`the sentinel event on ${m.event_name} was not aggregated within 10 s`);
    });
  }

  const windows = (list: Stripe.ApiList<Stripe.Billing.MeterEventSummary>) => list.data.map((s) => [s.start_time, s.end_time, s.aggregated_value]);

  await t.test('formulas: sum, count, last (latest by event timestamp)', async (t) => {
    const sum = await meter('fsum');
    for (const v of ['1', '2.5', '3']) await send(sum, 'cus_f', v);
    const count = await meter('fcount', { default_aggregation: { formula: 'count' } });
    for (const v of ['5', '10', null]) await send(count, 'cus_f', v);
    const last = await meter('flast', { default_aggregation: { formula: 'last' } });
    const T = THIS_MINUTE - 600;
    // Sent out of timestamp order: the latest timestamp (T+300) is sent first and must win.
    await send(last, 'cus_f', '9', T + 300);
    await send(last, 'cus_f', '7', T + 100);
    await send(last, 'cus_f', '4', T + 200);
    await Promise.all([flushed(sum), flushed(count), flushed(last)]);

    t.equal(await totalUntil(6.5, sum, 'cus_f'), 6.5, 'sum = 1 + 2.5 + 3');
    t.equal(await totalUntil(3, count, 'cus_f'), 3, 'count = number of events, values ignored');
    t.equal(await totalUntil(9, last, 'cus_f'), 9, 'last = value of the event with the latest timestamp, not the last one sent');
    t.equal(await totalUntil(4, last, 'cus_f', { start: T, end: T + 240 }), 4, 'last within [T, T+240): the T+200 event');
    t.equal(await totalUntil(7, last, 'cus_f', { start: T, end: T + 180 }), 7, 'last within [T, T+180): the T+100 event');
    t.equal(await totalUntil(0, last, 'cus_nobody'), 0, 'last with no usage is 0');
    t.equal(await totalUntil(0, count, 'cus_nobody'), 0, 'count with no usage is 0');

    const list = await summaries(sum, 'cus_f');
    t.equal(list.object, 'list');
    t.equal(list.url, `/v1/billing/meters/${sum.id}/event_summaries`);
    t.equal(list.has_more, false);
    t.equal(list.data.length, 1, 'exactly one summary without value_grouping_window');
    const s = list.data[0];
    t.equal(s.object, 'billing.meter_event_summary');
    t.match(s.id, /^mtrusg_/);
    t.equal(s.meter, sum.id);
    t.equal(s.livemode, false);
    t.equal(s.start_time, WIDE.start);
    t.equal(s.end_time, WIDE.end);
  });

  await t.test('decimal values are exact', async (t) => {
    const m = await meter('decimal');
    const cases: Array<[string, string[], number]> = [
      ['cus_tenth', Array(10).fill('0.1'), 1],
      ['cus_pt3', ['0.1', '0.2'], 0.3],
      ['cus_neg', ['5', '-2.5', '0.3'], 2.8],
      ['cus_negtotal', ['-1.5', '0.5'], -1],
      ['cus_big', ['123456789012.345', '0.005'], 123456789012.35],
      ['cus_tiny', ['0.000000000000001', '0.000000000000001', '0.000000000000001'], 3e-15],
      ['cus_zero', ['0', '-0', '0.000'], 0],
    ];
    for (const [customer, values] of cases) for (const v of values) await send(m, customer, v);
    await flushed(m);
    for (const [customer, values, expected] of cases) {
      t.equal(await totalUntil(expected, m, customer), expected, `${values.join(' + ')} = ${expected}`);
    }
  });

  await t.test('custom customer and value payload keys', async (t) => {
    const m = await meter('custom', { customer_mapping: { type: 'by_id', event_payload_key: 'account_ref' }, value_settings: { event_payload_key: 'tokens' } });
    await stripe.billing.meterEvents.create({
      event_name: m.event_name,
      payload: { account_ref: 'cus_ck', tokens: '4', value: '1000', stripe_customer_id: 'cus_other' },
    });
    await stripe.billing.meterEvents.create({ event_name: m.event_name, payload: { account_ref: 'cus_ck', tokens: '0.5' } });
    await flushed(m);
    t.equal(await totalUntil(4.5, m, 'cus_ck'), 4.5, 'values read from payload.tokens, customer from payload.account_ref');
    t.equal(await totalUntil(0, m, 'cus_other'), 0, 'stripe_customer_id is not the customer key of this meter');
  });

  await t.test('value_grouping_window=hour: windows, ordering, pagination', async (t) => {
    const H = THIS_HOUR - 5 * HOUR;
    const events: Array<[number, string]> = [
      [H + 10, '1'],
      [H + 1800, '2'],
      [H + HOUR, '4'], // exactly on a boundary: second window
      [H + 3 * HOUR + 3599, '8'], // last second of the fourth window
      [H + 4 * HOUR, '16'], // == end_time: excluded from [H, H+4h)
    ];
    const sum = await meter('hsum');
    const count = await meter('hcount', { default_aggregation: { formula: 'count' } });
    const last = await meter('hlast', { default_aggregation: { formula: 'last' } });
    for (const m of [sum, count, last]) for (const [ts, v] of events) await send(m, 'cus_h', v, ts);
    await Promise.all([flushed(sum), flushed(count), flushed(last)]);

    const range = { start: H, end: H + 4 * HOUR };
    await checkWindows(
      t,
      'sum per hour, newest first, only windows with usage',
      [
        [H + 3 * HOUR, H + 4 * HOUR, 8],
        [H + HOUR, H + 2 * HOUR, 4],
        [H, H + HOUR, 3],
      ],
      sum,
      'cus_h',
      range,
      { value_grouping_window: 'hour' },
    );
    const hourly = await summaries(sum, 'cus_h', range, { value_grouping_window: 'hour' });
    t.equal(hourly.has_more, false);
    t.ok(
      hourly.data.every((s) => s.meter === sum.id && s.object === 'billing.meter_event_summary' && /^mtrusg_/.test(s.id)),
      'summary objects',
    );
    t.equal(new Set(hourly.data.map((s) => s.id)).size, 3, 'distinct summary ids');
    await checkWindows(
      t,
      'count per hour',
      [
        [H + 3 * HOUR, H + 4 * HOUR, 1],
        [H + HOUR, H + 2 * HOUR, 1],
        [H, H + HOUR, 2],
      ],
      count,
      'cus_h',
      range,
      { value_grouping_window: 'hour' },
    );
    await checkWindows(
      t,
      'last per hour',
      [
        [H + 3 * HOUR, H + 4 * HOUR, 8],
        [H + HOUR, H + 2 * HOUR, 4],
        [H, H + HOUR, 2],
      ],
      last,
      'cus_h',
      range,
      { value_grouping_window: 'hour' },
    );
    t.equal(await totalUntil(15, sum, 'cus_h', range), 15, 'the same range without grouping: end_time is exclusive');
    t.equal(await totalUntil(31, sum, 'cus_h', { start: H, end: H + 5 * HOUR }), 31, 'a wider range includes the boundary event');
    t.equal(await totalUntil(8, last, 'cus_h', range), 8, 'last over the range');

    // Pagination, limit 1.
    const p1 = await summaries(sum, 'cus_h', range, { value_grouping_window: 'hour', limit: 1 });
    t.same(windows(p1), [[H + 3 * HOUR, H + 4 * HOUR, 8]], 'page 1');
    t.equal(p1.has_more, true);
    const p2 = await summaries(sum, 'cus_h', range, { value_grouping_window: 'hour', limit: 1, starting_after: p1.data[0].id });
    t.same(windows(p2), [[H + HOUR, H + 2 * HOUR, 4]], 'page 2');
    t.equal(p2.has_more, true);
    const p3 = await summaries(sum, 'cus_h', range, { value_grouping_window: 'hour', limit: 1, starting_after: p2.data[0].id });
    t.same(windows(p3), [[H, H + HOUR, 3]], 'page 3');
    t.equal(p3.has_more, false, 'no more after the oldest window');
    const back = await summaries(sum, 'cus_h', range, { value_grouping_window: 'hour', limit: 1, ending_before: p3.data[0].id });
    t.same(windows(back), [[H + HOUR, H + 2 * HOUR, 4]], 'ending_before goes back to page 2');
    const auto = await stripe.billing.meters
      .listEventSummaries(sum.id, { customer: 'cus_h', start_time: range.start, end_time: range.end, value_grouping_window: 'hour', limit: 1 })
      .autoPagingToArray({ limit: 100 });
    t.same(
      auto.map((s) => s.aggregated_value),
      [8, 4, 3],
      'autoPagingToArray walks all windows once, newest first',
    );
    const iterated: number[] = [];
    for await (const s of stripe.billing.meters.listEventSummaries(sum.id, {
      customer: 'cus_h',
      start_time: range.start,
      end_time: range.end,
      value_grouping_window: 'hour',
      limit: 2,
    })) {
      iterated.push(s.start_time);
    }
    t.same(iterated, [H + 3 * HOUR, H + HOUR, H], 'for await with limit 2');
  });

  await t.test('value_grouping_window=day', async (t) => {
    const D = TODAY - 3 * DAY;
    const m = await meter('dsum');
    const events: Array<[number, string]> = [
      [D + 100, '1'],
      [D + DAY + 2 * HOUR, '2'],
      [D + DAY + 80000, '3'],
      [D + 2 * DAY + 1, '5'],
      [Math.min(TODAY + 30, NOW), '100'], // today: outside [D, D+3d)
    ];
    for (const [ts, v] of events) await send(m, 'cus_day', v, ts);
    await flushed(m);
    await checkWindows(
      t,
      'sum per UTC day, newest first',
      [
        [D + 2 * DAY, D + 3 * DAY, 5],
        [D + DAY, D + 2 * DAY, 5],
        [D, D + DAY, 1],
      ],
      m,
      'cus_day',
      { start: D, end: D + 3 * DAY },
      { value_grouping_window: 'day' },
    );
    t.equal(await totalUntil(111, m, 'cus_day', { start: D, end: TODAY + DAY }), 111, 'all days together');
    await checkWindows(
      t,
      'hourly windows inside one day',
      [
        [D + DAY + 22 * HOUR, D + DAY + 23 * HOUR, 3],
        [D + DAY + 2 * HOUR, D + DAY + 3 * HOUR, 2],
      ],
      m,
      'cus_day',
      { start: D + DAY, end: D + 2 * DAY },
      { value_grouping_window: 'hour' },
    );
    const auto = await stripe.billing.meters
      .listEventSummaries(m.id, { customer: 'cus_day', start_time: D, end_time: D + 3 * DAY, value_grouping_window: 'day', limit: 1 })
      .autoPagingToArray({ limit: 100 });
    t.same(
      auto.map((s) => s.start_time),
      [D + 2 * DAY, D + DAY, D],
      'auto-pagination over days',
    );
  });

  await t.test('misaligned, inverted or missing ranges are rejected', async (t) => {
    const m = await meter('ranges');
    const bad = { type: 'StripeInvalidRequestError', statusCode: 400 };
    const M = THIS_MINUTE - 3600;
    const H = THIS_HOUR - 2 * HOUR;
    const D = TODAY - 2 * DAY;
    const call = (params: Partial<Stripe.Billing.MeterListEventSummariesParams>) =>
      stripe.billing.meters.listEventSummaries(m.id, {
        customer: 'cus_r',
        start_time: M,
        end_time: M + 600,
        ...params,
      } as Stripe.Billing.MeterListEventSummariesParams);
    await expectError(t, call({ start_time: M + 30 }), { ...bad, param: 'start_time' }, 'start_time not on a minute');
    await expectError(t, call({ end_time: M + 630 }), { ...bad, param: 'end_time' }, 'end_time not on a minute');
    await expectError(
      t,
      call({ start_time: H + 60, end_time: H + HOUR, value_grouping_window: 'hour' }),
      { ...bad, param: 'start_time' },
      'hourly start not on an hour',
    );
    await expectError(
      t,
      call({ start_time: H, end_time: H + HOUR + 60, value_grouping_window: 'hour' }),
      { ...bad, param: 'end_time' },
      'hourly end not on an hour',
    );
    await expectError(
      t,
      call({ start_time: D + HOUR, end_time: D + DAY, value_grouping_window: 'day' }),
      { ...bad, param: 'start_time' },
      'daily start not on 00:00 UTC',
    );
    await expectError(
      t,
      call({ start_time: D, end_time: D + DAY + HOUR, value_grouping_window: 'day' }),
      { ...bad, param: 'end_time' },
      'daily end not on 00:00 UTC',
    );
    await expectError(t, call({ start_time: M, end_time: M }), { ...bad, param: /^(start_time|end_time)$/ }, 'end_time == start_time');
    await expectError(t, call({ start_time: M + 600, end_time: M }), { ...bad, param: /^(start_time|end_time)$/ }, 'end_time < start_time');
    await expectError(t, call({ value_grouping_window: 'week' as 'day' }), { ...bad, param: 'value_grouping_window' }, 'unknown grouping');
    await expectError(t, call({ limit: 0 }), { ...bad, param: 'limit' }, 'limit 0');
    await expectError(
      t,
      stripe.billing.meters.listEventSummaries(m.id, { start_time: M, end_time: M + 600 } as Stripe.Billing.MeterListEventSummariesParams),
      { ...bad, code: 'parameter_missing', param: 'customer' },
      'missing customer',
    );
    await expectError(
      t,
      stripe.billing.meters.listEventSummaries(m.id, { customer: 'cus_r', end_time: M + 600 } as Stripe.Billing.MeterListEventSummariesParams),
      { ...bad, code: 'parameter_missing', param: 'start_time' },
      'missing start_time',
    );
    await expectError(
      t,
      stripe.billing.meters.listEventSummaries(m.id, { customer: 'cus_r', start_time: M } as Stripe.Billing.MeterListEventSummariesParams),
      { ...bad, code: 'parameter_missing', param: 'end_time' },
      'missing end_time',
    );
  });

  await t.test('range boundaries: start inclusive, end exclusive', async (t) => {
    const m = await meter('bounds');
    const T0 = THIS_MINUTE - 1200;
    await send(m, 'cus_b', '1', T0);
    await send(m, 'cus_b', '2', T0 + 120);
    await send(m, 'cus_b', '4', T0 + 179);
    await flushed(m);
    t.equal(await totalUntil(1, m, 'cus_b', { start: T0, end: T0 + 120 }), 1, '[T0, T0+120) has the T0 event only');
    t.equal(await totalUntil(6, m, 'cus_b', { start: T0 + 60, end: T0 + 180 }), 6, '[T0+60, T0+180) has T0+120 and T0+179');
    t.equal(await totalUntil(0, m, 'cus_b', { start: T0 + 60, end: T0 + 120 }), 0, 'an empty minute is 0');
    t.equal(await totalUntil(7, m, 'cus_b', { start: T0, end: T0 + 180 }), 7, 'all three');
  });

  await t.test('event_time_window=hour: within an hour only the most recently sent event counts', async (t) => {
    const m = await meter('prehour', { event_time_window: 'hour' });
    const H1 = THIS_HOUR - 3 * HOUR;
    const H2 = THIS_HOUR - 2 * HOUR;
    // In H1 the event with the later timestamp is sent first; the one sent last (3) must win.
    await send(m, 'cus_w', '10', H1 + 2000);
    await send(m, 'cus_w', '3', H1 + 100);
    await send(m, 'cus_w', '7', H2 + 50);
    // Another customer's events in the same hour do not overwrite cus_w's.
    await send(m, 'cus_w2', '100', H1 + 300);
    await flushed(m);
    const range = { start: H1, end: H2 + HOUR };
    t.equal(await totalUntil(10, m, 'cus_w', range), 10, 'latest-sent in hour 1 (3) + hour 2 (7)');
    await checkWindows(
      t,
      'per hour',
      [
        [H2, H2 + HOUR, 7],
        [H1, H1 + HOUR, 3],
      ],
      m,
      'cus_w',
      range,
      { value_grouping_window: 'hour' },
    );
    t.equal(await totalUntil(100, m, 'cus_w2', range), 100, 'the other customer keeps its own value');

    // A newer event in hour 2 replaces the previous one.
    await send(m, 'cus_w', '0.5', H2 + 3000);
    await flushed(m);
    t.equal(await totalUntil(3.5, m, 'cus_w', range), 3.5, 'hour 2 is now 0.5');

    const day = await meter('preday', { event_time_window: 'day' });
    const Y = TODAY - DAY;
    await send(day, 'cus_wd', '10', Y + 5000);
    await send(day, 'cus_wd', '4', Y + 100);
    await send(day, 'cus_wd', '6', Y - DAY + 10);
    await flushed(day);
    t.equal(await totalUntil(10, day, 'cus_wd', { start: Y - DAY, end: Y + DAY }), 10, 'day windows: 4 (latest sent yesterday) + 6');
  });

  await t.test('last: ties on the timestamp go to the event received last', async (t) => {
    const m = await meter('lasttie', { default_aggregation: { formula: 'last' } });
    const T = THIS_MINUTE - 900;
    await send(m, 'cus_tie', '1', T);
    await send(m, 'cus_tie', '2', T);
    await send(m, 'cus_tie', '3', T - 60);
    await flushed(m);
    t.equal(await totalUntil(2, m, 'cus_tie'), 2, 'same timestamp: the later arrival wins; an older timestamp does not');
  });

  await t.test('per-customer isolation', async (t) => {
    const m = await meter('iso');
    await send(m, 'cus_p1', '1');
    await send(m, 'cus_p2', '10');
    await send(m, 'cus_p1', '2');
    await send(m, 'cus_p1x', '1000');
    await flushed(m);
    t.equal(await totalUntil(3, m, 'cus_p1'), 3, 'cus_p1 sees only its events');
    t.equal(await totalUntil(10, m, 'cus_p2'), 10, 'cus_p2 sees only its event');
    t.equal(await totalUntil(0, m, 'cus_p'), 0, 'a prefix of a customer id matches nothing');
    t.equal(await totalUntil(0, m, "cus_p1' OR '1'='1"), 0, 'a quote in the customer id is data, not SQL');
    const none = await summaries(m, 'cus_none');
    t.same(windows(none), [[WIDE.start, WIDE.end, 0]], 'a customer without usage gets one summary with 0');
    const noneHourly = await summaries(m, 'cus_none', { start: THIS_HOUR - 2 * HOUR, end: THIS_HOUR + HOUR }, { value_grouping_window: 'hour' });
    t.same(noneHourly.data, [], 'and no hourly windows');
    const other = await meter('iso2');
    await send(other, 'cus_p1', '5');
    await flushed(other);
    t.equal(await totalUntil(5, other, 'cus_p1'), 5, 'same customer on another meter is separate');
    t.equal(await totalUntil(3, m, 'cus_p1'), 3, 'and does not leak into the first meter');
  });

  await t.test('concurrent reads of many customers share queries, and each gets its own value', async (t) => {
    const m = await meter('coalesce');
    const customers = Array.from({ length: 24 }, (_, i) => `cus_c${i}`);
    customers.push("cus_c'quote", 'cus_c ünï');
    const earlier = NOW - 2 * HOUR;
    for (let i = 0; i < customers.length; i++) {
      await send(m, customers[i], String(i + 1));
      await send(m, customers[i], '100', earlier);
    }
    await flushed(m);
    const recent = { start: THIS_MINUTE - 30 * 60, end: THIS_MINUTE + 600 };
    const last = customers.length - 1;
    t.equal(await totalUntil(last + 101, m, customers[last]), last + 101, 'stored');
    const counter = async (name: string) => parseExposition((await server.request('GET', '/metrics')).text).value(name) ?? 0;
    const readsBefore = await counter('meterd_summary_reads_total');
    const queriesBefore = await counter('meterd_summary_queries_total');
    // Every customer over two ranges at once: the reads of one range may share a query, never those of two ranges.
    const reads = customers.flatMap((c, i) => [
      total(m, c).then((v) => [c, 'wide', v, i + 101] as const),
      total(m, c, recent).then((v) => [c, 'recent', v, i + 1] as const),
    ]);
    const results = await Promise.all(reads);
    const wrong = results.filter(([, , v, want]) => v !== want);
    t.same(wrong, [], `all ${results.length} concurrent reads got their own customer's total for their range`);
    const readsDone = (await counter('meterd_summary_reads_total')) - readsBefore;
    const queriesDone = (await counter('meterd_summary_queries_total')) - queriesBefore;
    t.equal(readsDone, results.length, 'every read is counted');
    t.ok(queriesDone < readsDone, `the reads shared queries: ${readsDone} reads, ${queriesDone} queries`);
    // Alone, a read still runs as soon as it arrives.
    t.equal(await total(m, customers[0], recent), 1);
  });

  await t.test('customer ids with unusual characters', async (t) => {
    const m = await meter('chars');
    const customers = ['cus_ünïcødé_😀', 'cus\\back\\slash', 'cus\ttab', 'cus\nnewline', 'cus\'quote"dq', 'cus with spaces', 'cus&amp=%20+'];
    for (let i = 0; i < customers.length; i++) await send(m, customers[i], String(i + 1));
    await send(m, customers[0], '0.5');
    await flushed(m);
    for (let i = 0; i < customers.length; i++) {
      t.equal(await totalUntil(i === 0 ? 1.5 : i + 1, m, customers[i]), i === 0 ? 1.5 : i + 1, `customer ${JSON.stringify(customers[i])}`);
    }
  });
});
