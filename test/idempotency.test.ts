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

/** Claims shared by several "processes" (Idempotency layers), as a store shared by processes keeps them. */
class SharedClaims {
  readonly owners = new Map<string, string>();
  claims(records: ManualRecords): IdempotencyRecords {
    return {
      get: (account, key) => records.get(account, key),
      put: (rec) => records.put(rec),
      claim: async (account, key, owner) => {
        const k = account + '/' + key;
        if (this.owners.has(k)) return false;
        this.owners.set(k, owner);
        return true;
      },
      release: async (account, key, owner) => {
        const k = account + '/' + key;
        if (this.owners.get(k) === owner) this.owners.delete(k);
      },
    };
  }
}

/** Two processes' Idempotency layers over one store (records and claims), and their executions of one keyed request. */
function twoProcesses(status = 200) {
  const records = new ManualRecords();
  const shared = new SharedClaims();
  let executed = 0;
  let gate: Promise<void> = Promise.resolve();
  const layer = () => {
    const idem = new Idempotency(shared.claims(records));
    return () =>
      idem.runKeyed(principal, keyed, async () => {
        executed++;
        await gate;
        return { status, body: `{"execution":${executed}}` };
      });
  };
  const outcome = (p: Promise<{ status: number; headers?: Record<string, string> }>) =>
    p.then(
      (r) => ({ status: r.status, replayed: r.headers?.['Idempotent-Replayed'] === 'true' }),
      (err: unknown) => ({ status: err instanceof ConflictError ? 409 : -1, replayed: false }),
    );
  return {
    records,
    shared,
    a: layer(),
    b: layer(),
    outcome,
    executions: () => executed,
    hold(): () => void {
      let open!: () => void;
      gate = new Promise<void>((r) => {
        open = r;
      });
      return open;
    },
  };
}

t.test('two processes: a key executing in one is a 409 in the other, then replays there', async (t) => {
  const p = twoProcesses();
  const open = p.hold();
  const first = answering(p.records, p.a());
  while (p.executions() === 0) await tick();
  const second = await answering(p.records, p.outcome(p.b()));
  t.same(second, { status: 409, replayed: false }, 'the other process answers idempotency_key_in_use while the first executes');
  open();
  t.equal((await first).status, 200);
  t.same(await answering(p.records, p.outcome(p.b())), { status: 200, replayed: true }, 'after it, the other process replays');
  t.equal(p.executions(), 1, 'one execution');
  t.equal(p.shared.owners.size, 0, 'the claim was released');
});

t.test('two processes: a request that looked its key up before the other finished does not execute again', async (t) => {
  const p = twoProcesses();
  // The second process looks the key up (the store is empty at that moment) and waits for the answer...
  const second = p.outcome(p.b());
  await tick();
  const early = p.records.lookups.shift();
  t.ok(early, 'the second looked its key up');
  // ...while the first process executes, saves its result and releases its claim.
  t.equal((await answering(p.records, p.a())).status, 200);
  t.equal(p.shared.owners.size, 0);
  early!.answer();
  // The second now claims the key (free again) and must find the saved result rather than execute.
  t.same(await answering(p.records, second), { status: 200, replayed: true });
  t.equal(p.executions(), 1, 'one execution');
});

t.test('two processes: a result that is not saved (a 400) frees the key for the other at once', async (t) => {
  const p = twoProcesses(400);
  t.equal((await answering(p.records, p.a())).status, 400);
  t.same(await answering(p.records, p.outcome(p.b())), { status: 400, replayed: false }, 'the other process executes it again');
  t.equal(p.executions(), 2);
  t.equal(p.shared.owners.size, 0);
});
