/** Row shapes and conversions both state store drivers share (PostgreSQL returns BIGINT columns as strings). */
import type { IdempotencyRecord } from '../state-store';

export const OBJECT_COLS = 'id, created_ms, unique_key, expires_ms, data';

export interface IdemRow {
  account: string;
  key: string;
  request_line: string;
  request_hash: string;
  status: number;
  response_body: string;
  created_ms: number | string;
}

export function toIdem(r: IdemRow): IdempotencyRecord {
  return {
    account: r.account,
    key: r.key,
    requestLine: r.request_line,
    requestHash: r.request_hash,
    status: r.status,
    responseBody: r.response_body,
    createdMs: Number(r.created_ms),
  };
}

export function toJson(data: unknown): string {
  const s = JSON.stringify(data);
  if (s === undefined) throw new TypeError('object data is not JSON-serialisable');
  return s;
}
