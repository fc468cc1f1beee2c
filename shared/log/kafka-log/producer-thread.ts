/**
 * The Kafka log's producer for other threads (KafkaLogOptions.producerThread): the same group-commit KafkaProducer,
 * on a thread of its own, fed by ports the gateway threads append on (../append-port.ts). Their acknowledgements then
 * wait for Kafka only, not for the opening thread's event loop, which also carries the consumer and the aggregator.
 * Appends from every port share its sends: one produce request carries all that arrived while the previous one was
 * in flight.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { Kafka } from 'kafkajs';
import { CounterReports, PortAppendServer, recordBuffer } from '../append-port';
import { type ProducerContext, zeroCounters } from './common';
import { KafkaProducer } from './producer';
import type { FromProducerThread, ProducerThreadFaults, ProducerThreadInit, ToProducerThread } from './producer-thread-messages';
import { kafkaConfig } from './settings';

function main(): void {
  const parent = parentPort;
  if (!parent) throw new Error('producer-thread.js runs as a worker thread of the Kafka log');
  const init = workerData as ProducerThreadInit;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const faults = init.faultsModule ? (require(init.faultsModule) as ProducerThreadFaults) : undefined;
  const post = (message: FromProducerThread) => parent.postMessage(message);
  const counters = zeroCounters();
  const reports = new CounterReports(counters, (c) => post({ t: 'counters', counters: c }));
  const context: ProducerContext = {
    opts: init.opts,
    kafka: new Kafka(kafkaConfig(init.opts, '-producer')),
    topic: init.topic,
    partitions: init.partitions,
    maxRecordBytes: init.maxRecordBytes,
    maxBatchBytes: init.maxBatchBytes,
    counters,
    onDurableWrite: (records, seconds) => post({ t: 'durable', records, seconds, counters: reports.snapshot() }),
    removeProducer: () => undefined,
  };
  const producer = new KafkaProducer(context);
  const server = new PortAppendServer(
    (records) => producer.appendAll(records.map(([partition, bytes]) => [partition, recordBuffer(bytes)])),
    faults?.beforeAppend,
  );

  parent.on('message', (m: ToProducerThread) => {
    if (m.t === 'connect') {
      server.connect(m.port);
      return;
    }
    // Refuse what arrives from now on and answer every append taken; only then close the ports and the producer.
    server
      .stop()
      .then(() => {
        server.closePorts();
        return producer.close();
      })
      .finally(() => {
        reports.stop();
        post({ t: 'closed' });
        parent.close();
      });
  });
}

main();
