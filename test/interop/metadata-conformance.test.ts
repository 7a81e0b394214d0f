/**
 * Conformance: our MetadataServer against upstream's own `mooncake_http_metadata_server`
 * (wheel mooncake-transfer-engine-non-cuda 0.3.13.post1), same raw request sequence to both.
 *
 * Intentional differences, asserted explicitly below:
 * 1. identical re-PUT of an existing rpc_meta key: upstream 400 `Duplicate rpc_meta key not allowed`,
 *    ours 200 `metadata unchanged` (as mooncake_master's C++ server; it is the TTL heartbeat).
 *    With `identicalRpcMetaPut: 'reject'` ours matches upstream exactly, which is also asserted.
 * 2. `GET /health`: upstream 404 (no such route), ours 200 `OK`.
 * 3. Raw (un-escaped) non-ASCII bytes in the request line: both 400, bodies differ (aiohttp explains,
 *    node:http sends an empty body).
 *
 * Also: our HttpMetadataStore against upstream's server, escapeKeyForUrl against libcurl's
 * curl_easy_escape, and upstream's real engine (transfer_engine_bench --mode=target) publishing to and
 * cleaning up on our server.
 */
import { execFile, spawn } from 'node:child_process';
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { MetadataServer, type RequestEvent } from '../../lib/metadata/server';
import { HttpMetadataStore } from '../../lib/metadata/http-store';
import { escapeKeyForUrl } from '../../lib/metadata/keys';
import { MooncakeError } from '../../lib/errors';
import { rawRequest, type RawReply } from '../helpers/raw-http';
import { stopProcess } from '../helpers/server-process';
import {
  SETUP_COMMAND,
  spawnUpstreamMetadataServer,
  upstreamEnv,
  upstreamPeer,
  type UpstreamMetadataServer,
} from '../helpers/upstream';

const peer = upstreamPeer();
const skipReason = 'skipReason' in peer ? peer.skipReason : undefined;
if (skipReason) {
  console.warn(
    `\n[metadata-conformance] SKIPPED: ${skipReason}\n` +
      `[metadata-conformance] Install the upstream peer with: ${SETUP_COMMAND}  (or set MOONCAKE_UPSTREAM_VENV)\n`,
  );
}

const quiet = { info() {}, warn() {}, error() {} };
const k = (key: string): string => `/metadata?key=${escapeKeyForUrl(key)}`;

interface Step {
  name: string;
  method: string;
  target: string;
  body?: string | Buffer;
  headers?: Record<string, string>;
  /** Intentional difference of our default server (identicalRpcMetaPut: 'accept'). */
  oursDefault?: { status: number; text: string };
}

const RAM = 'mooncake/ram/127.0.0.1:17011';
const RPC = 'mooncake/rpc_meta/127.0.0.1:17011';
const DESC =
  '{"buffers":[{"addr":140362473537536,"length":100663296,"name":"127.0.0.1:17011"}],"name":"127.0.0.1:17011","protocol":"tcp","tcp_data_port":16173,"tcp_proto_version":2,"timestamp":"2026-11-25 08:25:57.730727"}';
const DESC2 = DESC.replace('"buffers":[{', '"buffers":[{"addr":1,"length":2,"name":"127.0.0.1:17011"},{');
const RPC_V = '{"ip_or_host_name":"127.0.0.1","rpc_port":16095}';
const json = { 'Content-Type': 'application/json' };

const ODD_KEYS = ['a/b:c d', 'ключ/✓ 😀', '100%', '%41', 'a+b', 'x&y=z', '?#', "!'()*", 'semi;colon', 'in\tner'];

const SEQUENCE: Step[] = [
  // The engine's own life cycle (as upstream 0.3.13.post1 runs it): GET own segment (404), PUT rpc_meta, PUT ram, ...
  { name: 'GET missing segment', method: 'GET', target: k(RAM) },
  { name: 'PUT rpc_meta', method: 'PUT', target: k(RPC), body: RPC_V, headers: json },
  { name: 'PUT ram (empty buffers)', method: 'PUT', target: k(RAM), body: DESC.replace(/"buffers":\[.*?\]/, '"buffers":[]'), headers: json },
  { name: 'PUT ram (registration)', method: 'PUT', target: k(RAM), body: DESC, headers: json },
  { name: 'GET ram', method: 'GET', target: k(RAM) },
  { name: 'GET rpc_meta', method: 'GET', target: k(RPC) },
  {
    name: 'PUT duplicate rpc_meta, identical body',
    method: 'PUT',
    target: k(RPC),
    body: RPC_V,
    headers: json,
    oursDefault: { status: 200, text: 'metadata unchanged' },
  },
  { name: 'PUT duplicate rpc_meta, different body', method: 'PUT', target: k(RPC), body: '{"ip_or_host_name":"127.0.0.1","rpc_port":1}', headers: json },
  { name: 'GET rpc_meta after duplicates', method: 'GET', target: k(RPC) },
  { name: 'PUT ram overwrite', method: 'PUT', target: k(RAM), body: DESC2, headers: json },
  { name: 'GET ram after overwrite', method: 'GET', target: k(RAM) },
  { name: 'PUT other key containing rpc_meta', method: 'PUT', target: k('xrpc_metay'), body: '1' },
  { name: 'PUT it again', method: 'PUT', target: k('xrpc_metay'), body: '2' },
  { name: 'PUT RPC_META (case differs)', method: 'PUT', target: k('RPC_META'), body: '1' },
  { name: 'PUT RPC_META again', method: 'PUT', target: k('RPC_META'), body: '2' },
  // Shutdown order: DELETE rpc_meta, then ram.
  { name: 'DELETE rpc_meta', method: 'DELETE', target: k(RPC) },
  { name: 'DELETE ram', method: 'DELETE', target: k(RAM) },
  { name: 'DELETE missing', method: 'DELETE', target: k(RAM) },
  { name: 'GET deleted', method: 'GET', target: k(RAM) },
  { name: 'PUT rpc_meta after DELETE', method: 'PUT', target: k(RPC), body: RPC_V, headers: json },
  // Key parameter handling
  { name: 'GET without key', method: 'GET', target: '/metadata' },
  { name: 'GET key=', method: 'GET', target: '/metadata?key=' },
  { name: 'GET bare key', method: 'GET', target: '/metadata?key' },
  { name: 'GET KEY= (case)', method: 'GET', target: '/metadata?KEY=a' },
  { name: 'GET whitespace key', method: 'GET', target: '/metadata?key=%20%09%0A' },
  { name: 'GET + key', method: 'GET', target: '/metadata?key=+' },
  { name: 'PUT without key', method: 'PUT', target: '/metadata', body: 'x' },
  { name: 'DELETE without key', method: 'DELETE', target: '/metadata' },
  { name: 'POST without key', method: 'POST', target: '/metadata', body: 'x' },
  // Methods
  { name: 'POST', method: 'POST', target: k('a'), body: 'x' },
  { name: 'PATCH', method: 'PATCH', target: k('a'), body: 'x' },
  { name: 'OPTIONS', method: 'OPTIONS', target: k('a') },
  { name: 'HEAD', method: 'HEAD', target: k('a') },
  // Decoding corners
  { name: 'PUT a+b', method: 'PUT', target: '/metadata?key=a+b', body: 'plus' },
  { name: 'GET a%20b', method: 'GET', target: '/metadata?key=a%20b' },
  { name: 'PUT duplicate key params', method: 'PUT', target: '/metadata?key=first&key=second', body: 'dup' },
  { name: 'GET first', method: 'GET', target: '/metadata?key=first' },
  { name: 'GET second', method: 'GET', target: '/metadata?key=second' },
  { name: 'PUT %ZZ', method: 'PUT', target: '/metadata?key=%ZZ', body: 'zz' },
  { name: 'GET %25ZZ', method: 'GET', target: '/metadata?key=%25ZZ' },
  { name: 'PUT %FF (invalid UTF-8)', method: 'PUT', target: '/metadata?key=%FF', body: 'ff' },
  { name: 'GET U+FFFD', method: 'GET', target: '/metadata?key=%EF%BF%BD' },
  { name: 'GET %25FF', method: 'GET', target: '/metadata?key=%25FF' },
  { name: 'PUT lowercase hex', method: 'PUT', target: '/metadata?key=low%2fhex', body: 'lc' },
  { name: 'GET uppercase hex', method: 'GET', target: '/metadata?key=low%2Fhex' },
  { name: 'PUT padded key', method: 'PUT', target: '/metadata?key=%20%1Fpad%C2%A0%09', body: 'pad' },
  { name: 'GET stripped key', method: 'GET', target: '/metadata?key=pad' },
  { name: 'PUT BOM key', method: 'PUT', target: '/metadata?key=%EF%BB%BFbom', body: 'bom' },
  { name: 'GET bom without BOM', method: 'GET', target: '/metadata?key=bom' },
  { name: 'GET a;b', method: 'GET', target: '/metadata?key=semi;colon' },
  { name: 'PUT a=b', method: 'PUT', target: '/metadata?key=a=b', body: 'eq' },
  { name: 'GET a%3Db', method: 'GET', target: '/metadata?key=a%3Db' },
  { name: 'GET with other params', method: 'GET', target: '/metadata?foo=1&key=a%3Db&bar' },
  // Odd keys, escaped as the engine (libcurl) does, then read back with other spellings
  ...ODD_KEYS.flatMap((key, i): Step[] => [
    { name: `PUT odd key ${JSON.stringify(key)}`, method: 'PUT', target: k(key), body: `{"odd":${i}}`, headers: json },
    { name: `GET odd key ${JSON.stringify(key)} (encodeURIComponent)`, method: 'GET', target: `/metadata?key=${encodeURIComponent(key)}` },
  ]),
  // Bodies
  { name: 'PUT empty body', method: 'PUT', target: k('empty'), body: '' },
  { name: 'GET empty body', method: 'GET', target: k('empty') },
  { name: 'PUT binary body', method: 'PUT', target: k('bin'), body: Buffer.from([0, 0xff, 0xfe, 0x80, 0x7b, 0x0a]) },
  { name: 'GET binary body', method: 'GET', target: k('bin') },
  { name: 'PUT chunked', method: 'PUT', target: k('chunked'), body: 'chunky', headers: { 'Transfer-Encoding': 'chunked' } },
  { name: 'GET chunked', method: 'GET', target: k('chunked') },
  { name: 'PUT Expect: 100-continue', method: 'PUT', target: k('expect'), body: '{"e":1}', headers: { ...json, Expect: '100-continue' } },
  { name: 'GET expect', method: 'GET', target: k('expect') },
  { name: 'PUT exactly 1 MiB', method: 'PUT', target: k('mib'), body: Buffer.alloc(1024 * 1024, 0x61) },
  { name: 'PUT 1 MiB + 1', method: 'PUT', target: k('mib1'), body: Buffer.alloc(1024 * 1024 + 1, 0x61) },
  { name: 'PUT 1 MiB + 1 chunked', method: 'PUT', target: k('mib2'), body: Buffer.alloc(1024 * 1024 + 1, 0x61), headers: { 'Transfer-Encoding': 'chunked' } },
  { name: 'GET mib1 (refused)', method: 'GET', target: k('mib1') },
  // Routes
  { name: 'GET /', method: 'GET', target: '/' },
  { name: 'GET /metadata/', method: 'GET', target: '/metadata/?key=a%3Db' },
  { name: 'GET /METADATA', method: 'GET', target: '/METADATA?key=a%3Db' },
  { name: 'GET //metadata', method: 'GET', target: '//metadata?key=a%3Db' },
  { name: 'GET /%6Detadata (encoded route)', method: 'GET', target: '/%6Detadata?key=a%3Db' },
];

interface Observed {
  status: number;
  body: string; // base64, to compare bytes
  contentType: string | undefined;
}
const observe = (r: RawReply): Observed => ({ status: r.status, body: r.body.toString('base64'), contentType: r.contentType });
const show = (o: Observed): string => `${o.status} ${o.contentType} ${JSON.stringify(Buffer.from(o.body, 'base64').toString('utf8').slice(0, 80))}`;

async function runSequence(port: number): Promise<Observed[]> {
  const out: Observed[] = [];
  for (const s of SEQUENCE) out.push(observe(await rawRequest(port, s.method, s.target, s.body, s.headers)));
  return out;
}

describe.skipIf(skipReason !== undefined)(`metadata server conformance with upstream ${'version' in peer ? peer.version : ''}`, () => {
  let upstream: UpstreamMetadataServer;
  let upstreamPort: number;
  const ours: MetadataServer[] = [];
  const startOurs = async (options: ConstructorParameters<typeof MetadataServer>[0] = {}): Promise<number> => {
    const s = new MetadataServer({ logger: quiet, ...options });
    ours.push(s);
    return (await s.listen(0, '127.0.0.1')).port;
  };

  beforeAll(async () => {
    upstream = await spawnUpstreamMetadataServer();
    upstreamPort = upstream.port;
  });
  afterAll(async () => {
    await Promise.all(ours.map((s) => s.close()));
    await upstream?.stop();
  });

  test('the same request sequence gets identical status, body and Content-Type', async () => {
    // Runs first, on the freshly started upstream process; later tests use other keys.
    const up = await runSequence(upstreamPort);
    const strict = await runSequence(await startOurs({ identicalRpcMetaPut: 'reject' }));
    const dflt = await runSequence(await startOurs());

    const mismatches: string[] = [];
    SEQUENCE.forEach((step, i) => {
      const u = up[i]!;
      if (JSON.stringify(strict[i]) !== JSON.stringify(u)) {
        mismatches.push(`[strict] ${step.name}: upstream ${show(u)} vs ours ${show(strict[i]!)}`);
      }
      const expected: Observed = step.oursDefault
        ? { status: step.oursDefault.status, body: Buffer.from(step.oursDefault.text).toString('base64'), contentType: u.contentType }
        : u;
      if (JSON.stringify(dflt[i]) !== JSON.stringify(expected)) {
        mismatches.push(`[default] ${step.name}: expected ${show(expected)} vs ours ${show(dflt[i]!)}`);
      }
    });
    expect(mismatches).toEqual([]);

    // Sanity: the sequence really exercised what the reference documents.
    const at = (name: string): Observed => up[SEQUENCE.findIndex((s) => s.name === name)]!;
    const text = (o: Observed): string => Buffer.from(o.body, 'base64').toString('utf8');
    expect([at('GET missing segment').status, text(at('GET missing segment'))]).toEqual([404, 'metadata not found']);
    expect([at('PUT rpc_meta').status, text(at('PUT rpc_meta'))]).toEqual([200, 'metadata updated']);
    expect([at('PUT duplicate rpc_meta, identical body').status, text(at('PUT duplicate rpc_meta, identical body'))]).toEqual([
      400,
      'Duplicate rpc_meta key not allowed',
    ]);
    expect(text(at('GET rpc_meta after duplicates'))).toBe(RPC_V);
    expect(text(at('GET ram after overwrite'))).toBe(DESC2);
    expect([at('DELETE rpc_meta').status, text(at('DELETE rpc_meta'))]).toEqual([200, 'metadata deleted']);
    expect([at('DELETE missing').status, text(at('DELETE missing'))]).toEqual([404, 'metadata not found']);
    expect([at('GET without key').status, text(at('GET without key'))]).toEqual([400, 'metadata key is required']);
    expect([at('POST').status, text(at('POST'))]).toEqual([405, 'Method not allowed']);
    expect(at('PUT 1 MiB + 1').status).toBe(413);
    expect(at('GET /').status).toBe(404);
    expect(at('GET rpc_meta').contentType).toBe('application/json');
    expect(at('GET missing segment').contentType).toBe('application/json; charset=utf-8');
  });

  test('intentional difference: GET /health', async () => {
    const up = await rawRequest(upstreamPort, 'GET', '/health');
    expect(up.status).toBe(404);
    const o = await rawRequest(await startOurs(), 'GET', '/health');
    expect([o.status, o.text]).toEqual([200, 'OK']);
  });

  test('raw non-ASCII bytes in the request line: both 400 (bodies differ)', async () => {
    const send = (port: number): Promise<string> =>
      new Promise((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1', () => {
          socket.write(Buffer.concat([Buffer.from('GET /metadata?key='), Buffer.from('✓'), Buffer.from(' HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')]));
        });
        let data = '';
        const timer = setTimeout(() => {
          socket.destroy();
          reject(new Error('no answer'));
        }, 5000);
        socket.on('data', (d) => (data += d.toString('latin1')));
        socket.on('end', () => {
          clearTimeout(timer);
          resolve(data);
        });
        socket.on('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
      });
    expect(await send(upstreamPort)).toMatch(/^HTTP\/1\.[01] 400 /);
    expect(await send(await startOurs())).toMatch(/^HTTP\/1\.[01] 400 /);
  });

  test("escapeKeyForUrl is byte-identical to libcurl's curl_easy_escape (the engine's escaping)", async () => {
    if (!('python' in peer)) return;
    const keys = [RAM, RPC, ...ODD_KEYS, 'é\u0301', '[::1]:12345', Array.from({ length: 127 }, (_, i) => String.fromCharCode(i + 1)).join('')];
    // libcurl.so.4 is what the wheel's engine links against; call it through ctypes.
    const script = [
      'import ctypes, json, sys',
      "c = ctypes.CDLL('libcurl.so.4')",
      'c.curl_easy_init.restype = ctypes.c_void_p',
      'c.curl_easy_escape.restype = ctypes.c_void_p',
      'c.curl_easy_escape.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]',
      'c.curl_free.argtypes = [ctypes.c_void_p]',
      'h = c.curl_easy_init()',
      'out = []',
      'for k in json.loads(sys.stdin.read()):',
      '    b = k.encode()',
      '    p = c.curl_easy_escape(h, b, len(b))',
      '    out.append(ctypes.string_at(p).decode())',
      '    c.curl_free(p)',
      'print(json.dumps(out))',
    ].join('\n');
    const child = execFile(peer.python, ['-c', script], { env: upstreamEnv(), timeout: 30_000 });
    child.stdin!.end(JSON.stringify(keys));
    let stdout = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
    expect(code).toBe(0);
    const curl = JSON.parse(stdout) as string[];
    expect(keys.map(escapeKeyForUrl)).toEqual(curl);
  });

  test("upstream's engine (transfer_engine_bench target) publishes to and cleans up on our server", async () => {
    if (!('bench' in peer)) return;
    const events: RequestEvent[] = [];
    const server = new MetadataServer({ logger: quiet, onRequest: (e) => events.push(e) });
    ours.push(server);
    const { url } = await server.listen(0, '127.0.0.1');
    const name = '127.0.0.1:17031';
    const child = spawn(
      peer.bench,
      ['--mode=target', '--protocol=tcp', `--local_server_name=${name}`, `--metadata_server=${url}`, '--buffer_size=16777216'],
      { env: upstreamEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let log = '';
    child.stdout!.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-16_384)));
    child.stderr!.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-16_384)));
    try {
      const ram = `mooncake/ram/${name}`;
      const rpc = `mooncake/rpc_meta/${name}`;
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline && child.exitCode === null) {
        const desc = server.entries().get(ram);
        if (desc && (JSON.parse(desc) as { buffers: unknown[] }).buffers.length > 0) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      const desc = JSON.parse(server.entries().get(ram) ?? 'null') as Record<string, unknown> | null;
      expect(desc, log).toMatchObject({ name, protocol: 'tcp', tcp_proto_version: 2 });
      expect(desc!.tcp_data_port).toBeGreaterThan(0);
      expect(JSON.parse(server.entries().get(rpc)!)).toMatchObject({ ip_or_host_name: '127.0.0.1' });
      expect(events.filter((e) => e.method === 'PUT' && e.key === rpc).map((e) => e.status)).toEqual([200]);
      expect(events.some((e) => e.method === 'PUT' && e.key === ram && e.status === 200)).toBe(true);

      await stopProcess(child, 10_000);
      const deletes = events.filter((e) => e.method === 'DELETE').map((e) => [e.key, e.status]);
      expect(deletes, log).toEqual([
        [rpc, 200],
        [ram, 200],
      ]);
      expect(server.entries().has(ram)).toBe(false);
      expect(server.entries().has(rpc)).toBe(false);
    } finally {
      await stopProcess(child, 2000);
    }
  });

  test('HttpMetadataStore speaks to upstream’s server like the engine does', async () => {
    const store = new HttpMetadataStore(upstream.url);
    try {
      const key = 'mooncake/ram/node-client:1';
      expect(await store.get(key)).toBeUndefined();
      await store.set(key, DESC);
      expect(await store.get(key)).toBe(DESC);
      for (const odd of ODD_KEYS) {
        await store.set(`client/${odd}`, `"${odd.length}"`);
        expect(await store.get(`client/${odd}`)).toBe(`"${odd.length}"`);
        expect(await store.remove(`client/${odd}`)).toBe(true);
      }
      const rpc = 'mooncake/rpc_meta/node-client:1';
      await store.set(rpc, RPC_V);
      const e = await store.set(rpc, RPC_V).then(
        () => undefined,
        (err: unknown) => err,
      );
      expect(e).toBeInstanceOf(MooncakeError);
      expect(e).toMatchObject({ code: 'METADATA', details: { status: 400 } });
      expect(await store.remove(rpc)).toBe(true);
      expect(await store.remove(rpc)).toBe(false);
      expect(await store.remove(key)).toBe(true);
    } finally {
      await store.close();
    }
  });
});
