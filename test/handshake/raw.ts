/** Raw-socket helpers for handshake tests: send arbitrary bytes, see exactly what comes back. */
import * as net from 'node:net';

export interface RawResult {
  /** Everything the server sent. */
  data: Buffer;
  /** How the exchange ended. */
  ending: 'end' | 'reset' | 'timeout';
  /** ms from connect to the end of the exchange. */
  elapsedMs: number;
}

/**
 * Connects, writes `chunks` (with `gapMs` between them), optionally half-closes, and collects
 * what the server sends until it closes its side (or resets, or `timeoutMs` passes). The socket
 * is always destroyed before resolving.
 */
export function rawExchange(
  port: number,
  chunks: Buffer[] | Buffer,
  options: { timeoutMs?: number; gapMs?: number; halfClose?: boolean; host?: string; localAddress?: string } = {},
): Promise<RawResult> {
  const list = Array.isArray(chunks) ? chunks : [chunks];
  const timeoutMs = options.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const start = Date.now();
    let done = false;
    const socket = net.connect({ host: options.host ?? '127.0.0.1', port, ...(options.localAddress ? { localAddress: options.localAddress } : {}) });
    const finish = (ending: RawResult['ending']): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ data: Buffer.concat(parts), ending, elapsedMs: Date.now() - start });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('connect', async () => {
      for (let i = 0; i < list.length; i++) {
        if (done) return;
        socket.write(list[i]!);
        if (options.gapMs && i < list.length - 1) await new Promise((r) => setTimeout(r, options.gapMs));
      }
      if (options.halfClose && !done) socket.end();
    });
    socket.on('data', (d) => parts.push(d));
    socket.on('end', () => finish('end'));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNRESET' || e.code === 'EPIPE') finish('reset');
      else if (!done) {
        done = true;
        clearTimeout(timer);
        socket.destroy();
        reject(e);
      }
    });
  });
}

/** A frame header + type + text, built by hand (independent of lib/handshake/framing). */
export function handFrame(type: number | null, text: string | Buffer, lengthOverride?: bigint): Buffer {
  const body = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
  const head = Buffer.alloc(type === null ? 8 : 9);
  head.writeBigUInt64LE(lengthOverride ?? BigInt(body.length + (type === null ? 0 : 1)), 0);
  if (type !== null) head[8] = type;
  return Buffer.concat([head, body]);
}

/** A server that accepts and never answers; resolves with its port and a closer. */
export async function silentServer(): Promise<{ port: number; sockets: Set<net.Socket>; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.resume(); // read (and discard) so that the client's close is seen
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    sockets,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** A one-shot server that answers every connection with `reply` bytes, then closes. */
export async function scriptedServer(reply: Buffer | ((request: Buffer) => Buffer | null)): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    let got = Buffer.alloc(0);
    let answered = false;
    s.on('data', (d) => {
      got = Buffer.concat([got, d]);
      if (answered || got.length < 8) return;
      const len = Number(got.readBigUInt64LE(0));
      if (got.length < 8 + len) return;
      answered = true;
      const out = typeof reply === 'function' ? reply(got) : reply;
      if (out === null) s.destroy();
      else s.end(out);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** A free TCP port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}
