/**
 * The embedded log's write side on a thread of its own (EmbeddedLogOptions.writerThread): the same PartitionWriter
 * group commit, fed by the main thread (appends of the routes it serves) and by ports other threads append on
 * directly (append-port.ts). The main thread keeps the read side (readers, committed offsets, reclamation) on a
 * mirror of each partition's segments, which this thread updates after every durable write, before it acknowledges
 * the write's appends.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { CounterReports, type PortRecords, PortAppendServer, recordBuffer } from '../append-port';
import { PartitionSegments, errMessage, MAX_RECORD_BYTES } from './segment-files';
import type { EmbeddedLogFaults, EmbeddedLogStats, LogContext } from './types';
import type { DurableMirror, FromWriter, ToWriter, WriterThreadInit } from './writer-messages';
import { PartitionWriter } from './writer';

function main(): void {
  const parent = parentPort;
  if (!parent) throw new Error('writer-thread.js runs as a worker thread of the embedded log');
  const init = workerData as WriterThreadInit;
  const post = (message: FromWriter) => parent.postMessage(message);
  const counters: EmbeddedLogStats = { appends: 0, acknowledged: 0, rejected: 0, writes: 0, fsyncs: 0, dirSyncs: 0, bytes: 0, segmentsDeleted: 0 };
  let lastWrite = { records: 0, seconds: 0 };
  const reports = new CounterReports(counters, (c) => post({ t: 'counters', counters: c }));
  const files: PartitionSegments[] = [];
  const context: LogContext = {
    segmentBytes: init.segmentBytes,
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    faults: init.faultsModule ? (require(init.faultsModule) as EmbeddedLogFaults) : undefined,
    counters,
    blockingIo: true,
    onDurableWrite: (records, seconds) => {
      lastWrite = { records, seconds };
    },
    notifyDurable: (partition) => {
      const f = files[partition];
      const active = f.active;
      const mirror: DurableMirror = {
        partition,
        durableNext: f.durableNext,
        base: active.base,
        path: active.path,
        size: active.size,
        records: lastWrite.records,
        seconds: lastWrite.seconds,
        counters: reports.snapshot(),
      };
      post({ t: 'durable', mirror });
    },
  };
  const writers = init.partitions.map((p) => {
    const f = new PartitionSegments(p.dir);
    f.segments = p.segments.map((s) => ({ ...s }));
    f.durableNext = p.durableNext;
    files.push(f);
    return new PartitionWriter(context, p.id, f);
  });

  /** Why a record cannot be appended, or null. */
  function invalid(partition: number, bytes: unknown): string | null {
    if (!Number.isInteger(partition) || partition < 0 || partition >= writers.length) return `invalid partition ${partition}`;
    if (!(bytes instanceof Uint8Array) || bytes.length === 0 || bytes.length > MAX_RECORD_BYTES) {
      return `a record must be a non-empty buffer of at most ${MAX_RECORD_BYTES} bytes`;
    }
    return null;
  }

  function appendAll(records: PortRecords): Promise<unknown> {
    for (const [partition, bytes] of records) {
      const why = invalid(partition, bytes);
      if (why) return Promise.reject(new RangeError(why));
    }
    if (records.length === 1) return writers[records[0][0]].append(recordBuffer(records[0][1]));
    // Answered once every record has settled: a failure in one partition is not reported while another partition's
    // record of the same append is still being written.
    return Promise.allSettled(records.map(([partition, bytes]) => writers[partition].append(recordBuffer(bytes)))).then((settled) => {
      for (const r of settled) if (r.status === 'rejected') throw r.reason;
    });
  }

  /** The ports other threads append on; once it stops, the main thread's appends are refused too. */
  const server = new PortAppendServer(appendAll);
  const CLOSED = 'The event log is closed.';

  const idle = () => Promise.all(writers.map((w) => w.idle()));

  parent.on('message', (m: ToWriter) => {
    switch (m.t) {
      case 'append': {
        const why = server.closing ? CLOSED : invalid(m.partition, m.value);
        if (why) {
          post({ t: 'appended', id: m.id, offset: -1, error: why });
          return;
        }
        writers[m.partition].append(recordBuffer(m.value)).then(
          (offset) => post({ t: 'appended', id: m.id, offset, error: null }),
          (err: unknown) => post({ t: 'appended', id: m.id, offset: -1, error: errMessage(err) }),
        );
        return;
      }
      case 'connect':
        server.connect(m.port);
        return;
      case 'idle':
        idle().then(() => post({ t: 'idle', id: m.id }));
        return;
      case 'close':
        // Refuse what arrives from now on, let every append already taken finish and be answered (none can start any
        // more, so the writers are then idle together), and only then close the ports: each sender has had the answer
        // to every append this thread took, and what it is still waiting for was never written.
        Promise.all([server.stop(), idle()])
          .then(() => {
            server.closePorts();
            return Promise.all(writers.map((w) => w.close()));
          })
          .finally(() => {
            reports.stop();
            post({ t: 'closed' });
            parent.close();
          });
        return;
    }
  });

  Promise.all(writers.map((w) => w.open())).then(
    () => post({ t: 'ready' }),
    (err: unknown) => {
      post({ t: 'failed', message: errMessage(err) });
      parent.close();
    },
  );
}

main();
