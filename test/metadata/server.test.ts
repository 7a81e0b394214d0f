import * as http from 'node:http';
import * as net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { MetadataServer, type MetadataServerOptions, pythonStrip } from '../../lib/metadata/server';
import { escapeKeyForUrl } from '../../lib/metadata/keys';
import { isMooncakeError } from '../../lib/errors';
import { rawExchange, rawRequest } from '../helpers/raw-http';

const JSON_TEXT = 'application/json; charset=utf-8';
const quiet = { info() {}, warn() {}, error() {} };
const k = (key: string): string => `/metadata?key=${escapeKeyForUrl(key)}`;

const started: MetadataServer[] = [];
async function start(options: MetadataServerOptions = {}): Promise<{ server: MetadataServer; port: number; url: string }> {
  const server = new MetadataServer({ logger: quiet, ...options });
  started.push(server);
  const info = await server.listen(0, '127.0.0.1');
  return { server, port: info.port, url: info.url };
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.close()));
});

describe('MetadataServer: upstream semantics', () => {
  let port: number;
  let server: MetadataServer;
  beforeAll(async () => {
    server = new MetadataServer({ logger: quiet });
    ({ port } = await server.listen(0, '127.0.0.1'));
  });
  afterAll(() => server.close());

  test('listen reports host, port and the /metadata URL', async () => {
    const s = new MetadataServer({ logger: quiet });
    started.push(s);
    const info = await s.listen();
    expect(info.host).toBe('127.0.0.1');
    expect(info.port).toBeGreaterThan(0);
    expect(info.url).toBe(`http://127.0.0.1:${info.port}/metadata`);
  });

  test('GET missing → 404 metadata not found', async () => {
    const r = await rawRequest(port, 'GET', k('mooncake/ram/nobody'));
    expect([r.status, r.text, r.contentType]).toEqual([404, 'metadata not found', JSON_TEXT]);
  });

  test('PUT then GET returns the raw bytes with Content-Type application/json', async () => {
    const value = '{"buffers":[],"name":"n1","protocol":"tcp","tcp_data_port":1,"tcp_proto_version":2}';
    const put = await rawRequest(port, 'PUT', k('mooncake/ram/n1'), value, { 'Content-Type': 'application/json' });
    expect([put.status, put.text, put.contentType]).toEqual([200, 'metadata updated', JSON_TEXT]);
    const get = await rawRequest(port, 'GET', k('mooncake/ram/n1'));
    expect([get.status, get.text, get.contentType]).toEqual([200, value, 'application/json']);
    expect(server.entries().get('mooncake/ram/n1')).toBe(value);
  });

  test('binary values are stored byte-exact', async () => {
    const bytes = Buffer.from([0, 1, 0xff, 0xfe, 0x80, 0x7b]);
    expect((await rawRequest(port, 'PUT', k('bin'), bytes)).status).toBe(200);
    expect((await rawRequest(port, 'GET', k('bin'))).body.equals(bytes)).toBe(true);
  });

  test('PUT overwrites ram keys; empty bodies are values too', async () => {
    await rawRequest(port, 'PUT', k('mooncake/ram/ow'), 'one');
    expect((await rawRequest(port, 'PUT', k('mooncake/ram/ow'), 'two')).status).toBe(200);
    expect((await rawRequest(port, 'GET', k('mooncake/ram/ow'))).text).toBe('two');
    expect((await rawRequest(port, 'PUT', k('empty'), '')).status).toBe(200);
    const r = await rawRequest(port, 'GET', k('empty'));
    expect([r.status, r.text]).toEqual([200, '']);
  });

  test('duplicate rpc_meta PUT: different body → 400; identical body → 200 metadata unchanged', async () => {
    const key = 'mooncake/rpc_meta/127.0.0.1:12345';
    const v = '{"ip_or_host_name":"127.0.0.1","rpc_port":16095}';
    expect((await rawRequest(port, 'PUT', k(key), v)).text).toBe('metadata updated');
    const diff = await rawRequest(port, 'PUT', k(key), '{"ip_or_host_name":"127.0.0.1","rpc_port":1}');
    expect([diff.status, diff.text, diff.contentType]).toEqual([400, 'Duplicate rpc_meta key not allowed', JSON_TEXT]);
    const same = await rawRequest(port, 'PUT', k(key), v);
    expect([same.status, same.text]).toEqual([200, 'metadata unchanged']);
    expect((await rawRequest(port, 'GET', k(key))).text).toBe(v);
  });

  test('the rpc_meta rule matches any key containing "rpc_meta" (case-sensitive), like upstream', async () => {
    await rawRequest(port, 'PUT', k('xrpc_metay'), 'a');
    expect((await rawRequest(port, 'PUT', k('xrpc_metay'), 'b')).status).toBe(400);
    await rawRequest(port, 'PUT', k('RPC_META'), 'a');
    expect((await rawRequest(port, 'PUT', k('RPC_META'), 'b')).status).toBe(200);
  });

  test("identicalRpcMetaPut: 'reject' answers like upstream's Python server", async () => {
    const { port: p } = await start({ identicalRpcMetaPut: 'reject' });
    await rawRequest(p, 'PUT', k('mooncake/rpc_meta/x'), 'v');
    const r = await rawRequest(p, 'PUT', k('mooncake/rpc_meta/x'), 'v');
    expect([r.status, r.text]).toEqual([400, 'Duplicate rpc_meta key not allowed']);
  });

  test('DELETE → 200 metadata deleted, then 404; an rpc_meta key can be published again after DELETE', async () => {
    const key = 'mooncake/rpc_meta/del';
    await rawRequest(port, 'PUT', k(key), 'v1');
    const d = await rawRequest(port, 'DELETE', k(key));
    expect([d.status, d.text, d.contentType]).toEqual([200, 'metadata deleted', JSON_TEXT]);
    const d2 = await rawRequest(port, 'DELETE', k(key));
    expect([d2.status, d2.text]).toEqual([404, 'metadata not found']);
    expect((await rawRequest(port, 'PUT', k(key), 'v2')).status).toBe(200);
  });

  test('missing or blank key → 400 metadata key is required, whatever the method', async () => {
    for (const [m, t] of [
      ['GET', '/metadata'],
      ['GET', '/metadata?key='],
      ['GET', '/metadata?key'],
      ['GET', '/metadata?KEY=a'],
      ['GET', '/metadata?key=%20%09%0A'],
      ['PUT', '/metadata'],
      ['DELETE', '/metadata?key=+'],
      ['POST', '/metadata'],
    ] as const) {
      const r = await rawRequest(port, m, t);
      expect([m, t, r.status, r.text, r.contentType]).toEqual([m, t, 400, 'metadata key is required', JSON_TEXT]);
    }
  });

  test('other methods → 405 Method not allowed (HEAD without a body)', async () => {
    for (const m of ['POST', 'PATCH', 'OPTIONS']) {
      const r = await rawRequest(port, m, k('a'));
      expect([m, r.status, r.text, r.contentType]).toEqual([m, 405, 'Method not allowed', JSON_TEXT]);
    }
    const head = await rawRequest(port, 'HEAD', k('a'));
    expect([head.status, head.body.length, head.headers['content-length']]).toEqual([405, 0, '18']);
  });

  test('keys are URL-decoded: + is a space, the first key wins, invalid escapes stay literal', async () => {
    await rawRequest(port, 'PUT', '/metadata?key=a+b', 'plus');
    expect((await rawRequest(port, 'GET', '/metadata?key=a%20b')).text).toBe('plus');
    await rawRequest(port, 'PUT', '/metadata?key=first&key=second', 'dup');
    expect((await rawRequest(port, 'GET', '/metadata?key=first')).text).toBe('dup');
    expect((await rawRequest(port, 'GET', '/metadata?key=second')).status).toBe(404);
    await rawRequest(port, 'PUT', '/metadata?key=%ZZ', 'literal');
    expect((await rawRequest(port, 'GET', '/metadata?key=%25ZZ')).text).toBe('literal');
    await rawRequest(port, 'PUT', '/metadata?key=lower%2fhex', 'lc');
    expect((await rawRequest(port, 'GET', '/metadata?key=lower%2Fhex')).text).toBe('lc');
    expect(server.entries().get('lower/hex')).toBe('lc');
  });

  test("keys are stripped with Python's whitespace rules", async () => {
    expect(pythonStrip(' \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u2000\u3000k k\u205f ')).toBe('k k');
    expect(pythonStrip('\ufeffk\u200b')).toBe('\ufeffk\u200b'); // not whitespace in Python
    await rawRequest(port, 'PUT', '/metadata?key=%20%1Fstripped%C2%A0', 'v');
    expect((await rawRequest(port, 'GET', '/metadata?key=stripped')).text).toBe('v');
    expect(server.entries().has('stripped')).toBe(true);
  });

  test('unknown paths → 404 "404: Not Found" (text/plain, as aiohttp); the route may be percent-encoded', async () => {
    for (const t of ['/', '/metadata/', '/METADATA?key=a', '//metadata?key=a', '/other?key=a']) {
      const r = await rawRequest(port, 'GET', t);
      expect([t, r.status, r.text, r.contentType]).toEqual([t, 404, '404: Not Found', 'text/plain; charset=utf-8']);
    }
    await rawRequest(port, 'PUT', k('enc'), 'e');
    expect((await rawRequest(port, 'GET', '/%6Detadata?key=enc')).text).toBe('e');
  });

  test('GET /health → 200 OK', async () => {
    const r = await rawRequest(port, 'GET', '/health');
    expect([r.status, r.text]).toEqual([200, 'OK']);
  });

  test('a configurable route', async () => {
    const { port: p, url } = await start({ path: '/mc/meta' });
    expect(url).toMatch(/\/mc\/meta$/);
    expect((await rawRequest(p, 'PUT', '/mc/meta?key=a', 'v')).status).toBe(200);
    expect((await rawRequest(p, 'GET', '/metadata?key=a')).status).toBe(404);
  });

  test('Expect: 100-continue → 100 Continue, then the PUT is stored', async () => {
    const body = '{"x":1}';
    const out = await rawExchange(port, [
      `PUT ${k('expect')} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`,
      { waitFor: '100 Continue' },
      body,
      { waitFor: 'metadata updated' },
    ]);
    expect(out).toMatch(/^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n/);
    expect(server.entries().get('expect')).toBe(body);
    // node:http's own client path
    const r = await rawRequest(port, 'PUT', k('expect2'), body, { Expect: '100-continue' });
    expect([r.status, r.text]).toEqual([200, 'metadata updated']);
  });

  test('Expect: 100-continue with an oversized Content-Length → 413 without 100 Continue', async () => {
    const out = await rawExchange(port, [
      `PUT ${k('huge')} HTTP/1.1\r\nHost: x\r\nContent-Length: ${2 * 1024 * 1024}\r\nExpect: 100-continue\r\n\r\n`,
      { waitFor: 'exceeded.' },
    ]);
    expect(out).not.toContain('100 Continue');
    expect(out).toMatch(/^HTTP\/1\.1 413 /);
    expect(out).toContain('Maximum request body size 1048576 exceeded.');
    expect(server.entries().has('huge')).toBe(false);
  });

  test('chunked PUT bodies are accepted', async () => {
    const r = await rawRequest(port, 'PUT', k('chunked'), 'chunky', { 'Transfer-Encoding': 'chunked' });
    expect(r.status).toBe(200);
    expect(server.entries().get('chunked')).toBe('chunky');
  });
});

describe('MetadataServer: access log hook', () => {
  test('onRequest sees method, decoded key, status and body size; a throwing observer is ignored', async () => {
    const events: unknown[] = [];
    const { port } = await start({
      onRequest: (e) => {
        events.push(e);
        throw new Error('observer bug');
      },
    });
    await rawRequest(port, 'PUT', k('mooncake/ram/a b'), '{}');
    await rawRequest(port, 'GET', k('mooncake/ram/a b'));
    await rawRequest(port, 'GET', '/metadata');
    await rawRequest(port, 'DELETE', k('nope'));
    expect(events).toEqual([
      { method: 'PUT', key: 'mooncake/ram/a b', status: 200, bytes: 16 },
      { method: 'GET', key: 'mooncake/ram/a b', status: 200, bytes: 2 },
      { method: 'GET', key: undefined, status: 400, bytes: 24 },
      { method: 'DELETE', key: 'nope', status: 404, bytes: 18 },
    ]);
  });
});

describe('MetadataServer: limits', () => {
  test('values over maxValueBytes → 413 with a clear text (default 1 MiB, as upstream)', async () => {
    const { port, server } = await start();
    const exact = Buffer.alloc(1024 * 1024, 0x61);
    expect((await rawRequest(port, 'PUT', k('exact'), exact)).status).toBe(200);
    const r = await rawRequest(port, 'PUT', k('over'), Buffer.alloc(1024 * 1024 + 1, 0x61));
    expect([r.status, r.text]).toEqual([413, 'Maximum request body size 1048576 exceeded.']);
    const chunked = await rawRequest(port, 'PUT', k('over2'), Buffer.alloc(1024 * 1024 + 1, 0x61), { 'Transfer-Encoding': 'chunked' });
    expect(chunked.status).toBe(413);
    expect(server.entries().has('over')).toBe(false);
    expect(server.entries().has('over2')).toBe(false);
  });

  test('custom maxValueBytes', async () => {
    const { port } = await start({ maxValueBytes: 10 });
    expect((await rawRequest(port, 'PUT', k('a'), '0123456789')).status).toBe(200);
    const r = await rawRequest(port, 'PUT', k('a'), '0123456789X');
    expect([r.status, r.text]).toEqual([413, 'Maximum request body size 10 exceeded.']);
  });

  test('keys over maxKeyBytes (UTF-8 bytes, after decoding) → 414', async () => {
    const { port } = await start({ maxKeyBytes: 8 });
    expect((await rawRequest(port, 'PUT', k('12345678'), 'v')).status).toBe(200);
    const r = await rawRequest(port, 'PUT', k('1234567✓'), 'v');
    expect(r.status).toBe(414);
    expect(r.text).toBe('metadata key too long: 10 bytes (limit 8)');
    expect((await rawRequest(port, 'GET', k('123456789'))).status).toBe(414);
  });

  test('default key limit is 4096 bytes; request lines beyond node:http limits get its 431', async () => {
    const { port } = await start();
    expect((await rawRequest(port, 'PUT', k('k'.repeat(4096)), 'v')).status).toBe(200);
    const r = await rawRequest(port, 'PUT', k('k'.repeat(4097)), 'v');
    expect([r.status, r.text]).toEqual([414, 'metadata key too long: 4097 bytes (limit 4096)']);
    const huge = await rawRequest(port, 'GET', k('k'.repeat(20_000)));
    expect(huge.status).toBe(431);
  });

  test('a new key beyond maxEntries → 507; overwrites and deletes still work', async () => {
    const { port } = await start({ maxEntries: 2 });
    await rawRequest(port, 'PUT', k('a'), '1');
    await rawRequest(port, 'PUT', k('b'), '1');
    const r = await rawRequest(port, 'PUT', k('c'), '1');
    expect(r.status).toBe(507);
    expect(r.text).toMatch(/metadata store is full: 2 entries/);
    expect((await rawRequest(port, 'PUT', k('a'), '2')).status).toBe(200);
    expect((await rawRequest(port, 'DELETE', k('b'))).status).toBe(200);
    expect((await rawRequest(port, 'PUT', k('c'), '1')).status).toBe(200);
  });

  test('bad options are INVALID_CONFIG', () => {
    expect(() => new MetadataServer({ maxEntries: 0 })).toThrow(/maxEntries/);
    expect(() => new MetadataServer({ ttlMs: -1 })).toThrow(/ttlMs/);
    try {
      new MetadataServer({ path: 'metadata' });
      expect.unreachable();
    } catch (e) {
      expect(isMooncakeError(e, 'INVALID_CONFIG')).toBe(true);
    }
  });
});

describe('MetadataServer: lifecycle', () => {
  test('close() is idempotent and closes idle keep-alive sockets', async () => {
    const server = new MetadataServer({ logger: quiet });
    const { port } = await server.listen(0, '127.0.0.1');
    const agent = new http.Agent({ keepAlive: true });
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      http.get({ host: '127.0.0.1', port, path: k('x'), agent }, resolve).on('error', reject);
    });
    res.resume();
    await new Promise((r) => res.once('end', r));
    // Wait (bounded) until the agent has put the socket back in its idle pool.
    let socket: import('node:net').Socket | undefined;
    for (let i = 0; i < 500 && !socket; i++) {
      socket = Object.values(agent.freeSockets).flat()[0];
      if (!socket) await new Promise((r) => setTimeout(r, 10));
    }
    expect(socket).toBeDefined();
    const closed = new Promise<void>((resolve) => socket!.once('close', () => resolve()));
    const t0 = Date.now();
    const c1 = server.close();
    const c2 = server.close();
    expect(c2).toBe(c1);
    await c1;
    await closed;
    expect(Date.now() - t0).toBeLessThan(1500); // no waiting for the 5 s keep-alive timeout
    agent.destroy();
    await expect(rawRequest(port, 'GET', k('x'), undefined, {}, 2000)).rejects.toThrow(/ECONNREFUSED/);
    await expect(server.listen()).rejects.toMatchObject({ code: 'CLOSED' });
  });

  test('close() waits for in-flight requests', async () => {
    const server = new MetadataServer({ logger: quiet });
    const { port } = await server.listen(0, '127.0.0.1');
    // Start a PUT whose body arrives late.
    const socket = net.connect(port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    socket.write(`PUT ${k('late')} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab`);
    await new Promise((r) => setTimeout(r, 50));
    let reply = '';
    socket.on('data', (d) => (reply += d.toString()));
    const t0 = Date.now();
    const closing = server.close();
    socket.write('cd');
    await closing;
    expect(Date.now() - t0).toBeLessThan(1500); // the answered connection is closed, not left to the 2 s force-close
    await new Promise((r) => setTimeout(r, 20));
    socket.destroy();
    expect(reply).toMatch(/^HTTP\/1\.1 200 OK/);
    expect(server.entries().get('late')).toBe('abcd');
  });

  test('listen() on a busy port rejects with a clear error', async () => {
    const { port } = await start();
    const other = new MetadataServer({ logger: quiet });
    started.push(other);
    await expect(other.listen(port, '127.0.0.1')).rejects.toThrow(/already in use/);
  });

  test('a client that disconnects mid-body does not crash or log', async () => {
    const errors: string[] = [];
    const { port, server } = await start({ logger: { info() {}, warn() {}, error: (m) => errors.push(m) } });
    const socket = net.connect(port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    socket.write(`PUT ${k('gone')} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc`);
    await new Promise((r) => setTimeout(r, 50));
    socket.destroy();
    await new Promise((r) => setTimeout(r, 50));
    expect(server.entries().has('gone')).toBe(false);
    expect((await rawRequest(port, 'GET', '/health')).status).toBe(200);
    expect(errors).toEqual([]);
  });
});
