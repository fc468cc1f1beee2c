/**
 * The null server on meterd's own HTTP layer (shared/http): the same routes as bench/null-server.ts answered without
 * work, so that a bench run shows what the HTTP layer alone costs next to the uWS null server (the generator's
 * ceiling) and the real server.
 *
 *   node dist/bench/http-null-server.js      (env PORT / HOST; port 0 = any free port)
 */
import { randomBytes } from 'node:crypto';
import { HttpServer, json } from '../shared/http/server';

const host = process.env.HOST ?? '127.0.0.1';
const port = Number(process.env.PORT ?? 0);
if (!['127.0.0.1', 'localhost', '::1'].includes(host)) {
  console.error(`http-null-server: refusing to listen on non-loopback host ${host}`);
  process.exit(2);
}

let streamRequests = 0;
let streamBytes = 0;
const EMPTY_OBJECT = { status: 200, body: '{}' };
const http = new HttpServer({ maxBodyBytes: 8 * 1024 * 1024 });
http.route('GET', '/healthz', () => json(200, { status: 'ok' }));
http.route('POST', '/v2/billing/meter_event_stream', (req) => {
  streamRequests++;
  streamBytes += req.body.length;
  return EMPTY_OBJECT;
});
http.route('POST', '/v2/billing/meter_event_session', () => {
  const now = Date.now();
  return json(200, {
    id: `mes_null_${randomBytes(6).toString('hex')}`,
    object: 'v2.billing.meter_event_session',
    authentication_token: `mest_null_${randomBytes(12).toString('hex')}`,
    created: new Date(now).toISOString(),
    expires_at: new Date(now + 15 * 60_000).toISOString(),
    livemode: false,
  });
});
http.route('POST', '/v1/billing/meters', () =>
  json(200, { id: `mtr_null_${randomBytes(6).toString('hex')}`, object: 'billing.meter', event_name: 'bench_tokens', status: 'active' }),
);
http.route('GET', '/v1/billing/meters/:id/event_summaries', () => json(200, { object: 'list', data: [], has_more: false }));

http.listen(host, port).then(
  (actual) => process.stdout.write(`null-server listening on http://${host.includes(':') ? `[${host}]` : host}:${actual}\n`),
  (err) => {
    console.error(`http-null-server: ${(err as Error).message}`);
    process.exit(1);
  },
);

function stop(): void {
  process.stderr.write(`http-null-server: stream requests=${streamRequests} body bytes=${streamBytes}\n`);
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
