/**
 * Versioned ClickHouse schema, applied at start-up. Every statement must run on ClickHouse 18.16 (Debian's server) and on
 * the current engine (chdb 26.x): MergeTree with the PARTITION BY / ORDER BY syntax, Decimal(38, 15), no JSON/Map types,
 * no DateTime64, no query parameters.
 *
 * meter_events        raw accepted events: the truth (invariant 5). One row per counted event.
 * meter_rollups_1m    per-minute partial sums and counts per (account, meter, customer); a row also carries the log
 *                     partition and the offset its flush reached, so the rollups are their own sink watermark: an
 *                     insert is atomic (one part, no PARTITION BY), hence "rolled up" and "watermark advanced" happen
 *                     together and a replay after a crash never counts an event twice.
 * meter_cancellations adjustments matched to the event they cancel (by the event's seq).
 */
import type { AnalyticsStore } from '../analytics-store';

export interface Migration {
  version: number;
  statements: string[];
}

export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    statements: [
      `CREATE TABLE IF NOT EXISTS meter_events (
        account String,
        livemode UInt8,
        meter_id String,
        event_name String,
        customer String,
        identifier String,
        timestamp_ms Int64,
        value Decimal(38, 15),
        payload String,
        received_ms Int64,
        partition UInt16,
        seq UInt64
      ) ENGINE = MergeTree
      PARTITION BY toYYYYMM(toDate(intDiv(timestamp_ms, 1000)))
      ORDER BY (account, meter_id, customer, timestamp_ms)`,
      `CREATE TABLE IF NOT EXISTS meter_rollups_1m (
        account String,
        meter_id String,
        customer String,
        minute Int64,
        value_sum Decimal(38, 15),
        event_count Int64,
        partition UInt16,
        wm_offset UInt64
      ) ENGINE = MergeTree
      ORDER BY (account, meter_id, customer, minute)`,
      `CREATE TABLE IF NOT EXISTS meter_cancellations (
        account String,
        meter_id String,
        identifier String,
        seq UInt64,
        cancel_received_ms Int64,
        partition UInt16
      ) ENGINE = MergeTree
      ORDER BY (account, meter_id, seq)`,
    ],
  },
];

export async function migrate(store: AnalyticsStore): Promise<number> {
  await store.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, applied_ms Int64) ENGINE = MergeTree ORDER BY version`);
  const rows = await store.query<{ v: number | string }>(`SELECT max(version) AS v FROM schema_migrations`);
  const current = rows.length ? Number(rows[0].v) : 0;
  for (const m of MIGRATIONS) {
    if (m.version <= current) continue;
    for (const s of m.statements) await store.exec(s);
    await store.exec(`INSERT INTO schema_migrations (version, applied_ms) VALUES (${m.version}, ${Date.now()})`);
  }
  return MIGRATIONS[MIGRATIONS.length - 1].version;
}

export const RAW_COLUMNS = [
  'account',
  'livemode',
  'meter_id',
  'event_name',
  'customer',
  'identifier',
  'timestamp_ms',
  'value',
  'payload',
  'received_ms',
  'partition',
  'seq',
] as const;
export const ROLLUP_COLUMNS = ['account', 'meter_id', 'customer', 'minute', 'value_sum', 'event_count', 'partition', 'wm_offset'] as const;
export const CANCEL_COLUMNS = ['account', 'meter_id', 'identifier', 'seq', 'cancel_received_ms', 'partition'] as const;
