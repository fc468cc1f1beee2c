/**
 * The Kafka driver of the event log, against a real broker (deploy/up.sh starts one):
 *
 *   KAFKA_BROKERS=127.0.0.1:19092 npx tap test/kafka-log.test.ts
 *   KAFKA_FAULT_TESTS=1 ...        also stops/freezes and restarts the broker started by deploy/up.sh
 *
 * Without KAFKA_BROKERS only the option parsing is tested; everything else is skipped. Every test uses a topic of its
 * own and deletes it (and its consumer groups) at the end.
 */
import t from 'tap';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { Kafka, logLevel, type Admin } from 'kafkajs';
import { KafkaLog, kafkaOptionsFromEnv, type KafkaLogOptions } from '../shared/log/kafka-log';
import { ServiceUnavailableError } from '../shared/errors';
import { PortAppender } from '../shared/log/append-port';
import type { AssignmentListener, LogConsumer, LogRecord } from '../shared/log';

const BROKERS = (process.env.KAFKA_BROKERS ?? '')
  .split(',')
  .map((s) => s.trim())
  .filter(Boolean);
const FAULTS = process.env.KAFKA_FAULT_TESTS === '1';
const REPO = path.resolve(__dirname, '..');

type TT = { teardown(fn: () => unknown): void };

t.test('kafkaOptionsFromEnv', async (t) => {
  t.throws(() => kafkaOptionsFromEnv({}), /KAFKA_BROKERS/);
  t.same(kafkaOptionsFromEnv({ KAFKA_BROKERS: ' a:1, b:2 ,' }), { brokers: ['a:1', 'b:2'] });
  t.same(
    kafkaOptionsFromEnv({
      KAFKA_BROKERS: 'k:9092',
      KAFKA_TOPIC: 'events',
      KAFKA_PARTITIONS: '12',
      KAFKA_REPLICATION_FACTOR: '3',
      KAFKA_CLIENT_ID: 'gw-1',
      KAFKA_SSL: 'true',
      KAFKA_SASL_MECHANISM: 'SCRAM-SHA-512',
      KAFKA_SASL_USERNAME: 'u',
      KAFKA_SASL_PASSWORD: 'p',
    }),
    {
      brokers: ['k:9092'],
      topic: 'events',
      partitions: 12,
      replicationFactor: 3,
      clientId: 'gw-1',
      ssl: true,
      sasl: { mechanism: 'scram-sha-512', username: 'u', password: 'p' },
    },
  );
  t.equal(kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_SSL: 'false' }).ssl, false);
  t.equal(kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_REPLICATION_FACTOR: '-1' }).replicationFactor, -1);
  t.throws(() => kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_SSL: 'maybe' }), /KAFKA_SSL/);
  t.throws(() => kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_PARTITIONS: '0' }), /KAFKA_PARTITIONS/);
  t.throws(() => kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_PARTITIONS: 'x' }), /KAFKA_PARTITIONS/);
  t.throws(() => kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_SASL_MECHANISM: 'gssapi', KAFKA_SASL_USERNAME: 'u' }), /MECHANISM/);
  t.throws(() => kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_SASL_MECHANISM: 'plain' }), /USERNAME/);
  t.throws(() => kafkaOptionsFromEnv({ KAFKA_BROKERS: 'k:1', KAFKA_SASL_USERNAME: 'u' }), /MECHANISM/);
});

if (BROKERS.length === 0) {
  t.test('against a Kafka broker', (t) => {
    t.plan(0, 'KAFKA_BROKERS is not set (eval "$(deploy/up.sh)" starts a broker)');
  });
} else {
  kafkaTests();
}

function kafkaTests(): void {
  const adminKafka = new Kafka({ clientId: 'meterd-test-admin', brokers: BROKERS, logLevel: logLevel.NOTHING });
  let adminP: Promise<Admin> | null = null;
  const admin = (): Promise<Admin> =>
    (adminP ??= (async () => {
      const a = adminKafka.admin();
      await a.connect();
      return a;
    })());
  t.teardown(async () => {
    if (adminP) await (await adminP).disconnect();
  });

  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const buf = (s: string) => Buffer.from(s);

  /** A fresh topic for the test; deleted, with the groups used on it, when the test ends. */
  function freshTopic(tt: TT, groups: string[] = []): string {
    const topic = `meterd-test-${Date.now().toString(36)}-${crypto.randomBytes(4).toString('hex')}`;
    tt.teardown(async () => {
      const a = await admin();
      await a.deleteTopics({ topics: [topic], timeout: 10_000 }).catch(() => undefined);
      if (groups.length) await a.deleteGroups(groups).catch(() => undefined);
    });
    return topic;
  }

  async function openLog(tt: TT, topic: string, opts: Partial<KafkaLogOptions> = {}): Promise<KafkaLog> {
    const log = await KafkaLog.open({ brokers: BROKERS, topic, partitions: 4, logLevel: 'nothing', ...opts });
    tt.teardown(() => log.close());
    return log;
  }

  interface Recorder extends AssignmentListener {
    calls: string[];
  }
  /** Records the listener calls; `onAssigned` runs inside assigned() (e.g. to seek). */
  function recorder(onAssigned?: (partitions: number[]) => Promise<void> | void): Recorder {
    const calls: string[] = [];
    return {
      calls,
      async assigned(partitions) {
        calls.push(`assigned:${partitions.join(',')}`);
        if (onAssigned) await onAssigned(partitions);
      },
      async revoked(partitions) {
        calls.push(`revoked:${partitions.join(',')}`);
      },
    };
  }

  async function readN(c: LogConsumer, n: number, waitMs = 3000): Promise<LogRecord[]> {
    const out: LogRecord[] = [];
    while (out.length < n) {
      const recs = await c.poll(n - out.length, waitMs);
      if (recs.length === 0) break;
      out.push(...recs);
    }
    return out;
  }

  async function waitFor(what: string, cond: () => boolean, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(50);
    }
  }

  const show = (recs: LogRecord[]) => recs.map((r) => `${r.partition}:${r.offset}:${r.value.toString()}`);

  t.test('open creates the topic once under a race, and keeps an existing topic as it is', async (t) => {
    const topic = freshTopic(t);
    const [a, b] = await Promise.all([openLog(t, topic, { partitions: 3 }), openLog(t, topic, { partitions: 3 })]);
    t.equal(a.partitions, 3);
    t.equal(b.partitions, 3);
    t.equal(Number(a.created) + Number(b.created), 1, 'exactly one of the racing processes created it');
    const c = await openLog(t, topic, { partitions: 7 });
    t.equal(c.partitions, 3, 'the real partition count of an existing topic wins');
    t.notOk(c.created);
    t.ok(c.maxRecordBytes > 8_000_000 && c.maxRecordBytes < 8 * 1024 * 1024, `max record ${c.maxRecordBytes} (topic max.message.bytes 8 MiB)`);
    const md = await (await admin()).fetchTopicMetadata({ topics: [topic] });
    t.equal(md.topics[0].partitions.length, 3);
  });

  t.test('append/poll round trip with offsets, wake-up, close', async (t) => {
    const topic = freshTopic(t, ['g-rt']);
    const log = await openLog(t, topic, { partitions: 3 });
    const prod = log.producer();
    t.equal(prod.partitions, 3);
    const seq: number[] = [];
    for (let i = 0; i < 5; i++) seq.push(await prod.append(0, buf(`p0-${i}`)));
    t.same(seq, [0, 1, 2, 3, 4], 'sequential appends get dense offsets');
    const conc = await Promise.all(Array.from({ length: 10 }, (_, i) => prod.append(1, buf(`p1-${i}`))));
    t.same(conc, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'concurrent appends in call order');

    const c = log.consumer('g-rt');
    const l = recorder();
    await c.subscribe(l);
    t.same(l.calls, ['assigned:0,1,2'], 'assigned() ran before subscribe resolved');
    t.same(c.assignment(), [0, 1, 2]);
    const recs = await readN(c, 15);
    t.same(
      show(recs.filter((r) => r.partition === 0)),
      [0, 1, 2, 3, 4].map((i) => `0:${i}:p0-${i}`),
    );
    t.same(
      show(recs.filter((r) => r.partition === 1)),
      Array.from({ length: 10 }, (_, i) => `1:${i}:p1-${i}`),
    );
    t.ok(recs.every((r) => Buffer.isBuffer(r.value) && typeof r.offset === 'number'));

    let start = Date.now();
    t.same(await c.poll(10, 300), [], 'nothing more: times out empty');
    t.ok(Date.now() - start >= 280, 'waited');

    start = Date.now();
    const waiting = c.poll(10, 10_000);
    setTimeout(() => void prod.append(2, buf('wake')), 100);
    t.same(show(await waiting), ['2:0:wake'], 'a waiting poll is woken by a new record');
    t.ok(Date.now() - start < 5000, `woken after ${Date.now() - start} ms`);

    start = Date.now();
    const pending = c.poll(10, 10_000);
    setTimeout(() => void c.close(), 100);
    t.same(await pending, [], 'a pending poll resolves [] on close');
    t.ok(Date.now() - start < 8000);
    t.same(await c.poll(10, 100), [], 'poll after close');

    await t.rejects(prod.append(3, buf('x')), RangeError, 'partition out of range');
    await t.rejects(prod.append(0, Buffer.alloc(0)), RangeError, 'empty record');
    await t.rejects(prod.append(0, Buffer.alloc(log.maxRecordBytes + 1)), RangeError, 'record above the topic limit');
    t.equal(await prod.append(0, Buffer.alloc(log.maxRecordBytes, 7)), 5, 'a record of exactly the limit is accepted');
    t.throws(() => log.consumer(''), RangeError);
  });

  t.test('group commit: concurrent appends share sends, offsets map to the right records', async (t) => {
    const topic = freshTopic(t, ['g-gc']);
    const log = await openLog(t, topic, { partitions: 4 });
    const prod = log.producer();
    const before = log.stats();
    // One burst in one turn: one send.
    const burst = await Promise.all(Array.from({ length: 400 }, (_, i) => prod.append(i % 4, buf(`burst-${i}`))));
    const afterBurst = log.stats();
    t.equal(afterBurst.sends - before.sends, 1, '400 appends issued in one turn take one send');
    for (let p = 0; p < 4; p++) {
      t.same(
        burst.filter((_, i) => i % 4 === p),
        Array.from({ length: 100 }, (_, i) => i),
        `partition ${p}: dense offsets in call order`,
      );
    }
    // 64 appenders in a loop: appends queue while a send is in flight.
    const acked = new Map<string, string>();
    await Promise.all(
      Array.from({ length: 64 }, async (_, w) => {
        for (let i = 0; i < 25; i++) {
          const p = (w + i) % 4;
          const v = `w${w}-${i}-`.padEnd(100 + ((w * 7 + i) % 300), 'x');
          const off = await prod.append(p, buf(v));
          t.notOk(acked.has(`${p}:${off}`), 'offset not handed out twice');
          acked.set(`${p}:${off}`, v);
        }
      }),
    );
    const st = log.stats();
    const sends = st.sends - afterBurst.sends;
    t.equal(st.acknowledged - afterBurst.acknowledged, 1600);
    t.ok(sends < 1600 / 4, `1600 appends by 64 appenders took ${sends} sends (max ${st.maxSendRecords} records in one)`);
    t.equal(st.rejected, 0);

    const c = log.consumer('g-gc');
    await c.subscribe(recorder());
    const recs = await readN(c, 2000);
    t.equal(recs.length, 2000, 'everything is read back');
    let mismatches = 0;
    for (const r of recs) {
      if (r.value.toString().startsWith('burst-')) continue;
      if (acked.get(`${r.partition}:${r.offset}`) !== r.value.toString()) mismatches++;
    }
    t.equal(mismatches, 0, 'each append resolved with the offset its record has in the log');
    for (let p = 0; p < 4; p++) {
      const offs = recs.filter((r) => r.partition === p).map((r) => r.offset);
      t.same(
        offs,
        Array.from({ length: 500 }, (_, i) => i),
        `partition ${p} read in offset order`,
      );
    }
  });

  t.test('producer thread: other threads append through ports; their appends share sends, in order, counted', async (t) => {
    const topic = freshTopic(t, ['g-pt']);
    t.equal((await openLog(t, freshTopic(t), { partitions: 1 })).producer().appendPort?.(), undefined, 'no port without producerThread');
    const log = await openLog(t, topic, { partitions: 4, producerThread: true });
    const durableWrites: number[] = [];
    log.observeDurableWrites((records) => durableWrites.push(records));
    const appenders = [0, 1, 2].map(() => {
      const port = log.producer().appendPort?.();
      if (!port) throw new Error('no append port');
      return new PortAppender(port);
    });
    // Each appender: 150 appends of 1-3 records (partitions p, p+1, ...), 30 in flight at a time.
    const sent: string[] = [];
    await Promise.all(
      appenders.map(async (a, w) => {
        for (let round = 0; round < 5; round++) {
          await Promise.all(
            Array.from({ length: 30 }, (_, j) => {
              const i = round * 30 + j;
              const records: Array<[number, Uint8Array]> = [];
              for (let k = 0; k <= i % 3; k++) {
                const value = `a${w}-${String(i).padStart(3, '0')}-${k}`;
                sent.push(value);
                records.push([(i + k) % 4, new Uint8Array(Buffer.from(value))]);
              }
              return a.append(records);
            }),
          );
        }
      }),
    );
    await waitFor('the thread to report its counters', () => log.stats().acknowledged === sent.length, 5000);
    const st = log.stats();
    t.equal(st.acknowledged, sent.length, 'stats count the thread appends');
    t.equal(st.rejected, 0);
    t.ok(st.sends < 450, `450 appends from 3 ports took ${st.sends} sends (max ${st.maxSendRecords} records in one)`);
    t.equal(
      durableWrites.reduce((a, b) => a + b, 0),
      sent.length,
      'the durable-write observer saw every record',
    );

    const c = log.consumer('g-pt');
    await c.subscribe(recorder());
    const recs = await readN(c, sent.length);
    t.same(recs.map((r) => r.value.toString()).sort(), sent.slice().sort(), 'every acknowledged record is in the log, once');
    for (let p = 0; p < 4; p++) {
      const mine = recs.filter((r) => r.partition === p);
      t.same(
        mine.map((r) => r.offset),
        mine.map((_, i) => i),
        `partition ${p}: dense offsets`,
      );
      for (let w = 0; w < 3; w++) {
        const order = mine.map((r) => r.value.toString()).filter((v) => v.startsWith(`a${w}-`));
        t.same(order, order.slice().sort(), `partition ${p}: appender ${w}'s records in the order it sent them`);
      }
    }

    await t.rejects(appenders[0].append([[9, new Uint8Array(Buffer.from('x'))]]), RangeError, 'an invalid partition is refused as by the producer');
    await t.rejects(appenders[0].append([[0, new Uint8Array(log.maxRecordBytes + 1)]]), RangeError, 'so is a record over the size limit');
    await t.rejects(
      appenders[0].append([
        [0, new Uint8Array(Buffer.from('mixed-valid'))],
        [9, new Uint8Array(Buffer.from('mixed-invalid'))],
      ]),
      RangeError,
      'an append with one invalid record is refused whole',
    );

    // Close under load: every append is answered; the acknowledged ones are in the log.
    const closing = Array.from({ length: 60 }, (_, i) =>
      appenders[i % 3].append([[i % 4, new Uint8Array(Buffer.from(`close-${i}`))]]).then(
        () => `close-${i}`,
        (err: unknown) => {
          t.type(err, ServiceUnavailableError, 'a refused append is a 503');
          return null;
        },
      ),
    );
    await new Promise((r) => setImmediate(r));
    await log.close();
    const answered = await Promise.all(closing);
    const acked = answered.filter((v): v is string => v !== null);
    const reader = await openLog(t, topic);
    const c2 = reader.consumer('g-pt-2');
    await c2.subscribe(recorder());
    const all = await readN(c2, sent.length + acked.length, 3000);
    const inLog = new Set(all.map((r) => r.value.toString()));
    t.notOk(inLog.has('mixed-valid'), 'no record of a refused append was written');
    t.ok(
      acked.every((v) => inLog.has(v)),
      `each of the ${acked.length} appends acknowledged while closing is in the log`,
    );
    await t.rejects(appenders[0].append([[0, new Uint8Array(Buffer.from('late'))]]), ServiceUnavailableError, 'closed log: refused');
  });

  t.test('producer thread: if it dies, the log says so, refuses what was pending and what comes, keeps what was acknowledged', async (t) => {
    const topic = freshTopic(t, ['g-pt-exit']);
    process.env.METERD_TEST_PRODUCER_FAULTS = JSON.stringify({ exitAtAppend: 3 });
    const exits: number[] = [];
    const log = await openLog(t, topic, {
      partitions: 2,
      producerThread: true,
      producerThreadFaults: path.join(__dirname, 'helpers/producer-faults.js'),
      onProducerThreadExit: (code) => exits.push(code),
    });
    const appender = new PortAppender(log.producer().appendPort!()!);
    delete process.env.METERD_TEST_PRODUCER_FAULTS;
    const one = (p: number, v: string): Array<[number, Uint8Array]> => [[p, new Uint8Array(Buffer.from(v))]];
    await appender.append(one(0, 'acked-1'));
    await appender.append(one(1, 'acked-2'));
    await t.rejects(appender.append(one(0, 'lost')), ServiceUnavailableError, 'the append pending when it died is refused with a 503');
    await waitFor('the exit hook', () => exits.length > 0, 5000);
    t.same(exits, [7], 'onProducerThreadExit was told, with its exit code (the server then exits 1)');
    await t.rejects(appender.append(one(0, 'late')), ServiceUnavailableError, 'its port refuses what comes');
    t.equal(log.producer().appendPort?.(), undefined, 'no port is handed out any more');
    t.equal(await log.producer().append(0, buf('main')), 1, "the main thread's producer still appends");
    const c = log.consumer('g-pt-exit');
    await c.subscribe(recorder());
    const recs = await readN(c, 3);
    t.same(recs.map((r) => r.value.toString()).sort(), ['acked-1', 'acked-2', 'main'], 'exactly the acknowledged records are in the topic');
    await log.close();
    t.same(exits, [7], 'closing afterwards is not reported as another exit');
  });

  t.test('producer thread: an append beyond the pending bound is refused whole', async (t) => {
    const topic = freshTopic(t, ['g-pt-bound']);
    const log = await openLog(t, topic, { partitions: 4, producerThread: true, maxPendingRecords: 6 });
    const appender = new PortAppender(log.producer().appendPort!()!);
    const four = (tag: string) => [0, 1, 2, 3].map((p): [number, Uint8Array] => [p, new Uint8Array(Buffer.from(`${tag}-${p}`))]);
    // Two appends of four records in one turn: the first fits the bound of six, the second does not, and none of
    // its records may be queued.
    const results = await Promise.allSettled([appender.append(four('first')), appender.append(four('second'))]);
    t.equal(results[0].status, 'fulfilled', 'the first append is durable');
    t.equal(results[1].status, 'rejected', 'the second is refused');
    t.type((results[1] as PromiseRejectedResult).reason, ServiceUnavailableError, 'with a 503');
    await appender.append(four('third'));
    const c = log.consumer('g-pt-bound');
    await c.subscribe(recorder());
    const recs = await readN(c, 8);
    const expected = ['first', 'third'].flatMap((tag) => [0, 1, 2, 3].map((p) => `${tag}-${p}`));
    t.same(recs.map((r) => r.value.toString()).sort(), expected.sort(), 'no record of the refused append');
    await waitFor('the counters', () => log.stats().overloaded === 4, 5000);
    t.equal(log.stats().overloaded, 4, 'its four records counted as refused');
  });

  t.test('sends are split by the per-partition batch limit, order kept', async (t) => {
    const topic = freshTopic(t, ['g-split']);
    // A topic limit of 64 KiB: 100 records of 10 KB to one partition cannot go in one batch.
    const log = await openLog(t, topic, { partitions: 2, topicMaxMessageBytes: 64 * 1024 });
    t.ok(log.maxRecordBytes < 64 * 1024);
    const prod = log.producer();
    const s0 = log.stats().sends;
    const offs = await Promise.all(Array.from({ length: 100 }, (_, i) => prod.append(i % 2, Buffer.alloc(10_000, i))));
    t.same(
      offs,
      Array.from({ length: 100 }, (_, i) => Math.floor(i / 2)),
    );
    const sends = log.stats().sends - s0;
    t.ok(sends >= 8 && sends <= 20, `${sends} sends for 2 x 500 KB under a 64 KiB batch limit`);
    const c = log.consumer('g-split');
    await c.subscribe(recorder());
    const recs = await readN(c, 100);
    t.equal(recs.length, 100);
    t.ok(
      recs.every((r) => r.value.length === 10_000 && r.value[0] === r.offset * 2 + r.partition),
      'contents match',
    );
  });

  t.test('back-pressure: beyond the pending bound, appends are rejected at once', async (t) => {
    const topic = freshTopic(t);
    const log = await openLog(t, topic, { partitions: 1, maxPendingRecords: 50 });
    const prod = log.producer();
    const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => prod.append(0, buf(`r${i}`))));
    const ok = results.filter((r) => r.status === 'fulfilled');
    const bad = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    t.equal(ok.length, 50);
    t.equal(bad.length, 150);
    t.ok(bad.every((r) => r.reason instanceof ServiceUnavailableError && r.reason.status === 503));
    t.equal(log.stats().overloaded, 150);
    t.equal(await prod.append(0, buf('later')), 50, 'accepted again once the queue drained');
  });

  t.test('commit, committed, seek; a new member resumes at the committed offset', async (t) => {
    const topic = freshTopic(t, ['g-cs']);
    const log = await openLog(t, topic, { partitions: 1 });
    const prod = log.producer();
    await Promise.all(Array.from({ length: 20 }, (_, i) => prod.append(0, buf(`v${i}`))));

    const a = log.consumer('g-cs');
    await a.subscribe(recorder());
    t.equal(await a.committed(0), 0, 'nothing committed yet');
    t.same(
      (await readN(a, 20)).map((r) => r.offset),
      Array.from({ length: 20 }, (_, i) => i),
      'a new group starts at the beginning',
    );
    await a.commit(0, 12);
    t.equal(await a.committed(0), 12);
    await t.rejects(a.commit(0, -1), RangeError);

    a.seek(0, 5);
    t.same(
      (await readN(a, 15)).map((r) => r.offset),
      Array.from({ length: 15 }, (_, i) => 5 + i),
      'seek backwards',
    );
    a.seek(0, 17);
    t.same(show(await readN(a, 3)), ['0:17:v17', '0:18:v18', '0:19:v19'], 'seek forwards');
    // Seek while records are queued but not polled: none of them is returned.
    await Promise.all(Array.from({ length: 10 }, (_, i) => prod.append(0, buf(`w${i}`))));
    await sleep(500);
    a.seek(0, 2);
    const again = await readN(a, 28);
    t.same(
      again.map((r) => r.offset),
      Array.from({ length: 28 }, (_, i) => 2 + i),
      'queued records are dropped by a seek; reading restarts at the seek offset',
    );
    t.throws(() => a.seek(0, 1.5), RangeError);
    t.throws(() => a.seek(3, 0), RangeError);
    await a.close();

    const b = log.consumer('g-cs');
    const lb = recorder();
    await b.subscribe(lb);
    t.same(lb.calls, ['assigned:0']);
    const first = await readN(b, 18);
    t.same(
      first.map((r) => r.offset),
      Array.from({ length: 18 }, (_, i) => 12 + i),
      'no seek in assigned(): reading resumes at the committed offset',
    );
    await b.commit(0, 30);
    await b.close();

    const c = log.consumer('g-cs');
    let committedSeen = -1;
    await c.subscribe(
      recorder(async (parts) => {
        committedSeen = await c.committed(parts[0]);
        c.seek(0, 3);
      }),
    );
    t.equal(committedSeen, 30, 'committed() inside assigned()');
    const fromSeek = await readN(c, 27);
    t.same(
      fromSeek.map((r) => r.offset),
      Array.from({ length: 27 }, (_, i) => 3 + i),
      'a seek in assigned() wins over the committed offset, and no record before it is returned',
    );
  });

  t.test('no record of a partition before its assigned() resolved', async (t) => {
    const topic = freshTopic(t, ['g-slow']);
    const log = await openLog(t, topic, { partitions: 2 });
    const prod = log.producer();
    await Promise.all(Array.from({ length: 10 }, (_, i) => prod.append(i % 2, buf(`s${i}`))));
    const c = log.consumer('g-slow');
    let assignedAt = 0;
    const polled: Array<{ at: number; recs: LogRecord[] }> = [];
    let stop = false;
    const poller = (async () => {
      while (!stop) {
        const recs = await c.poll(100, 200);
        if (recs.length) polled.push({ at: Date.now(), recs });
      }
    })();
    await c.subscribe(
      recorder(async () => {
        await sleep(2000); // kafkajs has fetched meanwhile: the batch waits
        c.seek(0, 3);
        c.seek(1, 1);
        assignedAt = Date.now();
      }),
    );
    await waitFor('records', () => polled.reduce((n, p) => n + p.recs.length, 0) >= 6);
    stop = true;
    await poller;
    t.ok(assignedAt > 0);
    t.ok(
      polled.every((p) => p.at >= assignedAt),
      'every record was returned after assigned() resolved',
    );
    const all = polled.flatMap((p) => p.recs);
    t.same(show(all.filter((r) => r.partition === 0)), ['0:3:s6', '0:4:s8']);
    t.same(show(all.filter((r) => r.partition === 1)), ['1:1:s3', '1:2:s5', '1:3:s7', '1:4:s9'], 'the batch fetched before the seeks was discarded');
  });

  t.test('subscribe rejects when assigned() fails on the first assignment, and the member leaves', async (t) => {
    const topic = freshTopic(t, ['g-fail']);
    const log = await openLog(t, topic, { partitions: 2 });
    await log.producer().append(1, buf('one'));
    const bad = log.consumer('g-fail');
    await t.rejects(
      bad.subscribe({
        assigned: async () => {
          throw new Error('state store down');
        },
        revoked: async () => undefined,
      }),
      /state store down/,
    );
    t.same(await bad.poll(10, 100), [], 'the failed consumer is closed');
    const good = log.consumer('g-fail');
    const l = recorder();
    const start = Date.now();
    await good.subscribe(l);
    t.same(l.calls, ['assigned:0,1'], 'another member gets every partition');
    t.ok(Date.now() - start < 10_000, `without waiting for a session timeout (${Date.now() - start} ms)`);
    t.same(show(await readN(good, 1)), ['1:0:one']);
  });

  t.test('consumer back-pressure: a small queue delivers everything in order', async (t) => {
    const topic = freshTopic(t, ['g-bp']);
    const log = await openLog(t, topic, { partitions: 2, consumerQueueRecords: 7 });
    const prod = log.producer();
    await Promise.all(Array.from({ length: 600 }, (_, i) => prod.append(i % 2, buf(`b${i}`))));
    const c = log.consumer('g-bp');
    await c.subscribe(recorder());
    const got: LogRecord[] = [];
    for (;;) {
      const recs = await c.poll(5, 3000);
      if (!recs.length) break;
      t.ok(recs.length <= 5);
      got.push(...recs);
      if (got.length % 100 === 0) await sleep(20);
    }
    t.equal(got.length, 600);
    for (let p = 0; p < 2; p++) {
      t.same(
        got.filter((r) => r.partition === p).map((r) => r.offset),
        Array.from({ length: 300 }, (_, i) => i),
      );
    }

    // A seek backwards while a fetched batch is held in eachBatch (the queue is full): the held batch is stale.
    c.seek(0, 0);
    c.seek(1, 250);
    const first: LogRecord[] = [];
    while (!first.some((r) => r.partition === 0 && r.offset >= 150)) {
      const recs = await c.poll(5, 3000);
      if (!recs.length) break;
      first.push(...recs);
    }
    // Offsets ~150..157 are queued now and the rest of partition 0 (up to 299) waits in eachBatch.
    c.seek(0, 20);
    const rest: LogRecord[] = [];
    for (;;) {
      const recs = await c.poll(50, 2000);
      if (!recs.length) break;
      rest.push(...recs);
    }
    const firstP0 = first.filter((r) => r.partition === 0).map((r) => r.offset);
    t.same(
      firstP0,
      Array.from({ length: firstP0.length }, (_, i) => i),
      'reading restarts at 0',
    );
    t.same(
      rest.filter((r) => r.partition === 0).map((r) => r.offset),
      Array.from({ length: 280 }, (_, i) => 20 + i),
      'after seeking back to 20 with a later batch held: from 20, in order',
    );
    t.same(
      [...first, ...rest].filter((r) => r.partition === 1).map((r) => r.offset),
      Array.from({ length: 50 }, (_, i) => 250 + i),
      'partition 1 from its seek',
    );
  });

  t.test('two members split the partitions; one takes over when the other leaves', async (t) => {
    const topic = freshTopic(t, ['g-split2']);
    const log = await openLog(t, topic, { partitions: 4 });
    const prod = log.producer();
    const a = log.consumer('g-split2');
    const b = log.consumer('g-split2');
    t.teardown(() => Promise.all([a.close(), b.close()]));
    const la = recorder();
    const lb = recorder();
    const gotA: LogRecord[] = [];
    const gotB: LogRecord[] = [];
    let running = true;
    const pump = async (c: LogConsumer, into: LogRecord[]) => {
      while (running) into.push(...(await c.poll(100, 200)));
    };

    await a.subscribe(la);
    t.same(la.calls, ['assigned:0,1,2,3']);
    const pumpA = pump(a, gotA);
    await b.subscribe(lb);
    const pumpB = pump(b, gotB);
    await waitFor('a to give partitions up', () => la.calls.length >= 2);
    const mineA = a.assignment();
    const mineB = b.assignment();
    t.equal(mineA.length + mineB.length, 4);
    t.same([...mineA, ...mineB].sort(), [0, 1, 2, 3], 'the members split the partitions');
    t.ok(mineA.length > 0 && mineB.length > 0, `a: ${mineA}, b: ${mineB}`);
    t.same(lb.calls, [`assigned:${mineB.join(',')}`]);
    t.same(la.calls, ['assigned:0,1,2,3', `revoked:${mineB.join(',')}`]);

    const offs = await Promise.all(Array.from({ length: 40 }, (_, i) => prod.append(i % 4, buf(`x${i}`))));
    await waitFor('40 records', () => gotA.length + gotB.length >= 40);
    await sleep(300);
    t.equal(gotA.length + gotB.length, 40, 'each record read once');
    t.ok(
      gotA.every((r) => mineA.includes(r.partition)),
      'a reads only its partitions',
    );
    t.ok(
      gotB.every((r) => mineB.includes(r.partition)),
      'b reads only its partitions',
    );
    t.same([...gotA, ...gotB].map((r) => `${r.partition}:${r.offset}`).sort(), offs.map((o, i) => `${i % 4}:${o}`).sort());
    // b commits what it read on one partition before leaving.
    const pb = mineB[0];
    await b.commit(pb, 10);
    await t.rejects(b.commit(mineA[0], 1), /not assigned/, 'a member cannot commit a partition it does not own');

    running = false;
    await Promise.all([pumpA, pumpB]);
    const skippedBefore = log.stats().skipped;
    await b.close();
    await waitFor('a to take over', () => la.calls.length >= 3);
    t.same(la.calls[2], `assigned:${mineB.join(',')}`, 'a is assigned the partitions b had');
    t.same(a.assignment(), [0, 1, 2, 3]);

    await Promise.all(Array.from({ length: 8 }, (_, i) => prod.append(i % 4, buf(`y${i}`))));
    const later: LogRecord[] = [];
    const deadline = Date.now() + 20_000;
    while (later.filter((r) => r.value.toString().startsWith('y')).length < 8 && Date.now() < deadline) {
      later.push(...(await a.poll(100, 500)));
    }
    t.equal(later.filter((r) => r.value.toString().startsWith('y')).length, 8, 'a reads every partition now');
    t.ok(
      later.filter((r) => r.partition === pb).every((r) => r.offset >= 10),
      "b's committed partition resumes at b's committed offset",
    );
    const kept = mineA[0];
    t.notOk(
      later.some((r) => r.partition === kept && r.value.toString().startsWith('x')),
      'a kept partition does not replay records already read before the rebalance',
    );
    t.equal(log.stats().skipped, skippedBefore, 'nor fetches them again (it is re-positioned where it was)');
  });

  if (!FAULTS) {
    t.test('broker outage', (t) => {
      t.plan(0, 'set KAFKA_FAULT_TESTS=1 to stop and restart the broker of deploy/up.sh');
    });
    return;
  }

  const deployEnv = { ...process.env, DEPLOY_SERVICES: 'kafka' };
  const kafkaPid = () => Number(execFileSync('bash', ['-c', 'source deploy/lib.sh && kafka_pid'], { cwd: REPO, env: deployEnv }).toString().trim());
  const brokerUp = () => execFileSync(path.join(REPO, 'deploy/up.sh'), { cwd: REPO, env: deployEnv, stdio: ['ignore', 'ignore', 'ignore'] });
  const brokerDown = () => execFileSync(path.join(REPO, 'deploy/down.sh'), { cwd: REPO, env: deployEnv, stdio: ['ignore', 'ignore', 'ignore'] });

  async function appendEventually(log: KafkaLog, v: string, timeoutMs: number): Promise<number> {
    const prod = log.producer();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await prod.append(0, buf(v));
      } catch (err) {
        if (!(err instanceof ServiceUnavailableError) || Date.now() > deadline) throw err;
        await sleep(500);
      }
    }
  }

  t.test('broker frozen (SIGSTOP): appends fail within the send timeout, then recover', async (t) => {
    const topic = freshTopic(t, ['g-freeze']);
    const log = await openLog(t, topic, { partitions: 1, sendTimeoutMs: 3000 });
    const prod = log.producer();
    t.equal(await prod.append(0, buf('before')), 0);
    const pid = kafkaPid();
    process.kill(pid, 'SIGSTOP');
    let resumed = false;
    const resume = () => {
      if (!resumed) process.kill(pid, 'SIGCONT');
      resumed = true;
    };
    t.teardown(resume);
    const start = Date.now();
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => prod.append(0, buf(`frozen${i}`))));
    const took = Date.now() - start;
    t.ok(
      results.every((r) => r.status === 'rejected' && r.reason instanceof ServiceUnavailableError),
      'every append of the send is rejected with ServiceUnavailableError',
    );
    t.ok(took < 4500, `rejected after ${took} ms (send timeout 3000 ms)`);
    resume();
    const off = await appendEventually(log, 'after', 30_000);
    t.ok(off >= 1, `recovered by itself: offset ${off}`);
    const c = log.consumer('g-freeze');
    await c.subscribe(recorder());
    const recs = await readN(c, 100, 3000);
    t.same(recs[0] && show([recs[0]]), ['0:0:before']);
    t.same(show(recs.filter((r) => r.value.toString() === 'after')), [`0:${off}:after`]);
  });

  t.test('broker restart: appends fail fast while it is down, then recover; consumers too', async (t) => {
    const topic = freshTopic(t, ['g-restart']);
    // The restarted coordinator keeps the member that could not leave while the broker was down until its session
    // times out; the consumer's new member joins after that. 10 s instead of the default 30 s keeps this test short.
    const log = await openLog(t, topic, { partitions: 1, sessionTimeoutMs: 10_000 });
    const prod = log.producer();
    t.equal(await prod.append(0, buf('r0')), 0);
    const c = log.consumer('g-restart');
    await c.subscribe(recorder());
    t.same(show(await readN(c, 1)), ['0:0:r0']);
    await c.commit(0, 1);

    let down = false;
    t.teardown(() => {
      if (down) brokerUp();
    });
    let phase = Date.now();
    brokerDown();
    down = true;
    t.comment(`broker stopped in ${Date.now() - phase} ms`);
    const start = Date.now();
    const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => prod.append(0, buf(`down${i}`))));
    const took = Date.now() - start;
    t.ok(
      results.every((r) => r.status === 'rejected' && r.reason instanceof ServiceUnavailableError),
      'rejected with ServiceUnavailableError',
    );
    t.ok(took < 6500, `rejected after ${took} ms`);
    await t.rejects(prod.append(0, buf('still-down')), ServiceUnavailableError, 'and again');

    phase = Date.now();
    brokerUp();
    down = false;
    t.comment(`broker started in ${Date.now() - phase} ms`);
    phase = Date.now();
    const off = await appendEventually(log, 'r-after', 60_000);
    t.ok(off >= 1, `appends succeed again (offset ${off}) ${Date.now() - phase} ms after the broker answered`);
    phase = Date.now();
    const recs: LogRecord[] = [];
    const deadline = Date.now() + 60_000;
    while (!recs.some((r) => r.value.toString() === 'r-after') && Date.now() < deadline) recs.push(...(await c.poll(100, 1000)));
    t.ok(
      recs.some((r) => r.offset === off && r.value.toString() === 'r-after'),
      `the consumer reads on after the restart (${Date.now() - phase} ms after the append)`,
    );
    t.notOk(
      recs.some((r) => r.offset === 0),
      'without replaying what it had read',
    );
    await c.commit(0, off + 1);
    t.equal(await c.committed(0), off + 1, 'commits work again');
  });
}
