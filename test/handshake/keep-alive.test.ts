// Kept-alive notify connections: the server keeps a connection open after a notify that asks for it
// (`"keep_alive": true`), bounded by its idle and receive deadlines; NotifySession sends many notifies over
// one connection per peer and falls back to a connection per message with servers that close.
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HandshakeServer, HandshakeType, NotifySession, encodeFrame, type Notify } from '../../lib/handshake';
import type { MooncakeError } from '../../lib/errors';
import { closedPort, rawExchange, scriptedServer } from './raw';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

async function startServer(options: ConstructorParameters<typeof HandshakeServer>[0] = {}): Promise<{ server: HandshakeServer; port: number; got: Notify[] }> {
  const got: Notify[] = [];
  const server = new HandshakeServer({ onNotify: (n) => void got.push(n), ...options });
  cleanups.push(() => server.close());
  const port = await server.listen({ host: '127.0.0.1', port: 0 });
  return { server, port, got };
}

function session(): NotifySession {
  const s = new NotifySession();
  cleanups.push(() => s.close());
  return s;
}

const o = { connectTimeoutMs: 2000, timeoutMs: 2000 };
const keepAlive = (msg: string) => encodeFrame(HandshakeType.Notify, JSON.stringify({ name: 'n', notify_msg: msg, keep_alive: true }));
const accepted = encodeFrame(HandshakeType.Notify, '{"name":"","notify_msg":"success"}\n');

describe('HandshakeServer: keep_alive notifies', () => {
  it('answers each request on one open connection; a request without the key closes it as before', async () => {
    const { server, port, got } = await startServer();
    // Two kept-alive notifies, then a plain one: three replies, then the server's FIN.
    const r = await rawExchange(port, [keepAlive('a'), keepAlive('b'), encodeFrame(HandshakeType.Notify, '{"name":"n","notify_msg":"c"}')], { gapMs: 50 });
    expect(r.ending).toBe('end');
    expect(r.data.equals(Buffer.concat([accepted, accepted, accepted]))).toBe(true);
    expect(got.map((n) => n.msg)).toEqual(['a', 'b', 'c']);
    expect(server.stats()).toMatchObject({ keptAlive: 2, served: { notify: 3 } });
    expect(Object.values(server.stats().dropped).reduce((a, b) => a + b, 0)).toBe(0);
  });

  it('a kept-alive connection closes after idleTimeoutMs, and a slow next request gets the receive deadline', async () => {
    const { server, port } = await startServer({ idleTimeoutMs: 200, receiveTimeoutMs: 300 });
    const idle = await rawExchange(port, [keepAlive('a')], { timeoutMs: 5000 });
    expect(idle.ending).toBe('end');
    expect(idle.elapsedMs).toBeGreaterThanOrEqual(180);
    expect(idle.elapsedMs).toBeLessThan(3000);
    // The next request starts (8 of its bytes) and stalls: dropped as a timeout, 300 ms after it started.
    const frame = keepAlive('b');
    const slow = await rawExchange(port, [keepAlive('a'), frame.subarray(0, 8)], { gapMs: 50, timeoutMs: 5000 });
    expect(slow.data.equals(accepted)).toBe(true);
    expect(server.stats().dropped.timeout).toBe(1);
    expect(server.stats().active).toBe(0);
  });

  it('Probe and Metadata never keep a connection, whatever they carry', async () => {
    const { port } = await startServer();
    const r = await rawExchange(port, [encodeFrame(HandshakeType.Probe, '{"keep_alive":true}'), encodeFrame(HandshakeType.Probe, '{}')], { gapMs: 50 });
    expect(r.data.equals(encodeFrame(HandshakeType.Probe, '{"status":"success"}\n'))).toBe(true);
  });
});

describe('NotifySession', () => {
  it('sends many notifies over one connection per peer, in order', async () => {
    const { server, port, got } = await startServer();
    const s = session();
    await Promise.all(Array.from({ length: 50 }, (_, i) => s.send('127.0.0.1', port, { name: 'kv', msg: String(i) }, o)));
    expect(got.map((n) => n.msg)).toEqual(Array.from({ length: 50 }, (_, i) => String(i)));
    expect(server.stats().accepted).toBe(1);
    expect(server.stats().keptAlive).toBe(49);
  });

  it('a server that closes after each reply (upstream) gets a connection per message', async () => {
    let connections = 0;
    const upstream = await scriptedServer(() => (connections++, accepted));
    cleanups.push(upstream.close);
    const s = session();
    for (let i = 0; i < 3; i++) await s.send('127.0.0.1', upstream.port, { name: 'kv', msg: 'x' }, o);
    expect(connections).toBe(3);
  });

  it('a connection the server idled out is replaced, and the message still arrives', async () => {
    const { server, port, got } = await startServer({ idleTimeoutMs: 100 });
    const s = session();
    await s.send('127.0.0.1', port, { name: 'kv', msg: '1' }, o);
    await new Promise((r) => setTimeout(r, 300));
    await s.send('127.0.0.1', port, { name: 'kv', msg: '2' }, o);
    expect(got.map((n) => n.msg)).toEqual(['1', '2']);
    expect(server.stats().accepted).toBe(2);
  });

  it('an idle kept-alive connection gives its slot to a newcomer like any silent one; the next send reconnects', async () => {
    const { server, port, got } = await startServer({ maxConnections: 1 });
    const s = session();
    await s.send('127.0.0.1', port, { name: 'kv', msg: '1' }, o);
    await new Promise((r) => setTimeout(r, 150)); // idle long enough to count as silent
    const probe = await rawExchange(port, encodeFrame(HandshakeType.Probe, '{}'));
    expect(probe.data.length).toBeGreaterThan(0); // the newcomer was served in the freed slot
    expect(server.stats().dropped.evicted).toBe(1);
    await s.send('127.0.0.1', port, { name: 'kv', msg: '2' }, o);
    expect(got.map((n) => n.msg)).toEqual(['1', '2']);
  });

  it('errors as sendNotify: refused, rejected, no reply; closed sessions refuse', async () => {
    const s = session();
    const refused = await s.send('127.0.0.1', await closedPort(), { name: 'kv', msg: 'x' }, o).catch((e: MooncakeError) => e);
    expect((refused as MooncakeError).code).toBe('CONNECT_FAILED');
    const { port } = await startServer({ onNotify: () => false });
    expect(((await s.send('127.0.0.1', port, { name: 'kv', msg: 'x' }, o).catch((e: MooncakeError) => e)) as MooncakeError).code).toBe('REJECT_HANDSHAKE');
    const mute = net.createServer((c) => c.on('error', () => undefined).resume());
    await new Promise<void>((r) => mute.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => mute.close(() => r())));
    const silent = await s.send('127.0.0.1', (mute.address() as net.AddressInfo).port, { name: 'kv', msg: 'x' }, { connectTimeoutMs: 2000, timeoutMs: 200 }).catch((e: MooncakeError) => e);
    expect((silent as MooncakeError).code).toBe('TIMEOUT');
    s.close();
    expect(((await s.send('127.0.0.1', port, { name: 'kv', msg: 'x' }, o).catch((e: MooncakeError) => e)) as MooncakeError).code).toBe('CLOSED');
  });
});
