/**
 * Topic administration (open): the topic is created when missing (numPartitions = `partitions`, replication factor =
 * `replicationFactor` or the broker's default.replication.factor, max.message.bytes = `topicMaxMessageBytes`). A
 * creation race with another process is harmless: whoever loses sees TOPIC_ALREADY_EXISTS. An existing topic keeps its
 * real partition count, which is what the log reports. The topic's max.message.bytes bounds a record and a
 * per-partition batch. Also the bench's clean-up (delete a topic and a consumer group).
 */
import { type Admin, ConfigResourceTypes, Kafka, logLevel as KafkaLogLevel, type SASLOptions } from 'kafkajs';
import { log } from '../../logger';
import { errMessage, errType, sleep } from './common';
import type { KafkaLogOptions, ResolvedOptions } from './settings';

/** Kafka's own default for max.message.bytes, assumed when the topic's value cannot be read. */
const KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588;

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

export async function topicMaxMessageBytes(admin: Admin, topic: string): Promise<number> {
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
export async function ensureTopic(admin: Admin, o: ResolvedOptions): Promise<{ partitions: number; created: boolean }> {
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
