/**
 * Partition ownership for aggregators that share a consumer group. Kafka's group decides who reads a partition, but
 * during a rebalance the old owner may still be flushing what it read: two aggregators writing the same records would
 * count them twice. A lease in the shared state store fences that: an aggregator writes a partition's data only while
 * its lease is unexpired, renews it before every flush, and a new owner waits for the old lease to end (or to be
 * released by a clean hand-over) before it reads the watermark and replays.
 *
 * Assumes the processes' clocks agree to well within the lease length (one machine, or NTP).
 */
import type { StateStore } from '../shared/state-store';
import { UniqueViolation } from '../shared/errors';

export interface PartitionLeases {
  /**
   * Takes the partition's lease if it is free, expired or already ours; false while another owner's lease runs (the
   * caller tries again later rather than waiting: a consumer group must not stall on it).
   */
  tryAcquire(partition: number): Promise<boolean>;
  /** Extends the leases; returns the partitions whose lease is no longer ours. */
  renew(partitions: number[]): Promise<number[]>;
  release(partitions: number[]): Promise<void>;
}

/** The embedded mode: one process owns every partition. */
export class SoleOwner implements PartitionLeases {
  async tryAcquire(): Promise<boolean> {
    return true;
  }
  async renew(): Promise<number[]> {
    return [];
  }
  async release(): Promise<void> {}
}

interface Lease {
  owner: string;
  expiresMs: number;
}

const SYSTEM = '_system';
const TYPE = 'aggregator.lease';

export class StoreLeases implements PartitionLeases {
  constructor(
    private readonly state: StateStore,
    private readonly owner: string,
    private readonly leaseMs: number,
    private readonly group: string,
  ) {}

  private id(p: number): string {
    return `${this.group}/p${p}`;
  }

  async tryAcquire(p: number): Promise<boolean> {
    return this.state.transaction(async (tx) => {
      const now = Date.now();
      const found = await tx.getObject<Lease>(SYSTEM, TYPE, this.id(p));
      const mine: Lease = { owner: this.owner, expiresMs: now + this.leaseMs };
      if (!found) {
        try {
          await tx.insertObject({ account: SYSTEM, type: TYPE, id: this.id(p), createdMs: now, data: mine });
          return true;
        } catch (err) {
          if (err instanceof UniqueViolation) return false;
          throw err;
        }
      }
      if (found.data.owner === this.owner || found.data.expiresMs <= now) {
        await tx.updateObject(SYSTEM, TYPE, this.id(p), mine);
        return true;
      }
      return false;
    });
  }

  async renew(partitions: number[]): Promise<number[]> {
    const lost: number[] = [];
    for (const p of partitions) {
      const ok = await this.state.transaction(async (tx) => {
        const now = Date.now();
        const found = await tx.getObject<Lease>(SYSTEM, TYPE, this.id(p));
        if (!found || found.data.owner !== this.owner || found.data.expiresMs <= now) return false;
        await tx.updateObject(SYSTEM, TYPE, this.id(p), { owner: this.owner, expiresMs: now + this.leaseMs });
        return true;
      });
      if (!ok) lost.push(p);
    }
    return lost;
  }

  async release(partitions: number[]): Promise<void> {
    for (const p of partitions) {
      await this.state.transaction(async (tx) => {
        const found = await tx.getObject<Lease>(SYSTEM, TYPE, this.id(p));
        if (found && found.data.owner === this.owner) await tx.deleteObject(SYSTEM, TYPE, this.id(p));
      });
    }
  }
}
