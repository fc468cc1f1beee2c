/**
 * Where dedup index snapshots and runs (see partition-index.ts) are kept: files in DATA_DIR in the embedded mode; the
 * shared state store in the distributed mode, so that the aggregator that takes a partition over finds the last
 * snapshot of its previous owner, and the runs it names (fetched into a local cache the workers read).
 */
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { StateStore } from '../shared/state-store';
import { RunMissingError, type RunStore } from './partition-index';

export interface SnapshotStore extends RunStore {
  load(partition: number): Promise<Buffer | null>;
  /** Durable on resolve; replaces the previous snapshot atomically. */
  save(partition: number, data: Buffer): Promise<void>;
  /** Releases what the store keeps locally for this process (a cache of runs). */
  close(): Promise<void>;
}

/** Run files of a partition in a directory: finished ones and those a crash left half written. */
async function runFilesIn(dir: string, partition: number): Promise<string[]> {
  try {
    const prefix = `dedup-p${partition}-run-`;
    return (await fs.readdir(dir)).filter((f) => f.startsWith(prefix) && (f.endsWith('.run') || f.endsWith('.run.tmp')));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

async function unlinkIfPresent(file: string): Promise<void> {
  try {
    await fs.unlink(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

export class FileSnapshots implements SnapshotStore {
  constructor(private readonly dir: string) {
    // The workers write runs here: it exists before the first one.
    fsSync.mkdirSync(dir, { recursive: true });
  }

  runDir(): string {
    return this.dir;
  }

  /** The seal wrote the file durably in this directory, which is where the next start looks. */
  async persistRun(): Promise<void> {}

  async fetchRun(_partition: number, name: string): Promise<void> {
    try {
      await fs.access(path.join(this.dir, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new RunMissingError(name);
      throw err;
    }
  }

  removeRun(_partition: number, name: string): Promise<void> {
    return unlinkIfPresent(path.join(this.dir, name));
  }

  storedRuns(partition: number): Promise<string[]> {
    return runFilesIn(this.dir, partition);
  }

  async close(): Promise<void> {}

  private file(p: number): string {
    return path.join(this.dir, `dedup-p${p}.snap`);
  }

  async load(p: number): Promise<Buffer | null> {
    try {
      return await fs.readFile(this.file(p));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** tmp file, fsync, rename, fsync the directory: a crash leaves the old or the new snapshot, never half of one. */
  async save(p: number, data: Buffer): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
    const file = this.file(p);
    const tmp = file + '.tmp';
    const fh = await fs.open(tmp, 'w');
    try {
      await fh.writeFile(data);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
    const dir = await fs.open(this.dir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}

export class StateStoreSnapshots implements SnapshotStore {
  private readonly cacheDir: string;

  /**
   * `cacheRoot`: a local directory for the runs this process reads; each process caches in a directory of its own
   * (named by its pid), and those of processes no longer running are removed here.
   */
  constructor(
    private readonly state: StateStore,
    private readonly prefix: string,
    cacheRoot: string,
  ) {
    if (!state.putBlob || !state.getBlob || !state.deleteBlob || !state.listBlobKeys)
      throw new Error('this state store cannot keep snapshots (no blob support)');
    fsSync.mkdirSync(cacheRoot, { recursive: true });
    for (const entry of fsSync.readdirSync(cacheRoot)) {
      const pid = Number(entry);
      if (Number.isInteger(pid) && pid > 0 && (pid === process.pid || !processAlive(pid)))
        fsSync.rmSync(path.join(cacheRoot, entry), { recursive: true, force: true });
    }
    this.cacheDir = path.join(cacheRoot, String(process.pid));
    fsSync.mkdirSync(this.cacheDir, { recursive: true });
  }

  private runKey(p: number, name: string): string {
    return `${this.runPrefix(p)}${name}`;
  }

  private runPrefix(p: number): string {
    return `${this.prefix}/dedup-p${p}/`;
  }

  runDir(): string {
    return this.cacheDir;
  }

  async persistRun(p: number, name: string): Promise<void> {
    await this.state.putBlob!(this.runKey(p, name), await fs.readFile(path.join(this.cacheDir, name)));
  }

  async fetchRun(p: number, name: string): Promise<void> {
    const file = path.join(this.cacheDir, name);
    try {
      await fs.access(file);
      return;
    } catch {
      // not cached: fetched below
    }
    const data = await this.state.getBlob!(this.runKey(p, name));
    if (!data) throw new RunMissingError(name);
    await fs.writeFile(file + '.tmp', data);
    await fs.rename(file + '.tmp', file);
  }

  async removeRun(p: number, name: string): Promise<void> {
    if (name.endsWith('.run')) await this.state.deleteBlob!(this.runKey(p, name));
    await unlinkIfPresent(path.join(this.cacheDir, name));
  }

  /** The partition's runs in the state store, and the files in this process's cache. */
  async storedRuns(partition: number): Promise<string[]> {
    const prefix = this.runPrefix(partition);
    const blobs = (await this.state.listBlobKeys!(prefix)).map((k) => k.slice(prefix.length));
    return [...new Set([...blobs, ...(await runFilesIn(this.cacheDir, partition))])];
  }

  async close(): Promise<void> {
    await fs.rm(this.cacheDir, { recursive: true, force: true });
  }

  load(p: number): Promise<Buffer | null> {
    return this.state.getBlob!(`${this.prefix}/dedup-p${p}`);
  }

  save(p: number, data: Buffer): Promise<void> {
    return this.state.putBlob!(`${this.prefix}/dedup-p${p}`, data);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
