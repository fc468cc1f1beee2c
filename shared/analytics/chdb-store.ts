/**
 * Embedded ClickHouse (chdb) driver. chdb's async calls run off the event loop; the engine is a process singleton, so
 * one Session per data directory per process.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { byteLength, sqlString, type AnalyticsStore } from '../analytics-store';
import { migrate } from './schema';
import { lowerEngineThreads } from '../thread-priority';

// chdb is loaded lazily: it is large and only the embedded mode needs it.
type ChdbSession = {
  queryAsync(q: string, opts?: { format?: string }): Promise<{ text(): string }>;
  insert(p: { table: string; values: Buffer; format: 'TSV'; columns?: readonly string[] }): Promise<unknown>;
  close(): void;
};

const GLOB_CHARACTERS = /[*?{}[\]]/;

export class ChdbStore implements AnalyticsStore {
  private session: ChdbSession | null = null;
  private stopLowering: () => void = () => undefined;
  /** Where RowBinary inserts are staged for the engine to read (see insertRowBinary). */
  private readonly spoolDir: string;
  private spooled = 0;
  /** Per table and column list, the `file()` structure: "name Type, …" in the caller's column order. */
  private readonly structures = new Map<string, string>();

  /** `threadNice`: the engine's own threads (inserts, merges, queries) run at this nice value (AGGREGATOR_NICE). */
  constructor(
    private readonly dir: string,
    private readonly opts: { threadNice?: number } = {},
  ) {
    // file() reads * ? { } [ ] in a path as a glob: a data directory with any of them stages elsewhere.
    this.spoolDir = GLOB_CHARACTERS.test(dir) ? path.join(os.tmpdir(), `meterd-inserts-${process.pid}`) : `${dir}-inserts`;
  }

  async init(): Promise<void> {
    fs.mkdirSync(this.dir, { recursive: true });
    // Files left by a process that stopped mid-insert: the log still holds their events.
    if (GLOB_CHARACTERS.test(this.spoolDir)) throw new Error(`neither DATA_DIR nor TMPDIR is free of * ? { } [ ]: ${this.spoolDir}`);
    fs.rmSync(this.spoolDir, { recursive: true, force: true });
    fs.mkdirSync(this.spoolDir, { recursive: true });
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

  /**
   * chdb's own insert call takes text formats only, and parsing text was half of the engine's insert work. So the rows
   * are written to a file and read with the `file()` table function in RowBinary: 0.46x the CPU of the TSV insert
   * per row (README, "Raw events in RowBinary"). The file is removed as soon as the insert ends, normally before the
   * kernel writes dirty pages back (not measured).
   */
  async insertRowBinary(table: string, columns: readonly string[], parts: readonly Uint8Array[]): Promise<void> {
    const bytes = byteLength(parts);
    if (bytes === 0) return;
    const structure = await this.structure(table, columns);
    const file = path.join(this.spoolDir, `${table}-${++this.spooled}.bin`);
    try {
      const fh = await fs.promises.open(file, 'w');
      try {
        // libuv resumes after a short write, but a write that fails after some bytes (a full disk) returns what it wrote.
        const { bytesWritten } = await fh.writev(parts);
        if (bytesWritten !== bytes) throw new Error(`staged ${bytesWritten} of ${bytes} bytes of an insert into ${table}`);
      } finally {
        await fh.close();
      }
      await this.db.queryAsync(`INSERT INTO ${table} (${columns.join(', ')}) SELECT * FROM file(${sqlString(file)}, 'RowBinary', ${sqlString(structure)})`, {
        format: 'TSV',
      });
    } finally {
      await fs.promises.rm(file, { force: true });
    }
  }

  private async structure(table: string, columns: readonly string[]): Promise<string> {
    const key = table + '\u0000' + columns.join(',');
    let structure = this.structures.get(key);
    if (structure === undefined) {
      const rows = await this.query<{ name: string; type: string }>(
        `SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = ${sqlString(table)}`,
      );
      const types = new Map(rows.map((r) => [r.name, r.type]));
      structure = columns
        .map((c) => {
          const type = types.get(c);
          if (type === undefined) throw new Error(`table ${table} has no column ${c}`);
          return `${c} ${type}`;
        })
        .join(', ');
      this.structures.set(key, structure);
    }
    return structure;
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
    fs.rmSync(this.spoolDir, { recursive: true, force: true });
  }
}
