/**
 * The Kafka driver of EventLog (see ../../log.ts), used by the distributed mode. One topic (default
 * `meterd.meter-events`); a log partition is a Kafka partition and log offsets are Kafka offsets. This module is the
 * entry point (open, producer, consumer, stats, close); the work is done by the modules beside it:
 *
 *   settings.ts    options, defaults, the environment (KAFKA_*), the kafkajs client configuration and logging
 *   topic.ts       topic administration: create when missing, read its partition count and record size limit
 *   producer.ts    group commit: one idempotent produce request per send, failure and back-pressure rules
 *   consumer.ts    the consumer group adapted from kafkajs's push to the log's pull, and its rebalance rules
 *   common.ts      counters, the log as producer and consumer see it, timeouts and error helpers
 *
 * kafkajs is imported only in this folder (test/layout.test.ts).
 */
import { type Admin, Kafka } from 'kafkajs';
import type { DurableWriteObserver, EventLog, LogConsumer, LogProducer } from '../../log';
import { log } from '../../logger';
import { BATCH_OVERHEAD, type KafkaLogContext, type KafkaLogStats, RECORD_OVERHEAD, withTimeout } from './common';
import { KafkaLogConsumer } from './consumer';
import { KafkaProducer } from './producer';
import { kafkaConfig, type KafkaLogOptions, type ResolvedOptions, resolveOptions } from './settings';
import { ensureTopic, topicMaxMessageBytes } from './topic';

export type { KafkaLogStats } from './common';
export { DEFAULT_TOPIC, kafkaOptionsFromEnv, type KafkaLogLevelName, type KafkaLogOptions, type KafkaSaslMechanism } from './settings';
export { deleteTopicAndGroup } from './topic';

export class KafkaLog implements EventLog, KafkaLogContext {
  readonly partitions: number;
  readonly topic: string;
  /** Largest record value append() takes (from the topic's max.message.bytes). */
  readonly maxRecordBytes: number;
  /** Largest sum of record values (framing estimated) sent to one partition in one request. */
  readonly maxBatchBytes: number;
  /** @internal */
  onDurableWrite: DurableWriteObserver | null = null;
  private highWatermarks: { atMs: number; offsets: Promise<Map<number, number>> } | null = null;
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
  private readonly producers = new Set<LogProducer>();
  private readonly consumers = new Set<LogConsumer>();
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

  observeDurableWrites(observer: DurableWriteObserver): void {
    this.onDurableWrite = observer;
  }

  /** The topic's high watermark per partition, asked once a second at most (every partition's lag is read at once). */
  endOffset(partition: number): Promise<number> {
    const now = Date.now();
    if (!this.highWatermarks || now - this.highWatermarks.atMs > 1000) {
      const offsets = this.admin.fetchTopicOffsets(this.topic).then((all) => new Map(all.map((o) => [o.partition, Number(o.high)])));
      // A failed fetch is not kept: the next scrape asks again.
      offsets.catch(() => {
        if (this.highWatermarks?.offsets === offsets) this.highWatermarks = null;
      });
      this.highWatermarks = { atMs: now, offsets };
    }
    return this.highWatermarks.offsets.then((m) => {
      const high = m.get(partition);
      if (high === undefined) throw new Error(`no offsets for partition ${partition} of ${this.topic}`);
      return high;
    });
  }

  stats(): KafkaLogStats {
    return { ...this.counters };
  }

  /** @internal */
  removeProducer(p: LogProducer): void {
    this.producers.delete(p);
  }

  /** @internal */
  removeConsumer(c: LogConsumer): void {
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
