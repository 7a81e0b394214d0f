/**
 * The handshake daemon every Mooncake engine runs on its `rpc_port` (upstream
 * `SocketHandShakePlugin::startDaemon`), answering with the same bytes upstream does:
 *
 * | request            | reply (same type; untyped if the request was untyped)                                   |
 * |--------------------|------------------------------------------------------------------------------------------|
 * | Probe (3)          | `{"status":"success"}`                                                                   |
 * | Notify (2)         | `{"name":"","notify_msg":"success"}` (`notify_msg` "" when the owner rejects it)         |
 * | Metadata (1)       | the owner's segment descriptor, or `null` when it has none (or no handler, as in HTTP mode) |
 * | Connection (0)/old | `{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}` |
 *
 * One request per connection: read one frame, reply, half-close (`shutdown(SHUT_WR)`), then wait
 * (bounded) for the client to close. The one extension: a Notify whose JSON carries `"keep_alive": true`
 * (mooncake-node's senders of many notifications, `NotifySession`) keeps the connection open after the
 * reply for the next request, until the client closes it or it idles for `idleTimeoutMs`; upstream never
 * sends the key, and an upstream server ignores it (the sender then reconnects per message). Unlike upstream, connections are served concurrently and the
 * receive timeout is a deadline for the whole request frame rather than a per-read idle timeout
 * (so a byte-at-a-time client cannot hold a connection open). Anything hostile (garbage, a length
 * over the limit, a truncated or slow frame, a JSON error) is counted in `stats()`, reported as a
 * 'drop' event, and the connection is closed without a reply, as upstream does.
 */

import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { allowList } from '../util/allow-list';
import { envInt } from '../util/options';
import { MooncakeError, isMooncakeError } from '../errors';
import {
  FrameDecoder,
  HANDSHAKE_TYPE_NAMES,
  HandshakeType,
  LENGTH_BYTES,
  encodeFrame,
  handshakeMaxLengthFromEnv,
  type Frame,
} from './framing';
import { isJsonObject, messageText, parseJson, stringifyFast } from './json';
import {
  type DropInfo,
  type DropReason,
  EMPTY_HANDSHAKE_DESC,
  type HandshakeHandlers,
  type HandshakeListenOptions,
  type HandshakeServerEvents,
  type HandshakeServerOptions,
  type HandshakeServerStats,
  type MetadataReply,
  NOTIFY_ACCEPTED,
  NOTIFY_REJECTED,
  PROBE_REPLY,
  type RequestInfo,
  decodeNotify,
  defaultPerPeer,
  rpcPortRangeFromEnv,
} from './server-config';

export * from './server-config';

/** An IPv4-mapped IPv6 address as plain IPv4 (one source address, however it connected). */
function normalizeIp(ip: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  return (m ? m[1]! : ip).toLowerCase();
}

class Timeout extends Error {}

export class HandshakeServer extends EventEmitter<HandshakeServerEvents> {
  private readonly opts: Required<Omit<HandshakeServerOptions, keyof HandshakeHandlers | 'allowedPeers'>>;
  private readonly allowed: ((address: string | undefined) => boolean) | undefined;
  private readonly handlers: HandshakeHandlers;
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  /** Connections that have not sent a byte yet, oldest first (Sets iterate in insertion order). */
  private readonly silent = new Set<net.Socket>();
  private readonly silentBySource = new Map<string, Set<net.Socket>>();
  private readonly perSource = new Map<string, number>();
  /** Closes a silent connection to make room for a new one; when and in which turn it was accepted. */
  private readonly evictors = new Map<net.Socket, { evict: () => void; turn: number; at: number }>();
  /** Event-loop turns in which connections arrived (see makeRoom). */
  private turn = 0;
  private turnPending = false;
  private readonly timers = new Set<NodeJS.Timeout>();
  private refed = true;
  /** Request bytes currently buffered across connections. */
  private buffered = 0;
  private closing: Promise<void> | undefined;
  private boundPort = 0;
  private boundHost = '';
  private readonly counters: HandshakeServerStats = {
    accepted: 0,
    active: 0,
    served: { connection: 0, metadata: 0, notify: 0, probe: 0 },
    oldProtocol: 0,
    rejectedNotifies: 0,
    handlerErrors: 0,
    dropped: { timeout: 0, malformed: 0, protocol: 0, truncated: 0, handler: 0, socket: 0, overload: 0, closed: 0, refused: 0, evicted: 0 },
    extraBytes: 0,
    closeWaitTimeouts: 0,
    keptAlive: 0,
    bufferedBytes: 0,
  };

  constructor(options: HandshakeServerOptions = {}) {
    super();
    const { onMetadata, onNotify, allowedPeers, ...rest } = options;
    this.allowed = allowList(allowedPeers, 'allowedPeers', 'INVALID_ARGUMENT');
    this.handlers = {};
    if (onMetadata) this.handlers.onMetadata = onMetadata;
    if (onNotify) this.handlers.onNotify = onNotify;
    this.opts = {
      maxLength: rest.maxLength ?? handshakeMaxLengthFromEnv(),
      receiveTimeoutMs: rest.receiveTimeoutMs ?? 5000,
      handlerTimeoutMs: rest.handlerTimeoutMs ?? 5000,
      closeWaitMs: rest.closeWaitMs ?? 5000,
      idleTimeoutMs: rest.idleTimeoutMs ?? 30_000,
      maxConnections: rest.maxConnections ?? 1024,
      maxConnectionsPerPeer: 0,
      firstByteTimeoutMs: 0,
      backlog: rest.backlog ?? positive(envInt('MC_HANDSHAKE_LISTEN_BACKLOG')) ?? 128,
      maxBufferedBytes: 0,
    };
    this.opts.maxBufferedBytes = Math.max(rest.maxBufferedBytes ?? 64 * (1 << 20), this.opts.maxLength + 9);
    this.opts.maxConnectionsPerPeer = rest.maxConnectionsPerPeer ?? defaultPerPeer(this.opts.maxConnections);
    this.opts.firstByteTimeoutMs = Math.min(rest.firstByteTimeoutMs ?? 5000, this.opts.receiveTimeoutMs);
    new FrameDecoder({ maxLength: this.opts.maxLength }); // validates maxLength early
    for (const k of ['receiveTimeoutMs', 'handlerTimeoutMs', 'closeWaitMs', 'idleTimeoutMs', 'maxConnections', 'maxConnectionsPerPeer', 'firstByteTimeoutMs', 'backlog'] as const) {
      const v = this.opts[k];
      if (!Number.isFinite(v) || v <= 0) throw new MooncakeError('INVALID_ARGUMENT', `${k} must be a positive number, got ${v}`);
    }
  }

  /** The bound port (0 before listen()). */
  get port(): number {
    return this.boundPort;
  }

  get listening(): boolean {
    return this.server?.listening === true;
  }

  address(): { host: string; port: number } | undefined {
    return this.server?.listening ? { host: this.boundHost, port: this.boundPort } : undefined;
  }

  stats(): HandshakeServerStats {
    const c = this.counters;
    return { ...c, active: this.sockets.size, bufferedBytes: this.buffered, served: { ...c.served }, dropped: { ...c.dropped } };
  }

  /** Starts listening; resolves with the bound port. */
  async listen(options: HandshakeListenOptions = {}): Promise<number> {
    if (this.closing) throw new MooncakeError('CLOSED', 'the handshake server is closed');
    if (this.server) throw new MooncakeError('INVALID_ARGUMENT', 'the handshake server is already listening');
    const host = options.host ?? '0.0.0.0';
    // No server.maxConnections: admission (with eviction of silent connections) is onConnection's.
    const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (s) => this.onConnection(s));
    this.server = server;
    if (!this.refed) server.unref();

    const candidates: number[] = [];
    if (options.port !== undefined) {
      if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
        this.server = undefined;
        throw new MooncakeError('INVALID_ARGUMENT', `invalid port ${options.port}`);
      }
      candidates.push(options.port);
    } else {
      const r = options.portRange === undefined ? rpcPortRangeFromEnv() : Array.isArray(options.portRange) ? { min: options.portRange[0], max: options.portRange[1] } : options.portRange;
      if (!Number.isInteger(r.min) || !Number.isInteger(r.max) || r.min < 1 || r.max > 65535 || r.min > r.max) {
        this.server = undefined;
        throw new MooncakeError('INVALID_ARGUMENT', `invalid port range ${r.min}..${r.max}`);
      }
      // Like upstream's findAvailableTcpPort: up to 500 random picks from the range.
      for (let i = 0; i < 500; i++) candidates.push(r.min + Math.floor(Math.random() * (r.max - r.min + 1)));
    }

    let lastError: unknown;
    for (const port of candidates) {
      if (this.closing) break;
      try {
        await new Promise<void>((resolve, reject) => {
          const onError = (e: Error): void => {
            server.off('listening', onListening);
            reject(e);
          };
          const onListening = (): void => {
            server.off('error', onError);
            resolve();
          };
          server.once('error', onError);
          server.once('listening', onListening);
          server.listen({ host, port, backlog: this.opts.backlog, exclusive: true });
        });
        const addr = server.address() as net.AddressInfo;
        this.boundPort = addr.port;
        this.boundHost = addr.address;
        // After listening, accept-time errors (EMFILE...) must not crash the process.
        server.on('error', (e) => this.drop('socket', new MooncakeError('SOCKET', `handshake listener error: ${e.message}`, { cause: e })));
        if (this.closing) {
          server.close();
          throw new MooncakeError('CLOSED', 'the handshake server was closed while starting');
        }
        return addr.port;
      } catch (e) {
        if (isMooncakeError(e)) throw e;
        lastError = e;
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EADDRINUSE' && code !== 'EACCES') break;
      }
    }
    this.server = undefined;
    throw new MooncakeError('SOCKET', `handshake server could not listen on ${host}: ${(lastError as Error | undefined)?.message ?? 'closed'}`, {
      cause: lastError,
      details: { host, ...(options.port !== undefined ? { port: options.port } : {}) },
    });
  }

  /** Stops listening and destroys open connections. Idempotent; resolves once the listener is closed. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    const server = this.server;
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    this.silent.clear();
    this.silentBySource.clear();
    this.perSource.clear();
    this.evictors.clear();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.closing = new Promise<void>((resolve) => {
      if (!server || !server.listening) return resolve();
      server.close(() => resolve());
    });
    return this.closing;
  }

  /** Lets the process exit while the daemon (and its open connections) are all that is left. */
  unref(): this {
    this.refed = false;
    this.server?.unref();
    for (const s of this.sockets) s.unref();
    for (const t of this.timers) t.unref();
    return this;
  }

  ref(): this {
    this.refed = true;
    this.server?.ref();
    for (const s of this.sockets) s.ref();
    for (const t of this.timers) t.ref();
    return this;
  }

  private timer(ms: number, fn: () => void): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    if (!this.refed) t.unref();
    this.timers.add(t);
    return t;
  }

  private clearTimer(t: NodeJS.Timeout | undefined): void {
    if (t === undefined) return;
    clearTimeout(t);
    this.timers.delete(t);
  }

  private drop(reason: DropReason, error: MooncakeError | undefined, socket?: net.Socket): void {
    this.counters.dropped[reason]++;
    const info: DropInfo = { reason };
    if (error) info.error = error;
    if (socket?.remoteAddress !== undefined) info.remoteAddress = socket.remoteAddress;
    if (socket?.remotePort !== undefined) info.remotePort = socket.remotePort;
    this.emit('drop', info);
  }

  private onConnection(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    if (this.allowed && !this.allowed(socket.remoteAddress)) {
      this.drop('refused', new MooncakeError('REJECT_HANDSHAKE', `handshake connection from ${socket.remoteAddress ?? '?'} refused: not in allowedPeers`), socket);
      socket.destroy();
      return;
    }
    const source = normalizeIp(socket.remoteAddress ?? '');
    if (!this.makeRoom(source)) {
      this.drop('overload', new MooncakeError('TOO_MANY_REQUESTS', `handshake connection from ${socket.remoteAddress ?? '?'} refused: no free slot (${this.sockets.size} connections, ${this.perSource.get(source) ?? 0} from this address)`), socket);
      socket.destroy();
      return;
    }
    this.counters.accepted++;
    this.sockets.add(socket);
    this.perSource.set(source, (this.perSource.get(source) ?? 0) + 1);
    if (!this.refed) socket.unref();
    socket.setNoDelay(true);

    let decoder = new FrameDecoder({ maxLength: this.opts.maxLength });
    let phase: 'receive' | 'handle' | 'closewait' | 'done' = 'receive';
    /** Requests already answered on this connection (more than 0 only when kept alive). */
    let answered = 0;
    let timer: NodeJS.Timeout | undefined;
    let held = 0; // this connection's share of this.buffered
    const hold = (n: number): void => {
      this.buffered += n - held;
      held = n;
    };
    let released = false;
    /** Gives back the connection's slot (once). */
    const release = (): void => {
      if (released) return;
      released = true;
      hold(0);
      this.clearTimer(timer);
      this.sockets.delete(socket);
      this.markSilent(socket, source, false);
      const n = (this.perSource.get(source) ?? 1) - 1;
      if (n > 0) this.perSource.set(source, n);
      else this.perSource.delete(source);
    };

    const finish = (): void => {
      if (phase === 'done') return;
      phase = 'done';
      release();
      socket.destroy();
    };
    const fail = (reason: DropReason, error: MooncakeError): void => {
      if (phase === 'done') return;
      this.drop(reason, error, socket);
      finish();
    };

    socket.on('error', (e) => {
      if (phase === 'closewait') return finish(); // the reply went out; a reset now is the client's business
      fail('socket', new MooncakeError('SOCKET', `handshake connection error: ${e.message}`, { cause: e }));
    });
    socket.on('close', () => {
      // A kept-alive connection closed between requests is the client's normal goodbye.
      const between = phase === 'receive' && answered > 0 && decoder.buffered === 0;
      if ((phase === 'receive' && !between) || phase === 'handle') this.drop('closed', undefined, socket);
      phase = 'done';
      release();
    });
    /** Marks the connection silent (evictable when slots run out): at accept, and between kept-alive requests. */
    const silent = (): void => {
      this.markSilent(socket, source, true);
      this.evictors.set(socket, {
        evict: () => fail('evicted', new MooncakeError('TOO_MANY_REQUESTS', 'a silent handshake connection gave its slot to a new one')),
        turn: this.turn,
        at: performance.now(),
      });
    };
    silent();

    const acceptedAt = performance.now();
    const receiveDeadline = (): void => {
      fail('timeout', new MooncakeError('TIMEOUT', `no complete handshake request within ${this.opts.receiveTimeoutMs} ms`, { details: { buffered: decoder.buffered } }));
    };
    timer = this.timer(this.opts.firstByteTimeoutMs, () => {
      if (this.silent.has(socket)) {
        fail('timeout', new MooncakeError('TIMEOUT', `no byte within ${this.opts.firstByteTimeoutMs} ms of connecting`, { details: { buffered: 0 } }));
      } else {
        timer = this.timer(Math.max(0, this.opts.receiveTimeoutMs - (performance.now() - acceptedAt)), receiveDeadline);
      }
    });

    socket.on('data', (chunk: Buffer) => {
      if (phase !== 'receive') {
        if (phase !== 'done') this.counters.extraBytes += chunk.length;
        return;
      }
      this.markSilent(socket, source, false);
      if (answered > 0 && decoder.buffered === 0) {
        // The next request on a kept-alive connection has started: it gets the usual receive deadline.
        this.clearTimer(timer);
        timer = this.timer(this.opts.receiveTimeoutMs, receiveDeadline);
      }
      if (this.buffered + chunk.length > this.opts.maxBufferedBytes) {
        return fail('overload', new MooncakeError('TOO_MANY_REQUESTS', `handshake requests in progress hold more than ${this.opts.maxBufferedBytes} bytes`));
      }
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch (e) {
        return fail('protocol', e as MooncakeError);
      }
      if (frames.length === 0) {
        hold(decoder.buffered);
        return;
      }
      hold(0);
      // Whatever followed the request (a second frame, stray bytes, even a bad length prefix) is
      // ignored: one request per connection, and it is answered.
      this.counters.extraBytes += decoder.buffered + (decoder.failed || decoder.pendingLength !== undefined ? LENGTH_BYTES : 0);
      for (let i = 1; i < frames.length; i++) this.counters.extraBytes += 8 + frames[i]!.payload.length + (frames[i]!.oldProtocol ? 0 : 1);
      phase = 'handle';
      this.clearTimer(timer);
      timer = undefined;
      void this.serve(socket, frames[0]!).then(
        ({ reply, keepAlive }) => {
          if (phase !== 'handle') return;
          this.clearTimer(timer);
          if (answered > 0) this.counters.keptAlive++;
          answered++;
          const clean = frames.length === 1 && decoder.buffered === 0 && !decoder.failed && decoder.pendingLength === undefined;
          if (keepAlive && clean && !this.closing) {
            // The client waits for this reply before its next request: a fresh frame, an idle deadline,
            // and, idle, the connection is as evictable as one that never sent a byte.
            phase = 'receive';
            decoder = new FrameDecoder({ maxLength: this.opts.maxLength });
            socket.write(reply);
            silent();
            timer = this.timer(this.opts.idleTimeoutMs, finish);
            return;
          }
          phase = 'closewait';
          socket.end(reply);
          timer = this.timer(this.opts.closeWaitMs, () => {
            this.counters.closeWaitTimeouts++;
            finish();
          });
        },
        (e: unknown) => {
          if (e instanceof Timeout) {
            this.counters.handlerErrors++;
            return fail('handler', new MooncakeError('TIMEOUT', `handshake handler did not answer within ${this.opts.handlerTimeoutMs} ms`));
          }
          fail('malformed', isMooncakeError(e) ? e : new MooncakeError('PROTOCOL_ERROR', String(e), { cause: e }));
        },
      );
    });

    socket.on('end', () => {
      if (phase === 'receive' && answered > 0 && decoder.buffered === 0) {
        finish(); // a kept-alive connection closed between requests
      } else if (phase === 'receive') {
        try {
          decoder.end();
          fail('truncated', new MooncakeError('PROTOCOL_ERROR', 'client closed before sending a request', { details: { reason: 'truncated', buffered: 0 } }));
        } catch (e) {
          fail('truncated', e as MooncakeError);
        }
      } else if (phase === 'closewait') {
        finish();
      }
      // phase 'handle': the client half-closed after its request; still reply.
    });
  }

  /**
   * Whether a connection from `source` may be admitted, evicting a silent connection if there is no
   * free slot (see below for whose).
   */
  private makeRoom(source: string): boolean {
    if (!this.turnPending) {
      this.turnPending = true;
      setImmediate(() => {
        this.turn++;
        this.turnPending = false;
      });
    }
    const mine = this.perSource.get(source) ?? 0;
    const sourceFull = mine >= this.opts.maxConnectionsPerPeer;
    const full = this.sockets.size >= this.opts.maxConnections;
    if (!sourceFull && !full) return true;
    // At the address's own cap, one of its own goes. Else the address holding the most connections
    // gives one up, unless it holds no more than the newcomer's: then the newcomer's own address does.
    // So a flood from some addresses never pushes out a peer from another address that has fewer.
    let from = source;
    if (!sourceFull) {
      let most = 0;
      for (const s of this.silentBySource.keys()) {
        const c = this.perSource.get(s) ?? 0;
        if (c > most) {
          most = c;
          from = s;
        }
      }
      if (most <= mine) from = source;
    }
    const victim = this.silentBySource.get(from)?.values().next().value;
    const v = victim === undefined ? undefined : this.evictors.get(victim);
    // Only a connection that has had a whole turn of the event loop to deliver its first bytes (or
    // 100 ms) can be called silent: a burst of accepts must not evict a peer that connected a moment
    // earlier, before its request was even read.
    if (!v || (v.turn + 2 > this.turn && performance.now() - v.at < 100)) return false;
    v.evict();
    return true;
  }

  private markSilent(socket: net.Socket, source: string, silent: boolean): void {
    if (!silent) {
      if (!this.silent.delete(socket)) return;
      this.evictors.delete(socket);
      const set = this.silentBySource.get(source);
      set?.delete(socket);
      if (set?.size === 0) this.silentBySource.delete(source);
      return;
    }
    this.silent.add(socket);
    let set = this.silentBySource.get(source);
    if (!set) this.silentBySource.set(source, (set = new Set()));
    set.add(socket);
  }

  /**
   * Builds the reply frame for one request, and whether the connection stays open for another (a notify
   * asking for it); rejects to drop the connection without a reply.
   */
  private async serve(socket: net.Socket, frame: Frame): Promise<{ reply: Buffer; keepAlive: boolean }> {
    const text = frame.payload.toString('utf8');
    const body = parseJson(frame.payload); // MALFORMED_JSON → dropped, like upstream
    const info: RequestInfo = {
      type: frame.type,
      oldProtocol: frame.oldProtocol,
      text,
      remoteAddress: socket.remoteAddress ?? '',
      remotePort: socket.remotePort ?? 0,
    };
    this.emit('request', info);
    if (frame.oldProtocol) this.counters.oldProtocol++;
    this.counters.served[HANDSHAKE_TYPE_NAMES[frame.type]]++;

    let reply: string;
    switch (frame.type) {
      case HandshakeType.Probe:
        reply = stringifyFast(PROBE_REPLY);
        break;
      case HandshakeType.Connection:
        reply = stringifyFast(EMPTY_HANDSHAKE_DESC);
        break;
      case HandshakeType.Notify: {
        const n = decodeNotify(body);
        let ok = n !== undefined;
        if (n && this.handlers.onNotify) {
          try {
            ok = (await this.bounded(this.handlers.onNotify(n, info))) !== false;
          } catch (e) {
            if (e instanceof Timeout) throw e;
            this.counters.handlerErrors++;
            ok = false;
          }
        }
        if (!ok) this.counters.rejectedNotifies++;
        reply = stringifyFast(ok ? NOTIFY_ACCEPTED : NOTIFY_REJECTED);
        break;
      }
      case HandshakeType.Metadata: {
        let local: MetadataReply = null;
        if (this.handlers.onMetadata) {
          try {
            local = await this.bounded(this.handlers.onMetadata(body, info));
          } catch (e) {
            if (e instanceof Timeout) throw e;
            this.counters.handlerErrors++;
            local = null;
          }
        }
        try {
          reply = messageText(local ?? null);
        } catch {
          this.counters.handlerErrors++;
          reply = stringifyFast(null);
        }
        break;
      }
    }
    const keepAlive = frame.type === HandshakeType.Notify && !frame.oldProtocol && isJsonObject(body) && body.keep_alive === true;
    return { reply: encodeFrame(frame.type, reply, { oldProtocol: frame.oldProtocol }), keepAlive };
  }

  private bounded<T>(v: T | PromiseLike<T>): Promise<T> {
    if (typeof (v as { then?: unknown } | null | undefined)?.then !== 'function') return Promise.resolve(v as T);
    return new Promise<T>((resolve, reject) => {
      const t = this.timer(this.opts.handlerTimeoutMs, () => reject(new Timeout()));
      (v as PromiseLike<T>).then(
        (r) => {
          this.clearTimer(t);
          resolve(r);
        },
        (e: unknown) => {
          this.clearTimer(t);
          reject(e);
        },
      );
    });
  }
}

function positive(n: number | undefined): number | undefined {
  return n !== undefined && n > 0 ? n : undefined;
}
