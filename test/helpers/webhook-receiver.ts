/** A local HTTP server that records webhook deliveries (body and Stripe-Signature), for the end-to-end tests. */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Test } from 'tap';

export interface WebhookReceiver {
  url: string;
  got: Array<{ body: string; signature: string }>;
}

/** Starts a receiver answering 200 `{}` to every delivery; closed when `t` ends. */
export async function startWebhookReceiver(t: Test): Promise<WebhookReceiver> {
  const got: WebhookReceiver['got'] = [];
  const rx = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      got.push({ body: Buffer.concat(chunks).toString('utf8'), signature: String(req.headers['stripe-signature'] ?? '') });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((resolve) => rx.listen(0, '127.0.0.1', () => resolve()));
  t.teardown(() => new Promise<void>((resolve) => rx.close(() => resolve())));
  return { url: `http://127.0.0.1:${(rx.address() as AddressInfo).port}/hook`, got };
}
