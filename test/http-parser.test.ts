/**
 * The HTTP/1.1 request parser, property-based (fast-check, fixed seeds): however the bytes of a valid pipeline are
 * split across reads, the same requests come out; arbitrary bytes never throw, and always end in requests or in one
 * protocol error; and the strict rules hold for each malformed form.
 */
import t from 'tap';
import fc from 'fast-check';
import { RequestParser, DEFAULT_LIMITS, type RequestHead } from '../shared/http/parser';
import type { HttpProtocolError } from '../shared/errors';

interface Parsed {
  requests: { method: string; path: string; query: string; body: string; headers: Record<string, string | undefined> }[];
  heads: number;
  error: HttpProtocolError | null;
}

function parseAll(chunks: Buffer[], limits = DEFAULT_LIMITS): Parsed {
  const out: Parsed = { requests: [], heads: 0, error: null };
  const parser = new RequestParser(limits, {
    onHead: () => void out.heads++,
    onRequest: (head: RequestHead, body: Buffer) =>
      out.requests.push({ method: head.method, path: head.path, query: head.query, body: body.toString('latin1'), headers: head.headers }),
    onError: (err) => {
      if (out.error) throw new Error('a second error');
      out.error = err;
    },
  });
  for (const c of chunks) parser.feed(c);
  return out;
}

function splitAt(buf: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (buf.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(buf.subarray(from, p));
    from = p;
  }
  out.push(buf.subarray(from));
  return out;
}

const token = fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,15}$/);
const pathArb = fc.array(fc.stringMatching(/^[A-Za-z0-9_%.-]{1,12}$/), { minLength: 1, maxLength: 4 }).map((s) => '/' + s.join('/'));
const bodyArb = fc.string({ maxLength: 300 }).map((s) => Buffer.from(s, 'utf8').toString('latin1'));
const requestArb = fc.record({
  method: fc.constantFrom('GET', 'POST', 'DELETE', 'HEAD'),
  path: pathArb,
  query: fc.option(fc.stringMatching(/^[a-z0-9=&%[\]]{0,40}$/), { nil: undefined }),
  headers: fc.array(fc.tuple(token, fc.stringMatching(/^[\x21-\x7e]([\x20-\x7e]{0,30}[\x21-\x7e])?$/)), { maxLength: 6 }),
  body: bodyArb,
  chunked: fc.boolean(),
  chunkSizes: fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 8 }),
});

type Req = typeof requestArb extends fc.Arbitrary<infer R> ? R : never;

function encode(r: Req): string {
  const target = r.path + (r.query !== undefined ? `?${r.query}` : '');
  let head = `${r.method} ${target} HTTP/1.1\r\nHost: example\r\n`;
  for (const [k, v] of r.headers) {
    const lower = k.toLowerCase();
    if (['host', 'content-length', 'transfer-encoding', 'connection', 'expect'].includes(lower)) continue;
    head += `X-${k}: ${v}\r\n`;
  }
  if (r.body.length === 0) return head + '\r\n';
  if (!r.chunked) return head + `Content-Length: ${Buffer.byteLength(r.body, 'latin1')}\r\n\r\n` + r.body;
  let out = head + 'Transfer-Encoding: chunked\r\n\r\n';
  let at = 0;
  let i = 0;
  while (at < r.body.length) {
    const n = Math.min(r.chunkSizes[i++ % r.chunkSizes.length], r.body.length - at);
    out += `${n.toString(16)}${i % 3 === 0 ? ';ext=1' : ''}\r\n${r.body.slice(at, at + n)}\r\n`;
    at += n;
  }
  return out + '0\r\n\r\n';
}

t.test('a valid pipeline parses the same however it is split', async (t) => {
  fc.assert(
    fc.property(fc.array(requestArb, { minLength: 1, maxLength: 6 }), fc.array(fc.nat(), { maxLength: 30 }), (reqs, cuts) => {
      const bytes = Buffer.from(reqs.map(encode).join(''), 'latin1');
      const whole = parseAll([bytes]);
      const split = parseAll(splitAt(bytes, cuts));
      if (whole.error) throw whole.error;
      if (split.error) throw split.error;
      if (whole.requests.length !== reqs.length) return false;
      for (let i = 0; i < reqs.length; i++) {
        const got = whole.requests[i];
        if (got.method !== reqs[i].method || got.path !== reqs[i].path || got.body !== reqs[i].body) return false;
        if (got.query !== (reqs[i].query ?? '')) return false;
      }
      return JSON.stringify(split.requests) === JSON.stringify(whole.requests);
    }),
    { seed: 20261205, numRuns: 400 },
  );
  t.pass('400 runs');
});

t.test('arbitrary bytes: never a throw, always requests then at most one error, and nothing after it', async (t) => {
  const bytesArb = fc.oneof(
    fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)),
    // Mostly-valid requests with one byte changed, inserted or removed: the interesting neighbourhood.
    fc.tuple(requestArb, fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('replace', 'insert', 'delete')).map(([r, at, byte, op]) => {
      const b = Buffer.from(encode(r) + encode(r), 'latin1');
      const i = at % b.length;
      if (op === 'replace') b[i] = byte;
      if (op === 'insert') return Buffer.concat([b.subarray(0, i), Buffer.from([byte]), b.subarray(i)]);
      if (op === 'delete') return Buffer.concat([b.subarray(0, i), b.subarray(i + 1)]);
      return b;
    }),
  );
  fc.assert(
    fc.property(bytesArb, fc.array(fc.nat(), { maxLength: 10 }), (bytes, cuts) => {
      const whole = parseAll([bytes]);
      const split = parseAll(splitAt(bytes, cuts));
      if (whole.error && !(whole.error.status >= 400 && whole.error.status < 600 && whole.error.status !== 500)) return false;
      // Splitting never changes what is understood.
      return JSON.stringify(split.requests) === JSON.stringify(whole.requests) && (split.error?.status ?? 0) === (whole.error?.status ?? 0);
    }),
    { seed: 7, numRuns: 3000 },
  );
  t.pass('3000 runs');
});

t.test('strict rules', async (t) => {
  const status = (s: string) => parseAll([Buffer.from(s, 'latin1')]).error?.status ?? 0;
  t.equal(status('GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab'), 400, 'conflicting Content-Length');
  t.equal(status('GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab'), 0, 'repeated equal Content-Length');
  t.equal(status('GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nab'), 400, 'a sign in Content-Length');
  t.equal(status('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n'), 501, 'gzip coding');
  t.equal(status('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n'), 501, 'a coding after chunked, on two lines');
  t.equal(status('POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n'), 400, 'chunked on HTTP/1.0');
  t.equal(status('GET / HTTP/1.1\r\nHost: a\r\n\n'), 400, 'bare LF ending the head');
  t.equal(status('GET / HTTP/1.1\rHost: a\r\n\r\n'), 400, 'bare CR');
  t.equal(status('GET / HTTP/1.1\r\nHost: a\r\nX\t: 1\r\n\r\n'), 400, 'tab before the colon');
  t.equal(status('GET  / HTTP/1.1\r\nHost: a\r\n\r\n'), 400, 'two spaces in the request line');
  t.equal(status('GET / HTTP/3.0\r\nHost: a\r\n\r\n'), 505, 'HTTP/3.0');
  t.equal(status('GET / HTTP/1.1\r\nHost: a\r\n\r\n'), 0, 'valid');
  t.equal(status('GET /\u00e9 HTTP/1.1\r\nHost: a\r\n\r\n'), 400, 'a non-ASCII byte in the target');
  const limits = { ...DEFAULT_LIMITS, maxBodyBytes: 10 };
  t.equal(parseAll([Buffer.from('POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n')], limits).error?.status, 413, 'Content-Length over the limit');
  t.equal(
    parseAll([Buffer.from('POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\nabcde\r\n')], limits).error?.status,
    413,
    'chunks over the limit',
  );
  const headers = parseAll([Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n__proto__: x\r\nConstructor: y\r\n\r\n')]).requests[0].headers;
  // biome-ignore lint/suspicious/noProto: the point is that this is an own, ordinary entry
  t.equal(headers.__proto__, 'x', '__proto__ is an ordinary header name');
  t.equal(headers.constructor, 'y', 'so is constructor');
  t.equal(parseAll([Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n\r\n')]).requests[0].headers.constructor, undefined, 'no inherited members');
});
