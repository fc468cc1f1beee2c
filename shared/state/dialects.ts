/**
 * Everything that differs in SQL between SQLite and PostgreSQL, side by side, so that the queries (queries.ts) and
 * the migrations (migrations.ts) are written once. Kysely is used as a typed query builder and compiler only: each
 * dialect compiles with Kysely's own SQLite or PostgreSQL compiler, and the driver modules (sqlite-store.ts,
 * postgres-store.ts) run the compiled SQL on their connections. Why not Kysely's executors too: see the README
 * ("The log and state drivers").
 *
 * What differs:
 *  - column types: a key column compares byte-wise (SQLite's default BINARY collation; PostgreSQL needs COLLATE "C"),
 *    a millisecond timestamp is INTEGER / BIGINT, a document is TEXT / JSON (json, not jsonb: it keeps the text
 *    verbatim, key order included), a flag INTEGER / BOOLEAN, bytes BLOB / BYTEA, the insertion sequence INTEGER
 *    PRIMARY KEY AUTOINCREMENT / BIGINT GENERATED ALWAYS AS IDENTITY;
 *  - reading a top-level field of a document in a `where` filter (json_type/json_extract; `data -> field` compared as
 *    text with JSON.stringify(value), which is exact and type-strict);
 *  - row locks: PostgreSQL reads that feed a write inside a transaction lock their row (FOR UPDATE); SQLite has one
 *    writer (BEGIN IMMEDIATE) and needs none;
 *  - what a unique violation looks like, and which index it names;
 *  - documents PostgreSQL cannot hold (U+0000 or an unpaired surrogate in JSON) are refused before any SQL runs.
 */
import {
  type ColumnDefinitionBuilder,
  type CreateTableBuilder,
  type ColumnDataType,
  DummyDriver,
  type Expression,
  Kysely,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  sql,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type SqlBool,
} from 'kysely';
import type { StateTables } from './tables';

type DataTypeExpression = ColumnDataType | Expression<unknown>;

/** Column types of the migrations, by meaning. */
export interface ColumnTypes {
  /** Identifiers and keys: compared byte-wise. */
  key: DataTypeExpression;
  text: DataTypeExpression;
  int: DataTypeExpression;
  /** Milliseconds since the epoch (64 bits). */
  ms: DataTypeExpression;
  flag: DataTypeExpression;
  /** A JSON document, stored as written. */
  json: DataTypeExpression;
  bytes: DataTypeExpression;
}

/** A `where` filter on a top-level document field: the argument values it binds, and its SQL given those arguments. */
export interface FieldFilter {
  /** Distinguishes filters whose SQL differs (part of the cache key of a compiled list query). */
  kind: string;
  args: unknown[];
  /** `data` is the document column; `args` are the bound arguments, in the order of `args` above. */
  sql(data: Expression<unknown>, args: Expression<unknown>[]): Expression<SqlBool>;
}

export interface Dialect {
  name: 'sqlite' | 'postgres';
  /** A compile-only Kysely (no connection), its tables qualified by the store's schema where there is one. */
  db: Kysely<StateTables>;
  types: ColumnTypes;
  /** Adds the insertion-order column (the primary key of `objects`). */
  // biome-ignore lint/suspicious/noExplicitAny: a table builder of any table
  seqColumn(table: CreateTableBuilder<any, any>): CreateTableBuilder<any, any>;
  /** Reads that feed a write inside a transaction lock their row. */
  rowLocks: boolean;
  /**
   * Statements run in this process (SQLite): one more costs no round trip, so a list cursor is looked up by its own
   * statement; else it is read in the page's statement (queries.ts, listQuery).
   */
  inProcess: boolean;
  /** For a unique violation, the index it names: 'unique_key' for (account, type, unique_key), else 'id'; null otherwise. */
  uniqueViolation(err: unknown): 'id' | 'unique_key' | null;
  /** A flag as the column takes it (SQLite binds no booleans). */
  encodeFlag(value: boolean): boolean | number;
  /** The text stored for a document; throws TypeError for a document the database cannot hold. */
  encodeJson(data: unknown): string;
  /** A document as the driver returns it (text for SQLite; parsed already by pg for a json column). */
  decodeJson(value: unknown): unknown;
  fieldFilter(field: string, value: string | number | boolean | null): FieldFilter;
}

function compileOnly(adapter: 'sqlite' | 'postgres'): Kysely<StateTables> {
  return new Kysely<StateTables>({
    dialect:
      adapter === 'sqlite'
        ? {
            createAdapter: () => new SqliteAdapter(),
            createDriver: () => new DummyDriver(),
            createIntrospector: (db) => new SqliteIntrospector(db),
            createQueryCompiler: () => new SqliteQueryCompiler(),
          }
        : {
            createAdapter: () => new PostgresAdapter(),
            createDriver: () => new DummyDriver(),
            createIntrospector: (db) => new PostgresIntrospector(db),
            createQueryCompiler: () => new PostgresQueryCompiler(),
          },
  });
}

export function toJson(data: unknown): string {
  const s = JSON.stringify(data);
  if (s === undefined) throw new TypeError('object data is not JSON-serialisable');
  return s;
}

function checkField(field: string): void {
  // A JSON path cannot quote a '"' (SQLite), and no text can hold a NUL (PostgreSQL).
  if (field.length === 0 || field.includes('"') || field.includes('\0')) {
    throw new TypeError(`unsupported where field: ${JSON.stringify(field)}`);
  }
}

function unsupportedValue(field: string, value: unknown): TypeError {
  return new TypeError(`unsupported where value for ${field}: ${typeof value}`);
}

function code(err: unknown): unknown {
  return (err as { code?: unknown } | null)?.code;
}

export const sqliteDialect = (): Dialect => ({
  name: 'sqlite',
  db: compileOnly('sqlite'),
  types: { key: 'text', text: 'text', int: 'integer', ms: 'integer', flag: 'integer', json: 'text', bytes: 'blob' },
  seqColumn: (table) => table.addColumn('seq', 'integer', (c: ColumnDefinitionBuilder) => c.primaryKey().autoIncrement()),
  rowLocks: false,
  inProcess: true,
  uniqueViolation(err) {
    const c = code(err);
    if (c !== 'SQLITE_CONSTRAINT_UNIQUE' && c !== 'SQLITE_CONSTRAINT_PRIMARYKEY') return null;
    return (err as Error).message.includes('unique_key') ? 'unique_key' : 'id';
  },
  encodeFlag: (value) => (value ? 1 : 0),
  encodeJson: toJson,
  decodeJson: (value) => JSON.parse(value as string),
  fieldFilter(field, value) {
    checkField(field);
    const path = `$."${field}"`;
    if (value === null) {
      // JSON null or missing.
      return { kind: 'null', args: [path], sql: (data, [p]) => sql<SqlBool>`coalesce(json_type(${data}, ${p}), 'null') = 'null'` };
    }
    if (typeof value === 'boolean') {
      return { kind: 'bool', args: [path, value ? 'true' : 'false'], sql: (data, [p, v]) => sql<SqlBool>`json_type(${data}, ${p}) = ${v}` };
    }
    if (typeof value === 'number') {
      return {
        kind: 'num',
        args: [path, path, value],
        sql: (data, [p, p2, v]) => sql<SqlBool>`json_type(${data}, ${p}) in ('integer', 'real') and json_extract(${data}, ${p2}) = ${v}`,
      };
    }
    if (typeof value === 'string') {
      return {
        kind: 'str',
        args: [path, path, value],
        sql: (data, [p, p2, v]) => sql<SqlBool>`json_type(${data}, ${p}) = 'text' and json_extract(${data}, ${p2}) = ${v}`,
      };
    }
    throw unsupportedValue(field, value);
  },
});

/** U+0000 or an unpaired surrogate, as JSON.stringify escapes them (an even number of backslashes before `\u`). */
const UNSUPPORTED_ESCAPE = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i;

function hasUnsupportedEscape(json: string): boolean {
  return json.includes('\\u') && UNSUPPORTED_ESCAPE.test(json);
}

export const postgresDialect = (schema: string): Dialect => ({
  name: 'postgres',
  db: compileOnly('postgres').withSchema(schema),
  types: {
    key: sql`text collate "C"`,
    text: 'text',
    int: 'integer',
    ms: 'bigint',
    flag: 'boolean',
    json: 'json',
    bytes: 'bytea',
  },
  seqColumn: (table) => table.addColumn('seq', 'bigint', (c: ColumnDefinitionBuilder) => c.generatedAlwaysAsIdentity().primaryKey()),
  rowLocks: true,
  inProcess: false,
  uniqueViolation(err) {
    if (code(err) !== '23505') return null;
    return (err as { constraint?: unknown }).constraint === 'objects_unique_key' ? 'unique_key' : 'id';
  },
  encodeFlag: (value) => value,
  encodeJson(data) {
    const s = toJson(data);
    if (hasUnsupportedEscape(s)) {
      throw new TypeError('object data contains U+0000 or an unpaired surrogate, which PostgreSQL cannot store as JSON');
    }
    return s;
  },
  decodeJson: (value) => value,
  fieldFilter(field, value) {
    checkField(field);
    if (value === null) {
      // JSON null or missing.
      return { kind: 'null', args: [field], sql: (data, [f]) => sql<SqlBool>`coalesce(json_typeof(${data} -> ${f}::text), 'null') = 'null'` };
    }
    if (typeof value !== 'boolean' && typeof value !== 'number' && typeof value !== 'string') throw unsupportedValue(field, value);
    // The stored text came from JSON.stringify, so equal values have equal text, and the text carries the type.
    const text = JSON.stringify(value);
    if ((typeof value === 'number' && !Number.isFinite(value)) || hasUnsupportedEscape(text)) {
      return { kind: 'never', args: [], sql: () => sql<SqlBool>`false` }; // no stored document can hold it
    }
    return { kind: 'eq', args: [field, text], sql: (data, [f, v]) => sql<SqlBool>`(${data} -> ${f}::text)::text = ${v}` };
  },
});
