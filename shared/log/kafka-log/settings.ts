/**
 * The Kafka driver's settings: its options with their defaults and checks, the options read from the environment
 * (KAFKA_*, checked by shared/config.ts), and the kafkajs client configuration built from them, with kafkajs's own
 * logging routed to the product logger. Producer, consumer and topic administration all connect with kafkaConfig().
 */
import type * as tls from 'node:tls';
import { type KafkaConfig, logLevel as KafkaLogLevel, type LogEntry } from 'kafkajs';
import { kafkaSettingsFromEnv } from '../../config';
import { log } from '../../logger';

export const DEFAULT_TOPIC = 'meterd.meter-events';
const DEFAULT_PARTITIONS = 8;
/** What a created topic gets: a request body of MAX_BODY_BYTES (1 MiB) must fit in one record, framing included. */
const DEFAULT_TOPIC_MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

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
  /**
   * Other threads append through `appendPort()` to a producer on a thread of its own (producer-thread.ts), so that
   * their acknowledgements do not wait for the opening thread's event loop. Default false: appendPort() gives none.
   */
  producerThread?: boolean;
  /** Told if the producer thread stops without being closed (its ports' pending appends are then refused). */
  onProducerThreadExit?: (code: number, error: string | null) => void;
  /** A module of ProducerThreadFaults hooks the producer thread loads (tests only). */
  producerThreadFaults?: string;
}

export interface ResolvedOptions {
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

export function resolveOptions(o: KafkaLogOptions): ResolvedOptions {
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

export function kafkaConfig(o: ResolvedOptions, clientIdSuffix = ''): KafkaConfig {
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
