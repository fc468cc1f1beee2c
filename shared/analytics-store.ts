/**
 * The analytics store: ClickHouse, embedded (chdb, in-process) or a server (@clickhouse/client). Raw events, per-minute
 * rollups and cancellations live here; summaries are read from here. The SQL is written for both the current engine
 * and ClickHouse 18.16, so it uses no query parameters (18.16 has none): values are escaped with `sqlString`.
 */
export interface AnalyticsStore {
  /** Creates the database objects and applies pending migrations. */
  init(): Promise<void>;
  /** One INSERT of tab-separated rows (invariant 6: one insert per table per flush). */
  insertTsv(table: string, columns: readonly string[], rows: Buffer): Promise<void>;
  /**
   * One INSERT of rows in ClickHouse's RowBinary format (shared/analytics/row-binary.ts), `columns` in row order. The
   * rows are the concatenation of `parts`, which the drivers send as they are: a flush's rows come in pieces from
   * several worker chunks, and joining them cost a copy and a buffer of the whole flush on the aggregator's main thread.
   */
  insertRowBinary(table: string, columns: readonly string[], parts: readonly Uint8Array[]): Promise<void>;
  /** Runs a SELECT and returns its rows (JSONEachRow). */
  query<T = Record<string, unknown>>(sql: string): Promise<T[]>;
  /** Runs a statement without a result (DDL). */
  exec(sql: string): Promise<void>;
  close(): Promise<void>;
}

/** The total length of an insert's parts. */
export function byteLength(parts: readonly Uint8Array[]): number {
  let n = 0;
  for (const p of parts) n += p.length;
  return n;
}

/** A ClickHouse string literal. */
export function sqlString(s: string): string {
  return "'" + s.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "'";
}

/** Escapes a value for a TabSeparated field. */
export function tsvField(s: string): string {
  // Fast path: most fields (ids, customer ids, numbers) need no escaping.
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 9 || c === 10 || c === 13 || c === 92 || c === 0) {
      return s.replace(/[\\\t\n\r\0]/g, (m) => (m === '\\' ? '\\\\' : m === '\t' ? '\\t' : m === '\n' ? '\\n' : m === '\r' ? '\\r' : '\\0'));
    }
  }
  return s;
}
