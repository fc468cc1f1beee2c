/**
 * The state store's tables as Kysely sees them: the types every query is checked against. A column added by a
 * migration (migrations.ts) is added here too. Number columns are `number | string` on read because pg returns
 * BIGINT as a string; the queries convert.
 */
import type { Generated } from 'kysely';

export interface ObjectsTable {
  /** Insertion order; breaks created_ms ties. */
  seq: Generated<number | string>;
  account: string;
  type: string;
  id: string;
  created_ms: number | string;
  unique_key: string | null;
  expires_ms: number | string | null;
  /** The JSON document: text in SQLite, json in PostgreSQL. */
  data: unknown;
}

export interface IdempotencyTable {
  account: string;
  key: string;
  request_line: string;
  request_hash: string;
  status: number;
  response_body: string;
  created_ms: number | string;
}

export interface ApiKeysTable {
  secret: string;
  account: string;
  /** INTEGER 0/1 in SQLite, BOOLEAN in PostgreSQL. */
  livemode: boolean | number;
  created_ms: number | string;
}

export interface BlobsTable {
  key: string;
  data: Buffer;
  updated_ms: number | string;
}

/** A request with an Idempotency-Key executing in some process (StateStore.claimIdempotency). */
export interface IdempotencyClaimsTable {
  account: string;
  key: string;
  owner: string;
  expires_ms: number | string;
}

export interface SchemaMigrationsTable {
  version: number;
  name: string;
  applied_ms: number | string;
}

export interface StateTables {
  objects: ObjectsTable;
  idempotency: IdempotencyTable;
  idempotency_claims: IdempotencyClaimsTable;
  api_keys: ApiKeysTable;
  blobs: BlobsTable;
  schema_migrations: SchemaMigrationsTable;
}
