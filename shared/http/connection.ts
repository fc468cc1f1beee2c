/**
 * One client connection: requests are parsed as they arrive and dispatched at once, and their responses are written
 * strictly in the order the requests came (RFC 9112 §9.3.2), however long each one takes: a fast GET pipelined behind
 * a meter event that waits for its fsync is answered after that event's answer, never before and never dropped.
 *
 * Reading pauses while too many answers are outstanding or the socket's send buffer is full, so a client that pipelines
 * without reading cannot grow our memory without bound.
 */
import type net from 'node:net';
import { HttpProtocolError } from '../errors';
import { RequestParser, type HttpLimits, type RequestHead } from './parser';

/** Most requests of one connection in flight at once; reading pauses beyond it. */
export const MAX_PIPELINED = 32;
/** Pending output above which reading pauses until the client has read some. */
const MAX_BUFFERED_OUTPUT = 1024 * 1024;

const CONTINUE = Buffer.from('HTTP/1.1 100 Continue\r\n\r\n', 'latin1');

/** What the connection needs from the server: a dispatcher and a renderer for protocol errors. */
export interface ConnectionOwner {
  readonly limits: HttpLimits;
  /** Handles a complete request; `answer` is called once, with the response bytes. */
  dispatch(head: RequestHead, body: Buffer, answer: (response: Buffer | string, close: boolean) => void): void;
  /** The bytes of an error response to a request that broke the protocol (the connection closes after it). */
  protocolError(err: HttpProtocolError, head: RequestHead | null, path: string | null): string;
  connectionClosed(conn: Connection): void;
  /** Whether an upgrade request to this target switches protocols (otherwise its Upgrade field is ignored). */
  upgradesTo?(head: RequestHead): boolean;
  /**
   * Answers an accepted upgrade request: the bytes of an error response (the connection then closes), or the function
   * that takes the socket over once every earlier request on it has been answered.
   */
  upgrade?(head: RequestHead): string | UpgradeTakeover;
}

/** Takes a socket over after its upgrade request; `rest` is what the client sent after that request. */
export type UpgradeTakeover = (socket: net.Socket, rest: Buffer) => void;

interface Exchange {
  head: RequestHead | null;
  response: Buffer | string | null;
  close: boolean;
  continueSent: boolean;
  takeover?: UpgradeTakeover;
}

export class Connection {
  private readonly parser: RequestParser;
  private readonly queue: Exchange[] = [];
  /** The exchange whose request is being read (its head came, its body has not finished). */
  private reading: Exchange | null = null;
  private closing = false;
  private destroyed = false;
  private readPaused = false;
  /** Coarse clock readings (ms) for the server's timeout sweep. */
  lastActivityMs: number;
  requestStartMs = 0;

  constructor(
    readonly socket: net.Socket,
    private readonly owner: ConnectionOwner,
    nowMs: number,
  ) {
    this.lastActivityMs = nowMs;
    this.parser = new RequestParser(owner.limits, {
      onHead: (head) => this.onHead(head),
      onRequest: (head, body) => this.onRequest(head, body),
      onError: (err, head, path) => this.onProtocolError(err, head, path),
      acceptsUpgrade: owner.upgradesTo ? (head) => owner.upgradesTo!(head) : undefined,
    });
    socket.setNoDelay(true);
    socket.on('data', this.listeners.data);
    socket.on('drain', this.listeners.drain);
    socket.on('error', this.listeners.error);
    socket.on('end', this.listeners.end);
    socket.on('close', this.listeners.close);
  }

  private readonly listeners = {
    data: (chunk: Buffer) => this.onData(chunk),
    drain: () => this.updateFlow(),
    error: () => undefined,
    end: () => {
      // The client will send nothing more: answer what it sent, then close.
      this.parser.stop();
      this.closing = true;
      if (this.queue.length === 0) this.end();
    },
    close: () => {
      this.destroyed = true;
      this.owner.connectionClosed(this);
    },
  };

  /** No request is being read or answered. */
  get idle(): boolean {
    return this.queue.length === 0 && !this.parser.midRequest;
  }

  /** A request has been partly read and the rest has not come. */
  get midRequest(): boolean {
    return this.parser.midRequest;
  }

  private onData(chunk: Buffer): void {
    if (this.destroyed) return;
    const now = Date.now();
    this.lastActivityMs = now;
    if (!this.parser.midRequest) this.requestStartMs = now;
    this.parser.feed(chunk);
    this.updateFlow();
  }

  private onHead(head: RequestHead): void {
    const ex: Exchange = { head, response: null, close: head.close, continueSent: false };
    this.queue.push(ex);
    this.reading = ex;
    if (head.expectsContinue && this.queue[0] === ex) {
      ex.continueSent = true;
      this.socket.write(CONTINUE);
    }
  }

  private onRequest(head: RequestHead, body: Buffer): void {
    const ex = this.reading!;
    this.reading = null;
    if (head.upgrade && this.owner.upgrade && this.owner.upgradesTo?.(head)) {
      // The parser has stopped: what follows belongs to the new protocol.
      ex.close = true;
      const decision = this.owner.upgrade(head);
      if (typeof decision === 'string') ex.response = decision;
      else ex.takeover = decision;
      this.flush();
      return;
    }
    // Nothing after "Connection: close" is a request we may act on.
    if (head.close) this.parser.stop();
    let answered = false;
    this.owner.dispatch(head, body, (response, close) => {
      if (answered) return;
      answered = true;
      ex.response = response;
      if (close) {
        ex.close = true;
        this.parser.stop();
      }
      this.flush();
    });
  }

  private onProtocolError(err: HttpProtocolError, head: RequestHead | null, path: string | null): void {
    // An error inside a request's body answers that request; otherwise it is the answer to what could not be parsed.
    let ex = head !== null ? this.reading : null;
    if (!ex) {
      ex = { head: null, response: null, close: true, continueSent: true };
      this.queue.push(ex);
    }
    this.reading = null;
    ex.response = this.owner.protocolError(err, head, path);
    ex.close = true;
    this.flush();
  }

  /** Timed out waiting for the rest of a request (RFC 9110 §15.5.9). */
  requestTimeout(): void {
    const head = this.reading?.head ?? null;
    this.parser.stop();
    this.onProtocolError(new HttpProtocolError(408, 'Request Timeout: the request did not arrive in time.'), head, head?.path ?? null);
  }

  /** Closes an idle connection (idle timeout, or the server is shutting down). */
  closeIdle(): void {
    if (this.idle) this.end();
    else this.closing = true;
  }

  private flush(): void {
    let wrote = false;
    while (this.queue.length > 0 && !this.destroyed) {
      const ex = this.queue[0];
      if (ex.takeover) {
        this.handOver(ex.takeover);
        return;
      }
      if (ex.response === null) {
        if (ex.head?.expectsContinue && !ex.continueSent && this.reading === ex) {
          ex.continueSent = true;
          this.socket.write(CONTINUE);
        }
        break;
      }
      if (!wrote) {
        this.socket.cork();
        wrote = true;
      }
      this.socket.write(ex.response);
      this.queue.shift();
      if (ex.close) {
        this.queue.length = 0;
        this.parser.stop();
        this.socket.uncork();
        this.end();
        return;
      }
    }
    if (wrote) {
      this.lastActivityMs = Date.now();
      // Uncork on the next tick so that answers completing together leave in one write.
      process.nextTick(() => this.socket.uncork());
    }
    if (this.closing && this.queue.length === 0) this.end();
    this.updateFlow();
  }

  /** Gives the socket to the new protocol: this connection no longer reads, writes or tracks it. */
  private handOver(takeover: UpgradeTakeover): void {
    this.queue.length = 0;
    this.destroyed = true;
    const socket = this.socket;
    socket.off('data', this.listeners.data);
    socket.off('drain', this.listeners.drain);
    socket.off('error', this.listeners.error);
    socket.off('end', this.listeners.end);
    socket.off('close', this.listeners.close);
    while (socket.writableCorked > 0) socket.uncork();
    this.owner.connectionClosed(this);
    takeover(socket, this.parser.upgradeRest);
    // Reading was paused if the pipeline was full; the new owner has its listeners now.
    if (this.readPaused) socket.resume();
  }

  private updateFlow(): void {
    if (this.destroyed) return;
    const pause = this.queue.length >= MAX_PIPELINED || this.socket.writableLength > MAX_BUFFERED_OUTPUT;
    if (pause && !this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    } else if (!pause && this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
    }
  }

  private end(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.socket.end();
    // A client that never reads its last answer must not hold the socket forever.
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }
}
