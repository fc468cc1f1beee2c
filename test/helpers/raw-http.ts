/**
 * A raw HTTP/1.1 client for protocol tests: writes exact bytes (in one write or split where the test says), reads
 * everything the server sends until it closes or goes quiet, and splits it into responses.
 */
import net from 'node:net';

export interface RawResponse {
  status: number;
  reason: string;
  /** Lower-case names; repeated fields joined with ", ". */
  headers: Record<string, string>;
  body: string;
  /** The body parsed as JSON, or null. */
  json: any;
}

export interface RawExchange {
  responses: RawResponse[];
  /** Interim (1xx) responses seen, in order. */
  interim: number[];
  /** The server closed the connection (FIN or reset) before `quietMs` of silence ended the wait. */
  closed: boolean;
  /** Bytes after the last complete response (should be none). */
  trailing: string;
}

export interface RawOptions {
  /** Write the bytes in pieces ending at these offsets (the rest goes last). */
  splits?: number[];
  /** Pause between pieces. */
  pieceDelayMs?: number;
  /** Stop waiting after this long without bytes from the server. */
  quietMs?: number;
  /** Stop waiting after this long in all. */
  maxMs?: number;
  /** Requests that were HEAD, by index, so their responses are read without a body. */
  headIndexes?: Set<number>;
  /** Shut our sending side after the last piece. */
  halfClose?: boolean;
}

export async function rawExchange(port: number, data: string | Buffer, opts: RawOptions = {}): Promise<RawExchange> {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'latin1') : data;
  const quietMs = opts.quietMs ?? 400;
  const maxMs = opts.maxMs ?? 15_000;
  const socket = net.connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  const chunks: Buffer[] = [];
  let closed = false;
  const done = new Promise<void>((resolve) => {
    let quiet: NodeJS.Timeout | null = null;
    const overall = setTimeout(finish, maxMs);
    function arm() {
      if (quiet) clearTimeout(quiet);
      quiet = setTimeout(finish, quietMs);
    }
    function finish() {
      if (quiet) clearTimeout(quiet);
      clearTimeout(overall);
      resolve();
    }
    socket.on('data', (d: Buffer) => {
      chunks.push(d);
      arm();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      closed = true;
      finish();
    });
    socket.on('connect', async () => {
      const cuts = [...(opts.splits ?? []).filter((c) => c > 0 && c < bytes.length), bytes.length].sort((a, b) => a - b);
      let from = 0;
      for (const cut of cuts) {
        if (socket.destroyed) break;
        socket.write(bytes.subarray(from, cut));
        from = cut;
        if (opts.pieceDelayMs) await new Promise((r) => setTimeout(r, opts.pieceDelayMs));
      }
      if (opts.halfClose) socket.end();
      arm();
    });
  });
  await done;
  socket.destroy();
  return { ...parseResponses(Buffer.concat(chunks), opts.headIndexes ?? new Set()), closed };
}

export function parseResponses(buf: Buffer, headIndexes: Set<number>): Omit<RawExchange, 'closed'> {
  const responses: RawResponse[] = [];
  const interim: number[] = [];
  let pos = 0;
  for (;;) {
    const end = buf.indexOf('\r\n\r\n', pos, 'latin1');
    if (end < 0) break;
    const lines = buf.toString('latin1', pos, end).split('\r\n');
    const m = /^HTTP\/1\.1 (\d{3}) ?(.*)$/.exec(lines[0]);
    if (!m) break;
    const status = Number(m[1]);
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const c = line.indexOf(':');
      const k = line.slice(0, c).trim().toLowerCase();
      const v = line.slice(c + 1).trim();
      headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
    }
    let next = end + 4;
    if (status >= 100 && status < 200) {
      interim.push(status);
      pos = next;
      continue;
    }
    const length = headIndexes.has(responses.length) ? 0 : Number(headers['content-length'] ?? 0);
    if (next + length > buf.length) break;
    const body = buf.toString('utf8', next, next + length);
    next += length;
    let json: any = null;
    try {
      json = JSON.parse(body);
    } catch {
      json = null;
    }
    responses.push({ status, reason: m[2], headers, body, json });
    pos = next;
  }
  return { responses, interim, trailing: buf.toString('latin1', pos) };
}

/** One request's bytes. */
export function rawRequest(method: string, path: string, headers: Record<string, string | number>, body = ''): string {
  let out = `${method} ${path} HTTP/1.1\r\n`;
  const all: Record<string, string | number> = { Host: '127.0.0.1', ...headers };
  if (body && all['Content-Length'] === undefined && all['Transfer-Encoding'] === undefined) all['Content-Length'] = Buffer.byteLength(body);
  for (const [k, v] of Object.entries(all)) out += `${k}: ${v}\r\n`;
  return out + '\r\n' + body;
}
