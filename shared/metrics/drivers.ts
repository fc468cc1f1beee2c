/**
 * The drivers as the rest of meterd sees them, counted: every append to the event log (time to durable, bytes,
 * failures), failed consumer operations, and failed analytics store calls. Wrapped once in the composition root, so
 * the drivers themselves stay unaware of metrics and every mode is measured the same way.
 */
import type { MessagePort } from 'node:worker_threads';
import type { AnalyticsStore } from '../analytics-store';
import type { AssignmentListener, EventLog, LogConsumer, LogProducer, LogRecord } from '../log';
import { metrics } from './index';

const APPENDS = metrics.logAppends.child();
const APPEND_BYTES = metrics.logAppendBytes.child();
const APPEND_SECONDS = metrics.logAppendSeconds.child();

async function counting<T>(operation: string, family: typeof metrics.logErrors, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    family.child(operation).inc();
    throw err;
  }
}

class CountedProducer implements LogProducer {
  constructor(private readonly inner: LogProducer) {}
  get partitions(): number {
    return this.inner.partitions;
  }
  append(partition: number, value: Buffer): Promise<number> {
    const started = performance.now();
    return this.inner.append(partition, value).then(
      (offset) => {
        APPENDS.value++;
        APPEND_BYTES.value += value.length;
        APPEND_SECONDS.observe((performance.now() - started) / 1000);
        return offset;
      },
      (err) => {
        metrics.logErrors.child('append').inc();
        throw err;
      },
    );
  }
  appendPort(): MessagePort | undefined {
    return this.inner.appendPort?.();
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * The records of one request or batch appended through an append port (PortAppender), counted on the thread that
 * made them (its values reach /metrics with that thread's snapshot) as CountedProducer counts the same records
 * appended one by one: each record is an append, timed, or a failed one.
 */
export async function countedPortAppend(records: number, bytes: number, append: () => Promise<void>): Promise<void> {
  const started = performance.now();
  try {
    await append();
  } catch (err) {
    metrics.logErrors.child('append').inc(records);
    throw err;
  }
  APPENDS.value += records;
  APPEND_BYTES.value += bytes;
  APPEND_SECONDS.observe((performance.now() - started) / 1000, records);
}

class CountedConsumer implements LogConsumer {
  constructor(private readonly inner: LogConsumer) {}
  subscribe(listener: AssignmentListener): Promise<void> {
    return counting('subscribe', metrics.logErrors, () => this.inner.subscribe(listener));
  }
  assignment(): number[] {
    return this.inner.assignment();
  }
  committed(partition: number): Promise<number> {
    return counting('committed', metrics.logErrors, () => this.inner.committed(partition));
  }
  seek(partition: number, offset: number): void {
    this.inner.seek(partition, offset);
  }
  poll(maxRecords: number, maxWaitMs: number): Promise<LogRecord[]> {
    return counting('poll', metrics.logErrors, () => this.inner.poll(maxRecords, maxWaitMs));
  }
  commit(partition: number, offset: number): Promise<void> {
    return counting('commit', metrics.logErrors, () => this.inner.commit(partition, offset));
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The event log with its producers and consumers counted, and its durable writes (group commits) measured. */
export function countedLog(log: EventLog): EventLog {
  const groupRecords = metrics.logGroupCommitRecords.child();
  const syncSeconds = metrics.logSyncSeconds.child();
  log.observeDurableWrites?.((records, seconds) => {
    groupRecords.observe(records);
    syncSeconds.observe(seconds);
  });
  return {
    partitions: log.partitions,
    endOffset: log.endOffset ? (partition: number) => log.endOffset!(partition) : undefined,
    producer: () => new CountedProducer(log.producer()),
    consumer: (group: string) => new CountedConsumer(log.consumer(group)),
    close: () => log.close(),
  };
}

/** The analytics store with its failures counted by operation (insert, query, exec). */
export function countedAnalytics(store: AnalyticsStore): AnalyticsStore {
  return {
    init: () => counting('init', metrics.analyticsErrors, () => store.init()),
    insertTsv: (table, columns, rows) => counting('insert', metrics.analyticsErrors, () => store.insertTsv(table, columns, rows)),
    insertRowBinary: (table, columns, rows) => counting('insert', metrics.analyticsErrors, () => store.insertRowBinary(table, columns, rows)),
    query: <T>(sql: string) => counting('query', metrics.analyticsErrors, () => store.query<T>(sql)),
    exec: (sql) => counting('exec', metrics.analyticsErrors, () => store.exec(sql)),
    close: () => store.close(),
  };
}
