'use strict';
/**
 * ProducerThreadFaults hooks for the Kafka log's producer thread (KafkaLogOptions.producerThreadFaults), which loads
 * this module itself. The plan comes from the environment the thread was started with: METERD_TEST_PRODUCER_FAULTS =
 * {"exitAtAppend": n}: the thread ends (exit code 7) when the n-th append arrives on its ports, before taking it.
 */
const plan = JSON.parse(process.env.METERD_TEST_PRODUCER_FAULTS || '{}');
let appends = 0;

exports.beforeAppend = () => {
  appends++;
  if (plan.exitAtAppend === appends) process.exit(7);
};
