/**
 * `GET /metrics`, on every role: this process's metrics in the Prometheus text format, the gateway threads' values
 * included (asked for once per scrape). With METRICS_TOKEN set, a scrape needs `Authorization: Bearer <token>`.
 */
import crypto from 'node:crypto';
import { AuthenticationError } from '../errors';
import type { HttpServer } from '../http/server';
import { type RegistrySnapshot, registry } from './index';

/** The other threads' values (the gateway threads'), or none. */
export type RemoteSnapshots = () => Promise<RegistrySnapshot[]>;

function digest(s: string): Buffer {
  return crypto.createHash('sha256').update(s).digest();
}

/** Whether `authorization` carries the token; compared in constant time (over digests, so lengths leak nothing). */
export function bearerMatches(authorization: string, token: string): boolean {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  return m !== null && crypto.timingSafeEqual(digest(m[1]), digest(token));
}

export function registerMetricsRoute(http: HttpServer, token: string | null, remote: RemoteSnapshots): void {
  http.route('GET', '/metrics', async (req) => {
    if (token !== null && !bearerMatches(req.authorization, token)) {
      throw new AuthenticationError('Invalid metrics token: GET /metrics needs Authorization: Bearer <METRICS_TOKEN>.', {
        headers: { 'WWW-Authenticate': 'Bearer realm="meterd metrics"' },
      });
    }
    return { status: 200, body: await registry.render(await remote()), contentType: registry.contentType };
  });
}
