import * as http from 'node:http';
import * as net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { HttpMetadataStore } from '../../lib/metadata/http-store';
import { MetadataServer } from '../../lib/metadata/server';
import { rpcMetaKey, segmentKey } from '../../lib/metadata/keys';
import { isMooncakeError, MooncakeError } from '../../lib/errors';
import { freePort } from '../helpers/server-process';

const quiet = { info() {}, warn() {}, error() {} };

/** Runs `f`, expecting a MooncakeError; returns it. */
async function failure(p: Promise<unknown>): Promise<MooncakeError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(MooncakeError);
    return e as MooncakeError;
  }
  throw new Error('expected a MooncakeError');
}

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A raw HTTP server whose handler the test controls; records requests. */
async function fakeServer(
  handler: (req: http.IncomingMessage, res: http.ServerResponse, body: Buffer) => void,
): Promise<{ url: string; port: number; requests: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders; body: string }>; connections: () => number }> {
  const requests: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders; body: string }> = [];
  let connections = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      requests.push({ method: req.method!, url: req.url!, headers: req.headers, body: body.toString() });
      handler(req, res, body);
    });
  });
  server.on('connection', () => connections++);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  );
  const { port } = server.address() as net.AddressInfo;
  return { url: `http://127.0.0.1:${port}/metadata`, port, requests, connections: () => connections };
}

/** A TCP server that accepts connections and never answers. */
async function blackHole(): Promise<{ url: string; accepted: () => number }> {
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.resume();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/metadata`, accepted: () => accepted };
}

function store(url: string, options?: ConstructorParameters<typeof HttpMetadataStore>[1]): HttpMetadataStore {
  const s = new HttpMetadataStore(url, options);
  cleanups.push(() => s.close());
  return s;
}

describe('HttpMetadataStore against MetadataServer', () => {
  let server: MetadataServer;
  let url: string;
  beforeAll(async () => {
    server = new MetadataServer({ logger: quiet });
    ({ url } = await server.listen(0, '127.0.0.1'));
  });
  afterAll(() => server.close());

  test('get/set/remove', async () => {
    const s = store(url);
    const key = segmentKey('127.0.0.1:12345', '');
    expect(await s.get(key)).toBeUndefined();
    await s.set(key, '{"name":"127.0.0.1:12345"}');
    expect(await s.get(key)).toBe('{"name":"127.0.0.1:12345"}');
    expect(await s.remove(key)).toBe(true);
    expect(await s.remove(key)).toBe(false);
    expect(await s.get(key)).toBeUndefined();
  });

  test('odd keys round-trip exactly (/, :, spaces, %, +, &, =, unicode)', async () => {
    const s = store(url);
    const keys = [
      'mooncake/ram/127.0.0.1:12345',
      'mooncake/ram/[::1]:12345',
      'with space/and:colon',
      '100% sure',
      '%41%2F',
      'a+b&c=d?e#f',
      "!'()*",
      'ключ/✓/😀',
      'é\u0301',
      'in\tner',
    ];
    for (const [i, key] of keys.entries()) await s.set(key, `{"i":${i}}`);
    for (const [i, key] of keys.entries()) {
      expect(await s.get(key)).toBe(`{"i":${i}}`);
      expect(server.entries().get(key)).toBe(`{"i":${i}}`);
    }
    for (const key of keys) expect(await s.remove(key)).toBe(true);
  });

  test("leading/trailing whitespace is stripped by the server (upstream's .strip()), so such keys alias", async () => {
    const s = store(url);
    await s.set(' padded ', 'v');
    expect(server.entries().has('padded')).toBe(true);
    expect(await s.get('padded')).toBe('v');
    expect(await s.remove('padded')).toBe(true);
  });

  test('duplicate rpc_meta → METADATA error with status 400 and an actionable message', async () => {
    const s = store(url);
    const key = rpcMetaKey('dup:1', '');
    await s.set(key, '{"ip_or_host_name":"127.0.0.1","rpc_port":1}');
    await s.set(key, '{"ip_or_host_name":"127.0.0.1","rpc_port":1}'); // identical: accepted
    const e = await failure(s.set(key, '{"ip_or_host_name":"127.0.0.1","rpc_port":2}'));
    expect(e.code).toBe('METADATA');
    expect(e.details).toMatchObject({ key, status: 400, url: `${url}?key=mooncake%2Frpc_meta%2Fdup%3A1` });
    expect(e.message).toMatch(/HTTP 400: Duplicate rpc_meta key not allowed/);
    expect(e.message).toMatch(/unique name or DELETE the stale key/);
    await s.remove(key);
  });

  test('a value over the server limit → METADATA error with status 413', async () => {
    const s = store(url);
    const e = await failure(s.set('big', 'x'.repeat(1024 * 1024 + 1)));
    expect(e.details).toMatchObject({ status: 413 });
    expect(e.message).toMatch(/Maximum request body size/);
  });

  test('requests reuse one keep-alive connection; close() closes it and later calls fail with CLOSED', async () => {
    const fake = await fakeServer((_req, res) => res.end('{}'));
    const s = new HttpMetadataStore(fake.url);
    for (let i = 0; i < 5; i++) await s.get('k');
    expect(fake.connections()).toBe(1);
    await s.close();
    await s.close(); // idempotent
    const e = await failure(s.get('k'));
    expect(e.code).toBe('CLOSED');
  });
});

describe('HttpMetadataStore wire format', () => {
  test('URL is <conn>?key=<curl-escaped>; PUT carries Content-Type: application/json and the exact body', async () => {
    const fake = await fakeServer((_req, res) => res.end('ok'));
    const s = store(fake.url);
    await s.set('mooncake/ram/127.0.0.1:12345', '{"a":1}');
    await s.get('mooncake/rpc_meta/x y');
    await s.remove("k!'()*");
    expect(fake.requests.map((r) => [r.method, r.url])).toEqual([
      ['PUT', '/metadata?key=mooncake%2Fram%2F127.0.0.1%3A12345'],
      ['GET', '/metadata?key=mooncake%2Frpc_meta%2Fx%20y'],
      ['DELETE', '/metadata?key=k%21%27%28%29%2A'],
    ]);
    expect(fake.requests[0]!.headers['content-type']).toBe('application/json');
    expect(fake.requests[0]!.headers['content-length']).toBe('7');
    expect(fake.requests[0]!.body).toBe('{"a":1}');
    expect(fake.requests[1]!.headers['content-type']).toBeUndefined();
  });

  test('GET succeeds only on 200; other statuses are METADATA errors with status and body', async () => {
    let status = 500;
    const fake = await fakeServer((_req, res) => {
      res.statusCode = status;
      res.end(status === 500 ? 'boom' : '{}');
    });
    const s = store(fake.url);
    let e = await failure(s.get('mooncake/ram/a'));
    expect(e.code).toBe('METADATA');
    expect(e.details).toMatchObject({ key: 'mooncake/ram/a', status: 500, url: `${fake.url}?key=mooncake%2Fram%2Fa` });
    expect(e.message).toMatch(/answered GET 'mooncake\/ram\/a' with HTTP 500: boom; the metadata server failed/);
    status = 201;
    e = await failure(s.get('a'));
    expect(e.details).toMatchObject({ status: 201 });
    e = await failure(s.set('a', '{}'));
    expect(e.details).toMatchObject({ status: 201 });
    e = await failure(s.remove('a'));
    expect(e.details).toMatchObject({ status: 201 });
  });

  test('a 404 from a missing route (wrong connection string path) is an error, not a missing key', async () => {
    const server = new MetadataServer({ logger: quiet });
    cleanups.push(() => server.close());
    const { port } = await server.listen(0, '127.0.0.1');
    const s = store(`http://127.0.0.1:${port}`);
    const e = await failure(s.get('mooncake/ram/a'));
    expect(e.details).toMatchObject({ status: 404 });
    expect(e.message).toMatch(/must be the metadata route itself, e\.g\. http:\/\/host:8080\/metadata/);
  });

  test('refused port → METADATA error naming the server and the key, quickly', async () => {
    const port = await freePort();
    const s = store(`http://127.0.0.1:${port}/metadata`);
    const t0 = Date.now();
    const e = await failure(s.get('mooncake/ram/a'));
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(e.code).toBe('METADATA');
    expect(e.message).toMatch(/refused the connection .*GET 'mooncake\/ram\/a'.*is the metadata server running\?/);
    expect(e.details).toMatchObject({ key: 'mooncake/ram/a', url: `http://127.0.0.1:${port}/metadata?key=mooncake%2Fram%2Fa` });
    expect((e.cause as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  });

  test('a server that accepts and never answers → METADATA timeout error, never hangs', async () => {
    const hole = await blackHole();
    const s = store(hole.url, { timeoutMs: 300 });
    for (const op of [() => s.get('k'), () => s.set('k', '{}'), () => s.remove('k')]) {
      const t0 = Date.now();
      const e = await failure(op());
      const elapsed = Date.now() - t0;
      expect(elapsed).toBeGreaterThanOrEqual(250);
      expect(elapsed).toBeLessThan(5000);
      expect(e.code).toBe('METADATA');
      expect(e.message).toMatch(/did not answer .* within 300 ms/);
      expect(e.details).toMatchObject({ key: 'k', timeoutMs: 300 });
    }
    expect(hole.accepted()).toBeGreaterThanOrEqual(1);
  });

  test('the default total timeout is 3000 ms', async () => {
    const hole = await blackHole();
    const s = store(hole.url);
    const t0 = Date.now();
    const e = await failure(s.get('k'));
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(2900);
    expect(elapsed).toBeLessThan(8000);
    expect(e.details).toMatchObject({ timeoutMs: 3000 });
  });

  test('a server that stalls mid-body also times out', async () => {
    const fake = await fakeServer((_req, res) => {
      res.writeHead(200, { 'Content-Length': '100' });
      res.write('{"partial":');
    });
    const s = store(fake.url, { timeoutMs: 300 });
    const e = await failure(s.get('k'));
    expect(e.message).toMatch(/did not answer/);
  });

  test('an AbortSignal aborts a GET with ABORT_ERR', async () => {
    const hole = await blackHole();
    const s = store(hole.url);
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('shutting down')), 50);
    const t0 = Date.now();
    const e = await failure(s.get('k', { signal: ac.signal }));
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(e.code).toBe('ABORT_ERR');
    expect(e.name).toBe('AbortError');
    const pre = new AbortController();
    pre.abort();
    expect((await failure(s.get('k', { signal: pre.signal }))).code).toBe('ABORT_ERR');
  });

  test('proxy environment variables are ignored (loopback stays reachable)', async () => {
    const fake = await fakeServer((_req, res) => res.end('direct'));
    const saved = { http_proxy: process.env.http_proxy, HTTP_PROXY: process.env.HTTP_PROXY, no_proxy: process.env.no_proxy };
    process.env.http_proxy = 'http://127.0.0.1:9';
    process.env.HTTP_PROXY = 'http://127.0.0.1:9';
    delete process.env.no_proxy;
    try {
      expect(await store(fake.url).get('k')).toBe('direct');
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  test('a pooled socket the server closed is retried once on a fresh connection', async () => {
    // Answers the first request on each connection, then kills the connection at the next request.
    let conns = 0;
    const server = net.createServer((socket) => {
      conns++;
      let served = 0;
      let buf = '';
      socket.on('data', (d) => {
        buf += d.toString();
        if (!buf.includes('\r\n\r\n')) return;
        buf = '';
        if (served++ === 0) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok');
        else socket.destroy();
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const s = store(`http://127.0.0.1:${(server.address() as net.AddressInfo).port}/metadata`);
    expect(await s.get('a')).toBe('ok');
    expect(await s.get('b')).toBe('ok');
    expect(conns).toBe(2);
  });

  test('invalid URLs and options are INVALID_CONFIG', () => {
    expect(() => new HttpMetadataStore('not a url')).toThrow(MooncakeError);
    expect(() => new HttpMetadataStore('ftp://h/metadata')).toThrow(/http:\/\/ or https:\/\//);
    try {
      new HttpMetadataStore('http://h/metadata', { timeoutMs: 0 });
      expect.unreachable();
    } catch (e) {
      expect(isMooncakeError(e, 'INVALID_CONFIG')).toBe(true);
    }
  });
});
