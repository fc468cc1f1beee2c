/**
 * Where dedup index snapshots are kept: files in DATA_DIR in the embedded mode; the shared state store in the
 * distributed mode, so that the aggregator that takes a partition over finds the last snapshot of its previous owner.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { StateStore } from '../shared/state-store';

export interface SnapshotStore {
  load(partition: number): Promise<Buffer | null>;
  /** Durable on resolve; replaces the previous snapshot atomically. */
  save(partition: number, data: Buffer): Promise<void>;
}

export class FileSnapshots implements SnapshotStore {
  constructor(private readonly dir: string) {}

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
  constructor(
    private readonly state: StateStore,
    private readonly prefix: string,
  ) {
    if (!state.putBlob || !state.getBlob) throw new Error('this state store cannot keep snapshots (no blob support)');
  }

  load(p: number): Promise<Buffer | null> {
    return this.state.getBlob!(`${this.prefix}/dedup-p${p}`);
  }

  save(p: number, data: Buffer): Promise<void> {
    return this.state.putBlob!(`${this.prefix}/dedup-p${p}`, data);
  }
}
