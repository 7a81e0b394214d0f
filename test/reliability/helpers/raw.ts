/** Raw data-port clients: hand-built 24-byte headers, and exactly what comes back. */
import * as net from 'node:net';

export const OK_FRAME = Buffer.from([0, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d]);
export const REJECT_FRAME = Buffer.from([1, 0, 0, 0, 0x56, 0x54, 0x43, 0x4d]);
export const U64_MAX = (1n << 64n) - 1n;

export function header(size: bigint | number, addr: bigint | number, opcode: number, padding = 0): Buffer {
  const h = Buffer.alloc(24, padding);
  h.writeBigUInt64LE(BigInt.asUintN(64, BigInt(size)), 0);
  h.writeBigUInt64LE(BigInt.asUintN(64, BigInt(addr)), 8);
  h[16] = opcode;
  return h;
}

export interface RawResult {
  data: Buffer;
  /** How the exchange ended: the server closed ('end'), reset, or neither within the time ('timeout'). */
  ending: 'end' | 'reset' | 'timeout' | 'refused';
  elapsedMs: number;
}

export interface RawOptions {
  host?: string;
  localAddress?: string;
  timeoutMs?: number;
  /** Half-close after writing (the server then sees EOF at whatever point the bytes ended). */
  halfClose?: boolean;
  /** Stop collecting once this many bytes arrived (then destroy). */
  expectBytes?: number;
  /** Pause between chunks. */
  gapMs?: number;
}

/** Connects, writes the chunks, and collects the reply until the server closes (bounded). */
export function exchange(port: number, chunks: Buffer | Buffer[], o: RawOptions = {}): Promise<RawResult> {
  const list = Array.isArray(chunks) ? chunks : [chunks];
  const timeoutMs = o.timeoutMs ?? 5000;
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let got = 0;
    const start = Date.now();
    let done = false;
    const socket = net.connect({ host: o.host ?? '127.0.0.1', port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
    const finish = (ending: RawResult['ending']): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ data: Buffer.concat(parts), ending, elapsedMs: Date.now() - start });
    };
    const timer = setTimeout(() => finish('timeout'), timeoutMs);
    socket.on('connect', async () => {
      for (let i = 0; i < list.length && !done; i++) {
        socket.write(list[i]!);
        if (o.gapMs && i < list.length - 1) await new Promise((r) => setTimeout(r, o.gapMs));
      }
      if (o.halfClose && !done) socket.end();
    });
    socket.on('data', (d: Buffer) => {
      parts.push(d);
      got += d.length;
      if (o.expectBytes !== undefined && got >= o.expectBytes) finish('end');
    });
    socket.on('end', () => finish('end'));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ECONNREFUSED') finish('refused');
      else finish('reset'); // ECONNRESET, EPIPE: the server closed while we were still writing
    });
  });
}

/** Runs `fn` over `items` with at most `limit` at a time. */
export async function pool<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!, i);
      }
    }),
  );
  return out;
}
