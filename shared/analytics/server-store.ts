/**
 * ClickHouse server driver (distributed mode), over HTTP with @clickhouse/client. The same SQL as the embedded engine;
 * written to run on ClickHouse 18.16 too, so no client-side features that need a newer server are used.
 */
import { Readable } from 'node:stream';
import { ClickHouseLogLevel, createClient, drainStream, type ClickHouseClient } from '@clickhouse/client';
import { byteLength, type AnalyticsStore } from '../analytics-store';
import { migrate } from './schema';

export interface ServerStoreOptions {
  /** http(s)://[user[:password]@]host:port[/database] */
  url: string;
  /** Database for our tables (created when missing); default taken from the URL path, else `meterd`. */
  database?: string;
}

export class ClickHouseServerStore implements AnalyticsStore {
  private client: ClickHouseClient | null = null;
  readonly database: string;
  private readonly base: URL;

  constructor(o: ServerStoreOptions) {
    this.base = new URL(o.url);
    const fromPath = this.base.pathname.replace(/^\//, '');
    this.database = o.database || fromPath || 'meterd';
  }

  private connect(database: string): ClickHouseClient {
    const url = new URL(this.base.origin);
    return createClient({
      url: url.toString(),
      username: decodeURIComponent(this.base.username) || 'default',
      password: decodeURIComponent(this.base.password),
      database,
      // Below the aggregator lease (20 s by default): an insert that has timed out has not outlived its lease.
      request_timeout: 15_000,
      compression: { request: false, response: false },
    });
  }

  async init(): Promise<void> {
    const bootstrap = this.connect('default');
    try {
      await bootstrap.command({ query: `CREATE DATABASE IF NOT EXISTS ${this.database}` });
    } finally {
      await bootstrap.close();
    }
    this.client = this.connect(this.database);
    await migrate(this);
  }

  private get db(): ClickHouseClient {
    if (!this.client) throw new Error('analytics store is not open');
    return this.client;
  }

  async insertTsv(table: string, columns: readonly string[], rows: Buffer): Promise<void> {
    if (rows.length === 0) return;
    await this.db.insert({ table, values: Readable.from([rows], { objectMode: false }), format: 'TabSeparated', columns: columns as [string, ...string[]] });
  }

  async insertRowBinary(table: string, columns: readonly string[], parts: readonly Uint8Array[]): Promise<void> {
    if (byteLength(parts) === 0) return;
    // The client's insert() takes text formats only; exec() sends the bytes as they are (RowBinary is in 18.16 too).
    const result = await this.db.exec({
      query: `INSERT INTO ${table} (${columns.join(', ')}) FORMAT RowBinary`,
      values: Readable.from(parts, { objectMode: false }),
    });
    await drainStream(result.stream);
  }

  async query<T>(sql: string): Promise<T[]> {
    const rs = await this.db.query({ query: sql, format: 'JSONEachRow' });
    return (await rs.json()) as T[];
  }

  async exec(sql: string): Promise<void> {
    await this.db.command({ query: sql });
  }

  async close(): Promise<void> {
    await this.client?.close();
    this.client = null;
  }
}

/** Drops a database (the bench's clean-up of a deployment of its own). `database` must be a plain identifier. */
export async function dropClickHouseDatabase(url: string, database: string): Promise<void> {
  if (!/^[A-Za-z0-9_]+$/.test(database)) throw new Error(`not a plain database name: ${database}`);
  const base = new URL(url);
  const ch = createClient({
    url: base.origin,
    username: decodeURIComponent(base.username) || 'default',
    password: decodeURIComponent(base.password),
    request_timeout: 30_000,
    log: { level: ClickHouseLogLevel.OFF },
  });
  try {
    await ch.command({ query: `DROP DATABASE IF EXISTS ${database}` });
  } finally {
    await ch.close();
  }
}
