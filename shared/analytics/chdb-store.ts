/**
 * Embedded ClickHouse (chdb) driver. chdb's async calls run off the event loop; the engine is a process singleton, so
 * one Session per data directory per process.
 */
import fs from 'node:fs';
import type { AnalyticsStore } from '../analytics-store';
import { migrate } from './schema';
import { lowerEngineThreads } from '../thread-priority';

// chdb is loaded lazily: it is large and only the embedded mode needs it.
type ChdbSession = {
  queryAsync(q: string, opts?: { format?: string }): Promise<{ text(): string }>;
  insert(p: { table: string; values: Buffer; format: 'TSV'; columns?: readonly string[] }): Promise<unknown>;
  close(): void;
};

export class ChdbStore implements AnalyticsStore {
  private session: ChdbSession | null = null;
  private stopLowering: () => void = () => undefined;

  /** `threadNice`: the engine's own threads (inserts, merges, queries) run at this nice value (AGGREGATOR_NICE). */
  constructor(
    private readonly dir: string,
    private readonly opts: { threadNice?: number } = {},
  ) {}

  async init(): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true });
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { Session } = require('chdb') as { Session: new (path: string) => ChdbSession };
    this.session = new Session(this.dir);
    this.stopLowering = lowerEngineThreads(this.opts.threadNice ?? 0);
    await migrate(this);
  }

  private get db(): ChdbSession {
    if (!this.session) throw new Error('analytics store is not open');
    return this.session;
  }

  async insertTsv(table: string, columns: readonly string[], rows: Buffer): Promise<void> {
    if (rows.length === 0) return;
    await this.db.insert({ table, values: rows, format: 'TSV', columns });
  }

  async query<T>(sql: string): Promise<T[]> {
    const text = (await this.db.queryAsync(sql, { format: 'JSONEachRow' })).text();
    if (!text) return [];
    const out: T[] = [];
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      const line = nl === -1 ? text.slice(start) : text.slice(start, nl);
      if (line) out.push(JSON.parse(line) as T);
      if (nl === -1) break;
      start = nl + 1;
    }
    return out;
  }

  async exec(sql: string): Promise<void> {
    await this.db.queryAsync(sql, { format: 'TSV' });
  }

  async close(): Promise<void> {
    this.stopLowering();
    this.session?.close();
    this.session = null;
  }
}
