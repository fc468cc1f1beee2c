/**
 * GET /v2/core/events and GET /v2/core/events/:id: the thin events (meter lifecycle, asynchronous validation reports),
 * with v2 pagination (`next_page_url` / `previous_page_url` carrying an opaque `page` token).
 */
import type { HttpServer } from '../shared/http/server';
import { json } from '../shared/http/server';
import { apiEndpoint } from '../shared/http/endpoints';
import type { Services } from '../shared/services';
import { CORE_EVENT_TYPE, type CoreEventObject } from '../shared/core-events';
import { parseRfc3339 } from '../shared/wire/timestamp';
import { InvalidRequestError, NotFoundError } from '../shared/errors';
import type { Params } from '../shared/wire/form';

interface Query {
  limit: number;
  types: string[];
  objectId?: string;
  gteMs?: number;
  ltMs?: number;
  after?: string;
}

function timeParam(v: unknown, param: string): number {
  const ms = typeof v === 'string' ? parseRfc3339(v) : null;
  if (ms === null) throw new InvalidRequestError(`Invalid ${param}: must be an RFC 3339 date-time.`, { param });
  return ms;
}

function readQuery(params: Params): Query {
  if (typeof params.page === 'string' && params.page) {
    try {
      return JSON.parse(Buffer.from(params.page, 'base64url').toString('utf8')) as Query;
    } catch {
      throw new InvalidRequestError('Invalid page token.', { param: 'page' });
    }
  }
  for (const k in params) {
    if (!['limit', 'types', 'object_id', 'created', 'page'].includes(k))
      throw new InvalidRequestError(`Received unknown parameter: ${k}`, { code: 'parameter_unknown', param: k });
  }
  const limit = params.limit === undefined ? 20 : Number(params.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100)
    throw new InvalidRequestError('Invalid limit: must be an integer between 1 and 100.', { param: 'limit' });
  const rawTypes = params.types;
  const types =
    rawTypes === undefined
      ? []
      : Array.isArray(rawTypes)
        ? rawTypes.map(String)
        : typeof rawTypes === 'object'
          ? Object.values(rawTypes).map(String)
          : [String(rawTypes)];
  const q: Query = { limit, types };
  if (typeof params.object_id === 'string' && params.object_id) q.objectId = params.object_id;
  const created = params.created;
  if (created && typeof created === 'object' && !Array.isArray(created)) {
    const c = created as Record<string, unknown>;
    if (c.gte !== undefined) q.gteMs = timeParam(c.gte, 'created[gte]');
    if (c.gt !== undefined) q.gteMs = timeParam(c.gt, 'created[gt]') + 1;
    if (c.lt !== undefined) q.ltMs = timeParam(c.lt, 'created[lt]');
    if (c.lte !== undefined) q.ltMs = timeParam(c.lte, 'created[lte]') + 1;
  }
  return q;
}

function matches(e: CoreEventObject, q: Query): boolean {
  if (q.types.length && !q.types.includes(e.type)) return false;
  if (q.objectId && e.related_object?.id !== q.objectId) return false;
  return true;
}

export function registerCoreEventRoutes(http: HttpServer, s: Services): void {
  http.route(
    'GET',
    '/v2/core/events',
    apiEndpoint(s, async (p, _req, params) => {
      const q = readQuery(params);
      const data: CoreEventObject[] = [];
      let cursor = q.after;
      // Filters other than time are applied here: scan pages until one more than the page size is found.
      for (;;) {
        const page = await s.state.listObjects<CoreEventObject>(p.account, CORE_EVENT_TYPE, {
          limit: 100,
          startingAfter: cursor,
          createdGteMs: q.gteMs,
          createdLtMs: q.ltMs,
        });
        for (const o of page.data) if (matches(o.data, q)) data.push(o.data);
        if (data.length > q.limit || !page.hasMore || page.data.length === 0) break;
        cursor = page.data[page.data.length - 1].id;
      }
      const more = data.length > q.limit;
      data.length = Math.min(data.length, q.limit);
      const next =
        more && data.length > 0 ? `/v2/core/events?page=${Buffer.from(JSON.stringify({ ...q, after: data[data.length - 1].id })).toString('base64url')}` : null;
      return json(200, { data, next_page_url: next, previous_page_url: null });
    }),
  );
  http.route(
    'GET',
    '/v2/core/events/:id',
    apiEndpoint(s, async (p, req) => {
      const found = await s.state.getObject<CoreEventObject>(p.account, CORE_EVENT_TYPE, req.params[0]);
      if (!found) throw new NotFoundError(`No such event: '${req.params[0]}'`);
      return json(200, found.data);
    }),
  );
}
