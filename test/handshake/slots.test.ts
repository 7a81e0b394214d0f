// The handshake daemon's connection slots and framing edge cases: a request followed by stray bytes
// in the same segment is answered; silent connections give their slot to new ones; one address cannot
// take every slot; a connection that sends nothing is closed at the first-byte deadline.
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameDecoder, HandshakeServer, probe, type HandshakeServerOptions } from '../../lib/handshake';
import { handFrame, rawExchange } from './raw';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function startServer(options: HandshakeServerOptions = {}): Promise<{ server: HandshakeServer; port: number }> {
  const server = new HandshakeServer(options);
  cleanups.push(() => server.close());
  const port = await server.listen({ host: '127.0.0.1', port: 0 });
  return { server, port };
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Opens a connection that never sends a byte; resolves once connected. */
function idle(port: number, localAddress?: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
    s.on('error', () => undefined);
    cleanups.push(() => void s.destroy());
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

const PROBE_REPLY = Buffer.concat([Buffer.from('160000000000000003', 'hex'), Buffer.from('{"status":"success"}\n')]);

describe('a request followed by stray bytes in the same segment', () => {
  const len = (n: bigint) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(n);
    return b;
  };
  const strays: [string, Buffer][] = [
    ['8 zero bytes (a zero length)', Buffer.alloc(8)],
    ['8 0xff bytes (length 2^64-1)', Buffer.alloc(8, 0xff)],
    ['a length past the limit', len(BigInt((1 << 20) + 1))],
    ['16 random-looking bytes', Buffer.from('deadbeefcafebabe0123456789abcdef', 'hex')],
    ['a second, complete frame', handFrame(2, '{"name":"x","notify_msg":"y"}\n')],
    ['a plausible prefix and a partial body', Buffer.concat([len(100n), Buffer.from('{"a"')])],
    ['4 KiB of garbage', Buffer.alloc(4096, 0x5a)],
  ];

  it('FrameDecoder returns the frame and throws the stray bytes\' error on the next call', () => {
    for (const [what, stray] of strays) {
      const d = new FrameDecoder();
      const frames = d.push(Buffer.concat([handFrame(3, '{}\n'), stray]));
      expect(frames, what).toHaveLength(what.includes('second') ? 2 : 1);
      expect(frames[0]!.payload.toString(), what).toBe('{}\n');
    }
    const d = new FrameDecoder();
    d.push(Buffer.concat([handFrame(3, '{}\n'), Buffer.alloc(8)]));
    expect(d.failed).toBe(true);
    expect(() => d.push(Buffer.alloc(0))).toThrow(expect.objectContaining({ code: 'PROTOCOL_ERROR', details: { reason: 'zero-length' } }));
    expect(() => d.end()).toThrow(expect.objectContaining({ code: 'PROTOCOL_ERROR' }));
  });

  it('the daemon answers the request, then half-closes, whatever the stray bytes are', async () => {
    const { server, port } = await startServer();
    for (const [what, stray] of strays) {
      // One write: on loopback the frame and the stray bytes arrive in the same segment.
      const r = await rawExchange(port, Buffer.concat([handFrame(3, '{}\n'), stray]), { timeoutMs: 5000 });
      expect(r.data, what).toEqual(PROBE_REPLY);
      expect(r.ending, what).toBe('end');
    }
    await until(() => server.stats().active === 0);
    const st = server.stats();
    expect(st.served.probe).toBe(strays.length);
    expect(st.extraBytes).toBe(strays.reduce((a, [, b]) => a + b.length, 0));
    expect(Object.values(st.dropped).reduce((a, b) => a + b, 0)).toBe(0);
  });
});

describe('connection slots', () => {
  it('a new connection takes the slot of the oldest silent one when all are taken', async () => {
    const { server, port } = await startServer({ maxConnections: 4, receiveTimeoutMs: 30_000 });
    const silent = [await idle(port), await idle(port), await idle(port), await idle(port)];
    await until(() => server.stats().active === 4);
    const closed: number[] = [];
    silent.forEach((s, i) => s.once('close', () => closed.push(i)));
    expect(await probe('127.0.0.1', port)).toEqual({ status: 'success' });
    await until(() => closed.length === 1);
    expect(closed).toEqual([0]); // the oldest
    expect(server.stats().dropped.evicted).toBe(1);
    // Connections that began a request are not given up: with all four slots busy that way, a fifth is refused.
    for (const s of silent.slice(1)) s.write(handFrame(3, '{}\n').subarray(0, 4));
    const extra = await idle(port);
    extra.write(handFrame(3, '{}\n').subarray(0, 4));
    await until(() => server.stats().bufferedBytes === 16);
    const r = await rawExchange(port, handFrame(3, '{}\n'), { timeoutMs: 5000 });
    expect(r.data.length).toBe(0);
    await until(() => server.stats().dropped.overload === 1);
  });

  it('one address cannot take more than maxConnectionsPerPeer; others are still admitted', async () => {
    const { server, port } = await startServer({ maxConnections: 100, maxConnectionsPerPeer: 3, receiveTimeoutMs: 30_000 });
    const busy = [await idle(port), await idle(port), await idle(port)];
    for (const s of busy) s.write(handFrame(3, '{}\n').subarray(0, 4)); // began requests: not evictable
    await until(() => server.stats().bufferedBytes === 12);
    const refused = await rawExchange(port, handFrame(3, '{}\n'), { timeoutMs: 5000 });
    expect(refused.data.length, 'a fourth connection from 127.0.0.1').toBe(0);
    expect(server.stats().dropped.overload).toBe(1);
    let other;
    try {
      other = await rawExchange(port, handFrame(3, '{}\n'), { timeoutMs: 5000, localAddress: '127.0.0.2' });
    } catch {
      other = undefined;
    }
    if (other) expect(other.data, 'another address is served').toEqual(PROBE_REPLY);
    else console.warn('[slots] SKIPPED the 127.0.0.2 half: cannot bind a second loopback address here');
  });

  it('closes a connection that sends no byte within firstByteTimeoutMs, well before the receive deadline', async () => {
    const { server, port } = await startServer({ firstByteTimeoutMs: 200, receiveTimeoutMs: 10_000 });
    const t0 = Date.now();
    const r = await rawExchange(port, [], { timeoutMs: 5000 });
    expect(r.ending).toBe('end');
    expect(Date.now() - t0).toBeLessThan(3000);
    // A client that started sending has the whole receive deadline.
    const slow = rawExchange(port, [...handFrame(3, '{}\n')].map((b) => Buffer.from([b])), { gapMs: 40, timeoutMs: 8000 });
    expect((await slow).data).toEqual(PROBE_REPLY);
    expect(server.stats().dropped.timeout).toBe(1);
  });
});

describe('allowedPeers on the handshake port', () => {
  it('compares addresses, not their spelling: 0:0:0:0:0:0:0:1 admits ::1, and an IPv4 entry admits its IPv4-mapped form', async () => {
    const server = new HandshakeServer({ allowedPeers: ['0:0:0:0:0:0:0:1', '127.0.0.1'] });
    cleanups.push(() => server.close());
    let port: number;
    try {
      port = await server.listen({ host: '::', port: 0 });
    } catch (e) {
      console.warn(`[slots] SKIPPED the IPv6 allow-list case: no dual-stack listener here (${(e as Error).message})`);
      return;
    }
    expect((await rawExchange(port, handFrame(3, '{}\n'), { host: '::1', timeoutMs: 5000 })).data).toEqual(PROBE_REPLY);
    expect((await rawExchange(port, handFrame(3, '{}\n'), { host: '127.0.0.1', timeoutMs: 5000 })).data).toEqual(PROBE_REPLY); // ::ffff:127.0.0.1
    const denied = await rawExchange(port, handFrame(3, '{}\n'), { host: '127.0.0.1', localAddress: '127.0.0.2', timeoutMs: 5000 });
    expect(denied.data.length).toBe(0);
    expect(server.stats().dropped.refused).toBe(1);
  });
});
