import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { execFileSync, spawn } from 'node:child_process';
import { EmbeddedLog, type EmbeddedLogOptions } from '../shared/log/embedded-log';
import { ServiceUnavailableError } from '../shared/errors';
import type { LogConsumer, LogRecord } from '../shared/log';
import { PortAppender } from '../shared/log/append-port';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { checkCrashPayload, makeCrashPayload } = require('./helpers/log-payload.js') as {
  checkCrashPayload(b: Buffer): number;
  makeCrashPayload(seq: number): Buffer;
};

const REPO = path.resolve(__dirname, '..');

function tmpDir(tt: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'embedded-log-test-'));
  tt.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function openLog(tt: { teardown(fn: () => unknown): void }, dir: string, opts?: EmbeddedLogOptions): Promise<EmbeddedLog> {
  const log = await EmbeddedLog.open(dir, opts);
  tt.teardown(() => log.close());
  return log;
}

function buf(s: string): Buffer {
  return Buffer.from(s);
}

/** Polls until `n` records have been read (or a poll times out). */
async function readN(c: LogConsumer, n: number, maxPerPoll = 1000, waitMs = 500): Promise<LogRecord[]> {
  const out: LogRecord[] = [];
  while (out.length < n) {
    const recs = await c.poll(Math.min(maxPerPoll, n - out.length), waitMs);
    if (recs.length === 0) break;
    out.push(...recs);
  }
  return out;
}

function byPartition(recs: LogRecord[], p: number): LogRecord[] {
  return recs.filter((r) => r.partition === p);
}

function segFiles(dir: string, p = 0): string[] {
  return fs
    .readdirSync(path.join(dir, `p${p}`))
    .filter((n) => n.endsWith('.seg'))
    .sort();
}

t.test('append/poll round trip: dense offsets, order, independent partitions', async (t) => {
  const dir = tmpDir(t);
  const log = await openLog(t, dir, { partitions: 3 });
  t.equal(log.partitions, 3);
  const prod = log.producer();
  t.equal(prod.partitions, 3);
  const acks: Array<Promise<number>> = [];
  for (let i = 0; i < 30; i++) acks.push(prod.append(i % 2, buf(`r${i}`))); // partition 2 stays empty
  const offsets = await Promise.all(acks);
  t.same(
    offsets,
    Array.from({ length: 30 }, (_, i) => Math.floor(i / 2)),
    'offsets are dense per partition, in append order',
  );
  t.same(fs.readdirSync(path.join(dir, 'p0')).sort(), ['00000000000000000000.seg']);

  const c = log.consumer('g');
  t.same(c.assignment(), [0, 1, 2]);
  t.equal(await c.committed(0), 0);
  const recs = await readN(c, 30);
  t.equal(recs.length, 30);
  for (const p of [0, 1]) {
    const mine = byPartition(recs, p);
    t.same(
      mine.map((r) => r.offset),
      Array.from({ length: 15 }, (_, i) => i),
      `partition ${p} offsets`,
    );
    t.same(
      mine.map((r) => r.value.toString()),
      Array.from({ length: 15 }, (_, i) => `r${i * 2 + p}`),
      `partition ${p} values`,
    );
  }
  t.same(byPartition(recs, 2), []);
  t.same(await c.poll(10, 20), [], 'nothing more');

  // Appending to one partition does not disturb the other ones.
  t.equal(await prod.append(2, buf('x')), 0);
  t.equal(await prod.append(0, buf('y')), 15);
  const more = await readN(c, 2);
  t.same(more.map((r) => [r.partition, r.offset, r.value.toString()]).sort(), [
    [0, 15, 'y'],
    [2, 0, 'x'],
  ]);

  await t.rejects(prod.append(3, buf('x')), RangeError, 'unknown partition');
  await t.rejects(prod.append(0, Buffer.alloc(0)), RangeError, 'empty record');
});

t.test('group commit: many concurrent appends share few fsyncs', async (t) => {
  const dir = tmpDir(t);
  const log = await openLog(t, dir);
  // Count the real datasync calls (not just the log's own counter).
  const probe = await fs.promises.open(path.join(dir, 'probe'), 'w');
  const proto = Object.getPrototypeOf(probe) as { datasync(): Promise<void> };
  await probe.close();
  const realDatasync = proto.datasync;
  let datasyncs = 0;
  proto.datasync = function (this: unknown) {
    datasyncs++;
    return realDatasync.call(this);
  };
  t.teardown(() => {
    proto.datasync = realDatasync;
  });

  const prod = log.producer();
  const before = log.stats().fsyncs;
  const payload = Buffer.alloc(1000, 7);
  const offsets = await Promise.all(Array.from({ length: 1000 }, () => prod.append(0, payload)));
  t.same(
    offsets,
    Array.from({ length: 1000 }, (_, i) => i),
  );
  const fsyncs = log.stats().fsyncs - before;
  t.ok(datasyncs >= 1 && datasyncs <= 20, `1000 appends took ${datasyncs} datasync calls`);
  t.equal(fsyncs, datasyncs, 'stats().fsyncs counts them');
  t.equal(log.stats().acknowledged, 1000);

  // Appends that arrive while a group is being synced form the next group (not 1 fsync each).
  const before2 = log.stats().fsyncs;
  const wave: Array<Promise<number>> = [];
  for (let i = 0; i < 10; i++) {
    for (let j = 0; j < 100; j++) wave.push(prod.append(0, payload));
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(wave);
  t.ok(log.stats().fsyncs - before2 <= 20, `10 waves took ${log.stats().fsyncs - before2} fsyncs`);
});

t.test('reopen reads everything back', async (t) => {
  const dir = tmpDir(t);
  let log = await EmbeddedLog.open(dir, { partitions: 2 });
  const prod = log.producer();
  await Promise.all(Array.from({ length: 100 }, (_, i) => prod.append(i % 2, buf(`v${i}`))));
  await log.close();
  await t.rejects(prod.append(0, buf('late')), ServiceUnavailableError, 'append after close');

  log = await openLog(t, dir); // partition count taken from disk
  t.equal(log.partitions, 2);
  t.equal(log.endOffset(0), 50);
  t.equal(log.endOffset(1), 50);
  const recs = await readN(log.consumer('g'), 100);
  t.equal(recs.length, 100);
  for (const p of [0, 1]) {
    t.same(
      byPartition(recs, p).map((r) => r.value.toString()),
      Array.from({ length: 50 }, (_, i) => `v${i * 2 + p}`),
    );
  }
  t.equal(await log.producer().append(1, buf('next')), 50, 'appends continue after the last offset');
});

t.test('open guards', async (t) => {
  const dir = tmpDir(t);
  const log = await EmbeddedLog.open(dir, { partitions: 2 });
  await t.rejects(EmbeddedLog.open(dir, { partitions: 2 }), /already open/);
  await log.close();
  await t.rejects(EmbeddedLog.open(dir, { partitions: 3 }), /2 partitions on disk/);
  const again = await EmbeddedLog.open(dir);
  t.equal(again.partitions, 2);
  await again.close();
});

t.test('torn or corrupt tail is truncated on open', async (t) => {
  const frame = (payload: Buffer, crc?: number): Buffer => {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(payload.length, 0);
    h.writeUInt32LE(crc ?? zlib.crc32(payload), 4);
    return Buffer.concat([h, payload]);
  };
  const tails: Record<string, Buffer> = {
    'partial header': Buffer.from([5, 0]),
    'truncated frame': frame(Buffer.alloc(100, 1)).subarray(0, 60),
    'bad checksum': Buffer.concat([frame(Buffer.from('good?'), 12345), frame(Buffer.from('after'))]),
    'zero fill': Buffer.alloc(4096),
    'absurd length': Buffer.from([0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6]),
  };
  for (const [name, tail] of Object.entries(tails)) {
    await t.test(name, async (t) => {
      const dir = tmpDir(t);
      let log = await EmbeddedLog.open(dir, { segmentBytes: 200 });
      const prod = log.producer();
      for (let i = 0; i < 10; i++) await prod.append(0, buf(`record-${i}-`.padEnd(40, '.')));
      await log.close();
      const files = segFiles(dir);
      t.ok(files.length > 1, 'several segments');
      const last = path.join(dir, 'p0', files[files.length - 1]);
      const goodSize = fs.statSync(last).size;
      fs.appendFileSync(last, tail);

      log = await openLog(t, dir, { segmentBytes: 200 });
      t.equal(fs.statSync(last).size, goodSize, 'tail truncated');
      t.equal(log.endOffset(0), 10);
      t.equal(await log.producer().append(0, buf('new')), 10, 'next offset is right');
      const recs = await readN(log.consumer('g'), 11);
      t.same(
        recs.map((r) => r.offset),
        Array.from({ length: 11 }, (_, i) => i),
      );
      t.same(
        recs.map((r) => r.value.toString()),
        [...Array.from({ length: 10 }, (_, i) => `record-${i}-`.padEnd(40, '.')), 'new'],
      );
    });
  }
});

t.test('a torn tail in a fresh single segment (crash before any complete record)', async (t) => {
  const dir = tmpDir(t);
  let log = await EmbeddedLog.open(dir);
  await log.close();
  fs.appendFileSync(path.join(dir, 'p0', '00000000000000000000.seg'), Buffer.from([9, 0, 0, 0, 1, 2]));
  log = await openLog(t, dir);
  t.equal(log.endOffset(0), 0);
  t.equal(await log.producer().append(0, buf('first')), 0);
});

t.test('failed write or fsync rejects the group and the log recovers', async (t) => {
  const dir = tmpDir(t);
  let failSync = false;
  let failWrite = false;
  let onWrite: (() => void) | null = null;
  const log = await openLog(t, dir, {
    faults: {
      beforeWrite() {
        const f = onWrite;
        onWrite = null;
        f?.();
        if (failWrite) {
          failWrite = false;
          throw new Error('EIO (injected)');
        }
      },
      beforeSync() {
        if (failSync) {
          failSync = false;
          throw new Error('EIO (injected fsync)');
        }
      },
    },
  });
  const prod = log.producer();
  const c = log.consumer('g');
  t.same(await Promise.all([0, 1, 2].map((i) => prod.append(0, buf(`ok${i}`)))), [0, 1, 2]);
  const seg = path.join(dir, 'p0', '00000000000000000000.seg');
  const durableSize = fs.statSync(seg).size;

  // The fsync fails after the bytes reached the file: the whole group is rejected...
  failSync = true;
  let behind: Array<Promise<number>> = [];
  onWrite = () => {
    // ...and appends queued behind the failing group get its offsets (dense, nothing readable in between).
    behind = [prod.append(0, buf('behind0')), prod.append(0, buf('behind1'))];
  };
  const failed = [prod.append(0, buf('lost0')), prod.append(0, buf('lost1')), prod.append(0, buf('lost2'))];
  for (const f of failed) await t.rejects(f, ServiceUnavailableError);
  t.same(await Promise.all(behind), [3, 4], 'records queued behind the failed group take its offsets');
  t.equal(log.stats().rejected, 3);

  // A failing write.
  failWrite = true;
  await t.rejects(prod.append(0, buf('lost3')), ServiceUnavailableError);
  t.equal(await prod.append(0, buf('ok5')), 5);

  const recs = await readN(c, 100);
  t.same(
    recs.map((r) => `${r.offset}:${r.value}`),
    ['0:ok0', '1:ok1', '2:ok2', '3:behind0', '4:behind1', '5:ok5'],
    'rejected records are never readable',
  );
  t.ok(fs.statSync(seg).size > durableSize);
  await log.close();

  const reopened = await EmbeddedLog.open(dir);
  t.teardown(() => reopened.close());
  const again = await readN(reopened.consumer('g'), 100);
  t.same(
    again.map((r) => `${r.offset}:${r.value}`),
    ['0:ok0', '1:ok1', '2:ok2', '3:behind0', '4:behind1', '5:ok5'],
    'and not present after reopen',
  );
});

t.test('poll returns only records whose fsync completed', async (t) => {
  const dir = tmpDir(t);
  let release: (() => void) | null = null;
  let hold = false;
  const log = await openLog(t, dir, {
    faults: {
      beforeSync: () => (hold ? new Promise<void>((r) => (release = r)) : undefined),
    },
  });
  const prod = log.producer();
  const c = log.consumer('g');
  await prod.append(0, buf('a'));
  hold = true;
  let acked = false;
  const pending = prod.append(0, buf('b')).then((o) => {
    acked = true;
    return o;
  });
  while (!release) await new Promise((r) => setTimeout(r, 5));
  const seg = path.join(dir, 'p0', '00000000000000000000.seg');
  t.equal(fs.statSync(seg).size, 2 * 9, 'the bytes of b are in the file');
  const first = await c.poll(10, 100);
  t.same(
    first.map((r) => r.value.toString()),
    ['a'],
    'b is written but not synced: not readable',
  );
  t.same(await c.poll(10, 50), []);
  t.notOk(acked, 'not acknowledged before fsync');
  hold = false;
  const waiting = c.poll(10, 5000);
  (release as unknown as () => void)();
  t.equal(await pending, 1);
  t.same(
    (await waiting).map((r) => r.value.toString()),
    ['b'],
  );
});

t.test('poll waits for appends, times out empty, and close releases it', async (t) => {
  const dir = tmpDir(t);
  const log = await EmbeddedLog.open(dir, { partitions: 2 });
  const c = log.consumer('g');

  let start = Date.now();
  t.same(await c.poll(10, 200), [], 'empty log');
  const waited = Date.now() - start;
  t.ok(waited >= 190 && waited < 1500, `timed out after ${waited} ms`);

  start = Date.now();
  const polled = c.poll(10, 5000);
  setTimeout(() => void log.producer().append(1, buf('wake')), 50);
  const recs = await polled;
  t.same(
    recs.map((r) => [r.partition, r.offset, r.value.toString()]),
    [[1, 0, 'wake']],
  );
  t.ok(Date.now() - start < 2000, 'woken by the append, not the timeout');

  start = Date.now();
  const pending = c.poll(10, 5000);
  setTimeout(() => void log.close(), 50);
  t.same(await pending, [], 'pending poll resolves [] on close');
  t.ok(Date.now() - start < 2000);
  t.same(await c.poll(10, 1000), [], 'poll after close');
});

t.test('seek positions the cursor; reads straddle small read chunks', async (t) => {
  const dir = tmpDir(t);
  // Read chunks smaller than a frame and segments of a few records each.
  const log = await openLog(t, dir, { segmentBytes: 300, readChunkBytes: 16 });
  const prod = log.producer();
  const values = Array.from({ length: 60 }, (_, i) => `value-${i}`.padEnd(20 + (i % 7) * 5, '#'));
  const acks: number[] = [];
  for (const v of values) acks.push(await prod.append(0, buf(v)));
  t.same(
    acks,
    values.map((_, i) => i),
  );
  t.ok(segFiles(dir).length >= 5, `${segFiles(dir).length} segments`);

  const c = log.consumer('g');
  const all = await readN(c, 60, 7);
  t.same(
    all.map((r) => r.value.toString()),
    values,
    'reads follow rotation',
  );
  for (const target of [0, 1, 17, 33, 59]) {
    c.seek(0, target);
    const recs = await readN(c, 60 - target, 1000, 50);
    t.same(
      recs.map((r) => r.offset),
      Array.from({ length: 60 - target }, (_, i) => target + i),
      `seek ${target}`,
    );
  }
  // Seek past the end: the record arrives when it is appended.
  c.seek(0, 61);
  t.same(await c.poll(10, 30), []);
  await prod.append(0, buf('sixty'));
  t.same(await c.poll(10, 30), []);
  await prod.append(0, buf('sixty-one'));
  t.same(
    (await c.poll(10, 500)).map((r) => `${r.offset}:${r.value}`),
    ['61:sixty-one'],
  );
  t.throws(() => c.seek(0, -1), RangeError);
});

t.test('rotation and reclaim: committed segments are deleted, reads continue, offsets survive reopen', async (t) => {
  const dir = tmpDir(t);
  const opts = { segmentBytes: 1024 };
  let log = await EmbeddedLog.open(dir, opts);
  const prod = log.producer();
  const value = (i: number) => buf(`rec-${i}-`.padEnd(100, '='));
  // Mixed: some sequential (small groups), some concurrent (big groups).
  for (let i = 0; i < 50; i++) await prod.append(0, value(i));
  await Promise.all(Array.from({ length: 150 }, (_, i) => prod.append(0, value(50 + i))));
  const filesBefore = segFiles(dir);
  t.ok(filesBefore.length >= 15, `${filesBefore.length} segments`);
  for (const f of filesBefore) {
    t.ok(fs.statSync(path.join(dir, 'p0', f)).size <= 1024, `${f} within segmentBytes`);
  }
  const bases = log.segmentBases(0);
  t.same(
    bases,
    filesBefore.map((f) => Number(f.slice(0, 20))),
  );

  const a = log.consumer('a');
  const b = log.consumer('b');
  const first = await readN(a, 150);
  t.equal(first.length, 150);

  await b.commit(0, 20); // the slower group holds reclamation back
  await a.commit(0, 150);
  t.equal(await a.committed(0), 150);
  t.equal(await b.committed(0), 20);
  const floorB = log.startOffset(0);
  t.ok(floorB <= 20, `b's records are retained (oldest ${floorB})`);
  t.equal(log.segmentBases(0)[1] > 20, true);

  await b.commit(0, 180);
  const start = log.startOffset(0);
  t.ok(start <= 150 && start > 100, `oldest retained ${start}`);
  const filesAfter = segFiles(dir);
  t.same(
    filesAfter,
    filesBefore.filter((f) => Number(f.slice(0, 20)) >= start),
    'segments below the lowest committed offset are deleted',
  );
  t.ok(log.stats().segmentsDeleted > 0);

  // Reading after the commit continues where it was.
  const rest = await readN(a, 50);
  t.same(
    rest.map((r) => r.offset),
    Array.from({ length: 50 }, (_, i) => 150 + i),
  );
  t.ok(rest.every((r) => r.value.equals(value(r.offset))));

  // A new group (no commit) starting below the oldest retained segment starts at the oldest retained record.
  const fresh = log.consumer('fresh');
  const got = await readN(fresh, 1000);
  t.equal(got[0].offset, start);
  t.equal(got[got.length - 1].offset, 199);

  // The active segment is never deleted, even when everything is committed.
  await a.commit(0, 200);
  await b.commit(0, 200);
  t.ok(segFiles(dir).length >= 1);
  t.equal(log.startOffset(0), log.segmentBases(0)[0]);
  await t.rejects(a.commit(0, 201), RangeError, 'cannot commit past the end');
  await log.close();

  log = await openLog(t, dir, opts);
  const a2 = log.consumer('a');
  t.equal(await a2.committed(0), 200, 'committed offset survives reopen');
  t.equal(await log.producer().append(0, value(200)), 200);
  // A consumer resumes at its committed offset by default.
  const resumed = await readN(a2, 10);
  t.same(
    resumed.map((r) => r.offset),
    [200],
  );
  a2.seek(0, 0);
  t.equal((await a2.poll(1, 100))[0].offset, log.startOffset(0), 'seek below the oldest retained offset');
  t.notOk(
    fs.readdirSync(path.join(dir, 'p0')).some((n) => n.includes('.tmp')),
    'no temp files left',
  );
});

t.test('concurrent producer and consumer with commits reclaiming under the reader', async (t) => {
  const dir = tmpDir(t);
  const partitions = 3;
  const log = await openLog(t, dir, { partitions, segmentBytes: 2048, readChunkBytes: 700 });
  const prod = log.producer();
  const total = 3000;
  const acked: Array<Map<number, string>> = Array.from({ length: partitions }, () => new Map());
  const producing = (async () => {
    const inFlight: Array<Promise<void>> = [];
    for (let i = 0; i < total; i++) {
      const p = (i * 7) % partitions;
      const v = `m${i}-`.padEnd(20 + (i % 50), 'x');
      inFlight.push(prod.append(p, buf(v)).then((o) => void acked[p].set(o, v)));
      if (i % 97 === 0) await new Promise((r) => setTimeout(r, 1));
    }
    await Promise.all(inFlight);
  })();
  const c = log.consumer('agg');
  const other = log.consumer('slow');
  const seen: Array<Array<[number, string]>> = Array.from({ length: partitions }, () => []);
  let count = 0;
  while (count < total) {
    const recs = await c.poll(50, 2000);
    if (recs.length === 0) break;
    const next = new Map<number, number>();
    for (const r of recs) {
      seen[r.partition].push([r.offset, r.value.toString()]);
      next.set(r.partition, r.offset + 1);
      count++;
    }
    // Commit as we go; the other group lags, so reclaim runs against both while records are being read.
    await Promise.all([...next].map(([p, o]) => c.commit(p, o)));
    await Promise.all([...next].map(([p, o]) => other.commit(p, Math.max(0, o - 40))));
  }
  await producing;
  t.equal(count, total, 'every record read once');
  for (let p = 0; p < partitions; p++) {
    const mine = seen[p];
    t.same(
      mine.map(([o]) => o),
      Array.from({ length: mine.length }, (_, i) => i),
      `partition ${p}: in order, no gaps or duplicates`,
    );
    t.ok(
      mine.every(([o, v]) => acked[p].get(o) === v),
      `partition ${p}: contents match the acknowledged appends`,
    );
  }
  t.ok(log.stats().segmentsDeleted > 10, `${log.stats().segmentsDeleted} segments reclaimed while reading`);
});

function compiledModule(t: { teardown(fn: () => void): void }): string {
  // The driver is a folder of modules (shared/log/embedded-log/); it needs shared/errors besides them.
  const driver = 'shared/log/embedded-log';
  const modules = [
    'shared/errors',
    'shared/log/append-port',
    ...fs
      .readdirSync(path.join(REPO, driver))
      .filter((f) => f.endsWith('.ts'))
      .map((f) => `${driver}/${f.slice(0, -3)}`),
  ];
  const fresh = (rel: string) => {
    const js = path.join(REPO, 'dist', `${rel}.js`);
    return fs.existsSync(js) && fs.statSync(js).mtimeMs >= fs.statSync(path.join(REPO, `${rel}.ts`)).mtimeMs;
  };
  if (modules.every(fresh)) return path.join(REPO, 'dist', driver, 'index.js');
  // dist is missing or stale (e.g. running this file without `npm test`): transpile just the modules it needs.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const ts = require('typescript') as typeof import('typescript');
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'embedded-log-build-'));
  t.teardown(() => fs.rmSync(out, { recursive: true, force: true }));
  for (const rel of modules) {
    const js = ts.transpileModule(fs.readFileSync(path.join(REPO, `${rel}.ts`), 'utf8'), {
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    }).outputText;
    fs.mkdirSync(path.dirname(path.join(out, rel)), { recursive: true });
    fs.writeFileSync(path.join(out, `${rel}.js`), js);
  }
  return path.join(out, driver, 'index.js');
}

for (const mode of ['main', 'thread', 'port'] as const) {
  t.test(`crash: SIGKILL mid-stream loses no acknowledged record (writers: ${mode})`, async (t) => {
    const modulePath = compiledModule(t);
    const partitions = 2;
    const segmentBytes = 256 * 1024;
    // Two rounds on the same directory: the second crash happens on top of a recovered log.
    const dir = tmpDir(t);
    for (let round = 0; round < 2; round++) {
      const child = spawn(
        process.execPath,
        [path.join(__dirname, 'helpers/log-crash-writer.js'), dir, String(partitions), String(segmentBytes), modulePath, mode],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      let stdout = '';
      let stderr = '';
      let lines = 0;
      const target = 3000 + Math.floor(Math.random() * 2000);
      const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, sig) => resolve(sig)));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString();
        lines += d.toString().split('\n').length - 1;
        if (lines >= target) child.kill('SIGKILL');
      });
      const killer = setTimeout(() => child.kill('SIGKILL'), 8000);
      const signal = await exited;
      clearTimeout(killer);
      t.equal(signal, 'SIGKILL', `child was killed mid-stream ${stderr}`);

      const acked = stdout
        .split('\n')
        .slice(1, -1) // 'ready' and the possibly partial last line
        .map((l) => l.split(' ').map(Number) as [number, number, number]);
      t.ok(acked.length >= 100, `${acked.length} acknowledged appends before the kill (round ${round})`);

      const log = await EmbeddedLog.open(dir, { segmentBytes });
      t.equal(log.partitions, partitions);
      const c = log.consumer('verify');
      for (let p = 0; p < partitions; p++) c.seek(p, 0);
      const all: LogRecord[] = [];
      for (;;) {
        const recs = await c.poll(5000, 0);
        if (recs.length === 0) break;
        for (const r of recs) all.push(r);
      }
      const found = new Map<string, number>();
      const seqsOf = Array.from({ length: partitions }, () => new Set<number>());
      for (let p = 0; p < partitions; p++) {
        const mine = byPartition(all, p);
        let bad = 0;
        mine.forEach((r, i) => {
          if (r.offset !== i) bad++;
          const seq = checkCrashPayload(r.value);
          if (seq < 0) bad++;
          found.set(`${p}:${r.offset}`, seq);
          seqsOf[p].add(seq);
        });
        t.equal(bad, 0, `partition ${p}: dense offsets and intact payloads`);
        t.equal(mine.length, log.endOffset(p), `partition ${p}: read up to the recovered end ${log.endOffset(p)}`);
      }
      let missing = 0;
      // An append through a port does not learn its offset (-1): its record must be in its partition.
      for (const [p, offset, seq] of acked) if (offset < 0 ? !seqsOf[p].has(seq) : found.get(`${p}:${offset}`) !== seq) missing++;
      t.equal(missing, 0, `every acknowledged record is present with its content (round ${round})`);

      // The log takes appends at the recovered end.
      const end0 = log.endOffset(0);
      t.equal(await log.producer().append(0, makeCrashPayload(1e9 + round)), end0);
      await log.close();
    }
  });
}

t.test('writer thread: appends from this thread and through ports, rotation, readers, stats, close', async (t) => {
  const dir = tmpDir(t);
  const segmentBytes = 4096;
  const log = await EmbeddedLog.open(dir, { partitions: 2, segmentBytes, writerThread: true });
  const observed: number[] = [];
  log.observeDurableWrites((records) => observed.push(records));
  const prod = log.producer();
  const port = prod.appendPort?.();
  t.ok(port, 'the producer hands out an append port');
  const appender = new PortAppender(port!);
  const own = (s: string) => new Uint8Array(Buffer.from(s));

  // 200 records of ~100 bytes per partition: several segments each.
  const mainAcks: Array<Promise<number>> = [];
  const portAcks: Array<Promise<void>> = [];
  for (let i = 0; i < 100; i++) {
    mainAcks.push(prod.append(i % 2, buf(`m${i}`.padEnd(100, '.'))));
    portAcks.push(appender.append([[i % 2, own(`p${i}`.padEnd(100, '.'))]]));
  }
  const offsets = await Promise.all(mainAcks);
  await Promise.all(portAcks);
  for (const p of [0, 1]) {
    const mine = offsets.filter((_, i) => i % 2 === p);
    t.same(
      [...mine].sort((a, b) => a - b),
      [...new Set(mine)].sort((a, b) => a - b),
      `partition ${p}: distinct offsets`,
    );
  }
  // Two records of one port append, in two partitions, acknowledged together.
  await appender.append([
    [0, own('both-0')],
    [1, own('both-1')],
  ]);
  // A port's answer and the main thread's mirror update travel on different ports: flush() waits for the latter.
  await log.flush();
  t.equal(log.endOffset(0), 101, 'the mirror knows the durable end of partition 0');
  t.equal(log.endOffset(1), 101, 'and of partition 1');
  t.ok(segFiles(dir, 0).length > 2, `partition 0 rotated (${segFiles(dir, 0).length} segments)`);
  t.equal(
    observed.reduce((a, b) => a + b, 0),
    202,
    'every durable write was observed',
  );
  const stats = log.stats();
  t.equal(stats.acknowledged, 202, 'the writer thread counts what it acknowledged');
  t.ok(stats.fsyncs >= 1 && stats.fsyncs <= 202, `${stats.fsyncs} datasyncs`);

  const c = log.consumer('g');
  const recs = await readN(c, 202);
  for (const p of [0, 1]) {
    const mine = byPartition(recs, p);
    t.same(
      mine.map((r) => r.offset),
      Array.from({ length: 101 }, (_, i) => i),
      `partition ${p}: dense offsets across segments`,
    );
    const values = mine.map((r) => r.value.toString().replace(/\.+$/, ''));
    t.equal(values.filter((v) => v.startsWith('m')).length, 50, `partition ${p}: every append of this thread`);
    t.equal(values.filter((v) => v.startsWith('p')).length, 50, `partition ${p}: every append through the port`);
    t.equal(values[100], `both-${p}`, `partition ${p}: the two-record append`);
  }
  // Readers reclaim under the writer thread: committed segments go, the active one stays.
  await c.commit(0, 101);
  await c.commit(1, 101);
  t.equal(segFiles(dir, 0).length, 1, 'committed segments reclaimed, the active one kept');
  t.equal(await prod.append(0, buf('after reclaim')), 101);
  t.same(
    (await readN(c, 1)).map((r) => [r.partition, r.offset, r.value.toString()]),
    [[0, 101, 'after reclaim']],
  );

  await t.rejects(prod.append(2, buf('x')), RangeError, 'unknown partition');
  await t.rejects(appender.append([[2, own('x')]]), RangeError, 'an unknown partition through a port is refused as by the producer');

  // Close: the log and its ports refuse from then on.
  await appender.append([[1, own('last')]]);
  await log.close();
  await t.rejects(prod.append(0, buf('x')), ServiceUnavailableError, 'closed: appends are refused');
  await t.rejects(appender.append([[0, own('x')]]), ServiceUnavailableError, 'closed: the port refuses');

  const again = await openLog(t, dir, { segmentBytes, writerThread: true });
  t.equal(again.endOffset(0), 102, 'reopened at the durable end of partition 0');
  t.equal(again.endOffset(1), 102, 'and of partition 1');
});

t.test('writer thread, closing under appends through ports: an acknowledged record is there, a refused one is not', async (t) => {
  const dir = tmpDir(t);
  for (let round = 0; round < 5; round++) {
    const log = await EmbeddedLog.open(dir, { partitions: 2, writerThread: true });
    const appenders = Array.from({ length: 4 }, () => new PortAppender(log.producer().appendPort!()!));
    const acked = new Set<string>();
    const refused = new Set<string>();
    let other = 0;
    let stop = false;
    const loops = Array.from({ length: 32 }, async (_, i) => {
      for (let n = 0; !stop; n++) {
        const value = `r${round}-l${i}-n${n}`;
        try {
          await appenders[i % 4].append([[n % 2, new Uint8Array(Buffer.from(value))]]);
          acked.add(value);
        } catch (err) {
          if (err instanceof ServiceUnavailableError) refused.add(value);
          else other++;
          return;
        }
      }
    });
    await new Promise((r) => setTimeout(r, 20 + round * 15));
    await log.close();
    stop = true;
    await Promise.all(loops);
    t.equal(other, 0, 'every append was acknowledged or refused with a 503');
    t.ok(refused.size > 0, `the close refused appends (round ${round}: ${acked.size} acknowledged, ${refused.size} refused)`);

    const again = await EmbeddedLog.open(dir, { partitions: 2 });
    const c = again.consumer(`verify-${round}`);
    for (const p of [0, 1]) c.seek(p, 0);
    const stored = new Set<string>();
    for (;;) {
      const recs = await c.poll(10_000, 0);
      if (recs.length === 0) break;
      for (const r of recs) if (r.value.toString().startsWith(`r${round}-`)) stored.add(r.value.toString());
    }
    await again.close();
    t.same(
      [...acked].filter((v) => !stored.has(v)),
      [],
      'every acknowledged record is in the log',
    );
    t.same(
      [...refused].filter((v) => stored.has(v)),
      [],
      'no refused record is in the log',
    );
    t.equal(stored.size, acked.size, 'and nothing else of the round');
  }
});

t.test("writer thread: appends are durable while every thread of libuv's pool is taken", async (t) => {
  // chdb runs its inserts and queries on libuv's pool, which every thread of the process shares, and holds a pool
  // thread for as long as the insert takes. The writer thread writes and syncs on itself, so acknowledgements never
  // queue behind them.
  const dir = tmpDir(t);
  const log = await openLog(t, dir, { writerThread: true });
  const prod = log.producer();
  t.equal(await prod.append(0, buf('before')), 0);
  // A FIFO opened for reading holds a pool thread until a writer opens it: every pool thread is taken until released.
  const poolSize = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const fifos = Array.from({ length: poolSize }, (_, i) => path.join(dir, `pool-${i}.fifo`));
  for (const f of fifos) execFileSync('mkfifo', [f]);
  const held = fifos.map((f) => fs.promises.open(f, 'r'));
  let poolTaken = true;
  const probe = fs.promises.stat(dir).then(() => (poolTaken = false));
  try {
    await new Promise((r) => setTimeout(r, 200));
    t.ok(poolTaken, 'the pool is taken: a stat queued behind the FIFOs has not run');
    const started = Date.now();
    const offsets = await Promise.race([
      Promise.all([prod.append(0, buf('during-1')), prod.append(0, buf('during-2'))]),
      new Promise<null>((r) => setTimeout(() => r(null), 5000)),
    ]);
    t.same(offsets, [1, 2], `acknowledged in ${Date.now() - started} ms while the pool was taken`);
    t.ok(poolTaken, 'and the pool was still taken when they were');
  } finally {
    // Released even when an assertion fails: the log's close (a teardown) needs the pool.
    for (const f of fifos) fs.closeSync(fs.openSync(f, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK));
    for (const h of await Promise.all(held)) await h.close();
    await probe;
  }
  t.equal(log.endOffset(0), 3);
});

t.test('PortAppender.close waits for the answers of the appends already sent', async (t) => {
  const dir = tmpDir(t);
  const log = await openLog(t, dir, { writerThread: true });
  const appender = new PortAppender(log.producer().appendPort!()!);
  const sent = [0, 1, 2].map((i) => appender.append([[0, new Uint8Array(Buffer.from(`sent-${i}`))]]));
  const closed = appender.close();
  await t.resolves(Promise.all(sent), 'appends sent before close are answered as the log answers them');
  await closed;
  await t.rejects(appender.append([[0, new Uint8Array(Buffer.from('late'))]]), ServiceUnavailableError, 'then it refuses');
  await log.flush();
  t.equal(log.endOffset(0), 3, 'the three are durable');
});

t.test('writer thread: if it dies, the log says so, refuses what was pending and what comes, and loses nothing durable', async (t) => {
  const dir = tmpDir(t);
  process.env.METERD_TEST_LOG_FAULTS = JSON.stringify({ exitAtWrite: 3 });
  const exits: Array<[number, string | null]> = [];
  const log = await EmbeddedLog.open(dir, {
    partitions: 1,
    writerThread: true,
    writerThreadFaults: path.join(__dirname, 'helpers/log-faults.js'),
    onWriterThreadExit: (code, error) => exits.push([code, error]),
  });
  delete process.env.METERD_TEST_LOG_FAULTS;
  const appender = new PortAppender(log.producer().appendPort!()!);
  const prod = log.producer();
  t.equal(await prod.append(0, buf('a')), 0);
  await appender.append([[0, new Uint8Array(Buffer.from('b'))]]);
  // The third write never happens: the thread ends with these two appends pending.
  const pending = await Promise.allSettled([prod.append(0, buf('c')), appender.append([[0, new Uint8Array(Buffer.from('d'))]])]);
  t.same(
    pending.map((r) => (r.status === 'rejected' ? (r.reason as Error).constructor.name : 'fulfilled')),
    ['ServiceUnavailableError', 'ServiceUnavailableError'],
    'the appends pending when it died are refused with a 503',
  );
  t.same(
    exits.map(([code]) => code),
    [7],
    'onWriterThreadExit was told, with its exit code (the server then exits 1)',
  );
  await t.rejects(prod.append(0, buf('e')), ServiceUnavailableError, 'later appends are refused');
  t.equal(log.producer().appendPort?.(), undefined, 'and no port is handed out');
  await log.close();
  t.same(exits.length, 1, 'closing afterwards is not reported as another exit');
  const again = await openLog(t, dir);
  const c = again.consumer('verify');
  c.seek(0, 0);
  t.same(
    (await readN(c, 2)).map((r) => r.value.toString()),
    ['a', 'b'],
    'the two acknowledged records are there',
  );
  t.same(await c.poll(10, 100), [], 'and nothing else');
});

t.test('writer thread: failed writes reach the stats without a durable write to carry them', async (t) => {
  const dir = tmpDir(t);
  process.env.METERD_TEST_LOG_FAULTS = JSON.stringify({ failWritesFrom: 3 });
  const log = await EmbeddedLog.open(dir, { partitions: 1, writerThread: true, writerThreadFaults: path.join(__dirname, 'helpers/log-faults.js') });
  delete process.env.METERD_TEST_LOG_FAULTS;
  t.teardown(() => log.close());
  const prod = log.producer();
  await prod.append(0, buf('a'));
  await prod.append(0, buf('b'));
  t.equal(log.stats().acknowledged, 2);
  await t.rejects(prod.append(0, buf('c')), ServiceUnavailableError, 'the third write fails');
  await t.rejects(prod.append(0, buf('d')), ServiceUnavailableError, 'and the fourth');
  const deadline = Date.now() + 3000;
  while (log.stats().rejected < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  t.match(log.stats(), { acknowledged: 2, rejected: 2 }, 'the stats count the rejected appends');
});

t.test('writer thread: a failed write or sync rejects its group, and readers never see its records', async (t) => {
  const dir = tmpDir(t);
  const segmentBytes = 2048;
  process.env.METERD_TEST_LOG_FAULTS = JSON.stringify({ failWrites: [3, 9, 20], failSyncs: [5, 14, 27] });
  const log = await EmbeddedLog.open(dir, {
    partitions: 2,
    segmentBytes,
    writerThread: true,
    writerThreadFaults: path.join(__dirname, 'helpers/log-faults.js'),
  });
  delete process.env.METERD_TEST_LOG_FAULTS;
  const appender = new PortAppender(log.producer().appendPort!()!);
  const acked = [new Set<string>(), new Set<string>()];
  const refused = [new Set<string>(), new Set<string>()];
  let otherErrors = 0;
  // Rounds of four appends at once (two from this thread, two through the port): small groups, so the numbered faults
  // fall throughout the run, across segment rotations (about 15 records per segment).
  for (let i = 0; i < 60; i++) {
    await Promise.all(
      [0, 1, 2, 3].map(async (k) => {
        const p = k % 2;
        const value = `v${i}-${k}`.padEnd(120, '.');
        try {
          if (k < 2) await log.producer().append(p, Buffer.from(value));
          else await appender.append([[p, new Uint8Array(Buffer.from(value))]]);
          acked[p].add(value);
        } catch (err) {
          if (err instanceof ServiceUnavailableError) refused[p].add(value);
          else otherErrors++;
        }
      }),
    );
  }
  t.equal(otherErrors, 0, 'failures are 503s');
  const refusedCount = refused[0].size + refused[1].size;
  t.ok(refusedCount >= 6, `the six injected failures refused their groups (${refusedCount} appends)`);
  await log.flush();
  const c = log.consumer('g');
  const recs = await readN(c, acked[0].size + acked[1].size);
  for (const p of [0, 1]) {
    const mine = byPartition(recs, p);
    t.same(
      mine.map((r) => r.offset),
      Array.from({ length: acked[p].size }, (_, i) => i),
      `partition ${p}: dense offsets over the acknowledged records only`,
    );
    t.same(new Set(mine.map((r) => r.value.toString())), acked[p], `partition ${p}: exactly the acknowledged records`);
    t.equal(log.endOffset(p), acked[p].size, `partition ${p}: the mirror's durable end`);
  }
  t.same(await c.poll(10, 50), [], 'nothing else is readable');
  await log.close();
  const again = await openLog(t, dir, { segmentBytes });
  const c2 = again.consumer('verify');
  for (const p of [0, 1]) c2.seek(p, 0);
  const reread = await readN(c2, acked[0].size + acked[1].size);
  for (const p of [0, 1]) {
    const values = byPartition(reread, p).map((r) => r.value.toString());
    t.same(new Set(values), acked[p], `partition ${p}: after reopening, the same records`);
    t.same(
      values.filter((v) => refused[p].has(v)),
      [],
      `partition ${p}: no refused record`,
    );
  }
});
