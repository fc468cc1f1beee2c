'use strict';
/**
 * EmbeddedLogFaults hooks for the embedded log's writer thread (EmbeddedLogOptions.writerThreadFaults), which loads
 * this module itself. The plan comes from the environment the thread was started with: METERD_TEST_LOG_FAULTS =
 * {"failWrites": [n, ...], "failSyncs": [n, ...], "failWritesFrom": n}, the 1-based numbers of the group writes and
 * syncs to fail (failWritesFrom: that write and every later one); "exitAtWrite": n ends the thread (exit code 7)
 * instead of making write n.
 */
const plan = JSON.parse(process.env.METERD_TEST_LOG_FAULTS || '{}');
let writes = 0;
let syncs = 0;

exports.beforeWrite = () => {
  writes++;
  if (plan.exitAtWrite === writes) process.exit(7);
  if ((plan.failWrites || []).includes(writes) || (plan.failWritesFrom && writes >= plan.failWritesFrom))
    throw new Error(`injected failure of write ${writes}`);
};

exports.beforeSync = () => {
  syncs++;
  if ((plan.failSyncs || []).includes(syncs)) throw new Error(`injected failure of sync ${syncs}`);
};
