/**
 * The Idempotency-Key layer on its own (shared/http/idempotency.ts), with a record store whose lookups the test
 * answers by hand, to place requests with one key at the moments where they could both execute.
 */
import t from 'tap';
import { ConflictError } from '../shared/errors';
import type { Principal } from '../shared/http/auth';
import { Idempotency, type IdempotencyRecords, type KeyedRequest } from '../shared/http/idempotency';
import type { IdempotencyRecord } from '../shared/state-store';

function deferred<T>() {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/** Records whose every get() waits until the test answers it (the answer is what the store held when it was read). */
class ManualRecords implements IdempotencyRecords {
  readonly saved = new Map<string, IdempotencyRecord>();
  readonly lookups: Array<{ key: string; answer(): void }> = [];
  get(account: string, key: string): Promise<IdempotencyRecord | null> {
    const seen = this.saved.get(account + '/' + key) ?? null;
    const d = deferred<IdempotencyRecord | null>();
    this.lookups.push({ key, answer: () => d.resolve(seen) });
    return d.promise;
  }
  put(rec: IdempotencyRecord): IdempotencyRecord {
    this.saved.set(rec.account + '/' + rec.key, rec);
    return rec;
  }
}

const principal = { account: 'acct_1', livemode: false } as Principal;
const keyed: KeyedRequest = { key: 'k1', requestLine: 'POST /v1/things', requestHash: 'h' };
const tick = () => new Promise((r) => setImmediate(r));

/** Answers every lookup, as it is made, until `p` settles. */
async function answering<T>(records: ManualRecords, p: Promise<T>): Promise<T> {
  let done = false;
  const settled = p.finally(() => {
    done = true;
  });
  while (!done) {
    for (const l of records.lookups.splice(0)) l.answer();
    await tick();
  }
  return settled;
}

/** An Idempotency layer over hand-answered records, and requests with one key whose executions it counts. */
function keyedRequests() {
  const records = new ManualRecords();
  const idem = new Idempotency(records);
  let executed = 0;
  const run = () =>
    idem.runKeyed(principal, keyed, async () => {
      executed++;
      return { status: 200, body: '{"id":"thing_1"}' };
    });
  return { records, run, executions: () => executed };
}

t.test('a request whose lookup ran while another with its key finished does not execute again', async (t) => {
  const { records, run, executions } = keyedRequests();
  const first = run();
  await tick();
  // The second arrives while the first is being looked up.
  const second = run().then(
    (r) => ({ status: r.status, replayed: r.headers?.['Idempotent-Replayed'] === 'true' }),
    (err: unknown) => ({ status: err instanceof ConflictError ? 409 : -1, replayed: false }),
  );
  await tick();
  // The first request's lookup is answered and it finishes; only then is the second's (if it made one) answered, with
  // the store as it was when that lookup was read: empty.
  records.lookups.shift()?.answer();
  t.equal((await first).status, 200, 'the first executes');
  const answer = await answering(records, second);
  t.equal(executions(), 1, 'one execution');
  t.ok(answer.status === 409 || answer.replayed, `the second is a 409 or a replay (got ${JSON.stringify(answer)})`);

  // Once the first has finished, the key replays its saved answer.
  const replayed = await answering(records, run());
  t.equal(replayed.headers?.['Idempotent-Replayed'], 'true', 'a later request replays');
  t.equal(executions(), 1);
});

t.test('requests with a key whose result is saved replay it, all at once', async (t) => {
  const { records, run, executions } = keyedRequests();
  await answering(records, run());
  const many = Array.from({ length: 5 }, run);
  await tick();
  const answers = await answering(records, Promise.all(many));
  t.same(
    answers.map((a) => a.headers?.['Idempotent-Replayed']),
    ['true', 'true', 'true', 'true', 'true'],
    'five concurrent retries replay, none gets a 409',
  );
  t.equal(executions(), 1);
});
