import { promises as dnsp } from 'node:dns';
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { MooncakeError } from '../../lib/errors';
import { timedRejection } from '../helpers/rejection';
import {
  HandshakeServer,
  HandshakeType,
  NotificationQueue,
  RawJson,
  encodeFrame,
  encodeMessage,
  exchange,
  fetchPeerDescriptor,
  parseHostPort,
  probe,
  sendHandshake,
  sendNotify,
  type HandshakeServerOptions,
  type Notify,
} from '../../lib/handshake';
import { closedPort, handFrame, rawExchange, scriptedServer, silentServer } from './raw';

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

async function rejection(p: Promise<unknown>): Promise<MooncakeError> {
  return (await timedRejection(p)).error;
}

/** Waits (bounded) until `cond` holds. */
async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const DESCRIPTOR = {
  buffers: [{ addr: 140245863022608, length: 1073741824, name: '127.0.0.1:12345' }],
  name: '127.0.0.1:12345',
  protocol: 'tcp',
  tcp_data_port: 16050,
  tcp_proto_version: 2,
  timestamp: '2026-08-22 13:12:18.123456',
};

describe('HandshakeServer: replies byte for byte', () => {
  it('answers Probe with {"status":"success"} and half-closes', async () => {
    const { server, port } = await startServer();
    const r = await rawExchange(port, handFrame(3, '{}\n'));
    expect(r.ending).toBe('end');
    expect(r.data).toEqual(Buffer.concat([Buffer.from('160000000000000003', 'hex'), Buffer.from('{"status":"success"}\n')]));
    await until(() => server.stats().active === 0);
    expect(server.stats().served.probe).toBe(1);
  });

  it('answers Notify with {"name":"","notify_msg":"success"} and hands the notify to onNotify', async () => {
    const got: Notify[] = [];
    const { port } = await startServer({ onNotify: (n) => void got.push(n) });
    const r = await rawExchange(port, handFrame(2, '{"name":"req-7","notify_msg":"kv ready"}\n'));
    expect(r.data).toEqual(Buffer.concat([Buffer.from('240000000000000002', 'hex'), Buffer.from('{"name":"","notify_msg":"success"}\n')]));
    expect(got).toEqual([{ name: 'req-7', msg: 'kv ready' }]);
  });

  it('answers Connection (typed and untyped) with the all-empty HandShakeDesc, untyped for untyped', async () => {
    const { server, port } = await startServer();
    const empty = '{"local_gid":"","local_lid":0,"local_nic_path":"","payload":"","peer_nic_path":"","qp_num":[],"reply_msg":""}\n';
    const typed = await rawExchange(port, handFrame(0, '{"local_nic_path":"x","qp_num":[1]}\n'));
    expect(typed.data).toEqual(Buffer.concat([Buffer.from('6f0000000000000000', 'hex'), Buffer.from(empty)]));
    const old = await rawExchange(port, handFrame(null, '{"local_nic_path":"x"}\n'));
    expect(old.data).toEqual(Buffer.concat([Buffer.from('6e00000000000000', 'hex'), Buffer.from(empty)]));
    expect(server.stats()).toMatchObject({ oldProtocol: 1, served: { connection: 2 } });
  });

  it('answers Metadata with the owner descriptor (sorted, compact, bigint exact), passing the peer descriptor in', async () => {
    const seen: unknown[] = [];
    const { port } = await startServer({
      onMetadata: (peer) => {
        seen.push(peer);
        return { ...DESCRIPTOR, buffers: [{ addr: 2n ** 63n, length: 4096, name: 'n' }] };
      },
    });
    const r = await rawExchange(port, encodeMessage(HandshakeType.Metadata, { name: 'peer', buffers: [] }));
    const text = r.data.subarray(9).toString();
    expect(r.data[8]).toBe(1);
    expect(Number(r.data.readBigUInt64LE(0))).toBe(r.data.length - 8);
    expect(text).toBe(
      '{"buffers":[{"addr":9223372036854775808,"length":4096,"name":"n"}],"name":"127.0.0.1:12345","protocol":"tcp","tcp_data_port":16050,"tcp_proto_version":2,"timestamp":"2026-08-22 13:12:18.123456"}\n',
    );
    expect(seen).toEqual([{ name: 'peer', buffers: [] }]);
  });

  it('answers Metadata with null without a handler (upstream HTTP mode), when the handler returns null, or throws', async () => {
    const plain = await startServer();
    const expectNull = (d: Buffer): void => expect(d).toEqual(Buffer.concat([Buffer.from('060000000000000001', 'hex'), Buffer.from('null\n')]));
    expectNull((await rawExchange(plain.port, handFrame(1, '{}\n'))).data);
    const none = await startServer({ onMetadata: () => null });
    expectNull((await rawExchange(none.port, handFrame(1, '{}\n'))).data);
    const bad = await startServer({
      onMetadata: () => {
        throw new Error('no descriptor');
      },
    });
    expectNull((await rawExchange(bad.port, handFrame(1, '{}\n'))).data);
    expect(bad.server.stats().handlerErrors).toBe(1);
  });

  it('sends a RawJson descriptor verbatim (adding the newline)', async () => {
    const { port } = await startServer({ onMetadata: () => new RawJson('{"z":1,"a":2}') });
    expect((await rawExchange(port, handFrame(1, '{}\n'))).data.subarray(9).toString()).toBe('{"z":1,"a":2}\n');
  });

  it('still replies to a client that half-closes right after its request', async () => {
    const { port } = await startServer();
    const r = await rawExchange(port, handFrame(3, '{}\n'), { halfClose: true });
    expect(r.data.subarray(9).toString()).toBe('{"status":"success"}\n');
  });

  it('answers only the first of pipelined requests and counts the rest as extra bytes', async () => {
    const { server, port } = await startServer();
    const second = handFrame(2, '{"name":"a","notify_msg":"b"}\n');
    const r = await rawExchange(port, Buffer.concat([handFrame(3, '{}\n'), second]));
    expect(r.data.subarray(9).toString()).toBe('{"status":"success"}\n');
    await until(() => server.stats().active === 0);
    expect(server.stats()).toMatchObject({ served: { probe: 1, notify: 0 }, extraBytes: second.length });
  });

  it('decodes notify fields as jsoncpp asString does, and rejects what upstream cannot convert', async () => {
    const got: Notify[] = [];
    const { server, port } = await startServer({ onNotify: (n) => void got.push(n) });
    const rejected = Buffer.concat([Buffer.from('1d0000000000000002', 'hex'), Buffer.from('{"name":"","notify_msg":""}\n')]);
    expect((await rawExchange(port, handFrame(2, '{"name":5,"notify_msg":true}\n'))).data.subarray(9).toString()).toBe('{"name":"","notify_msg":"success"}\n');
    expect((await rawExchange(port, handFrame(2, '{"name":"x"}\n'))).data.subarray(9).toString()).toBe('{"name":"","notify_msg":"success"}\n');
    expect((await rawExchange(port, handFrame(2, '{"name":{},"notify_msg":"m"}\n'))).data).toEqual(rejected);
    expect((await rawExchange(port, handFrame(2, '[1]\n'))).data).toEqual(rejected);
    expect(got).toEqual([
      { name: '5', msg: 'true' },
      { name: 'x', msg: '' },
    ]);
    expect(server.stats().rejectedNotifies).toBe(2);
  });
});

describe('client helpers against our server', () => {
  it('probe, sendNotify into a NotificationQueue, fetchPeerDescriptor, Connection', async () => {
    const queue = new NotificationQueue();
    const { port } = await startServer({ onNotify: (n) => queue.push(n), onMetadata: () => DESCRIPTOR });
    expect(await probe('127.0.0.1', port)).toEqual({ status: 'success' });
    await sendNotify('127.0.0.1', port, { name: 'a', msg: 'b' });
    await sendNotify('127.0.0.1', port, { name: '\u00e9\u{1F600}', msg: '\n"' });
    expect(queue.drain()).toEqual([
      { name: 'a', msg: 'b' },
      { name: '\u00e9\u{1F600}', msg: '\n"' },
    ]);
    expect(await fetchPeerDescriptor('127.0.0.1', port, { name: 'me' })).toEqual(DESCRIPTOR);
    expect(await sendHandshake('127.0.0.1', port, HandshakeType.Connection, { qp_num: [] })).toMatchObject({ reply_msg: '', qp_num: [] });
    const old = await exchange('127.0.0.1', port, HandshakeType.Connection, {}, { oldProtocol: true });
    expect(old).toMatchObject({ oldProtocol: true, type: 0, address: '127.0.0.1', port });
  });

  it('sendNotify rejects with REJECT_HANDSHAKE when the owner refuses (false or throw)', async () => {
    let mode: 'false' | 'throw' = 'false';
    const { server, port } = await startServer({
      onNotify: () => {
        if (mode === 'throw') throw new Error('full');
        return false;
      },
    });
    expect((await rejection(sendNotify('127.0.0.1', port, { name: 'a', msg: 'b' }))).code).toBe('REJECT_HANDSHAKE');
    mode = 'throw';
    expect((await rejection(sendNotify('127.0.0.1', port, { name: 'a', msg: 'b' }))).code).toBe('REJECT_HANDSHAKE');
    expect(server.stats()).toMatchObject({ rejectedNotifies: 2, handlerErrors: 1 });
  });

  it('fetchPeerDescriptor rejects with METADATA when the peer has no descriptor', async () => {
    const { port } = await startServer();
    expect((await rejection(fetchPeerDescriptor('127.0.0.1', port, {}))).code).toBe('METADATA');
  });

  it('waits for an async handler, within handlerTimeoutMs; past it the connection is dropped', async () => {
    const { server, port } = await startServer({
      handlerTimeoutMs: 300,
      onMetadata: async (peer) => {
        if ((peer as { slow?: boolean }).slow) return new Promise(() => {});
        await new Promise((r) => setTimeout(r, 50));
        return { name: 'later' };
      },
    });
    expect(await fetchPeerDescriptor('127.0.0.1', port, {})).toEqual({ name: 'later' });
    const e = await rejection(fetchPeerDescriptor('127.0.0.1', port, { slow: true }));
    expect(e.code).toBe('SOCKET');
    expect(server.stats().dropped.handler).toBe(1);
  });

  it('resolves host names and tries every address in turn', async () => {
    const { port } = await startServer(); // bound to 127.0.0.1 only
    const addrs = await dnsp.lookup('localhost', { all: true, verbatim: true });
    expect(await probe('localhost', port)).toEqual({ status: 'success' });
    // When localhost also maps to ::1 ahead of 127.0.0.1, the first attempt was refused.
    if (addrs[0]?.family === 6) expect(addrs.some((a) => a.address === '127.0.0.1')).toBe(true);
  });

  it('reports DNS, CONNECT_FAILED and invalid arguments', async () => {
    expect((await rejection(probe('no-such-host.invalid', 1234))).code).toBe('DNS');
    const port = await closedPort();
    const e = await rejection(probe('127.0.0.1', port));
    expect(e.code).toBe('CONNECT_FAILED');
    expect(e.details).toMatchObject({ address: '127.0.0.1', port, errno: 'ECONNREFUSED' });
    expect((await rejection(probe('127.0.0.1', 0))).code).toBe('INVALID_ARGUMENT');
    expect((await rejection(probe('127.0.0.1', 1, { timeoutMs: 0 }))).code).toBe('INVALID_ARGUMENT');
  });

  it('times out against a server that accepts and never answers (TIMEOUT), and can be aborted (ABORT_ERR)', async () => {
    const silent = await silentServer();
    cleanups.push(silent.close);
    const e = await rejection(probe('127.0.0.1', silent.port, { timeoutMs: 300 }));
    expect(e.code).toBe('TIMEOUT');
    expect(e.details).toMatchObject({ address: '127.0.0.1', port: silent.port, buffered: 0 });

    const ac = new AbortController();
    const p = probe('127.0.0.1', silent.port, { signal: ac.signal });
    setTimeout(() => ac.abort(new Error('stop')), 50);
    const a = await rejection(p);
    expect(a.code).toBe('ABORT_ERR');
    expect(a.name).toBe('AbortError');
    await until(() => silent.sockets.size === 0); // the client closed its socket
    expect((await rejection(probe('127.0.0.1', silent.port, { signal: AbortSignal.abort() }))).code).toBe('ABORT_ERR');
  });

  it('rejects replies of the wrong type, untyped, malformed, oversize, empty or truncated', async () => {
    const cases: [Buffer | null, string, string | RegExp][] = [
      [encodeMessage(HandshakeType.Notify, { status: 'success' }), 'PROTOCOL_ERROR', /answered a probe request with a notify frame/],
      [encodeFrame(HandshakeType.Connection, '{"status":"success"}\n', { oldProtocol: true }), 'PROTOCOL_ERROR', /untyped/],
      [handFrame(3, '{"status":'), 'MALFORMED_JSON', /not JSON/],
      [handFrame(3, '{}', BigInt(2 << 20)), 'PROTOCOL_ERROR', /exceeds the limit/],
      [Buffer.alloc(8), 'PROTOCOL_ERROR', /zero length/],
      [handFrame(3, '{"status":"success"}\n').subarray(0, 12), 'SOCKET', /inside its reply/],
      [null, 'SOCKET', /./],
      [Buffer.alloc(0), 'SOCKET', /without replying/],
    ];
    for (const [reply, code, message] of cases) {
      const s = await scriptedServer(() => reply);
      const e = await rejection(probe('127.0.0.1', s.port));
      await s.close();
      expect(e.code, String(message)).toBe(code);
      expect(e.message).toMatch(message);
    }
  });

  it('sendNotify treats an empty or missing notify_msg (or a null reply) as rejection', async () => {
    for (const body of ['{"name":"","notify_msg":""}\n', '{}\n', 'null\n']) {
      const s = await scriptedServer(handFrame(2, body));
      const e = await rejection(sendNotify('127.0.0.1', s.port, { name: 'a', msg: 'b' }));
      await s.close();
      expect(e.code).toBe('REJECT_HANDSHAKE');
    }
  });

  it('writes exactly the request frame upstream would', async () => {
    let seen: Buffer | undefined;
    const s = await scriptedServer((req) => {
      seen = req;
      return handFrame(2, '{"name":"","notify_msg":"success"}\n');
    });
    cleanups.push(s.close);
    await sendNotify('127.0.0.1', s.port, { name: 'n', msg: 'm' });
    expect(seen).toEqual(handFrame(2, '{"name":"n","notify_msg":"m"}\n'));
  });

  it('parseHostPort splits segment names like upstream parseHostNameWithPort', () => {
    expect(parseHostPort('127.0.0.1:15123')).toEqual({ host: '127.0.0.1', port: 15123 });
    expect(parseHostPort('node-a')).toEqual({ host: 'node-a', port: 12001 });
    expect(parseHostPort('[::1]:7000')).toEqual({ host: '::1', port: 7000 });
    expect(parseHostPort('[::1]')).toEqual({ host: '::1', port: 12001 });
    expect(parseHostPort('::1')).toEqual({ host: '::1', port: 12001 });
    expect(parseHostPort('h:notaport')).toEqual({ host: 'h', port: 12001 });
  });
});

describe('HandshakeServer under hostile input', () => {
  it('drops garbage, huge or zero lengths, malformed JSON, truncated frames without a reply, and keeps serving', async () => {
    const drops: string[] = [];
    const { server, port } = await startServer({ maxLength: 1 << 20 });
    server.on('drop', (d) => drops.push(d.reason));
    const inputs: [Buffer, boolean][] = [
      [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), false],
      [Buffer.from([0x16, 0x03, 0x01, 0x05, 0xc2, 0x01, 0x00, 0x05]), false], // TLS ClientHello prefix
      [Buffer.alloc(8, 0xff), false],
      [handFrame(3, '', BigInt((1 << 20) + 1)), false],
      [Buffer.alloc(8), false],
      [handFrame(3, '{"a":\n'), false],
      [handFrame(3, '\n'), false],
      [handFrame(null, 'not json at all'), false],
      [handFrame(3, '{}\n').subarray(0, 10), true], // truncated, then FIN
      [Buffer.alloc(0), true], // connect and close
    ];
    for (const [bytes, halfClose] of inputs) {
      const r = await rawExchange(port, bytes, { halfClose, timeoutMs: 10_000 });
      expect(r.data.length, bytes.toString('hex')).toBe(0);
      expect(r.ending).not.toBe('timeout');
      expect(await probe('127.0.0.1', port)).toEqual({ status: 'success' });
    }
    await until(() => server.stats().active === 0);
    const st = server.stats();
    expect(st.dropped).toMatchObject({ protocol: 5, malformed: 3, truncated: 2 });
    expect(st.served.probe).toBe(inputs.length); // only the probes between the hostile inputs
  });

  it('closes a connection that sends nothing, or trickles bytes, at the receive deadline', async () => {
    const { server, port } = await startServer({ receiveTimeoutMs: 300 });
    const idle = await rawExchange(port, [], { timeoutMs: 10_000 });
    expect(idle).toMatchObject({ ending: 'end' });
    expect(idle.data.length).toBe(0);
    const frame = handFrame(3, '{}\n');
    const slow = await rawExchange(port, [...frame].map((b) => Buffer.from([b])), { gapMs: 100, timeoutMs: 10_000 });
    expect(slow.data.length).toBe(0);
    expect(server.stats().dropped.timeout).toBe(2);
  });

  it('does not wait forever for a client that never closes after the reply', async () => {
    const { server, port } = await startServer({ closeWaitMs: 300 });
    const sock = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }); // stays open after the server's FIN
    cleanups.push(() => void sock.destroy());
    const data: Buffer[] = [];
    sock.on('data', (d) => data.push(d));
    sock.write(handFrame(3, '{}\n'));
    await new Promise<void>((r) => sock.once('end', () => r())); // our half-close arrives
    expect(Buffer.concat(data).subarray(9).toString()).toBe('{"status":"success"}\n');
    expect(server.stats().active).toBe(1); // still waiting for the client
    await until(() => server.stats().active === 0);
    expect(server.stats().closeWaitTimeouts).toBe(1);
  });

  it('refuses connections beyond maxConnections', async () => {
    const { server, port } = await startServer({ maxConnections: 2, receiveTimeoutMs: 10_000 });
    // Each holder has begun a request (a silent connection would give its slot to the newcomer).
    const held = [net.connect({ host: '127.0.0.1', port }), net.connect({ host: '127.0.0.1', port })];
    for (const s of held) {
      s.on('error', () => {});
      s.write(handFrame(3, '{}\n').subarray(0, 3));
      cleanups.push(() => void s.destroy());
    }
    await until(() => server.stats().active === 2 && server.stats().bufferedBytes === 6);
    const r = await rawExchange(port, handFrame(3, '{}\n'));
    expect(r.data.length).toBe(0);
    await until(() => server.stats().dropped.overload === 1);
  });
});

describe('HandshakeServer: memory bound across connections', () => {
  it('drops a connection whose partial request would push the total held past maxBufferedBytes', async () => {
    const got: Notify[] = [];
    const { server, port } = await startServer({ maxLength: 1000, maxBufferedBytes: 1500, receiveTimeoutMs: 10_000, onNotify: (n) => void got.push(n) });
    const head = '{"name":"a","notify_msg":"';
    const frame = handFrame(2, head + 'x'.repeat(1000 - 1 - head.length - 3) + '"}\n');
    expect(frame.length).toBe(1008);
    const first = net.connect({ host: '127.0.0.1', port });
    first.on('error', () => {});
    cleanups.push(() => void first.destroy());
    const firstData: Buffer[] = [];
    first.on('data', (d) => firstData.push(d));
    first.write(frame.subarray(0, 900));
    await until(() => server.stats().bufferedBytes >= 850); // 900 sent, less the 8-byte prefix already parsed
    const second = await rawExchange(port, frame.subarray(0, 900), { timeoutMs: 10_000 });
    expect(second.data.length).toBe(0);
    await until(() => server.stats().dropped.overload === 1);
    const ended = new Promise<void>((r) => first.once('end', () => r()));
    first.write(frame.subarray(900));
    await ended;
    expect(Buffer.concat(firstData).subarray(9).toString()).toBe('{"name":"","notify_msg":"success"}\n');
    expect(got).toHaveLength(1);
    await until(() => server.stats().active === 0);
    expect(server.stats().bufferedBytes).toBe(0);
    // Nothing is held any more: a full frame fits again.
    const third = await rawExchange(port, frame);
    expect(third.data.subarray(9).toString()).toBe('{"name":"","notify_msg":"success"}\n');
  });
});

describe('HandshakeServer: concurrency and lifecycle', () => {
  it('serves concurrent requests with identical bytes, and a slow handler does not hold up others', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const queue = new NotificationQueue();
    const { server, port } = await startServer({ onNotify: (n) => queue.push(n), onMetadata: async () => (await gate, DESCRIPTOR) });
    const slow = fetchPeerDescriptor('127.0.0.1', port, {});
    const probes = Array.from({ length: 40 }, () => rawExchange(port, handFrame(3, '{}\n')));
    const notifies = Array.from({ length: 40 }, (_, i) => sendNotify('127.0.0.1', port, { name: `n${i}`, msg: `m${i}` }));
    const results = await Promise.all(probes);
    await Promise.all(notifies);
    for (const r of results) expect(r.data).toEqual(Buffer.concat([Buffer.from('160000000000000003', 'hex'), Buffer.from('{"status":"success"}\n')]));
    expect(queue.drain().map((n) => n.name).sort()).toEqual(Array.from({ length: 40 }, (_, i) => `n${i}`).sort());
    release();
    expect(await slow).toEqual(DESCRIPTOR);
    expect(server.stats().served).toMatchObject({ probe: 40, notify: 40, metadata: 1 });
  });

  it('close() is idempotent, destroys open connections, and forbids a later listen', async () => {
    const { server, port } = await startServer({ receiveTimeoutMs: 60_000 });
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.on('error', () => {});
    const ended = new Promise<void>((r) => sock.once('close', () => r()));
    await until(() => server.stats().active === 1);
    const a = server.close();
    const b = server.close();
    expect(a).toBe(b);
    await a;
    await ended;
    expect(server.listening).toBe(false);
    expect((await rejection(server.listen({ port: 0 }))).code).toBe('CLOSED');
    expect((await rejection(probe('127.0.0.1', port))).code).toBe('CONNECT_FAILED');
  });

  it('listens on a random port of a range, on port 0, and reports EADDRINUSE for a taken exact port', async () => {
    const a = new HandshakeServer();
    cleanups.push(() => a.close());
    const p = await a.listen({ host: '127.0.0.1', portRange: { min: 20000, max: 20999 } });
    expect(p).toBeGreaterThanOrEqual(20000);
    expect(p).toBeLessThanOrEqual(20999);
    expect(a.address()).toEqual({ host: '127.0.0.1', port: p });
    expect(await probe('127.0.0.1', p)).toEqual({ status: 'success' });

    const b = new HandshakeServer();
    cleanups.push(() => b.close());
    const e = await rejection(b.listen({ host: '127.0.0.1', port: p }));
    expect(e.code).toBe('SOCKET');
    expect((e.cause as NodeJS.ErrnoException).code).toBe('EADDRINUSE');
    // A one-port range that is taken: 500 tries, then the same error.
    expect((await rejection(b.listen({ host: '127.0.0.1', portRange: [p, p] }))).code).toBe('SOCKET');
    expect(await b.listen({ host: '127.0.0.1', port: 0 })).toBeGreaterThan(0);
  });

  it('retries taken ports of the range on the same listener until a free one binds', async () => {
    const taken = new HandshakeServer();
    cleanups.push(() => taken.close());
    const p = await taken.listen({ host: '127.0.0.1', portRange: { min: 21000, max: 21998 } });
    // Two-port ranges with one port taken: about half of the first picks hit the taken one.
    for (let i = 0; i < 6; i++) {
      const s = new HandshakeServer();
      const got = await s.listen({ host: '127.0.0.1', portRange: { min: p, max: p + 1 } });
      expect(got).toBe(p + 1);
      expect(await probe('127.0.0.1', got)).toEqual({ status: 'success' });
      await s.close();
    }
  });

  it('unref() lets the event loop go; ref() takes it back', async () => {
    const { server } = await startServer();
    const count = (): number => process.getActiveResourcesInfo().filter((r) => r === 'TCPServerWrap').length;
    const before = count();
    server.unref();
    expect(count()).toBe(before - 1);
    server.ref();
    expect(count()).toBe(before);
  });

  it('validates options', () => {
    expect(() => new HandshakeServer({ receiveTimeoutMs: 0 })).toThrow(/receiveTimeoutMs/);
    expect(() => new HandshakeServer({ maxLength: -5 })).toThrow(/maxLength/);
  });
});
