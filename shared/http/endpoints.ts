/**
 * Glue every endpoint shares: authenticate, run under the Idempotency-Key layer, decode parameters the Stripe way.
 */
import type { Services } from '../services';
import type { Principal } from './auth';
import type { Idempotency } from './idempotency';
import { json, type HttpRequest, type HttpResult, type RouteHandler } from './server';
import { parseForm, parseJsonBody, parseQuery, type Params } from '../wire/form';
import { InvalidRequestError } from '../errors';

export type Endpoint = (principal: Principal, req: HttpRequest, params: Params) => Promise<HttpResult> | HttpResult;

/** Decodes the request's parameters: query string for GET/DELETE, form body for v1 POST, JSON body for v2 POST. */
export function paramsOf(req: HttpRequest): Params {
  if (req.method !== 'POST') return parseQuery(req.query);
  if (req.flavor === 'v2') {
    if (req.body.length === 0) return {};
    return parseJsonBody(req.body) as Params;
  }
  if (req.body.length > 0 && req.contentType.startsWith('application/json')) {
    throw new InvalidRequestError('Invalid request: v1 endpoints take application/x-www-form-urlencoded bodies.');
  }
  return parseForm(req.body);
}

/** An API-key endpoint; POSTs go through the given idempotency layer. */
export function apiEndpoint(s: Services, fn: Endpoint, idempotency: Idempotency = s.idempotency): RouteHandler {
  return (req) => {
    const principal = s.auth.apiKey(req);
    if (req.method !== 'POST') return fn(principal, req, paramsOf(req));
    return idempotency.run(principal, req, async () => fn(principal, req, paramsOf(req)));
  };
}

export function listResult(url: string, data: unknown[], hasMore: boolean): HttpResult {
  return json(200, { object: 'list', data, has_more: hasMore, url });
}
