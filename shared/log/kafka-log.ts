/**
 * The Kafka driver of EventLog (see ../log.ts), used by the distributed mode. One topic (default
 * `meterd.meter-events`); a log partition is a Kafka partition and log offsets are Kafka offsets.
 *
 * Topic (open): created when missing (numPartitions = `partitions`, replication factor = `replicationFactor` or the
 * broker's default.replication.factor, max.message.bytes = `topicMaxMessageBytes`). A creation race with another
 * process is harmless: whoever loses sees TOPIC_ALREADY_EXISTS. An existing topic keeps its real partition count, which
 * is what `partitions` reports. The topic's max.message.bytes bounds a record and a per-partition batch.
 *
 * Producer (group commit): append() only queues the record. One send loop takes everything queued (across partitions,
 * bounded by the topic's batch limit per partition and by maxSendBytes/maxSendRecords) and issues ONE produce request
 * through an idempotent kafkajs producer (acks = all, one request in flight). Appends arriving meanwhile form the next
 * send. Each append resolves with baseOffset(partition) + its index among that partition's records of the send, and
 * only after Kafka acknowledged. A send is bounded by sendTimeoutMs (connect + produce + kafkajs retries): if it fails
 * or times out, every append of the send AND everything queued behind it is rejected with ServiceUnavailableError, and
 * the kafkajs producer is thrown away; the next send connects a new one (new producer id). The new id matters: kafkajs
 * rolls a failed request's sequence numbers back, so a request that was in fact written before it "failed" would make
 * the NEXT send reuse its sequence numbers, and the broker would acknowledge the new records as duplicates of the old
 * ones (dropping them). A rejected append may have been written all the same (ambiguous); clients retry with the same
 * identifiers and the aggregator deduplicates. Pending bytes/records (queued + in flight) are bounded: beyond the bound
 * append() rejects at once with ServiceUnavailableError (back-pressure, no unbounded buffering).
 *
 * Consumer: a kafkajs consumer group (autoCommit off, fromBeginning for a new group) adapted from push to pull:
 * eachBatch (eachBatchAutoResolve off) copies records into a bounded queue, awaiting (and heartbeating) while the
 * queue is full or while the partition's assigned() has not resolved, and resolves offsets as it goes (that is what
 * advances kafkajs's fetch position); poll() takes from the queue. The assignment is learnt from GROUP_JOIN; the
 * listener is told revoked(partitions lost) then assigned(partitions gained), serially, in the order of the joins.
 * Records of a partition are queued only after its assigned() resolved; queued records of revoked partitions are
 * dropped before revoked() is called; a seek drops the partition's queued records and anything below the seek that
 * an in-flight batch still carries. Each rejoin makes kafkajs restart retained partitions at their COMMITTED offset;
 * the driver re-seeks them to where it was, so a rebalance neither replays nor skips records of a kept partition.
 *
 * Rebalance caveat (eager protocol, as kafkajs implements it): kafkajs does not let the application act between
 * "a rebalance started" and "rejoined", so revoked() runs AFTER the rejoin completed, i.e. when the partition may already
 * belong to another member. Records handed out by poll() before the rebalance may still be in processing by the old
 * owner while the new owner reads from the committed offset. poll() hands out nothing while a rebalance detected by
 * kafkajs is in progress (or after a kafkajs crash, which leaves the group, until it has rejoined): that narrows the
 * window but does not close it. Downstream writes must tolerate it.
 */
import { kafkaSettingsFromEnv } from '../config';
import type * as tls from 'node:tls';
import {
  Kafka,
  CompressionTypes,
  ConfigResourceTypes,
  logLevel as KafkaLogLevel,
  type Admin,
  type Consumer,
  type EachBatchPayload,
  type KafkaConfig,
  type LogEntry,
  type Producer,
  type RecordMetadata,
  type SASLOptions,
} from 'kafkajs';
import { ServiceUnavailableError } from '../errors';
import type { AssignmentListener, EventLog, LogConsumer, LogProducer, LogRecord } from '../log';
import { log } from '../logger';

export const DEFAULT_TOPIC = 'meterd.meter-events';
const DEFAULT_PARTITIONS = 8;
/** Kafka's own default for max.message.bytes, assumed when the topic's value cannot be read. */
const KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588;
/** What a created topic gets: a request body of MAX_BODY_BYTES (1 MiB) must fit in one record, framing included. */
const DEFAULT_TOPIC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;
/** Record batch header (61 bytes) plus slack; per-record framing is counted with RECORD_OVERHEAD. */
const BATCH_OVERHEAD = 256;
const RECORD_OVERHEAD = 32;
const UNAVAILABLE = 'The event log is unavailable; retry the request.';
const OVERLOADED = 'The event log is overloaded; retry the request.';

export type KafkaSaslMechanism = 'plain' | 'scram-sha-256' | 'scram-sha-512';
export type KafkaLogLevelName = 'nothing' | 'error' | 'warn' | 'info' | 'debug';

export interface KafkaLogOptions {
  /** Bootstrap brokers, host:port. */
  brokers: string[];
  /** Default 'meterd.meter-events'. */
  topic?: string;
  /** Partitions of the topic when this process creates it (default 8). An existing topic keeps its own count. */
  partitions?: number;
  /** Replication factor of a created topic; -1 (default) = the broker's default.replication.factor. */
  replicationFactor?: number;
  /** max.message.bytes of a created topic (default 8 MiB). */
  topicMaxMessageBytes?: number;
  clientId?: string;
  ssl?: boolean | tls.ConnectionOptions;
  sasl?: { mechanism: KafkaSaslMechanism; username: string; password: string };
  /** Upper bound of one group-commit send, connect and kafkajs retries included (default 5000 ms). */
  sendTimeoutMs?: number;
  /** Broker-side wait for the in-sync replicas' acknowledgement (acks = all) (default 3000 ms). */
  ackTimeoutMs?: number;
  /** kafkajs request timeout (default 4000 ms). */
  requestTimeoutMs?: number;
  /** kafkajs connection timeout (default 1000 ms). */
  connectionTimeoutMs?: number;
  /** Producer: bytes of record values pending (queued or in flight) before append() rejects (default 64 MiB). */
  maxPendingBytes?: number;
  /** Producer: records pending (queued or in flight) before append() rejects (default 100 000). */
  maxPendingRecords?: number;
  /** Producer: bound of one send (default 16 MiB and 10 000 records). */
  maxSendBytes?: number;
  maxSendRecords?: number;
  /** Consumer: bound of the records fetched but not yet polled (default 16 MiB and 20 000 records). */
  consumerQueueBytes?: number;
  consumerQueueRecords?: number;
  /** Consumer group session timeout (default 30 000 ms) and heartbeat interval (default 1000 ms). */
  sessionTimeoutMs?: number;
  heartbeatIntervalMs?: number;
  /** subscribe() resolves after this long even if the group has not been joined yet (default 60 000 ms). */
  subscribeTimeoutMs?: number;
  /** kafkajs's own logging, routed to the product logger (default 'error', logged as warnings). */
  logLevel?: KafkaLogLevelName;
}

interface ResolvedOptions {
  brokers: string[];
  topic: string;
  partitions: number;
  replicationFactor: number;
  topicMaxMessageBytes: number;
  clientId: string;
  ssl?: boolean | tls.ConnectionOptions;
  sasl?: { mechanism: KafkaSaslMechanism; username: string; password: string };
  sendTimeoutMs: number;
  ackTimeoutMs: number;
  requestTimeoutMs: number;
  connectionTimeoutMs: number;
  maxPendingBytes: number;
  maxPendingRecords: number;
  maxSendBytes: number;
  maxSendRecords: number;
  consumerQueueBytes: number;
  consumerQueueRecords: number;
  sessionTimeoutMs: number;
  heartbeatIntervalMs: number;
  subscribeTimeoutMs: number;
  logLevel: KafkaLogLevelName;
}

export interface KafkaLogStats {
  /** Appends accepted into the producer queue. */
  appends: number;
  /** Appends acknowledged by Kafka. */
  acknowledged: number;
  /** Appends rejected because a send failed (or the producer was closed). */
  rejected: number;
  /** Appends rejected at once because the pending bound was reached. */
  overloaded: number;
  /** Produce requests issued (one per group-commit send). */
  sends: number;
  /** Sends that failed or timed out. */
  sendFailures: number;
  /** kafkajs producers connected (the first one, then one after each failed send). */
  producerConnects: number;
  /** Largest number of records in one send. */
  maxSendRecords: number;
  /** Record value bytes acknowledged. */
  bytes: number;
  /** Records returned by poll(). */
  polled: number;
  /** Records fetched but dropped: below a seek, or fetched again (already queued). */
  skipped: number;
  /** Group joins seen by the consumers. */
  groupJoins: number;
}

const LEVELS: Record<KafkaLogLevelName, KafkaLogLevel> = {
  nothing: KafkaLogLevel.NOTHING,
  error: KafkaLogLevel.ERROR,
  warn: KafkaLogLevel.WARN,
  info: KafkaLogLevel.INFO,
  debug: KafkaLogLevel.DEBUG,
};

function kafkaLogCreator() {
  return ({ namespace, level, log: entry }: LogEntry) => {
    const { message, timestamp: _timestamp, ...extra } = entry;
    const fields: Record<string, unknown> = { namespace };
    for (const [k, v] of Object.entries(extra)) fields[k] = v instanceof Error ? v.message : v;
    const msg = `kafkajs: ${message}`;
    if (level <= KafkaLogLevel.WARN)
      log.warn(msg, fields); // kafkajs reports every transient failure as an error
    else if (level === KafkaLogLevel.INFO) log.info(msg, fields);
    else log.debug(msg, fields);
  };
}

function positiveInt(name: string, v: number | undefined, dflt: number, min = 1): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

function resolveOptions(o: KafkaLogOptions): ResolvedOptions {
  if (!Array.isArray(o.brokers) || o.brokers.length === 0 || o.brokers.some((b) => typeof b !== 'string' || !b)) {
    throw new RangeError('brokers must be a non-empty list of host:port');
  }
  const topic = o.topic ?? DEFAULT_TOPIC;
  if (!/^[A-Za-z0-9._-]{1,249}$/.test(topic) || topic === '.' || topic === '..') throw new RangeError(`invalid topic name ${JSON.stringify(topic)}`);
  const replicationFactor = o.replicationFactor ?? -1;
  if (!Number.isSafeInteger(replicationFactor) || (replicationFactor < 1 && replicationFactor !== -1)) {
    throw new RangeError(`replicationFactor must be -1 or a positive integer, got ${replicationFactor}`);
  }
  if (o.sasl) {
    if (!['plain', 'scram-sha-256', 'scram-sha-512'].includes(o.sasl.mechanism)) throw new RangeError(`unsupported SASL mechanism ${o.sasl.mechanism}`);
    if (!o.sasl.username) throw new RangeError('SASL needs a username');
  }
  const logLevel = o.logLevel ?? 'error';
  if (!(logLevel in LEVELS)) throw new RangeError(`invalid logLevel ${logLevel}`);
  return {
    brokers: o.brokers.slice(),
    topic,
    partitions: positiveInt('partitions', o.partitions, DEFAULT_PARTITIONS),
    replicationFactor,
    topicMaxMessageBytes: positiveInt('topicMaxMessageBytes', o.topicMaxMessageBytes, DEFAULT_TOPIC_MAX_MESSAGE_BYTES, 4096),
    clientId: o.clientId || 'meterd',
    ssl: o.ssl,
    sasl: o.sasl,
    sendTimeoutMs: positiveInt('sendTimeoutMs', o.sendTimeoutMs, 5000),
    ackTimeoutMs: positiveInt('ackTimeoutMs', o.ackTimeoutMs, 3000),
    requestTimeoutMs: positiveInt('requestTimeoutMs', o.requestTimeoutMs, 4000),
    connectionTimeoutMs: positiveInt('connectionTimeoutMs', o.connectionTimeoutMs, 1000),
    maxPendingBytes: positiveInt('maxPendingBytes', o.maxPendingBytes, 64 * 1024 * 1024),
    maxPendingRecords: positiveInt('maxPendingRecords', o.maxPendingRecords, 100_000),
    maxSendBytes: positiveInt('maxSendBytes', o.maxSendBytes, 16 * 1024 * 1024),
    maxSendRecords: positiveInt('maxSendRecords', o.maxSendRecords, 10_000),
    consumerQueueBytes: positiveInt('consumerQueueBytes', o.consumerQueueBytes, 16 * 1024 * 1024),
    consumerQueueRecords: positiveInt('consumerQueueRecords', o.consumerQueueRecords, 20_000),
    sessionTimeoutMs: positiveInt('sessionTimeoutMs', o.sessionTimeoutMs, 30_000),
    heartbeatIntervalMs: positiveInt('heartbeatIntervalMs', o.heartbeatIntervalMs, 1000),
    subscribeTimeoutMs: positiveInt('subscribeTimeoutMs', o.subscribeTimeoutMs, 60_000),
    logLevel,
  };
}

/** Options from the environment (KAFKA_*: see shared/config.ts, which reads and checks them). */
export function kafkaOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): KafkaLogOptions {
  const settings = kafkaSettingsFromEnv(env);
  const opts: KafkaLogOptions = { brokers: settings.brokers };
  if (settings.topic !== undefined) opts.topic = settings.topic;
  if (settings.partitions !== undefined) opts.partitions = settings.partitions;
  if (settings.replicationFactor !== undefined) opts.replicationFactor = settings.replicationFactor;
  if (settings.clientId !== undefined) opts.clientId = settings.clientId;
  if (settings.ssl !== undefined) opts.ssl = settings.ssl;
  if (settings.sasl !== undefined) opts.sasl = settings.sasl;
  if (settings.sessionTimeoutMs !== undefined) opts.sessionTimeoutMs = settings.sessionTimeoutMs;
  if (settings.logLevel !== undefined) opts.logLevel = settings.logLevel;
  return opts;
}

function kafkaConfig(o: ResolvedOptions, clientIdSuffix = ''): KafkaConfig {
  const cfg: KafkaConfig = {
    brokers: o.brokers,
    clientId: o.clientId + clientIdSuffix,
    connectionTimeout: o.connectionTimeoutMs,
    requestTimeout: o.requestTimeoutMs,
    // Bounded so that failures surface in seconds; callers (and the send loop) retry at their own level.
    retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000, factor: 0.2, multiplier: 2 },
    logLevel: LEVELS[o.logLevel],
    logCreator: kafkaLogCreator,
  };
  if (o.ssl !== undefined) cfg.ssl = o.ssl;
  if (o.sasl) cfg.sasl = { mechanism: o.sasl.mechanism, username: o.sasl.username, password: o.sasl.password } as KafkaConfig['sasl'];
  return cfg;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function errType(err: unknown): string | undefined {
  const e = err as { type?: unknown; errors?: unknown[] } | null;
  if (e && typeof e.type === 'string') return e.type;
  if (e && Array.isArray(e.errors) && e.errors.length > 0) return errType(e.errors[0]);
  return undefined;
}

function checkOffset(offset: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`invalid offset ${offset}`);
}

/** Rejects after `ms`; the timer is cleared when `p` settles. */
async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    if (timer) clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Topic
// ---------------------------------------------------------------------------------------------------------------------

async function brokerDefaultReplicationFactor(admin: Admin): Promise<number> {
  const cluster = await admin.describeCluster();
  const brokers = cluster.brokers.length;
  let rf = Math.min(3, brokers);
  try {
    const res = await admin.describeConfigs({
      resources: [{ type: ConfigResourceTypes.BROKER, name: String(cluster.brokers[0].nodeId), configNames: ['default.replication.factor'] }],
      includeSynonyms: false,
    });
    const entry = res.resources[0]?.configEntries.find((e) => e.configName === 'default.replication.factor');
    const v = Number(entry?.configValue);
    if (Number.isSafeInteger(v) && v > 0) rf = v;
  } catch (err) {
    log.warn('kafka: cannot read default.replication.factor; assuming min(3, brokers)', { err: errMessage(err) });
  }
  return Math.max(1, Math.min(rf, brokers));
}

async function topicMaxMessageBytes(admin: Admin, topic: string): Promise<number> {
  try {
    const res = await admin.describeConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: ['max.message.bytes'] }],
      includeSynonyms: false,
    });
    const entry = res.resources[0]?.configEntries.find((e) => e.configName === 'max.message.bytes');
    const v = Number(entry?.configValue);
    if (Number.isSafeInteger(v) && v > 0) return v;
  } catch (err) {
    log.warn('kafka: cannot read the topic max.message.bytes; assuming the Kafka default', { topic, err: errMessage(err) });
  }
  return KAFKA_DEFAULT_MAX_MESSAGE_BYTES;
}

/** Creates the topic if missing and waits until every partition has a leader; returns its partition count. */
async function ensureTopic(admin: Admin, o: ResolvedOptions): Promise<{ partitions: number; created: boolean }> {
  let created = false;
  const existing = await admin.listTopics();
  if (!existing.includes(o.topic)) {
    const replicationFactor = o.replicationFactor > 0 ? o.replicationFactor : await brokerDefaultReplicationFactor(admin);
    try {
      created = await admin.createTopics({
        topics: [
          {
            topic: o.topic,
            numPartitions: o.partitions,
            replicationFactor,
            configEntries: [{ name: 'max.message.bytes', value: String(o.topicMaxMessageBytes) }],
          },
        ],
        waitForLeaders: true,
        timeout: 30_000,
      });
    } catch (err) {
      // createTopics already maps "everyone lost the race" to false; be lenient with other wrappings of it.
      if (errType(err) !== 'TOPIC_ALREADY_EXISTS') throw err;
    }
    if (created) log.info('kafka: topic created', { topic: o.topic, partitions: o.partitions, replicationFactor });
  }
  // Whoever created it (this process or a racing one), wait until its metadata is complete.
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const md = await admin.fetchTopicMetadata({ topics: [o.topic] });
      const parts = md.topics.find((t) => t.name === o.topic)?.partitions ?? [];
      if (parts.length > 0 && parts.every((p) => p.leader >= 0)) {
        const ids = parts.map((p) => p.partitionId).sort((a, b) => a - b);
        if (ids.every((id, i) => id === i)) return { partitions: parts.length, created };
      }
    } catch (err) {
      if (Date.now() >= deadline) throw err;
    }
    if (Date.now() >= deadline) throw new Error(`kafka: topic ${o.topic} has no leader for every partition after 30 s`);
    await sleep(200);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Producer
// ---------------------------------------------------------------------------------------------------------------------

interface PendingAppend {
  partition: number;
  value: Buffer;
  resolve(offset: number): void;
  reject(err: Error): void;
}

class KafkaProducer implements LogProducer {
  private queue: PendingAppend[] = [];
  /** Values pending, queued or in flight. */
  private pendingBytes = 0;
  private pendingRecords = 0;
  private running: Promise<void> | null = null;
  private scheduled = false;
  private closed = false;
  private kp: Producer | null = null;
  private connecting: Promise<Producer> | null = null;
  /** Bumped when the kafkajs producer is thrown away, so a connect that finishes late is discarded. */
  private generation = 0;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly log: KafkaLog) {}

  get partitions(): number {
    return this.log.partitions;
  }

  append(partition: number, value: Buffer): Promise<number> {
    const c = this.log.counters;
    if (this.closed) return Promise.reject(new ServiceUnavailableError('The event log is closed.'));
    if (!Number.isInteger(partition) || partition < 0 || partition >= this.log.partitions) {
      return Promise.reject(new RangeError(`invalid partition ${partition}`));
    }
    if (!Buffer.isBuffer(value) || value.length === 0 || value.length > this.log.maxRecordBytes) {
      return Promise.reject(new RangeError(`a record must be a non-empty Buffer of at most ${this.log.maxRecordBytes} bytes`));
    }
    if (this.pendingRecords >= this.log.opts.maxPendingRecords || this.pendingBytes + value.length > this.log.opts.maxPendingBytes) {
      c.overloaded++;
      return Promise.reject(new ServiceUnavailableError(OVERLOADED));
    }
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ partition, value, resolve, reject });
      this.pendingBytes += value.length;
      this.pendingRecords++;
      c.appends++;
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.running || this.scheduled) return;
    this.scheduled = true;
    // Start on the next turn so that appends issued in the same turn share the first send.
    setImmediate(() => {
      this.scheduled = false;
      if (this.running || this.queue.length === 0) {
        this.notifyIdle();
        return;
      }
      this.running = this.sendLoop()
        .catch((err: unknown) => this.failQueued(err)) // defensive: sendLoop handles its own errors
        .finally(() => {
          this.running = null;
          if (this.queue.length > 0) this.schedule();
          else this.notifyIdle();
        });
    });
  }

  private async sendLoop(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.takeBatch();
      await this.send(batch);
    }
  }

  /**
   * Takes what goes into one send, in queue order: everything, bounded per partition by the topic's batch limit (one
   * record batch per partition per request) and overall by maxSendBytes/maxSendRecords. Per-partition order is kept:
   * once a partition is full, its later records wait for the next send.
   */
  private takeBatch(): PendingAppend[] {
    const perPartitionLimit = this.log.maxBatchBytes;
    const { maxSendBytes, maxSendRecords } = this.log.opts;
    const taken: PendingAppend[] = [];
    const rest: PendingAppend[] = [];
    const used = new Map<number, number>();
    const full = new Set<number>();
    let total = 0;
    let stopped = false;
    for (const a of this.queue) {
      if (stopped || full.has(a.partition)) {
        rest.push(a);
        continue;
      }
      const size = a.value.length + RECORD_OVERHEAD;
      const mine = used.get(a.partition) ?? 0;
      if (taken.length > 0 && (taken.length >= maxSendRecords || total + size > maxSendBytes)) {
        stopped = true;
        rest.push(a);
        continue;
      }
      if (mine > 0 && mine + size > perPartitionLimit) {
        full.add(a.partition);
        rest.push(a);
        continue;
      }
      used.set(a.partition, mine + size);
      total += size;
      taken.push(a);
    }
    this.queue = rest;
    return taken;
  }

  private async send(batch: PendingAppend[]): Promise<void> {
    const c = this.log.counters;
    c.sends++;
    if (batch.length > c.maxSendRecords) c.maxSendRecords = batch.length;
    let offsets: number[];
    try {
      const res = await withTimeout(this.produce(batch), this.log.opts.sendTimeoutMs, 'kafka send');
      offsets = this.offsetsOf(batch, res);
    } catch (err) {
      c.sendFailures++;
      log.warn('kafka: send failed; rejecting its appends and those queued behind it', {
        records: batch.length,
        queued: this.queue.length,
        err: errMessage(err),
      });
      // Throw the producer away: see the header (sequence numbers of a possibly written request).
      this.resetProducer();
      this.rejectAll(batch, err);
      this.failQueued(err);
      return;
    }
    let bytes = 0;
    for (let i = 0; i < batch.length; i++) {
      bytes += batch[i].value.length;
      batch[i].resolve(offsets[i]);
    }
    this.pendingBytes -= bytes;
    this.pendingRecords -= batch.length;
    c.acknowledged += batch.length;
    c.bytes += bytes;
  }

  private async produce(batch: PendingAppend[]): Promise<RecordMetadata[]> {
    const kp = await this.connected();
    return kp.send({
      topic: this.log.topic,
      acks: -1,
      timeout: this.log.opts.ackTimeoutMs,
      compression: CompressionTypes.None,
      messages: batch.map((a) => ({ partition: a.partition, value: a.value })),
    });
  }

  /** Offset of each record: its partition's base offset plus its index among that partition's records. */
  private offsetsOf(batch: PendingAppend[], res: RecordMetadata[]): number[] {
    const base = new Map<number, number>();
    for (const r of res) {
      if (r.topicName !== this.log.topic) continue;
      if (r.errorCode) throw new Error(`produce to partition ${r.partition} failed with error code ${r.errorCode}`);
      const b = Number(r.baseOffset);
      if (!Number.isSafeInteger(b) || b < 0) throw new Error(`produce response without a base offset for partition ${r.partition}`);
      base.set(r.partition, b);
    }
    const next = new Map<number, number>();
    return batch.map((a) => {
      const b = base.get(a.partition);
      if (b === undefined) throw new Error(`produce response lacks partition ${a.partition}`);
      const i = next.get(a.partition) ?? 0;
      next.set(a.partition, i + 1);
      return b + i;
    });
  }

  private connected(): Promise<Producer> {
    if (this.kp) return Promise.resolve(this.kp);
    if (this.connecting) return this.connecting;
    const gen = this.generation;
    const kp = this.log.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      // Explicit partitions only.
      createPartitioner:
        () =>
        ({ message }) =>
          message.partition as number,
      retry: { retries: 2, initialRetryTime: 100, maxRetryTime: 1000, factor: 0.2, multiplier: 2 },
    });
    const p = (async () => {
      try {
        await kp.connect();
      } catch (err) {
        void kp.disconnect().catch(() => undefined);
        throw err;
      }
      if (gen !== this.generation || this.closed) {
        void kp.disconnect().catch(() => undefined);
        throw new Error('producer was reset while connecting');
      }
      this.log.counters.producerConnects++;
      this.kp = kp;
      return kp;
    })();
    this.connecting = p;
    void p.then(
      () => {
        if (this.connecting === p) this.connecting = null;
      },
      () => {
        if (this.connecting === p) this.connecting = null;
      },
    );
    return p;
  }

  private resetProducer(): void {
    this.generation++;
    this.connecting = null;
    const old = this.kp;
    this.kp = null;
    if (old) void old.disconnect().catch(() => undefined);
  }

  private rejectAll(list: PendingAppend[], cause: unknown): void {
    if (list.length === 0) return;
    const err = new ServiceUnavailableError(UNAVAILABLE);
    (err as Error & { cause?: unknown }).cause = cause;
    let bytes = 0;
    for (const a of list) {
      bytes += a.value.length;
      a.reject(err);
    }
    this.pendingBytes -= bytes;
    this.pendingRecords -= list.length;
    this.log.counters.rejected += list.length;
  }

  private failQueued(cause: unknown): void {
    const queued = this.queue;
    this.queue = [];
    this.rejectAll(queued, cause);
  }

  private idle(): Promise<void> {
    if (!this.running && !this.scheduled && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private notifyIdle(): void {
    if (this.running || this.scheduled || this.queue.length > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  /** Waits for the appends in flight (they resolve or reject), then disconnects. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.idle();
      this.generation++;
      const kp = this.kp;
      this.kp = null;
      if (kp) await withTimeout(kp.disconnect(), 10_000, 'kafka producer disconnect').catch(() => undefined);
    }
    this.log.removeProducer(this);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// Consumer
// ---------------------------------------------------------------------------------------------------------------------

/** How often a waiting eachBatch wakes up to heartbeat (kafkajs only sends one per heartbeatInterval). */
const WAIT_SLICE_MS = 500;

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
  settled: boolean;
}

function deferred(): Deferred {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  const d: Deferred = {
    promise,
    settled: false,
    resolve: () => {
      if (d.settled) return;
      d.settled = true;
      resolve();
    },
    reject: (err) => {
      if (d.settled) return;
      d.settled = true;
      reject(err);
    },
  };
  promise.catch(() => undefined);
  return d;
}

class KafkaLogConsumer implements LogConsumer {
  private readonly kafka: Kafka;
  private readonly kc: Consumer;
  private listener: AssignmentListener | null = null;
  /** The assignment of the latest group join. */
  private readonly target = new Set<number>();
  /** Partitions whose assigned() has resolved: their records may be queued and polled. */
  private readonly ready = new Set<number>();
  /** Per partition: the next offset to accept into the queue (after a seek, or after the last record queued). */
  private readonly next = new Map<number, number>();
  private queue: LogRecord[] = [];
  private head = 0;
  private queuedBytes = 0;
  private pollWaiters = new Set<() => void>();
  private batchWaiters = new Set<() => void>();
  /** Assignment changes are handed to the listener one at a time, in order. */
  private changes: Promise<void> = Promise.resolve();
  private firstAssignment: Deferred = deferred();
  private firstSeen = false;
  /** subscribe() has returned: a failing assigned() has nobody to report to any more, so it is retried. */
  private subscribeReturned = false;
  /**
   * kafkajs reported a rebalance, or crashed (it leaves the group when it does), and has not rejoined yet: the
   * partitions may be someone else's by now, so hand nothing out until the next join says which are still ours.
   */
  private suspended = false;
  /** kafkajs is a running member of the group (a join completed and it has not crashed or stopped since). */
  private inGroup = false;
  private closed = false;
  private closing: Promise<void> | null = null;
  private restartTimer: NodeJS.Timeout | null = null;
  private readonly removers: Array<() => void> = [];

  constructor(
    private readonly log: KafkaLog,
    readonly group: string,
  ) {
    const o = log.opts;
    // A client of its own: kafkajs caches committed offsets per client and group, which must not be shared between
    // two members of one group in the same process.
    this.kafka = new Kafka(kafkaConfig(o, '-consumer'));
    this.kc = this.kafka.consumer({
      groupId: group,
      sessionTimeout: o.sessionTimeoutMs,
      rebalanceTimeout: 60_000,
      heartbeatInterval: o.heartbeatIntervalMs,
      // Bounds how long a fetch waits for data, hence how soon an idle member notices a rebalance.
      maxWaitTimeInMs: 1000,
      maxBytesPerPartition: 4 * 1024 * 1024,
      maxBytes: 16 * 1024 * 1024,
      allowAutoTopicCreation: false,
      retry: { retries: 5, initialRetryTime: 300, maxRetryTime: 5000 },
    });
  }

  assignment(): number[] {
    return [...this.target].sort((a, b) => a - b);
  }

  async subscribe(listener: AssignmentListener): Promise<void> {
    if (this.listener) throw new Error('subscribe() may be called once');
    if (this.closed) throw new Error('consumer is closed');
    this.listener = listener;
    const ev = this.kc.events;
    this.removers.push(
      this.kc.on(ev.GROUP_JOIN, (e) => this.onGroupJoin(e.payload.memberAssignment)),
      this.kc.on(ev.REBALANCING, () => {
        this.suspended = true;
      }),
      this.kc.on(ev.CRASH, (e) => this.onCrash(e.payload.error, e.payload.restart)),
      this.kc.on(ev.STOP, () => {
        this.inGroup = false;
      }),
    );
    try {
      await this.kc.connect();
      await this.kc.subscribe({ topics: [this.log.topic], fromBeginning: true });
      await this.start();
    } catch (err) {
      await this.close();
      throw err;
    }
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.log.opts.subscribeTimeoutMs);
    });
    try {
      const r = await Promise.race([this.firstAssignment.promise.then(() => 'ok' as const), timedOut]);
      if (r === 'timeout') {
        log.warn('kafka: no group assignment yet; the consumer keeps trying in the background', {
          group: this.group,
          waitedMs: this.log.opts.subscribeTimeoutMs,
        });
      }
    } catch (err) {
      // The listener failed on the first assignment: leave the group so the partitions go elsewhere.
      await this.close();
      throw err;
    } finally {
      this.subscribeReturned = true;
      if (timer) clearTimeout(timer);
    }
  }

  private start(): Promise<void> {
    return this.kc.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: 1,
      eachBatch: (payload) => this.eachBatch(payload),
    });
  }

  private onCrash(error: Error, restart: boolean): void {
    this.inGroup = false;
    this.suspended = true;
    if (this.closed) return;
    log.warn('kafka: consumer crashed', { group: this.group, err: errMessage(error), restart });
    if (restart || this.restartTimer) return;
    // kafkajs gives up on errors it deems non-retriable; a long-running aggregator must not, so start it again.
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.closed) return;
      this.start().catch((err: unknown) => log.error('kafka: consumer restart failed', { group: this.group, err: errMessage(err) }));
    }, 5000);
  }

  /** GROUP_JOIN: kafkajs does not await listeners, so everything that must precede fetching happens synchronously. */
  private onGroupJoin(memberAssignment: Record<string, number[]>): void {
    try {
      if (this.closed) return;
      this.log.counters.groupJoins++;
      this.inGroup = true;
      this.suspended = false;
      const now = new Set(memberAssignment[this.log.topic] ?? []);
      const revoked = [...this.target].filter((p) => !now.has(p)).sort((a, b) => a - b);
      const added = [...now].filter((p) => !this.target.has(p)).sort((a, b) => a - b);
      for (const p of revoked) {
        this.target.delete(p);
        this.ready.delete(p);
        this.next.delete(p);
      }
      if (revoked.length > 0) this.dropQueued(new Set(revoked));
      for (const p of added) this.target.add(p);
      // kafkajs restarts every partition at its committed offset after a join; kept partitions continue where they were.
      for (const p of this.target) {
        const n = this.next.get(p);
        if (n !== undefined && !added.includes(p)) this.kafkaSeek(p, n);
      }
      const first = !this.firstSeen;
      this.firstSeen = true;
      this.changes = this.changes.then(() => this.applyChange(revoked, added, first));
      this.wakeAll();
    } catch (err) {
      log.error('kafka: cannot handle a group assignment', { group: this.group, err: errMessage(err) });
    }
  }

  private async applyChange(revoked: number[], added: number[], first: boolean): Promise<void> {
    const listener = this.listener;
    if (this.closed || !listener) return;
    if (revoked.length > 0) {
      try {
        await listener.revoked(revoked);
      } catch (err) {
        log.error('kafka: revoked() failed', { group: this.group, partitions: revoked, err: errMessage(err) });
      }
    }
    if (added.length > 0) {
      let partitions = added;
      for (let attempt = 0; ; attempt++) {
        try {
          await listener.assigned(partitions);
          for (const p of partitions) if (this.target.has(p)) this.ready.add(p);
          break;
        } catch (err) {
          if (first && !this.subscribeReturned) {
            this.firstAssignment.reject(err);
            return;
          }
          // Nobody to report to: keep the partitions undeliverable and try again.
          const delay = Math.min(10_000, 500 * 2 ** attempt);
          log.error('kafka: assigned() failed; retrying', { group: this.group, partitions, err: errMessage(err), delayMs: delay });
          await sleep(delay);
          if (this.closed) return;
          partitions = partitions.filter((p) => this.target.has(p));
          if (partitions.length === 0) break;
        }
      }
    }
    if (first) this.firstAssignment.resolve();
    this.wakeAll();
  }

  private kafkaSeek(partition: number, offset: number): void {
    try {
      this.kc.seek({ topic: this.log.topic, partition, offset: String(offset) });
    } catch {
      // kafkajs is not running (between a crash and its restart): the next join re-seeks kept partitions to next[p].
    }
  }

  private async eachBatch(payload: EachBatchPayload): Promise<void> {
    const { batch, resolveOffset, heartbeat, isRunning, isStale } = payload;
    const p = batch.partition;
    if (batch.topic !== this.log.topic) return;
    const msgs = batch.messages;
    let i = 0;
    while (i < msgs.length) {
      for (;;) {
        // Not ours any more, or fetched before a seek (kafkajs re-fetches from the seek offset): drop the rest.
        if (this.closed || !isRunning() || !this.target.has(p) || isStale()) return;
        if (this.ready.has(p) && !this.suspended && this.hasRoom()) break;
        await this.waitBatch(WAIT_SLICE_MS);
        if (this.closed || !isRunning()) return;
        await heartbeat(); // throws when the group rebalances; kafkajs then rejoins
      }
      let lastOffset: string | null = null;
      let pushed = 0;
      while (i < msgs.length && (pushed === 0 || this.hasRoom())) {
        const m = msgs[i++];
        lastOffset = m.offset;
        const offset = Number(m.offset);
        const expected = this.next.get(p);
        if (expected !== undefined && offset < expected) {
          this.log.counters.skipped++; // below a seek, or already queued
          continue;
        }
        this.next.set(p, offset + 1);
        if (!m.value) continue; // never written by this driver
        this.queue.push({ partition: p, offset, value: m.value });
        this.queuedBytes += m.value.length;
        pushed++;
      }
      if (lastOffset !== null) resolveOffset(lastOffset);
      if (pushed > 0) this.wakePollers();
    }
  }

  private hasRoom(): boolean {
    const o = this.log.opts;
    return this.queue.length - this.head < o.consumerQueueRecords && this.queuedBytes < o.consumerQueueBytes;
  }

  private waitBatch(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.batchWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.batchWaiters.add(done);
    });
  }

  private wakePollers(): void {
    for (const w of [...this.pollWaiters]) w();
  }

  private wakeAll(): void {
    this.wakePollers();
    for (const w of [...this.batchWaiters]) w();
  }

  private dropQueued(partitions: Set<number>): void {
    const kept: LogRecord[] = [];
    let bytes = 0;
    for (let i = this.head; i < this.queue.length; i++) {
      const r = this.queue[i];
      if (partitions.has(r.partition)) continue;
      kept.push(r);
      bytes += r.value.length;
    }
    this.queue = kept;
    this.head = 0;
    this.queuedBytes = bytes;
    for (const w of [...this.batchWaiters]) w();
  }

  async committed(partition: number): Promise<number> {
    this.checkPartition(partition);
    const res = await this.log.admin.fetchOffsets({ groupId: this.group, topics: [this.log.topic] });
    const entry = res.find((t) => t.topic === this.log.topic)?.partitions.find((x) => x.partition === partition);
    const offset = entry ? Number(entry.offset) : -1;
    return Number.isSafeInteger(offset) && offset > 0 ? offset : 0;
  }

  seek(partition: number, offset: number): void {
    checkOffset(offset);
    this.checkPartition(partition);
    if (this.closed || !this.target.has(partition)) return; // not ours: its owner positions it
    this.next.set(partition, offset);
    this.dropQueued(new Set([partition]));
    this.kafkaSeek(partition, offset);
    this.wakeAll();
  }

  poll(maxRecords: number, maxWaitMs: number): Promise<LogRecord[]> {
    const max = Math.max(1, Math.floor(maxRecords));
    const deadline = Date.now() + Math.max(0, maxWaitMs);
    return (async () => {
      for (;;) {
        if (this.closed) return [];
        if (!this.suspended && this.queue.length > this.head) return this.take(max);
        const remaining = deadline - Date.now();
        if (remaining <= 0) return [];
        await new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            this.pollWaiters.delete(done);
            resolve();
          };
          const timer = setTimeout(done, remaining);
          this.pollWaiters.add(done);
        });
      }
    })();
  }

  private take(max: number): LogRecord[] {
    const end = Math.min(this.queue.length, this.head + max);
    const out: LogRecord[] = [];
    for (let i = this.head; i < end; i++) {
      const r = this.queue[i];
      this.queuedBytes -= r.value.length;
      if (this.ready.has(r.partition)) out.push(r);
    }
    this.head = end;
    if (this.head === this.queue.length) {
      this.queue = [];
      this.head = 0;
    } else if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    this.log.counters.polled += out.length;
    for (const w of [...this.batchWaiters]) w();
    return out;
  }

  async commit(partition: number, offset: number): Promise<void> {
    checkOffset(offset);
    this.checkPartition(partition);
    if (this.closed) throw new Error('consumer is closed');
    if (!this.target.has(partition)) throw new Error(`partition ${partition} is not assigned to this consumer`);
    // kafkajs silently skips a commit while its runner is down; say so instead.
    if (!this.inGroup) throw new ServiceUnavailableError('The consumer is not in its group right now; retry the commit.');
    await this.kc.commitOffsets([{ topic: this.log.topic, partition, offset: String(offset) }]);
  }

  private checkPartition(partition: number): void {
    if (!Number.isInteger(partition) || partition < 0 || partition >= this.log.partitions) throw new RangeError(`invalid partition ${partition}`);
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.closed = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = null;
    this.firstAssignment.resolve();
    this.wakeAll();
    try {
      // Leaves the group, so the other members take the partitions over without waiting for the session timeout.
      await withTimeout(this.kc.disconnect(), 15_000, 'kafka consumer disconnect');
    } catch (err) {
      log.warn('kafka: consumer did not disconnect cleanly', { group: this.group, err: errMessage(err) });
    }
    for (const remove of this.removers) remove();
    this.inGroup = false;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    this.target.clear();
    this.ready.clear();
    this.log.removeConsumer(this);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------------------------------------

export class KafkaLog implements EventLog {
  readonly partitions: number;
  readonly topic: string;
  /** Largest record value append() takes (from the topic's max.message.bytes). */
  readonly maxRecordBytes: number;
  /** Largest sum of record values (framing estimated) sent to one partition in one request. */
  readonly maxBatchBytes: number;
  /** @internal */
  readonly counters: KafkaLogStats = {
    appends: 0,
    acknowledged: 0,
    rejected: 0,
    overloaded: 0,
    sends: 0,
    sendFailures: 0,
    producerConnects: 0,
    maxSendRecords: 0,
    bytes: 0,
    polled: 0,
    skipped: 0,
    groupJoins: 0,
  };
  private readonly producers = new Set<KafkaProducer>();
  private readonly consumers = new Set<KafkaLogConsumer>();
  private closing: Promise<void> | null = null;

  private constructor(
    /** @internal */ readonly opts: ResolvedOptions,
    /** @internal */ readonly kafka: Kafka,
    /** @internal */ readonly admin: Admin,
    partitions: number,
    maxMessageBytes: number,
    /** Whether this process created the topic. */
    readonly created: boolean,
  ) {
    this.topic = opts.topic;
    this.partitions = partitions;
    this.maxBatchBytes = Math.max(1024, maxMessageBytes - BATCH_OVERHEAD);
    this.maxRecordBytes = this.maxBatchBytes - RECORD_OVERHEAD;
  }

  /** Connects, creates the topic if it is missing, and reads its partition count and record size limit. */
  static async open(options: KafkaLogOptions): Promise<KafkaLog> {
    const o = resolveOptions(options);
    const kafka = new Kafka(kafkaConfig(o));
    const admin = kafka.admin();
    await admin.connect();
    try {
      const { partitions, created } = await ensureTopic(admin, o);
      if (!created && options.partitions !== undefined && partitions !== o.partitions) {
        log.warn('kafka: the topic exists with another partition count; using it', { topic: o.topic, partitions, requested: o.partitions });
      }
      const maxMessageBytes = await topicMaxMessageBytes(admin, o.topic);
      return new KafkaLog(o, kafka, admin, partitions, maxMessageBytes, created);
    } catch (err) {
      await admin.disconnect().catch(() => undefined);
      throw err;
    }
  }

  producer(): LogProducer {
    if (this.closing) throw new Error('event log is closed');
    const p = new KafkaProducer(this);
    this.producers.add(p);
    return p;
  }

  consumer(group: string): LogConsumer {
    if (typeof group !== 'string' || group.length === 0) throw new RangeError('consumer group must be a non-empty string');
    if (this.closing) throw new Error('event log is closed');
    const c = new KafkaLogConsumer(this, group);
    this.consumers.add(c);
    return c;
  }

  stats(): KafkaLogStats {
    return { ...this.counters };
  }

  /** @internal */
  removeProducer(p: KafkaProducer): void {
    this.producers.delete(p);
  }

  /** @internal */
  removeConsumer(c: KafkaLogConsumer): void {
    this.consumers.delete(c);
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    await Promise.all([...this.consumers].map((c) => c.close()));
    await Promise.all([...this.producers].map((p) => p.close()));
    await withTimeout(this.admin.disconnect(), 10_000, 'kafka admin disconnect').catch(() => undefined);
  }
}

/** Deletes a topic and a consumer group (the bench's clean-up of a deployment of its own); says what it did. */
export async function deleteTopicAndGroup(options: KafkaLogOptions, topic: string, group: string): Promise<string> {
  const kafka = new Kafka({
    clientId: 'meterd-cleanup',
    brokers: options.brokers,
    ...(options.ssl !== undefined ? { ssl: options.ssl } : {}),
    ...(options.sasl ? { sasl: options.sasl as SASLOptions } : {}),
    logLevel: KafkaLogLevel.NOTHING,
  });
  const admin = kafka.admin();
  await admin.connect();
  const done: string[] = [];
  try {
    try {
      await admin.deleteGroups([group]);
      done.push(`deleted group ${group}`);
    } catch (err) {
      done.push(`group ${group} not deleted (${(err as Error).message})`);
    }
    if ((await admin.listTopics()).includes(topic)) {
      await admin.deleteTopics({ topics: [topic], timeout: 20_000 });
      done.push(`deleted topic ${topic}`);
    } else {
      done.push(`no topic ${topic}`);
    }
  } finally {
    await admin.disconnect();
  }
  return done.join('; ');
}
