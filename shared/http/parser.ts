/**
 * A strict, incremental HTTP/1.1 request parser (RFC 9112). It is fed whatever the socket reads and reports, in
 * order, each request head and each complete request, or the one protocol error that ends the connection.
 *
 * Strict where leniency is a smuggling or desync vector behind a proxy: CRLF line endings only (a bare LF or CR is
 * an error, not a line break), no obs-fold, no whitespace before a header's colon, exactly one Host on HTTP/1.1,
 * Content-Length values that all agree, Transfer-Encoding only as `chunked` and never together with Content-Length.
 * Lenient where RFC 9112 asks for it: empty lines before a request line are skipped, chunk extensions and trailer
 * fields are read and ignored, the absolute form of a request target is accepted.
 */
import { HttpProtocolError } from '../errors';

export interface HttpLimits {
  /** Longest request line (method, target, version); longer gets 414. */
  maxRequestLineBytes: number;
  /** Largest header section, request line included; larger gets 431. */
  maxHeaderBytes: number;
  /** Most header fields in one request; more gets 431. */
  maxHeaderCount: number;
  /** Largest body, whatever its framing; larger gets 413. */
  maxBodyBytes: number;
}

export const DEFAULT_LIMITS: HttpLimits = {
  maxRequestLineBytes: 8192,
  maxHeaderBytes: 16384,
  maxHeaderCount: 100,
  maxBodyBytes: 1024 * 1024,
};

/** Header fields by lower-case name, without inherited members; repeated list fields are joined with ", ". */
export type HeaderFields = { [name: string]: string | undefined };

export interface RequestHead {
  method: string;
  /** The path of the target as sent (percent-encoding kept), without the query. */
  path: string;
  /** The query without its `?`. */
  query: string;
  /** 1 for HTTP/1.1, 0 for HTTP/1.0. */
  minorVersion: number;
  headers: HeaderFields;
  /** The client asked for the connection to end after this exchange (or HTTP/1.0 did not ask to keep it). */
  close: boolean;
  /** `Expect: 100-continue` with a body to come. */
  expectsContinue: boolean;
  /** Whether a body follows (Content-Length > 0 or chunked). */
  hasBody: boolean;
  /** A bodiless HTTP/1.1 GET asking to switch protocols (`Connection: upgrade` with an `Upgrade` field). */
  upgrade: boolean;
}

export interface ParserEvents {
  /** A head was read; its body (if any) follows. */
  onHead(head: RequestHead): void;
  /** The request `head` (the last one given to onHead) is complete. */
  onRequest(head: RequestHead, body: Buffer): void;
  /**
   * The stream is not HTTP/1.1 we accept; nothing after this is parsed. `head` is set when the error is in its body;
   * `path` is the target's path whenever the request line was read (it picks the v1 or v2 error shape).
   */
  onError(err: HttpProtocolError, head: RequestHead | null, path: string | null): void;
  /**
   * Whether to switch protocols for this upgrade request. If so, parsing ends with it and the bytes read after its
   * head are in `upgradeRest`; if not, the Upgrade field is ignored (RFC 9110 §7.8) and parsing goes on.
   */
  acceptsUpgrade?(head: RequestHead): boolean;
}

const enum State {
  Head,
  Body,
  ChunkSize,
  ChunkData,
  ChunkDataEnd,
  Trailers,
  Stopped,
}

const CR = 13;
const LF = 10;
const EMPTY = Buffer.alloc(0);
const MAX_CHUNK_LINE_BYTES = 4096;

const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP\/(\d)\.(\d)$/;
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// Field values: visible characters, obs-text, SP and HTAB; never NUL, CR, LF or another control character.
const BAD_VALUE_CHAR = /[\x00-\x08\x0a-\x1f\x7f]/;
const CHUNK_LINE = /^([0-9A-Fa-f]{1,8})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?$/;
const DIGITS = /^\d{1,15}$/;

function HeaderDict(): void {}
HeaderDict.prototype = Object.freeze(Object.create(null));
const HeaderDictCtor = HeaderDict as unknown as new () => HeaderFields;

function bad(message: string): HttpProtocolError {
  return new HttpProtocolError(400, message);
}

export class RequestParser {
  private state = State.Head;
  /** Bytes read but not yet consumed (a partial head, chunk line or trailer). */
  private pending: Buffer = EMPTY;
  private head: RequestHead | null = null;
  private remaining = 0;
  private bodySize = 0;
  private bodyParts: Buffer[] = [];
  private trailerBytes = 0;
  /** The path of the request line being parsed, for the shape of an error in its head. */
  private path: string | null = null;
  /** After an accepted upgrade: what the client sent after the upgrade request (the new protocol's first bytes). */
  upgradeRest: Buffer = EMPTY;

  constructor(
    private readonly limits: HttpLimits,
    private readonly events: ParserEvents,
  ) {}

  /** True while part of a request has been read and the rest is awaited. */
  get midRequest(): boolean {
    if (this.state === State.Stopped) return false;
    return this.state !== State.Head || this.pending.length > 0;
  }

  /** Parses nothing more: the connection is closing. */
  stop(): void {
    this.state = State.Stopped;
    this.pending = EMPTY;
    this.bodyParts = [];
  }

  feed(chunk: Buffer): void {
    if (this.state === State.Stopped) return;
    const data = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    this.pending = EMPTY;
    let pos = 0;
    try {
      while (pos < data.length) {
        const state = this.state as State;
        if (state === State.Stopped) return;
        if (state === State.Body || state === State.ChunkData) {
          const take = Math.min(this.remaining, data.length - pos);
          this.bodyParts.push(data.subarray(pos, pos + take));
          pos += take;
          this.remaining -= take;
          if (this.remaining > 0) continue;
          if (state === State.Body) this.complete();
          else this.state = State.ChunkDataEnd;
          continue;
        }
        if (state === State.ChunkDataEnd) {
          if (data[pos] !== CR || (data.length - pos >= 2 && data[pos + 1] !== LF)) throw bad('Malformed chunked body: a chunk must end with CRLF.');
          if (data.length - pos < 2) {
            this.pending = data.subarray(pos);
            return;
          }
          pos += 2;
          this.state = State.ChunkSize;
          continue;
        }
        // Line-based states: each reader returns where it stopped, or -1 when the line is not complete yet.
        const next = state === State.Head ? this.readHead(data, pos) : state === State.ChunkSize ? this.readChunkSize(data, pos) : this.readTrailer(data, pos);
        if (next < 0) {
          this.pending = data.subarray(pos);
          return;
        }
        pos = next;
      }
    } catch (err) {
      if (!(err instanceof HttpProtocolError)) throw err;
      const head = this.state === State.Head ? null : this.head;
      const path = head ? head.path : this.path;
      this.stop();
      this.events.onError(err, head, path);
    }
  }

  /** Returns the position after the head, or -1 when more bytes are needed. */
  private readHead(data: Buffer, start: number): number {
    // RFC 9112 §2.2: empty lines before a request line are ignored.
    while (start + 1 < data.length && data[start] === CR && data[start + 1] === LF) start += 2;
    if (start >= data.length || (start + 1 === data.length && data[start] === CR)) {
      return start + 1 === data.length ? -1 : start;
    }
    const end = data.indexOf('\r\n\r\n', start, 'latin1');
    const limit = end < 0 ? data.length : end + 4;
    // A LF must always follow a CR: a bare LF would end a line for some parsers and not for others.
    for (let i = data.indexOf(LF, start); i >= 0 && i < limit; i = data.indexOf(LF, i + 1)) {
      if (i === start || data[i - 1] !== CR) throw bad('Malformed request: header lines must end with CRLF, not a bare LF.');
    }
    if (end < 0) {
      const firstLine = data.indexOf('\r\n', start, 'latin1');
      if (firstLine < 0 && data.length - start > this.limits.maxRequestLineBytes) {
        throw new HttpProtocolError(414, `Request-URI Too Long: the request line is limited to ${this.limits.maxRequestLineBytes} bytes.`);
      }
      if (data.length - start > this.limits.maxHeaderBytes) {
        throw new HttpProtocolError(431, `Request Header Fields Too Large: the header section is limited to ${this.limits.maxHeaderBytes} bytes.`);
      }
      return -1;
    }
    if (end + 4 - start > this.limits.maxHeaderBytes) {
      const firstLine = data.indexOf('\r\n', start, 'latin1');
      if (firstLine - start > this.limits.maxRequestLineBytes) {
        throw new HttpProtocolError(414, `Request-URI Too Long: the request line is limited to ${this.limits.maxRequestLineBytes} bytes.`);
      }
      throw new HttpProtocolError(431, `Request Header Fields Too Large: the header section is limited to ${this.limits.maxHeaderBytes} bytes.`);
    }
    this.path = null;
    const head = this.parseHead(data.toString('latin1', start, end));
    this.head = head;
    if (head.upgrade && this.events.acceptsUpgrade?.(head)) {
      this.upgradeRest = data.subarray(end + 4);
      this.events.onHead(head);
      if (this.state !== State.Stopped) this.complete();
      this.stop();
      return data.length;
    }
    this.events.onHead(head);
    if (!head.hasBody && this.state !== State.Stopped) this.complete();
    return this.state === State.Stopped ? data.length : end + 4;
  }

  private parseHead(text: string): RequestHead {
    const lines = text.split('\r\n');
    const requestLine = lines[0];
    if (requestLine.length > this.limits.maxRequestLineBytes) {
      throw new HttpProtocolError(414, `Request-URI Too Long: the request line is limited to ${this.limits.maxRequestLineBytes} bytes.`);
    }
    if (lines.length - 1 > this.limits.maxHeaderCount) {
      throw new HttpProtocolError(431, `Request Header Fields Too Large: at most ${this.limits.maxHeaderCount} header fields are accepted.`);
    }
    const m = REQUEST_LINE.exec(requestLine);
    if (!m) {
      if (requestLine.indexOf('\r') >= 0) throw bad('Malformed request: a bare CR in the request line.');
      throw bad('Malformed request line: expected "METHOD /path HTTP/1.1".');
    }
    const [, method, target, major, minor] = m;
    if (target.charCodeAt(0) === 47 /* / */) this.path = target;
    if (major !== '1' || (minor !== '0' && minor !== '1')) {
      throw new HttpProtocolError(505, `HTTP Version Not Supported: HTTP/${major}.${minor}; use HTTP/1.1.`);
    }
    const minorVersion = minor === '1' ? 1 : 0;
    const headers = new HeaderDictCtor();
    let hosts = 0;
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i];
      const c0 = line.charCodeAt(0);
      if (c0 === 32 || c0 === 9) throw bad('Malformed header: obsolete line folding is not accepted.');
      const colon = line.indexOf(':');
      if (colon <= 0) throw bad('Malformed header: expected "Name: value".');
      const name = line.slice(0, colon);
      if (!TOKEN.test(name)) throw bad(`Malformed header name ${JSON.stringify(name.slice(0, 40))}: no spaces or separators before the colon.`);
      let a = colon + 1;
      let b = line.length;
      while (a < b && (line.charCodeAt(a) === 32 || line.charCodeAt(a) === 9)) a++;
      while (b > a && (line.charCodeAt(b - 1) === 32 || line.charCodeAt(b - 1) === 9)) b--;
      const value = line.slice(a, b);
      if (BAD_VALUE_CHAR.test(value)) throw bad(`Malformed header ${name}: control characters are not allowed in a field value.`);
      const key = name.toLowerCase();
      if (key === 'host') hosts++;
      const prev = headers[key];
      headers[key] = prev === undefined ? value : `${prev}, ${value}`;
    }
    if (minorVersion === 1 && hosts !== 1) throw bad(hosts === 0 ? 'Bad Request: HTTP/1.1 requires a Host header.' : 'Bad Request: more than one Host header.');

    let path = target;
    let query = '';
    if (target.charCodeAt(0) !== 47 /* / */) {
      // Absolute form (RFC 9112 §3.2.2): the path starts after the authority.
      const abs = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/.exec(target);
      if (!abs && target !== '*') throw bad('Malformed request target: expected a path starting with "/".');
      path = abs ? target.slice(abs[0].length) || '/' : target;
      if (path.charCodeAt(0) === 63 /* ? */) path = '/' + path;
    }
    const q = path.indexOf('?');
    if (q >= 0) {
      query = path.slice(q + 1);
      path = path.slice(0, q);
    }

    const connection = (headers.connection ?? '').toLowerCase();
    const close = minorVersion === 0 ? !/(^|,)\s*keep-alive\s*(,|$)/.test(connection) : /(^|,)\s*close\s*(,|$)/.test(connection);
    const te = headers['transfer-encoding'];
    const cl = headers['content-length'];
    let hasBody = false;
    if (te !== undefined) {
      if (minorVersion === 0) throw bad('Bad Request: Transfer-Encoding is not defined for HTTP/1.0.');
      if (cl !== undefined) throw bad('Bad Request: a request must not have both Transfer-Encoding and Content-Length.');
      const codings = te
        .toLowerCase()
        .split(',')
        .map((s) => s.trim());
      if (codings.some((c) => c === '')) throw bad('Malformed Transfer-Encoding header.');
      const chunked = codings.filter((c) => c === 'chunked').length;
      const other = codings.find((c) => c !== 'chunked');
      if (other !== undefined)
        throw new HttpProtocolError(501, `Not Implemented: Transfer-Encoding "${other.slice(0, 40)}" is not supported; send the body as is or chunked.`);
      if (chunked !== 1) throw bad('Bad Request: "chunked" may appear only once in Transfer-Encoding.');
      this.state = State.ChunkSize;
      hasBody = true;
    } else if (cl !== undefined) {
      const values = cl.split(',').map((s) => s.trim());
      for (const v of values) if (!DIGITS.test(v)) throw bad(`Bad Request: invalid Content-Length ${JSON.stringify(v.slice(0, 20))}.`);
      const length = Number(values[0]);
      if (values.some((v) => Number(v) !== length)) throw bad('Bad Request: conflicting Content-Length values.');
      if (length > this.limits.maxBodyBytes) throw new HttpProtocolError(413, `Request body is too large: the limit is ${this.limits.maxBodyBytes} bytes.`);
      if (length > 0) {
        this.state = State.Body;
        this.remaining = length;
        hasBody = true;
      }
    }
    let expectsContinue = false;
    const expect = headers.expect;
    if (expect !== undefined) {
      if (expect.toLowerCase() !== '100-continue') throw new HttpProtocolError(417, `Expectation Failed: only "Expect: 100-continue" is supported.`);
      expectsContinue = hasBody;
    }
    this.bodySize = 0;
    this.bodyParts = [];
    const upgrade = method === 'GET' && minorVersion === 1 && !hasBody && headers.upgrade !== undefined && /(^|,)\s*upgrade\s*(,|$)/.test(connection);
    const head: RequestHead = { method, path, query, minorVersion, headers, close, expectsContinue, hasBody, upgrade };
    return head;
  }

  private readChunkSize(data: Buffer, start: number): number {
    const end = data.indexOf('\r\n', start, 'latin1');
    const bare = data.indexOf(LF, start);
    if (bare >= 0 && (end < 0 || bare < end + 1) && (bare === start || data[bare - 1] !== CR)) {
      throw bad('Malformed chunked body: lines must end with CRLF.');
    }
    if (end < 0) {
      if (data.length - start > MAX_CHUNK_LINE_BYTES) throw bad('Malformed chunked body: chunk size line too long.');
      return -1;
    }
    const m = CHUNK_LINE.exec(data.toString('latin1', start, end));
    if (!m) throw bad('Malformed chunked body: invalid chunk size line.');
    const size = parseInt(m[1], 16);
    if (this.bodySize + size > this.limits.maxBodyBytes) {
      throw new HttpProtocolError(413, `Request body is too large: the limit is ${this.limits.maxBodyBytes} bytes.`);
    }
    this.bodySize += size;
    if (size === 0) {
      this.state = State.Trailers;
      this.trailerBytes = 0;
    } else {
      this.state = State.ChunkData;
      this.remaining = size;
    }
    return end + 2;
  }

  /** Trailer fields are read (and checked as header lines) but not used. */
  private readTrailer(data: Buffer, start: number): number {
    const end = data.indexOf('\r\n', start, 'latin1');
    const bare = data.indexOf(LF, start);
    if (bare >= 0 && (end < 0 || bare < end + 1) && (bare === start || data[bare - 1] !== CR)) {
      throw bad('Malformed chunked body: trailer lines must end with CRLF.');
    }
    if (end < 0) {
      if (this.trailerBytes + data.length - start > this.limits.maxHeaderBytes)
        throw new HttpProtocolError(431, 'Request Header Fields Too Large: trailer section too large.');
      return -1;
    }
    this.trailerBytes += end + 2 - start;
    if (this.trailerBytes > this.limits.maxHeaderBytes) throw new HttpProtocolError(431, 'Request Header Fields Too Large: trailer section too large.');
    if (end === start) {
      this.complete();
      return end + 2;
    }
    const line = data.toString('latin1', start, end);
    const colon = line.indexOf(':');
    if (colon <= 0 || !TOKEN.test(line.slice(0, colon)) || BAD_VALUE_CHAR.test(line.slice(colon + 1))) throw bad('Malformed trailer field.');
    return end + 2;
  }

  private complete(): void {
    const head = this.head!;
    const parts = this.bodyParts;
    const body = parts.length === 0 ? EMPTY : parts.length === 1 ? parts[0] : Buffer.concat(parts);
    this.bodyParts = [];
    this.state = State.Head;
    this.events.onRequest(head, body);
  }
}
