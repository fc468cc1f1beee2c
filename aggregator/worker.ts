/**
 * Piscina worker: decodes a chunk of log records (msgpackr), validates stream events against their meter (the
 * asynchronous validation Stripe does), and pre-aggregates: per-event fingerprints for the dedup index, the raw-event
 * rows in ClickHouse's RowBinary format, and per-minute partial sums. Stateless, so chunks run on any thread in parallel; the
 * stateful dedup decision is taken afterwards, in log order, by the aggregator (see aggregator.ts).
 */
import Piscina from 'piscina';
import { decodeRecord, eventSeq, hash32, MAX_FUTURE_MS, MAX_PAST_MS, RecordKind } from '../shared/event-record';
import { accountSeeds, FINGERPRINT, hashIdentifier, legacyAccountSeeds, legacyFingerprintFrom } from './fingerprint';
import { checkMeterValue, meterValueErrorMessage, putCheckedDecimal128, ScaledSum } from '../shared/decimal';
import type { MeterInfo } from '../shared/meters';
import { meterKey, usesRollups } from '../shared/meters';
import { maxStringBytes, putInt64, putString, putUInt16, readInt128, skipString } from '../shared/analytics/row-binary';
import { ownValue } from '../shared/wire/dict';
import { lowerCurrentThread } from '../shared/thread-priority';
import { buildFilter, RunReader, seal, type RunRef, type RunSet, type SealTask } from './dedup-runs';

// Aggregating yields the CPU to the threads that acknowledge events (AGGREGATOR_NICE).
const threadNice = (Piscina.workerData as { threadNice?: number } | undefined)?.threadNice ?? 0;
if (Piscina.isWorkerThread && threadNice > 0) lowerCurrentThread(threadNice);

/** Flags per decoded event. */
export const VALID = 1;
/** Produce rows for the store (unset while replaying records the store already has). */
export const EMIT = 2;

export interface ChunkTask {
  partition: number;
  /** Offset of the first record; records are consecutive. */
  firstOffset: number;
  /** Record values back to back; `ends[i]` is where record i ends. */
  data: Uint8Array;
  ends: Uint32Array;
  meters: MeterInfo[];
  /** Records below this offset are already in the store: fingerprints only. */
  emitFromOffset: number;
  /** The partition's identifiers on disk, when it has any (see dedup-runs.ts). */
  runs?: RunSet;
  /** Also compute the legacy fingerprints, and look the runs up by them (PartitionIndex.legacyUntilMs). */
  legacy?: boolean;
}

/** Builds a partition's run filter from its runs' files (recovery). */
export interface FilterTask {
  kind: 'filter';
  runs: RunRef[];
}

export interface SlotPartial {
  key: string;
  account: string;
  meterId: string;
  customer: string;
  minute: number;
  /** Scaled decimal (see shared/decimal.ts) as a bigint literal: bigints do not cross threads. */
  sum: string;
  count: number;
}

export interface EventError {
  account: string;
  livemode: boolean;
  meterId: string | null;
  code: string;
  message: string;
  identifier: string;
}

export interface CancelItem {
  /** Index of the event this adjustment precedes in log order. */
  position: number;
  account: string;
  livemode: boolean;
  eventName: string;
  identifier: string;
  hi: number;
  lo: number;
  /** The legacy fingerprint [hi, lo], when the task asked for it. */
  legacy: [number, number] | null;
  receivedMs: number;
  emit: boolean;
  /** The newest entry of the identifier in the runs on disk (0 when none), and its seq. */
  runRecv: number;
  runSeq: number;
}

export interface ChunkResult {
  partition: number;
  /** Offset after the last record of the chunk. */
  nextOffset: number;
  n: number;
  hi: Uint32Array;
  lo: Uint32Array;
  /** The legacy fingerprints, when the task asked for them (else empty). */
  legacyHi: Uint32Array;
  legacyLo: Uint32Array;
  receivedMs: Float64Array;
  seq: Float64Array;
  /**
   * Per valid event, the newest entry of its identifier in the runs on disk (received time, 0 when none) and its seq;
   * empty arrays when the partition has no runs.
   */
  runRecv: Float64Array;
  runSeq: Float64Array;
  flags: Uint8Array;
  /** Rollup slot of each event, -1 when the event is not rolled up. */
  slot: Int32Array;
  /** The raw row of event i (RowBinary, RAW_COLUMNS) is rows[rowStart[i], rowStart[i+1]) (empty when none). */
  rowStart: Uint32Array;
  rows: Uint8Array;
  slots: SlotPartial[];
  errors: EventError[];
  cancels: CancelItem[];
}

/**
 * The payload column keeps what the customer and value columns do not already say: the full JSON when the payload has
 * other keys, '' otherwise (the common case, which saves a JSON encoding and most of the row's bytes).
 */
export function extraPayload(payload: Record<string, string>, customerKey: string, valueKey: string): string {
  for (const k in payload) if (k !== customerKey && k !== valueKey) return JSON.stringify(payload);
  return '';
}

const runReader = new RunReader();

let meterCache: { source: MeterInfo[]; map: Map<string, MeterInfo> } | null = null;

function meterMap(meters: MeterInfo[]): Map<string, MeterInfo> {
  if (meterCache && meterCache.source === meters) return meterCache.map;
  const map = new Map<string, MeterInfo>();
  for (const m of meters) map.set(meterKey(m.account, m.eventName), m);
  meterCache = { source: meters, map };
  return map;
}

interface SlotAcc {
  index: number;
  account: string;
  meterId: string;
  customer: string;
  minute: number;
  sum: ScaledSum;
  count: number;
}

export function processChunk(task: ChunkTask): ChunkResult {
  const meters = meterMap(task.meters);
  const records = [];
  let total = 0;
  let start = 0;
  for (let r = 0; r < task.ends.length; r++) {
    const rec = decodeRecord(task.data.subarray(start, task.ends[r]));
    start = task.ends[r];
    records.push(rec);
    if (rec.kind === RecordKind.Events) total += rec.events.length;
  }
  const hi = new Uint32Array(total);
  const lo = new Uint32Array(total);
  const legacy = task.legacy === true;
  const legacyHi = new Uint32Array(legacy ? total : 0);
  const legacyLo = new Uint32Array(legacy ? total : 0);
  const receivedMs = new Float64Array(total);
  const seq = new Float64Array(total);
  const runs = task.runs;
  const runRecv = new Float64Array(runs ? total : 0);
  const runSeq = new Float64Array(runs ? total : 0);
  const flags = new Uint8Array(total);
  const slot = new Int32Array(total).fill(-1);
  const rowStart = new Uint32Array(total + 1);
  // Rows are written straight into one buffer, in RowBinary; ~100 bytes a row, grown when needed.
  let out: Buffer = Buffer.allocUnsafeSlow(Math.max(4096, total * 128));
  let o = 0;
  const slotMap = new Map<string, SlotAcc>();
  const slotList: SlotAcc[] = [];
  // Each meter's latest rollup slot per customer, over the whole chunk: the composite key (account, meter, customer,
  // minute) is built only when a customer's minute changes. Records interleave customers, so a cache per record
  // missed on nearly every event, and hashing a fresh composite key per event was a tenth of this function's time.
  const latestSlots = new Map<MeterInfo, Map<string, SlotAcc>>();
  const errors: EventError[] = [];
  const cancels: CancelItem[] = [];
  const partition = task.partition;

  let n = 0;
  for (let r = 0; r < records.length; r++) {
    const rec = records[r];
    const offset = task.firstOffset + r;
    const emit = offset >= task.emitFromOffset;
    if (rec.kind === RecordKind.Adjustments) {
      const [seedHi, seedLo] = accountSeeds(rec.account);
      const legacySeeds = legacy ? legacyAccountSeeds(rec.account) : null;
      for (const [eventName, identifier] of rec.cancels) {
        hashIdentifier(identifier, seedHi, seedLo);
        const h = FINGERPRINT[0];
        const l = FINGERPRINT[1];
        const old = legacySeeds ? legacyFingerprintFrom(legacySeeds, identifier) : null;
        const inRuns = runs !== undefined && (runReader.lookup(runs, h, l) || (old !== null && runReader.lookup(runs, old[0], old[1])));
        cancels.push({
          position: n,
          account: rec.account,
          livemode: rec.livemode,
          eventName,
          identifier,
          hi: h,
          lo: l,
          legacy: old,
          receivedMs: rec.receivedMs,
          emit,
          runRecv: inRuns ? runReader.foundRecv : 0,
          runSeq: inRuns ? runReader.foundSeq : 0,
        });
      }
      continue;
    }
    const account = rec.account;
    const [seedHi, seedLo] = accountSeeds(account);
    const [legacySeedHi, legacySeedLo] = legacy ? legacyAccountSeeds(account) : [0, 0];
    const recv = rec.receivedMs;
    // Most records carry one event name: look the meter up once per name.
    let lastName: string | null = null;
    let meter: MeterInfo | undefined;
    let latestSlotOf: Map<string, SlotAcc> | undefined;
    // The columns before the customer (account, livemode, meter, event name) are the same for every event of the
    // record and meter: written once, at out[headStart, headEnd), and copied from there for the next rows.
    let headStart = -1;
    let headEnd = -1;
    for (let e = 0; e < rec.events.length; e++, n++) {
      const [eventName, identifier, timestampMs, payload] = rec.events[e];
      hashIdentifier(identifier, seedHi, seedLo);
      hi[n] = FINGERPRINT[0];
      lo[n] = FINGERPRINT[1];
      if (legacy) {
        legacyHi[n] = hash32(identifier, legacySeedHi);
        legacyLo[n] = hash32(identifier, legacySeedLo);
      }
      receivedMs[n] = recv;
      const s = eventSeq(partition, offset, e);
      seq[n] = s;
      rowStart[n] = o;
      if (eventName !== lastName) {
        lastName = eventName;
        meter = meters.get(meterKey(account, eventName));
        latestSlotOf = undefined;
        headStart = -1;
        if (meter) {
          latestSlotOf = latestSlots.get(meter);
          if (!latestSlotOf) latestSlots.set(meter, (latestSlotOf = new Map()));
        }
      }
      let error: [string, string] | null = null;
      // Set when this event's value passed checkMeterValue, whose reading the row's value and ScaledSum.addChecked take.
      let checked = false;
      let customer = '';
      if (!meter) error = ['no_meter', `No active meter was found for event_name '${eventName}'.`];
      else if (!meter.active && !rec.validated) error = ['archived_meter', `The meter '${meter.id}' is inactive and accepts no events.`];
      else {
        customer = ownValue(payload, meter.customerKey) ?? '';
        const raw = ownValue(payload, meter.valueKey);
        if (!customer) error = ['meter_event_no_customer_defined', `Customer mapping key ${meter.customerKey} not found in payload.`];
        else if (raw === undefined || raw === '') {
          if (meter.formula !== 'count') error = ['meter_event_invalid_value', `Value key ${meter.valueKey} not found in payload.`];
        } else {
          const code = checkMeterValue(raw);
          if (code !== null) error = [code, meterValueErrorMessage(raw)];
          else checked = true;
        }
        if (!error && !rec.validated) {
          if (timestampMs < recv - MAX_PAST_MS) error = ['timestamp_too_far_in_past', 'Timestamp must be within the past 35 calendar days.'];
          else if (timestampMs > recv + MAX_FUTURE_MS) error = ['timestamp_in_future', 'Timestamp cannot be more than 5 minutes in the future.'];
        }
      }
      if (error) {
        if (emit) errors.push({ account, livemode: rec.livemode, meterId: meter ? meter.id : null, code: error[0], message: error[1], identifier });
        continue;
      }
      flags[n] = VALID | (emit ? EMIT : 0);
      if (runs !== undefined && (runReader.lookup(runs, hi[n], lo[n]) || (legacy && runReader.lookup(runs, legacyHi[n], legacyLo[n])))) {
        runRecv[n] = runReader.foundRecv;
        runSeq[n] = runReader.foundSeq;
      }
      if (!emit) continue;
      const m = meter!;
      const extra = extraPayload(payload, m.customerKey, m.valueKey);
      const headBytes = headStart < 0 ? maxStringBytes(account) + 1 + maxStringBytes(m.id) + maxStringBytes(eventName) : headEnd - headStart;
      const most = headBytes + maxStringBytes(customer) + maxStringBytes(identifier) + maxStringBytes(extra) + FIXED_ROW_BYTES;
      if (o + most > out.length) out = grow(out, o + most);
      if (headStart < 0) {
        headStart = o;
        o = putString(out, o, account);
        out[o++] = rec.livemode ? 1 : 0;
        o = putString(out, o, m.id);
        o = putString(out, o, eventName);
        headEnd = o;
      } else {
        out.copyWithin(o, headStart, headEnd);
        o += headBytes;
      }
      o = putString(out, o, customer);
      o = putString(out, o, identifier);
      o = putInt64(out, o, timestampMs);
      if (checked) o = putCheckedDecimal128(out, o);
      else {
        out.fill(0, o, o + 16);
        o += 16;
      }
      o = putString(out, o, extra);
      o = putInt64(out, o, recv);
      o = putUInt16(out, o, partition);
      o = putInt64(out, o, s);
      if (usesRollups(m)) {
        const minute = Math.floor(timestampMs / 60000) * 60;
        let acc = latestSlotOf!.get(customer);
        if (!acc || acc.minute !== minute) {
          const key = account + '\u0000' + m.id + '\u0000' + customer + '\u0000' + minute;
          acc = slotMap.get(key);
          if (!acc) {
            acc = { index: slotList.length, account, meterId: m.id, customer, minute, sum: new ScaledSum(), count: 0 };
            slotMap.set(key, acc);
            slotList.push(acc);
          }
          latestSlotOf!.set(customer, acc);
        }
        if (m.formula === 'sum' && checked) acc.sum.addChecked();
        acc.count++;
        slot[n] = acc.index;
      }
    }
  }
  rowStart[n] = o;
  const rows = out.subarray(0, o);
  const slots: SlotPartial[] = slotList.map((a) => ({
    key: a.account + '\u0000' + a.meterId + '\u0000' + a.customer + '\u0000' + a.minute,
    account: a.account,
    meterId: a.meterId,
    customer: a.customer,
    minute: a.minute,
    sum: a.sum.scaled().toString(),
    count: a.count,
  }));
  return {
    partition,
    nextOffset: task.firstOffset + records.length,
    n,
    hi,
    lo,
    legacyHi,
    legacyLo,
    receivedMs,
    seq,
    runRecv,
    runSeq,
    flags,
    slot,
    rowStart,
    rows,
    slots,
    errors,
    cancels,
  };
}

/** A row's fixed-width columns: timestamp_ms, value, received_ms, partition, seq. */
const FIXED_ROW_BYTES = 8 + 16 + 8 + 2 + 8;

function grow(buf: Buffer, atLeast: number): Buffer {
  const bigger = Buffer.allocUnsafeSlow(Math.max(atLeast, buf.length * 2));
  buf.copy(bigger);
  return bigger;
}

/** The scaled value of the raw row at `start` (for taking a dropped duplicate back out of its rollup). */
export function rawRowValue(rows: Uint8Array, start: number): bigint {
  let p = skipString(rows, start); // account
  p += 1; // livemode
  for (let i = 0; i < 4; i++) p = skipString(rows, p); // meter_id, event_name, customer, identifier
  return readInt128(rows, p + 8); // after timestamp_ms
}

/** The result's arrays are moved to the main thread, not copied. */
export default function run(task: ChunkTask | SealTask | FilterTask): unknown {
  if ('kind' in task) return task.kind === 'seal' ? seal(task) : buildFilter(task.runs);
  const r = processChunk(task);
  const buffers = new Set<ArrayBuffer>();
  for (const a of [r.hi, r.lo, r.legacyHi, r.legacyLo, r.receivedMs, r.seq, r.runRecv, r.runSeq, r.flags, r.slot, r.rowStart, r.rows])
    buffers.add(a.buffer as ArrayBuffer);
  return Piscina.move({ [Piscina.transferableSymbol]: [...buffers], [Piscina.valueSymbol]: r } as unknown as Parameters<typeof Piscina.move>[0]);
}
