/**
 * Meters as the pipeline sees them. The Stripe object lives in the state store; every process keeps an in-memory
 * registry keyed by (account, event_name) so that validating an event never touches a store.
 */
import type { StateStore } from './state-store';

export type Formula = 'sum' | 'count' | 'last';
export type TimeWindow = 'hour' | 'day';

/** The v1 `billing.meter` object, exactly as served. */
export interface MeterObject {
  id: string;
  object: 'billing.meter';
  created: number;
  customer_mapping: { event_payload_key: string; type: 'by_id' };
  default_aggregation: { formula: Formula };
  display_name: string;
  event_name: string;
  event_time_window: TimeWindow | null;
  livemode: boolean;
  status: 'active' | 'inactive';
  status_transitions: { deactivated_at: number | null };
  updated: number;
  value_settings: { event_payload_key: string };
}

export const METER_TYPE = 'billing.meter';

/** The part of a meter the aggregator needs, cheap to send to worker threads. */
export interface MeterInfo {
  account: string;
  id: string;
  eventName: string;
  active: boolean;
  customerKey: string;
  valueKey: string;
  formula: Formula;
  window: TimeWindow | null;
}

export function meterInfo(account: string, m: MeterObject): MeterInfo {
  return {
    account,
    id: m.id,
    eventName: m.event_name,
    active: m.status === 'active',
    customerKey: m.customer_mapping.event_payload_key,
    valueKey: m.value_settings.event_payload_key,
    formula: m.default_aggregation.formula,
    window: m.event_time_window,
  };
}

/** Rollups serve sum and count over raw events; `last` and pre-aggregated meters are read from raw events. */
export function usesRollups(m: Pick<MeterInfo, 'formula' | 'window'>): boolean {
  return m.window === null && (m.formula === 'sum' || m.formula === 'count');
}

export function meterKey(account: string, eventName: string): string {
  return account + '\u0000' + eventName;
}

export class MeterRegistry {
  private readonly byName = new Map<string, MeterInfo>();
  private readonly byId = new Map<string, MeterInfo>();
  private listeners: Array<() => void> = [];
  private signature = '';
  private lastReloadMs = 0;
  /** Bumped on every change, so consumers can tell whether their copy is stale. */
  version = 0;

  /**
   * @param store where meters live
   * @param shared other processes change meters in `store` (distributed mode): a miss is checked against the store
   */
  constructor(
    private readonly store: StateStore | null = null,
    readonly shared = false,
  ) {}

  /** Replaces the registry with the store's meters; listeners are told only when something changed. */
  async load(store: StateStore | null = this.store): Promise<void> {
    if (!store) throw new Error('MeterRegistry.load needs a store');
    this.lastReloadMs = Date.now();
    const all = await store.scanType<MeterObject>(METER_TYPE);
    const signature = all.map((o) => `${o.account}/${o.id}/${o.data.status}/${o.data.updated}`).join(',');
    if (signature === this.signature) return;
    this.signature = signature;
    this.byName.clear();
    this.byId.clear();
    for (const o of all) this.set(meterInfo(o.account, o.data), false);
    this.changed();
  }

  /** Reloads from the store unless that happened in the last `minIntervalMs`; true when the registry changed. */
  async reload(minIntervalMs = 100): Promise<boolean> {
    if (!this.store || Date.now() - this.lastReloadMs < minIntervalMs) return false;
    const before = this.version;
    await this.load();
    return this.version !== before;
  }

  /**
   * The meter for an event name. In a shared deployment another process may have created or reactivated it a moment
   * ago: a miss, or an inactive meter, is checked against the store before it is believed.
   */
  async resolve(account: string, eventName: string): Promise<MeterInfo | undefined> {
    const known = this.byEventName(account, eventName);
    if (known?.active || !this.shared || !this.store) return known;
    const found = await this.store.findByUniqueKey<MeterObject>(account, METER_TYPE, eventName);
    if (!found) return known;
    this.upsert(account, found.data);
    return this.byEventName(account, eventName);
  }

  upsert(account: string, m: MeterObject): void {
    this.set(meterInfo(account, m), true);
  }

  private set(info: MeterInfo, notify: boolean): void {
    this.byName.set(meterKey(info.account, info.eventName), info);
    this.byId.set(info.account + '\u0000' + info.id, info);
    if (notify) this.changed();
  }

  private changed(): void {
    this.version++;
    for (const l of this.listeners) l();
  }

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  byEventName(account: string, eventName: string): MeterInfo | undefined {
    return this.byName.get(meterKey(account, eventName));
  }

  get(account: string, id: string): MeterInfo | undefined {
    return this.byId.get(account + '\u0000' + id);
  }

  all(): MeterInfo[] {
    return [...this.byName.values()];
  }
}
