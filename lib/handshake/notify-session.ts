/**
 * Notifications to the same peers again and again (the KV layer's done / push_start / push_done, one or
 * more per request) over kept-alive handshake connections: one connection per peer, one request at a time
 * on it, closed after `idleMs` without traffic. Each notify carries `"keep_alive": true`; a mooncake-node
 * handshake server then keeps the connection open for the next one (see server.ts), saving the TCP
 * connect, accept and close per message, which on loopback cost more CPU than the message itself. A peer
 * that closes after its reply (upstream's server, an older mooncake-node) gets a new connection per
 * message, as `sendNotify` would.
 *
 * A request on a reused connection that fails before any reply byte arrived (the peer closed it while idle)
 * is sent once more on a new connection; the peer may then see it twice, which the KV messages tolerate.
 */
import * as net from 'node:net';
import { MooncakeError } from '../errors';
import { FrameDecoder, HandshakeType, encodeFrame, handshakeMaxLengthFromEnv, type Frame } from './framing';
import { isJsonObject, parseJson, stringifyFast } from './json';
import type { Notify } from './notifications';

export interface NotifySessionOptions {
  /** Close a peer's connection after this long without a request, ms (default 10000; the server's is 30000). */
  idleMs?: number;
  /** Largest reply accepted (default: MC_HANDSHAKE_MAX_LENGTH, else 1 MiB). */
  maxLength?: number;
}

interface Conn {
  socket: net.Socket;
  decoder: FrameDecoder;
  /** The request waiting for its reply. */
  waiter?: (err: MooncakeError | undefined, frame?: Frame) => void;
  /** True once a reply was read: the connection has carried a request. */
  used: boolean;
  dead: boolean;
  idle?: NodeJS.Timeout;
}

export class NotifySession {
  private readonly conns = new Map<string, Conn>();
  /** Requests to one peer run one after another. */
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly idleMs: number;
  private readonly maxLength: number;
  private closed = false;

  constructor(options: NotifySessionOptions = {}) {
    this.idleMs = options.idleMs ?? 10_000;
    this.maxLength = options.maxLength ?? handshakeMaxLengthFromEnv();
  }

  /** Sends one notify to `host:port` (a numeric address) and waits for its acceptance; errors as sendNotify's. */
  send(host: string, port: number, notify: Notify, options: { connectTimeoutMs: number; timeoutMs: number }): Promise<void> {
    if (this.closed) return Promise.reject(new MooncakeError('CLOSED', 'the notify session is closed'));
    const key = `${host}:${port}`;
    const frame = encodeFrame(HandshakeType.Notify, stringifyFast({ name: notify.name, notify_msg: notify.msg, keep_alive: true }));
    const run = async (): Promise<void> => {
      let reply: Frame;
      const reused = this.conns.get(key);
      try {
        reply = await this.exchange(key, host, port, frame, options);
      } catch (err) {
        // A kept-alive connection the peer had closed: once more on a fresh one.
        if (!reused || !(err instanceof MooncakeError) || err.details?.replied !== false) throw err;
        reply = await this.exchange(key, host, port, frame, options);
      }
      const value = parseJson(reply.payload);
      if (reply.type !== HandshakeType.Notify || reply.oldProtocol) throw new MooncakeError('PROTOCOL_ERROR', `handshake peer ${key} answered a notify with another frame type`);
      const msg = isJsonObject(value) ? value.notify_msg : undefined;
      if (msg === undefined || msg === null || msg === '') throw new MooncakeError('REJECT_HANDSHAKE', `notify rejected by ${key}`, { details: { host, port, name: notify.name } });
    };
    const p = (this.chains.get(key) ?? Promise.resolve()).then(run, run);
    const tail = p.catch(() => undefined);
    this.chains.set(key, tail);
    void tail.then(() => {
      if (this.chains.get(key) === tail) this.chains.delete(key);
    });
    return p;
  }

  private connect(key: string, host: string, port: number, connectTimeoutMs: number): Promise<Conn> {
    return new Promise<Conn>((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true });
      socket.unref();
      const c: Conn = { socket, decoder: new FrameDecoder({ maxLength: this.maxLength }), used: false, dead: false };
      const t = setTimeout(() => {
        socket.destroy();
        reject(new MooncakeError('CONNECT_FAILED', `handshake connect to ${key} timed out after ${connectTimeoutMs} ms`, { details: { host, port, timedOut: true } }));
      }, connectTimeoutMs);
      const fail = (e: Error): void => {
        clearTimeout(t);
        reject(new MooncakeError('CONNECT_FAILED', `cannot connect to handshake peer ${key}: ${e.message}`, { cause: e, details: { host, port } }));
      };
      socket.once('error', fail);
      socket.once('connect', () => {
        clearTimeout(t);
        socket.off('error', fail);
        const end = (err: MooncakeError): void => {
          c.dead = true;
          if (this.conns.get(key) === c) this.conns.delete(key);
          if (c.idle) clearTimeout(c.idle);
          socket.destroy();
          const w = c.waiter;
          c.waiter = undefined;
          w?.(err);
        };
        socket.on('data', (chunk: Buffer) => {
          let frames: Frame[];
          try {
            frames = c.decoder.push(chunk);
          } catch (e) {
            return end(new MooncakeError('PROTOCOL_ERROR', `unreadable handshake reply from ${key}: ${(e as Error).message}`, { cause: e }));
          }
          if (frames.length === 0) return;
          const w = c.waiter;
          c.waiter = undefined;
          c.used = true;
          w?.(undefined, frames[0]);
        });
        const closed = (e?: Error): void => {
          const replied = c.decoder.buffered > 0;
          end(new MooncakeError('SOCKET', `handshake peer ${key} closed the connection${e ? `: ${e.message}` : ''}`, { cause: e, details: { host, port, replied } }));
        };
        socket.on('error', closed);
        socket.on('end', () => closed());
        socket.on('close', () => closed());
        resolve(c);
      });
    });
  }

  /** One request and its reply on the peer's connection (made if there is none). */
  private async exchange(key: string, host: string, port: number, frame: Buffer, o: { connectTimeoutMs: number; timeoutMs: number }): Promise<Frame> {
    let c = this.conns.get(key);
    if (!c || c.dead) {
      c = await this.connect(key, host, port, o.connectTimeoutMs);
      if (this.closed) {
        c.socket.destroy();
        throw new MooncakeError('CLOSED', 'the notify session is closed');
      }
      this.conns.set(key, c);
    }
    const conn = c;
    if (conn.idle) clearTimeout(conn.idle);
    return new Promise<Frame>((resolve, reject) => {
      const t = setTimeout(() => {
        conn.waiter = undefined;
        conn.dead = true;
        if (this.conns.get(key) === conn) this.conns.delete(key);
        conn.socket.destroy();
        reject(new MooncakeError('TIMEOUT', `no handshake reply from ${key} within ${o.timeoutMs} ms`, { details: { host, port } }));
      }, o.timeoutMs);
      conn.waiter = (err, reply) => {
        clearTimeout(t);
        if (err) return reject(err);
        if (!conn.dead) {
          conn.idle = setTimeout(() => {
            if (this.conns.get(key) === conn) this.conns.delete(key);
            conn.dead = true;
            conn.socket.end();
          }, this.idleMs);
          conn.idle.unref();
        }
        resolve(reply!);
      };
      conn.socket.write(frame);
    });
  }

  /** Closes every connection; later sends reject with CLOSED. Idempotent. */
  close(): void {
    this.closed = true;
    for (const c of this.conns.values()) {
      if (c.idle) clearTimeout(c.idle);
      c.dead = true;
      c.socket.end();
      c.socket.destroy();
    }
    this.conns.clear();
  }
}
