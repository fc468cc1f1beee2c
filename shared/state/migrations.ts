/**
 * The one list of schema migrations, for both databases: written with Kysely's schema builder against the column
 * types of the dialect (dialects.ts), so a table or a column is added once. init() applies the versions a database
 * lacks, in order, in one transaction, and records each in `schema_migrations`; a database with a version this build
 * does not know is refused. Append new versions; never edit an applied one (databases made by earlier builds have
 * it already). Adding a column: a new version with `alterTable(...).addColumn(...)`, and the column in tables.ts.
 */
import type { Compilable, Kysely } from 'kysely';
import type { ColumnTypes, Dialect } from './dialects';
import type { StateTables } from './tables';

export interface Migration {
  version: number;
  name: string;
  /** The statements of the migration, in order, compiled for the dialect. */
  statements(db: Kysely<StateTables>, types: ColumnTypes, dialect: Dialect): Compilable[];
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'objects, idempotency, api_keys',
    statements: (db, t, dialect) => [
      dialect
        .seqColumn(db.schema.createTable('objects'))
        .addColumn('account', t.key, (c) => c.notNull())
        .addColumn('type', t.key, (c) => c.notNull())
        .addColumn('id', t.key, (c) => c.notNull())
        .addColumn('created_ms', t.ms, (c) => c.notNull())
        .addColumn('unique_key', t.key)
        .addColumn('expires_ms', t.ms)
        .addColumn('data', t.json, (c) => c.notNull()),
      db.schema.createIndex('objects_id').unique().on('objects').columns(['account', 'type', 'id']),
      db.schema.createIndex('objects_unique_key').unique().on('objects').columns(['account', 'type', 'unique_key']).where('unique_key', 'is not', null),
      db.schema.createIndex('objects_list').on('objects').columns(['account', 'type', 'created_ms', 'seq']),
      db.schema.createIndex('objects_type_scan').on('objects').columns(['type', 'created_ms', 'seq']),
      db.schema.createIndex('objects_expires').on('objects').column('expires_ms').where('expires_ms', 'is not', null),

      db.schema
        .createTable('idempotency')
        .addColumn('account', t.key, (c) => c.notNull())
        .addColumn('key', t.key, (c) => c.notNull())
        .addColumn('request_line', t.text, (c) => c.notNull())
        .addColumn('request_hash', t.text, (c) => c.notNull())
        .addColumn('status', t.int, (c) => c.notNull())
        .addColumn('response_body', t.text, (c) => c.notNull())
        .addColumn('created_ms', t.ms, (c) => c.notNull())
        .addPrimaryKeyConstraint('idempotency_pkey', ['account', 'key']),
      db.schema.createIndex('idempotency_created').on('idempotency').column('created_ms'),

      db.schema
        .createTable('api_keys')
        .addColumn('secret', t.key, (c) => c.primaryKey())
        .addColumn('account', t.text, (c) => c.notNull())
        .addColumn('livemode', t.flag, (c) => c.notNull())
        .addColumn('created_ms', t.ms, (c) => c.notNull()),
    ],
  },
  {
    // PostgreSQL databases made before the migrations were one list have it from their version 1.
    version: 2,
    name: 'blobs',
    statements: (db, t) => [
      db.schema
        .createTable('blobs')
        .ifNotExists()
        .addColumn('key', t.key, (c) => c.primaryKey())
        .addColumn('data', t.bytes, (c) => c.notNull())
        .addColumn('updated_ms', t.ms, (c) => c.notNull()),
    ],
  },
  {
    version: 3,
    name: 'idempotency claims',
    statements: (db, t) => [
      db.schema
        .createTable('idempotency_claims')
        .addColumn('account', t.key, (c) => c.notNull())
        .addColumn('key', t.key, (c) => c.notNull())
        .addColumn('owner', t.key, (c) => c.notNull())
        .addColumn('expires_ms', t.ms, (c) => c.notNull())
        .addPrimaryKeyConstraint('idempotency_claims_pkey', ['account', 'key']),
    ],
  },
];
