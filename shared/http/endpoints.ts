/**
 * Glue every endpoint shares: authenticate, run under the Idempotency-Key layer, decode parameters the Stripe way.
 */
import type { Services } from '../services';
import type { Principal } from './auth';
import type { Idempotency } from './idempotency';
import { errorResult, json, type HttpRequest, type HttpResult, type RouteHandler } from './server';
import { parseForm, parseJsonBody, parseQuery, type Params } from '../wire/form';
import { InvalidRequestError, StripeError } from '../errors';

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

/**
 * An API-key endpoint; POSTs go through the given idempotency layer. The request is served in its API version:
 * older parameters are translated for the endpoint, and the endpoint's answer (always the newest shape, which is
 * what the idempotency layer keeps) is rendered in that version.
 */
export function apiEndpoint(s: Services, fn: Endpoint, idempotency: Idempotency = s.idempotency): RouteHandler {
  return async (req) => {
    const principal = s.auth.apiKey(req);
    const version = await s.versioning.requestVersion(req, principal);
    const params = () => s.versioning.upgradeParams(version, req, paramsOf(req));
    let result: HttpResult;
    try {
      result = req.method === 'POST' ? await idempotency.run(principal, req, async () => fn(principal, req, params())) : await fn(principal, req, params());
    } catch (err) {
      if (!(err instanceof StripeError)) throw err;
      result = errorResult(err, req.flavor);
    }
    if (req.flavor === 'v1') result = await s.versioning.renderResult(result, version, principal.account);
    return { ...result, stripeVersion: version };
  };
}

export function listResult(url: string, data: unknown[], hasMore: boolean): HttpResult {
  return json(200, { object: 'list', data, has_more: hasMore, url });
}
