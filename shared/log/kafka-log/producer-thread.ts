/**
 * The Kafka log's producer for other threads (KafkaLogOptions.producerThread): the same group-commit KafkaProducer,
 * on a thread of its own, fed by ports the gateway threads append on (../append-port.ts). Their acknowledgements then
 * wait for Kafka only, not for the opening thread's event loop, which also carries the consumer and the aggregator.
 * Appends from every port share its sends: one produce request carries all that arrived while the previous one was
 * in flight.
 */
import { type MessagePort, parentPort, workerData } from 'node:worker_threads';
import { Kafka } from 'kafkajs';
import type { PortAppend, PortAppended } from '../append-port';
import { errMessage, type ProducerContext, zeroCounters } from './common';
import { KafkaProducer } from './producer';
import type { FromProducerThread, ProducerThreadFaults, ProducerThreadInit, ToProducerThread } from './producer-thread-messages';
import { kafkaConfig } from './settings';

const CLOSED = 'The event log is closed.';

function main(): void {
  const parent = parentPort;
  if (!parent) throw new Error('producer-thread.js runs as a worker thread of the Kafka log');
  const init = workerData as ProducerThreadInit;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const faults = init.faultsModule ? (require(init.faultsModule) as ProducerThreadFaults) : undefined;
  const post = (message: FromProducerThread) => parent.postMessage(message);
  const counters = zeroCounters();
  let reported = '';
  const report = () => {
    const now = JSON.stringify(counters);
    if (now === reported) return;
    reported = now;
    post({ t: 'counters', counters: { ...counters } });
  };
  const context: ProducerContext = {
    opts: init.opts,
    kafka: new Kafka(kafkaConfig(init.opts, '-producer')),
    topic: init.topic,
    partitions: init.partitions,
    maxRecordBytes: init.maxRecordBytes,
    maxBatchBytes: init.maxBatchBytes,
    counters,
    onDurableWrite: (records, seconds) => {
      reported = JSON.stringify(counters);
      post({ t: 'durable', records, seconds, counters: { ...counters } });
    },
    removeProducer: () => undefined,
  };
  const producer = new KafkaProducer(context);
  // Failed sends and refused appends change the counters without a durable write.
  const reporting = setInterval(report, 1000);
  reporting.unref();

  const ports = new Set<MessagePort>();
  let closing = false;
  /** Appends taken and not yet answered; close() waits for them. */
  let unanswered = 0;
  let answeredAll: (() => void) | null = null;

  function appendAll(records: PortAppend['records']): Promise<unknown> {
    if (records.length === 1) return producer.append(records[0][0], asBuffer(records[0][1]));
    return producer.appendAll(records.map(([partition, bytes]) => [partition, asBuffer(bytes)]));
  }

  function connect(port: MessagePort): void {
    ports.add(port);
    port.on('message', (m: PortAppend) => {
      if (closing) {
        port.postMessage({ id: m.id, error: CLOSED } satisfies PortAppended);
        return;
      }
      faults?.beforeAppend?.(m.records.length);
      unanswered++;
      appendAll(m.records)
        .then(
          () => port.postMessage({ id: m.id, error: null } satisfies PortAppended),
          (err: unknown) => port.postMessage({ id: m.id, error: errMessage(err), invalid: err instanceof RangeError } satisfies PortAppended),
        )
        .finally(() => {
          if (--unanswered === 0) answeredAll?.();
        });
    });
    port.on('close', () => ports.delete(port));
  }

  parent.on('message', (m: ToProducerThread) => {
    if (m.t === 'connect') {
      connect(m.port);
      return;
    }
    // Refuse what arrives from now on and answer every append taken (a sender never sees its port close while an
    // append it sent is being written: a refusal then would make its client send a durable record again); only then
    // close the ports and the producer.
    closing = true;
    new Promise<void>((resolve) => {
      if (unanswered === 0) resolve();
      else answeredAll = resolve;
    })
      .then(() => {
        for (const port of ports) port.close();
        return producer.close();
      })
      .finally(() => {
        clearInterval(reporting);
        report();
        post({ t: 'closed' });
        parent.close();
      });
  });
}

/** A record as the producer takes it; anything but bytes stays as it is, for the producer to refuse. */
function asBuffer(bytes: Uint8Array): Buffer {
  if (Buffer.isBuffer(bytes) || !(bytes instanceof Uint8Array)) return bytes as Buffer;
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

main();
