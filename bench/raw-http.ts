/**
 * A minimal HTTP/1.1 client over raw `net` sockets, for the benchmark only.
 *
 * One connection carries one request at a time (keep-alive, no pipelining). Requests are pre-serialised Buffers (head +
 * body), so the hot path is one `socket.write` per request and one small header parse per response: much cheaper than
 * node:http's ClientRequest/IncomingMessage machinery (see `--client http` in stream-load.ts to compare).
 *
 * Understands Content-Length, chunked and read-until-close response bodies, `Connection: close`, and skips 1xx
 * interim responses. Loopback only: see assertLoopback().
 */
import * as net from 'node:net';

export interface RawResponse {
  status: number;
  /** Lower-cased header names; repeated headers are joined with ", ". */
  headers: Record<string, string>;
  body: Buffer;
}

export type RawCallback = (err: Error | null, res: RawResponse | null) => void;

const CRLFCRLF = Buffer.from('\r\n\r\n', 'latin1');
const MAX_HEAD = 64 * 1024;

/** Hosts the benchmark may target: loopback only. Returns the address to connect to. */
export function assertLoopback(hostname: string): string {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === '127.0.0.1' || h === 'localhost') return '127.0.0.1';
  if (h === '::1') return '::1';
  throw new Error(`refusing to target non-loopback host "${hostname}" (allowed: 127.0.0.1, localhost, ::1)`);
}

export class RawConnection {
  private sock: net.Socket | null = null;
  private cb: RawCallback | null = null;
  private acc: Buffer | null = null;
  // Parse state of the response being read.
  private bodyStart = -1;
  private status = 0;
  private headers: Record<string, string> = {};
  private contentLength = -1;
  private chunked = false;
  private untilClose = false;
  private closeAfter = false;
  private chunkPos = 0;
  private chunks: Buffer[] = [];
  /** Connections opened over the lifetime of this object (1 = never reconnected). */
  connects = 0;

  constructor(
    readonly host: string,
    readonly port: number,
  ) {}

  get busy(): boolean {
    return this.cb !== null;
  }

  /** Bytes of earlier writes still queued in user land (0 = everything handed to the kernel). */
  get pendingWrite(): number {
    return this.sock ? this.sock.writableLength : 0;
  }

  /** Sends one complete pre-serialised request; `cb` runs exactly once with the response or an error. */
  send(req: Buffer, cb: RawCallback): void {
    if (this.cb) throw new Error('RawConnection: a request is already in flight');
    this.cb = cb;
    this.acc = null;
    this.bodyStart = -1;
    this.status = 0;
    this.contentLength = -1;
    this.chunked = false;
    this.untilClose = false;
    this.closeAfter = false;
    this.chunks = [];
    if (!this.sock) this.open();
    this.sock!.write(req);
  }

  request(req: Buffer): Promise<RawResponse> {
    return new Promise((resolve, reject) => {
      this.send(req, (err, res) => (err ? reject(err) : resolve(res!)));
    });
  }

  close(): void {
    const s = this.sock;
    this.sock = null;
    if (s) s.destroy();
    this.finish(new Error('connection closed by client'), null);
  }

  private open(): void {
    const s = net.connect({ host: this.host, port: this.port, noDelay: true });
    this.connects++;
    s.on('data', (chunk: Buffer) => {
      if (this.sock === s) this.onData(chunk);
    });
    s.on('error', (err: Error) => {
      if (this.sock !== s) return;
      this.sock = null;
      s.destroy();
      this.finish(err, null);
    });
    s.on('close', () => {
      if (this.sock !== s) return;
      this.sock = null;
      if (this.cb && this.untilClose && this.bodyStart >= 0) {
        this.complete(this.acc ? this.acc.subarray(this.bodyStart) : Buffer.alloc(0));
      } else {
        this.finish(new Error('connection closed by server'), null);
      }
    });
    this.sock = s;
  }

  private finish(err: Error | null, res: RawResponse | null): void {
    const cb = this.cb;
    if (!cb) return;
    this.cb = null;
    this.acc = null;
    this.chunks = [];
    cb(err, res);
  }

  private fail(msg: string): void {
    const s = this.sock;
    this.sock = null;
    if (s) s.destroy();
    this.finish(new Error(msg), null);
  }

  private onData(chunk: Buffer): void {
    if (!this.cb) {
      // Bytes nobody asked for: the stream is out of sync; drop the connection.
      this.fail('unexpected data');
      return;
    }
    this.acc = this.acc === null ? chunk : Buffer.concat([this.acc, chunk]);
    this.parse();
  }

  private parse(): void {
    for (;;) {
      const b = this.acc!;
      if (this.bodyStart < 0) {
        const i = b.indexOf(CRLFCRLF);
        if (i < 0) {
          if (b.length > MAX_HEAD) this.fail('response head too large');
          return;
        }
        if (!this.parseHead(b.toString('latin1', 0, i))) return;
        this.bodyStart = i + 4;
        if (this.status >= 100 && this.status < 200) {
          // Interim response (100 Continue, ...): skip it and read the real one.
          this.acc = b.subarray(this.bodyStart);
          this.bodyStart = -1;
          this.headers = {};
          continue;
        }
        this.chunkPos = this.bodyStart;
      }
      if (this.chunked) {
        this.parseChunked(b);
        return;
      }
      if (this.contentLength >= 0) {
        if (b.length - this.bodyStart >= this.contentLength) {
          this.complete(b.subarray(this.bodyStart, this.bodyStart + this.contentLength));
        }
        return;
      }
      return; // until close
    }
  }

  private parseHead(head: string): boolean {
    if (!head.startsWith('HTTP/1.')) {
      this.fail('malformed status line');
      return false;
    }
    this.status = parseInt(head.slice(9, 12), 10);
    const headers: Record<string, string> = {};
    let pos = head.indexOf('\r\n');
    while (pos >= 0) {
      const next = head.indexOf('\r\n', pos + 2);
      const line = next < 0 ? head.slice(pos + 2) : head.slice(pos + 2, next);
      const colon = line.indexOf(':');
      if (colon > 0) {
        const k = line.slice(0, colon).trim().toLowerCase();
        const v = line.slice(colon + 1).trim();
        headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
      }
      pos = next;
    }
    this.headers = headers;
    const te = headers['transfer-encoding'];
    const cl = headers['content-length'];
    this.chunked = te !== undefined && /chunked/i.test(te);
    this.contentLength = -1;
    this.untilClose = false;
    if (this.status === 204 || this.status === 304 || (this.status >= 100 && this.status < 200)) this.contentLength = 0;
    else if (!this.chunked && cl !== undefined) this.contentLength = parseInt(cl, 10);
    else if (!this.chunked) this.untilClose = true;
    const conn = headers.connection;
    this.closeAfter = conn !== undefined && /close/i.test(conn);
    return true;
  }

  private parseChunked(b: Buffer): void {
    for (;;) {
      const eol = b.indexOf('\r\n', this.chunkPos, 'latin1');
      if (eol < 0) return;
      const size = parseInt(b.toString('latin1', this.chunkPos, eol).split(';')[0]!, 16);
      if (Number.isNaN(size)) {
        this.fail('bad chunk size');
        return;
      }
      if (size === 0) {
        // Trailers (if any) end with an empty line.
        let p = eol + 2;
        for (;;) {
          const e = b.indexOf('\r\n', p, 'latin1');
          if (e < 0) return;
          if (e === p) {
            this.complete(this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks));
            return;
          }
          p = e + 2;
        }
      }
      const dataStart = eol + 2;
      if (b.length < dataStart + size + 2) return;
      this.chunks.push(b.subarray(dataStart, dataStart + size));
      this.chunkPos = dataStart + size + 2;
    }
  }

  private complete(body: Buffer): void {
    const res: RawResponse = { status: this.status, headers: this.headers, body };
    if (this.closeAfter) {
      const s = this.sock;
      this.sock = null;
      if (s) s.destroy();
    }
    this.finish(null, res);
  }
}

/** Serialises a request. `hostHeader` is the Host header value (host:port). */
export function buildRequest(method: string, path: string, hostHeader: string, headers: Record<string, string>, body?: Buffer | string): Buffer {
  let head = `${method} ${path} HTTP/1.1\r\nHost: ${hostHeader}\r\n`;
  for (const k of Object.keys(headers)) head += `${k}: ${headers[k]}\r\n`;
  const b = body === undefined ? undefined : typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  if (b !== undefined || method === 'POST' || method === 'PUT' || method === 'PATCH') {
    head += `Content-Length: ${b ? b.length : 0}\r\n`;
  }
  head += '\r\n';
  const h = Buffer.from(head, 'latin1');
  return b?.length ? Buffer.concat([h, b]) : h;
}
