/**
 * Appending through a port (shared/log/append-port.ts): the appends a thread makes in one turn travel as one message,
 * the answers the log's side has ready at once come back as one message per port, and stop() resolves only once every
 * answer is posted. Both ends run on this thread here, over a MessageChannel.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import t from 'tap';
import { PortAppendServer, PortAppender, type PortRecords } from '../shared/log/append-port';
import { ServiceUnavailableError } from '../shared/errors';

/** Counts the messages posted on a port (the port still posts them). */
function countPosts(port: MessagePort): { count: number } {
  const counter = { count: 0 };
  const post = port.postMessage.bind(port);
  port.postMessage = (message: unknown, transfer?: readonly ArrayBuffer[]) => {
    counter.count++;
    post(message, transfer as ArrayBuffer[]);
  };
  return counter;
}

function record(text: string): PortRecords {
  const bytes = Buffer.from(text);
  // A buffer of its own, as the gateway makes them: it is transferred.
  return [[0, new Uint8Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length))]];
}

/** A log side that settles appends when told to, all at once as a group commit does. */
function groupCommitServer() {
  const taken: string[] = [];
  let settle: Array<(ok: boolean) => void> = [];
  const server = new PortAppendServer(
    (records) =>
      new Promise((resolve, reject) => {
        for (const [, bytes] of records) taken.push(Buffer.from(bytes).toString());
        settle.push((ok) => (ok ? resolve(undefined) : reject(new Error('disk full'))));
      }),
  );
  const commit = (ok = true) => {
    const group = settle;
    settle = [];
    for (const s of group) s(ok);
  };
  return { server, taken, commit, pending: () => settle.length };
}

const turn = () => new Promise((resolve) => setImmediate(resolve));

t.test('the appends of one turn travel as one message, and their answers come back as one', async (t) => {
  const { port1, port2 } = new MessageChannel();
  t.teardown(() => port1.close());
  const log = groupCommitServer();
  log.server.connect(port1);
  const sent = countPosts(port2);
  const answered = countPosts(port1);
  const appender = new PortAppender(port2);

  const acks = Array.from({ length: 10 }, (_, i) => appender.append(record(`r${i}`)));
  const settled = Array<boolean>(10).fill(false);
  for (const [i, ack] of acks.entries()) {
    ack.then(() => {
      settled[i] = true;
    });
  }
  while (log.pending() < 10) await turn();
  t.equal(sent.count, 1, 'ten appends in one turn: one message');
  t.same(
    log.taken,
    Array.from({ length: 10 }, (_, i) => `r${i}`),
    'in the order they were made',
  );
  t.equal(answered.count, 0, 'nothing is answered before it is durable');
  await turn();
  t.same(settled, Array(10).fill(false), 'and no append resolves before');

  // The log's writer runs each partition's write in a callback of its own, synchronously: the answers of one
  // partition's group leave before the next callback, not behind another partition's fsync.
  const postedBeforeNextCallback = await new Promise<number>((resolve) => {
    setImmediate(() => log.commit());
    setImmediate(() => resolve(answered.count));
  });
  t.equal(postedBeforeNextCallback, 1, 'one group commit: one answer message, posted before the next callback runs');
  await Promise.all(acks);

  // Appends in separate turns travel separately.
  const first = appender.append(record('a'));
  while (log.pending() < 1) await turn();
  const second = appender.append(record('b'));
  while (log.pending() < 2) await turn();
  t.equal(sent.count, 3, 'two turns, two messages');
  log.commit(false);
  await t.rejects(first, ServiceUnavailableError, 'a failed write is a 503');
  await t.rejects(second, ServiceUnavailableError);
  t.equal(answered.count, 2, 'their failures come back together');
  await appender.close();
});

t.test('stop() resolves once every answer is posted, and what arrives after it is refused', async (t) => {
  const { port1, port2 } = new MessageChannel();
  const log = groupCommitServer();
  log.server.connect(port1);
  const appender = new PortAppender(port2);
  const taken = [appender.append(record('x')), appender.append(record('y'))];
  while (log.pending() < 2) await turn();

  let stopped = false;
  // As the log's thread does: the ports close as soon as stop() resolves.
  const stop = log.server.stop().then(() => {
    stopped = true;
    log.server.closePorts();
  });
  const late = t.rejects(appender.append(record('late')), ServiceUnavailableError, 'an append that arrives after stop() is refused');
  await turn();
  await turn();
  t.notOk(stopped, 'not while appends it took are unanswered');
  log.commit();
  await stop;
  await t.resolves(Promise.all(taken), 'the appends it took were answered before the ports closed, not refused');
  await late;
  t.same(log.taken, ['x', 'y'], 'and never reaches the log');
  await appender.close();
});

t.test('a hook that throws fails its append and does not keep stop() waiting', async (t) => {
  const { port1, port2 } = new MessageChannel();
  let calls = 0;
  const server = new PortAppendServer(
    () => Promise.resolve(),
    () => {
      if (++calls === 1) throw new Error('hook failed');
    },
  );
  server.connect(port1);
  const appender = new PortAppender(port2);
  const first = appender.append(record('1'));
  const second = appender.append(record('2'));
  await t.rejects(first, ServiceUnavailableError, 'the append whose hook threw fails');
  await t.resolves(second, 'the other append of the same message is still taken');
  await server.stop();
  server.closePorts();
  await appender.close();
});

t.test('an append the log can never take is a RangeError', async (t) => {
  const { port1, port2 } = new MessageChannel();
  t.teardown(() => port1.close());
  const server = new PortAppendServer(() => Promise.reject(new RangeError('invalid partition 9')));
  server.connect(port1);
  const appender = new PortAppender(port2);
  const refused = appender.append(record('r'));
  const closing = appender.close();
  await t.rejects(refused, RangeError, 'answered as such');
  await closing;
});

t.test('a turn whose message cannot be posted fails its appends and nothing else', async (t) => {
  const { port1, port2 } = new MessageChannel();
  const log = groupCommitServer();
  log.server.connect(port1);
  const appender = new PortAppender(port2);
  // Two appends of one turn that transfer the same buffer: the turn's message lists it twice, and postMessage throws.
  const shared = record('shared');
  const failed = [appender.append(shared), appender.append(shared)];
  for (const p of failed) await t.rejects(p, { name: 'DataCloneError' }, 'the whole turn fails, with the error postMessage threw');
  const later = appender.append(record('next turn'));
  while (log.pending() < 1) await turn();
  log.commit();
  await t.resolves(later, 'and the next turn is appended as usual');
  t.same(log.taken, ['next turn'], 'nothing of the failed turn reached the log');
  await log.server.stop();
  log.server.closePorts();
  await appender.close();
});
