/**
 * The Kafka driver of EventLog (see ../../log.ts), used by the distributed mode. One topic (default
 * `meterd.meter-events`); a log partition is a Kafka partition and log offsets are Kafka offsets. This module is the
 * entry point (open, producer, consumer, stats, close); the work is done by the modules beside it:
 *
 *   settings.ts    options, defaults, the environment (KAFKA_*), the kafkajs client configuration and logging
 *   topic.ts       topic administration: create when missing, read its partition count and record size limit
 *   producer.ts    group commit: one idempotent produce request per send, failure and back-pressure rules
 *   producer-thread.ts  with producerThread: a producer on a thread of its own that other threads append to through
 *                  ports (producer-host.ts starts it), so their acknowledgements skip this thread's event loop
 *   consumer.ts    the consumer group adapted from kafkajs's push to the log's pull, and its rebalance rules
 *   common.ts      counters, the log as producer and consumer see it, timeouts and error helpers
 *
 * kafkajs is imported only in this folder (test/layout.test.ts).
 */
import type { MessagePort } from 'node:worker_threads';
import { type Admin, Kafka } from 'kafkajs';
import type { DurableWriteObserver, EventLog, LogConsumer, LogProducer } from '../../log';
import { log } from '../../logger';
import { BATCH_OVERHEAD, type KafkaLogContext, type KafkaLogStats, RECORD_OVERHEAD, withTimeout, zeroCounters } from './common';
import { KafkaLogConsumer } from './consumer';
import { KafkaProducer } from './producer';
import { ProducerThread } from './producer-host';
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
  readonly counters: KafkaLogStats = zeroCounters();
  /** The producer thread (producerThread), started by the first appendPort(); its counters as it last sent them. */
  private producerThread: ProducerThread | null = null;
  private producerThreadCounters: KafkaLogStats | null = null;
  private producerThreadUnavailable = false;
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
    private readonly threads: Pick<KafkaLogOptions, 'producerThread' | 'onProducerThreadExit' | 'producerThreadFaults'> = {},
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
      return new KafkaLog(o, kafka, admin, partitions, maxMessageBytes, created, options);
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

  /** A port on the producer thread (started on the first call); undefined without producerThread or once it stopped. */
  appendPort(): MessagePort | undefined {
    if (!this.threads.producerThread || this.closing || this.producerThreadUnavailable) return undefined;
    if (!this.producerThread) {
      try {
        this.producerThread = this.startProducerThread();
      } catch (err) {
        // Options a thread cannot be given (an ssl object with functions): appends stay on this thread's producer.
        this.producerThreadUnavailable = true;
        log.warn('kafka: no producer thread; other threads append through this one', { err: String(err) });
        return undefined;
      }
    }
    return this.producerThread.connect();
  }

  private startProducerThread(): ProducerThread {
    return ProducerThread.start(
      {
        opts: this.opts,
        topic: this.topic,
        partitions: this.partitions,
        maxRecordBytes: this.maxRecordBytes,
        maxBatchBytes: this.maxBatchBytes,
        faultsModule: this.threads.producerThreadFaults,
      },
      {
        durable: (records, seconds) => this.onDurableWrite?.(records, seconds),
        counters: (counters) => {
          this.producerThreadCounters = counters;
        },
        exit: (code, error) => {
          log.error('kafka: the producer thread stopped', { code, error });
          this.threads.onProducerThreadExit?.(code, error);
        },
      },
    );
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

  /** The counters of every producer and consumer, the producer thread's included. */
  stats(): KafkaLogStats {
    const all = { ...this.counters };
    const thread = this.producerThreadCounters;
    if (thread) {
      for (const key of Object.keys(all) as Array<keyof KafkaLogStats>) {
        all[key] = key === 'maxSendRecords' ? Math.max(all[key], thread[key]) : all[key] + thread[key];
      }
    }
    return all;
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
    await this.producerThread?.close();
    await withTimeout(this.admin.disconnect(), 10_000, 'kafka admin disconnect').catch(() => undefined);
  }
}
