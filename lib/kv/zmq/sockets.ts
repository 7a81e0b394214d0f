/**
 * The two socket roles of the vLLM-family side channels:
 *
 * - `ReqClient`: pooled REQ sockets, one request in flight per socket. Like vllm-ascend's
 *   `ensure_zmq_send`/`ensure_zmq_recv`: 1 s send and receive timeouts, 3 tries 0.1 s apart; a socket that
 *   failed is closed (a REQ socket that missed its answer cannot send again), a good one goes back to the pool.
 * - `RouterServer`: a bound ROUTER answering each request through a handler. Messages are size-capped
 *   (libzmq drops the peer on a larger one) and the handler may decline to answer, as upstream does for
 *   malformed requests; the requester then times out.
 */
import { MooncakeError } from '../../errors';
import { zmq, zmqAddress, type ZmqSocket } from './wire';

export interface ReqClientOptions {
  /** Per send and per receive (default 1000 ms, upstream's). */
  timeoutMs?: number;
  /** Tries for send and for receive (default 3). */
  tries?: number;
  /** Largest answer accepted (default 16 MiB). */
  maxMessageBytes?: number;
  /** Idle sockets kept per address (default 4) and addresses remembered (default 1024). */
  poolPerAddress?: number;
  maxAddresses?: number;
}

function isTimeout(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === 'EAGAIN';
}

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class ReqClient {
  private readonly pool = new Map<string, ZmqSocket[]>();
  private readonly busy = new Set<ZmqSocket>();
  private closed = false;
  private readonly timeoutMs: number;
  private readonly tries: number;

  constructor(private readonly options: ReqClientOptions = {}) {
    this.timeoutMs = options.timeoutMs ?? 1000;
    this.tries = options.tries ?? 3;
  }

  private socket(address: string): ZmqSocket {
    const idle = this.pool.get(address)?.pop();
    if (idle) return idle;
    const s = new (zmq().Request)({
      sendTimeout: this.timeoutMs,
      receiveTimeout: this.timeoutMs,
      linger: 0,
      maxMessageSize: this.options.maxMessageBytes ?? 16 << 20,
    });
    s.connect(address);
    return s;
  }

  private giveBack(address: string, s: ZmqSocket): void {
    const list = this.pool.get(address) ?? [];
    if (this.closed || list.length >= (this.options.poolPerAddress ?? 4)) {
      s.close();
      return;
    }
    if (!this.pool.has(address) && this.pool.size >= (this.options.maxAddresses ?? 1024)) {
      const [oldest, socks] = this.pool.entries().next().value as [string, ZmqSocket[]];
      for (const x of socks) x.close();
      this.pool.delete(oldest);
    }
    list.push(s);
    this.pool.set(address, list);
  }

  /**
   * Sends one frame to `host:port` and returns the one-frame answer. TIMEOUT when no answer came within the
   * tries (the peer is down, busy, or declined to answer a request it found malformed).
   */
  async request(host: string, port: number, payload: Buffer): Promise<Buffer> {
    if (this.closed) throw new MooncakeError('CLOSED', 'the side-channel client is closed');
    const address = zmqAddress(host, port);
    const s = this.socket(address);
    this.busy.add(s);
    let ok = false;
    try {
      await this.retry(() => s.send(payload), 'send to', address);
      const frames = await this.retry(() => s.receive(), 'receive from', address);
      ok = true;
      return frames.length === 1 ? frames[0] : Buffer.concat(frames);
    } finally {
      this.busy.delete(s);
      if (ok) this.giveBack(address, s);
      else s.close();
    }
  }

  private async retry<T>(op: () => Promise<T>, what: string, address: string): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await op();
      } catch (err) {
        if (this.closed) throw new MooncakeError('CLOSED', 'the side-channel client is closed', { cause: err });
        if (attempt >= this.tries) {
          const code = isTimeout(err) ? 'TIMEOUT' : 'CONNECTION_LOST';
          throw new MooncakeError(code, `${what} ${address} failed after ${this.tries} tries of ${this.timeoutMs} ms: ${(err as Error).message}`, {
            cause: err,
            details: { address },
          });
        }
        // A REQ socket only resends after its answer arrived: a receive is simply waited for again.
        await pause(100);
      }
    }
  }

  /** Closes every socket (requests in flight fail with CLOSED). Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const socks of this.pool.values()) for (const s of socks) s.close();
    this.pool.clear();
    for (const s of this.busy) s.close();
    this.busy.clear();
  }
}

/**
 * The next well-formed request a ROUTER receives, `[identity, (empty delimiter,) payload]` (REQ peers send the
 * delimiter, DEALER peers do not); malformed ones are reported and skipped. Undefined once it is closed.
 */
export async function nextRequest(sock: ZmqSocket, closed: () => boolean, onError?: (err: unknown) => void): Promise<{ identity: Buffer; body: Buffer } | undefined> {
  while (!closed()) {
    let frames: Buffer[];
    try {
      frames = await sock.receive();
    } catch (err) {
      if (closed() || sock.closed) return undefined;
      onError?.(err);
      continue;
    }
    const identity = frames[0];
    const body = frames.slice(1).filter((f) => f.length > 0);
    if (identity !== undefined && body.length === 1) return { identity, body: body[0] };
    onError?.(new MooncakeError('PROTOCOL_ERROR', `side-channel request of ${frames.length} frames ignored`));
  }
  return undefined;
}

/** What a handler answers: one frame, or nothing (the requester times out, as upstream's ROUTER does for bad requests). */
export type RouterReply = Buffer | undefined;

export interface RouterServerOptions {
  /** Largest request accepted (default 64 KiB): a larger one makes libzmq drop the peer. */
  maxMessageBytes?: number;
  /** A handler threw (the request is not answered). */
  onError?: (err: unknown) => void;
}

export class RouterServer {
  private closed = false;
  private readonly loop: Promise<void>;

  private constructor(private readonly sock: ZmqSocket, readonly port: number, handler: (payload: Buffer) => RouterReply | Promise<RouterReply>, options: RouterServerOptions) {
    this.loop = this.serve(handler, options);
  }

  /** Binds a ROUTER on `host:port`; CONNECT_FAILED (details.code 'EADDRINUSE') when the port is taken. */
  static async bind(host: string, port: number, handler: (payload: Buffer) => RouterReply | Promise<RouterReply>, options: RouterServerOptions = {}): Promise<RouterServer> {
    const sock = new (zmq().Router)({ linger: 0, maxMessageSize: options.maxMessageBytes ?? 64 << 10 });
    try {
      await sock.bind(zmqAddress(host, port));
    } catch (err) {
      sock.close();
      const code = (err as { code?: string }).code;
      throw new MooncakeError('CONNECT_FAILED', `cannot bind the side channel on ${host}:${port}: ${(err as Error).message}${code === 'EADDRINUSE' ? ' (port in use)' : ''}`, {
        cause: err,
        details: { host, port, code },
      });
    }
    return new RouterServer(sock, port, handler, options);
  }

  private async serve(handler: (payload: Buffer) => RouterReply | Promise<RouterReply>, options: RouterServerOptions): Promise<void> {
    for (;;) {
      const request = await nextRequest(this.sock, () => this.closed, options.onError);
      if (!request) return;
      const { identity, body } = request;
      let reply: RouterReply;
      try {
        reply = await handler(body);
      } catch (err) {
        options.onError?.(err);
        continue;
      }
      if (reply === undefined || this.closed) continue;
      try {
        await this.sock.send([identity, Buffer.alloc(0), reply]);
      } catch (err) {
        if (!this.closed) options.onError?.(err);
      }
    }
  }

  /** Unbinds and closes. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.sock.close();
    await this.loop.catch(() => undefined);
  }
}
