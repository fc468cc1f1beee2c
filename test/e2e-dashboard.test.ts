/**
 * End-to-end in a real browser: Debian's Chromium (/usr/bin/chromium, or CHROMIUM_PATH) driven by playwright-core opens
 * /dashboard, authenticates with a typed-in API key, plots a meter's hourly usage whose values must equal the summaries
 * the API returns for the events sent, shows the streamed error report (a v2 thin event) and the live counters, and
 * writes a screenshot to test/artifacts/dashboard.png. A missing browser fails the test with a clear message.
 */
import t from 'tap';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { startServer, eventually, ROOT } from './helpers/server';
import { uniqueName } from './helpers/assertions';

// Globals of the page, used only inside the functions page.evaluate and page.waitForFunction run in the browser.
declare const document: any;
declare const window: any;
declare const sessionStorage: any;
declare const localStorage: any;

const BROWSER = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SCREENSHOT = path.join(ROOT, 'test', 'artifacts', 'dashboard.png');

t.test('the dashboard authenticates, plots the summaries sent and shows a streamed error report', async (t) => {
  if (!fs.existsSync(BROWSER)) {
    t.fail(`no browser at ${BROWSER}: install Debian's chromium (apt-get install -y chromium) or set CHROMIUM_PATH; .ci/run installs it`);
    return;
  }
  const receiver = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200).end('{}'));
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => new Promise<void>((resolve) => receiver.close(() => resolve())));
  const server = await startServer({ env: { WEBHOOK_POLL_MS: '200' } });
  t.teardown(() => server.stop());
  const stripe = server.stripe();
  await stripe.webhookEndpoints.create({ url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`, enabled_events: ['customer.created'] });
  await stripe.customers.create({ name: 'Dashboard' });
  const meter = await stripe.billing.meters.create({
    display_name: 'Dashboard tokens',
    event_name: uniqueName('dash'),
    default_aggregation: { formula: 'sum' },
  });
  const customer = 'cus_dashboard';
  const hour = Math.floor(Date.now() / 3600_000) * 3600;
  const sent: Array<[number, string]> = [
    [hour - 3 * 3600 + 60, '5'],
    [hour - 2 * 3600 + 120, '7.5'],
    [hour - 2 * 3600 + 900, '1'],
    [hour - 3600 + 30, '11'],
  ];
  for (const [timestamp, value] of sent) {
    await stripe.billing.meterEvents.create({ event_name: meter.event_name, timestamp, payload: { stripe_customer_id: customer, value } });
  }
  // A streamed event that fails asynchronous validation: reported as v1.billing.meter.error_report_triggered.
  const session = await stripe.v2.billing.meterEventSession.create();
  await server
    .stripe(session.authentication_token)
    .v2.billing.meterEventStream.create({ events: [{ event_name: meter.event_name, payload: { stripe_customer_id: customer, value: 'not-a-number' } }] });

  const end = hour + 3600;
  const start = end - 24 * 3600;
  const expected = new Map([
    [hour - 3 * 3600, 5],
    [hour - 2 * 3600, 8.5],
    [hour - 3600, 11],
  ]);
  await eventually(async () => {
    const list = await stripe.billing.meters.listEventSummaries(meter.id, { customer, start_time: start, end_time: end, value_grouping_window: 'hour' });
    const reports = await server.request('GET', '/v2/core/events');
    return list.data.length === expected.size && reports.body?.data?.some((e: any) => e.type === 'v1.billing.meter.error_report_triggered');
  }, 30_000);

  let browser: Browser;
  try {
    browser = await chromium.launch({ executablePath: BROWSER, args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  } catch (err) {
    t.fail(`could not start ${BROWSER}: ${String((err as Error).message ?? err)}`);
    return;
  }
  t.teardown(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  const problems: string[] = [];
  page.on('pageerror', (err) => problems.push(String(err)));
  page.on('requestfailed', (req) => problems.push(`request failed: ${req.url()}`));
  page.on('request', (req) => {
    if (!req.url().startsWith(server.url)) problems.push(`request outside the server: ${req.url()}`);
  });

  const html = await page.goto(`${server.url}/dashboard`);
  t.equal(html?.status(), 200);
  t.notOk((await html!.text()).includes(server.key), 'the page holds no key');

  await page.fill('#api-key', 'sk_test_not_a_key_of_this_server');
  await page.click('#login-form button[type=submit]');
  await page.waitForFunction(() => document.getElementById('login-error')?.textContent !== '');
  t.match(await page.textContent('#login-error'), /not accepted/, 'a wrong key is refused');

  await page.fill('#api-key', server.key);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#app:not([hidden])');
  t.equal(await page.evaluate(() => sessionStorage.getItem('meterd.dashboard.key')), server.key, 'the key is kept in sessionStorage');
  t.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage');

  await page.selectOption('#usage-meter', meter.id);
  await page.fill('#usage-customer', customer);
  await page.selectOption('#usage-window', '24');
  await page.selectOption('#usage-grouping', 'hour');
  await page.click('#usage-form button[type=submit]');
  await page.waitForFunction(() => (window as any).meterdDashboard?.usage?.summaries?.length > 0);
  const plotted = (await page.evaluate(() => {
    const chart = (window as any).meterdDashboard.charts['chart-usage'];
    return [Array.from(chart.data[0]), Array.from(chart.data[1])];
  })) as [number[], number[]];
  t.same(plotted, [[...expected.keys()], [...expected.values()]], 'the chart plots the hourly sums of the events sent');
  t.match(await page.textContent('#usage-status'), /3 hours with usage, total 24\.5/);

  await page.waitForFunction(() => document.getElementById('events-body')?.textContent?.includes('v1.billing.meter.error_report_triggered'), null, {
    timeout: 20_000,
  });
  const row = await page.textContent('#events-body tr.core-event');
  t.match(row, meter.id, 'the error report names its meter');
  t.match(row, /1: /, 'and counts the invalid event');

  // Live panels: a few seconds of streaming while the page polls; its rate and latency series must show them.
  const streamer = server.stripe(session.authentication_token);
  for (let i = 0; i < 10; i++) {
    const events = Array.from({ length: 50 }, (_, k) => ({
      event_name: meter.event_name,
      identifier: `live-${i}-${k}`,
      payload: { stripe_customer_id: 'cus_live', value: '1' },
    }));
    await streamer.v2.billing.meterEventStream.create({ events });
    await new Promise((r) => setTimeout(r, 400));
  }
  await page.waitForFunction(
    () => {
      const { charts, lastLive } = (window as any).meterdDashboard;
      return (
        lastLive.events_accepted >= 505 &&
        charts['chart-rate'].data[1].some((v: number) => v > 0) &&
        charts['chart-ack'].data[2].some((v: number | null) => v !== null)
      );
    },
    null,
    { timeout: 30_000 },
  );
  const live = await page.evaluate(() => (window as any).meterdDashboard.lastLive);
  t.match(await page.textContent('#deliveries-body'), /customer\.created evt_\w+.*\/hook1delivered/, 'the webhook delivery is listed');
  t.equal(live.events_accepted, 505, 'the live JSON counts the events accepted (4 v1, 1 + 500 streamed)');
  t.ok(live.consumer_lag.length >= 1, 'and the consumer lag per partition');
  t.not(await page.textContent('#tile-ack'), '–', 'the ack latency tile shows p50 / p99');
  const lagSeries = await page.evaluate(() => Array.from((window as any).meterdDashboard.charts['chart-lag'].data[1]));
  t.ok(lagSeries.length >= 1 && lagSeries.every((v) => typeof v === 'number' && v >= 0), 'the lag chart plots the lag');

  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  t.comment(`screenshot: ${SCREENSHOT}`);
  t.same(problems, [], 'no page errors, failed requests or requests elsewhere (no CDN)');
});
