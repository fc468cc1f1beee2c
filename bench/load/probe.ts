/** In-run freshness probes: one event a second for a customer of its own, polled until it shows in the summary. */
import { performance } from 'node:perf_hooks';
import { RawConnection, type RawResponse, buildRequest } from '../raw-http';
import { bodyText, retryDelay, sleep, sleepUnless } from './control';
import type { Generator } from './generator';
import { fetchSummary } from './verify';

/**
 * Sampled freshness during the load: once a second one event (value 1) for the probe customer; a poller reads the
 * probe customer's summary every --poll-interval ms while probes are outstanding, and the k-th probe counts as
 * visible when the summary reaches k. Probes still invisible when the load stops are resolved by the post-run
 * convergence (observeProbe is fed by every read of the probe customer's summary).
 */
export async function probeLoop(g: Generator): Promise<void> {
  const sendConn = new RawConnection(g.o.host, g.o.port);
  const pollConn = new RawConnection(g.o.api.host, g.o.api.port);
  const poller = (async () => {
    while (!g.stopping) {
      if (g.probeVisible < g.probeAckTimes.length) {
        const r = await fetchSummary(g, pollConn, g.probeCustomer);
        if ('error' in r) {
          g.noteError(r.status ? `probe summary ${r.status}` : 'probe summary conn_error', r.error);
          if (r.fatal) return;
        }
      }
      await sleep(g.o.pollIntervalMs);
    }
  })();
  let k = 0;
  try {
    while (!g.stopping) {
      const tickStart = performance.now();
      k++;
      const body = JSON.stringify({
        events: [
          {
            event_name: g.o.eventName,
            identifier: `${g.o.runId}-p${String(k).padStart(6, '0')}`,
            payload: { stripe_customer_id: g.probeCustomer, value: '1' },
          },
        ],
      });
      const ok = await sendOne(g, sendConn, body);
      if (ok === 'uncertain') g.probeUncertain++;
      if (ok === true) {
        g.probeAcked++;
        g.probeAckTimes.push(performance.now());
      }
      const wait = 1000 - (performance.now() - tickStart);
      if (wait > 0 && !g.stopping) await sleepUnless(wait, () => g.stopping);
    }
    await poller;
  } finally {
    sendConn.close();
    pollConn.close();
  }
}

/** Sends one small stream request with the same retry rules as the load. */
async function sendOne(g: Generator, conn: RawConnection, body: string): Promise<true | false | 'uncertain'> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const gen = g.sessions.generation;
    const req = buildRequest(
      'POST',
      '/v2/billing/meter_event_stream',
      g.o.hostHeader,
      { Authorization: `Bearer ${g.sessions.token}`, 'Content-Type': 'application/json' },
      body,
    );
    let res: RawResponse;
    try {
      res = await conn.request(req);
    } catch {
      await sleep(50);
      continue;
    }
    if (res.status === 200) return true;
    g.count(`probe ${res.status}`);
    if (res.status === 401) {
      await g.sessions.refresh(gen);
      continue;
    }
    if (res.status === 429 || res.status >= 500) {
      await sleep(retryDelay(attempt, res.headers['retry-after']));
      continue;
    }
    if (!g.firstErrorBody.has(`probe ${res.status}`)) g.firstErrorBody.set(`probe ${res.status}`, bodyText(res));
    return false;
  }
  return 'uncertain';
}
