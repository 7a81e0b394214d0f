import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterEach, describe, expect, test } from 'vitest';
import { MetadataServer, type MetadataServerOptions } from '../../lib/metadata/server';
import { escapeKeyForUrl } from '../../lib/metadata/keys';
import { rawRequest } from '../helpers/raw-http';

const k = (key: string): string => `/metadata?key=${escapeKeyForUrl(key)}`;

interface Logged {
  info: string[];
  warn: string[];
  error: string[];
}
function capture(): { logger: MetadataServerOptions['logger']; logged: Logged } {
  const logged: Logged = { info: [], warn: [], error: [] };
  return {
    logged,
    logger: { info: (m) => logged.info.push(m), warn: (m) => logged.warn.push(m), error: (m) => logged.error.push(m) },
  };
}

const started: MetadataServer[] = [];
const dirs: string[] = [];
async function start(options: MetadataServerOptions = {}): Promise<{ server: MetadataServer; port: number }> {
  const server = new MetadataServer({ logger: null, ...options });
  started.push(server);
  const { port } = await server.listen(0, '127.0.0.1');
  return { server, port };
}
function tempDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'mc-metadata-'));
  dirs.push(d);
  return d;
}
afterEach(async () => {
  await Promise.all(started.splice(0).map((s) => s.close()));
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe('TTL (fake clock)', () => {
  function clock(): { now: () => number; advance: (ms: number) => void } {
    let t = 1_000;
    return { now: () => t, advance: (ms) => (t += ms) };
  }

  test('an entry not PUT again within ttlMs expires: GET 404, DELETE 404, gone from entries()', async () => {
    const c = clock();
    const { port, server } = await start({ ttlMs: 1000, now: c.now });
    await rawRequest(port, 'PUT', k('mooncake/ram/a'), 'v');
    c.advance(999);
    expect((await rawRequest(port, 'GET', k('mooncake/ram/a'))).status).toBe(200);
    c.advance(1);
    const r = await rawRequest(port, 'GET', k('mooncake/ram/a'));
    expect([r.status, r.text]).toEqual([404, 'metadata not found']);
    expect(server.entries().size).toBe(0);
    await rawRequest(port, 'PUT', k('mooncake/ram/b'), 'v');
    c.advance(1000);
    expect((await rawRequest(port, 'DELETE', k('mooncake/ram/b'))).status).toBe(404);
  });

  test('a re-PUT refreshes the TTL; GETs do not', async () => {
    const c = clock();
    const { port } = await start({ ttlMs: 1000, now: c.now });
    await rawRequest(port, 'PUT', k('r'), 'v1');
    c.advance(800);
    await rawRequest(port, 'GET', k('r'));
    await rawRequest(port, 'PUT', k('r'), 'v2');
    c.advance(800);
    expect((await rawRequest(port, 'GET', k('r'))).text).toBe('v2');
    c.advance(200);
    expect((await rawRequest(port, 'GET', k('r'))).status).toBe(404);
  });

  test('an identical rpc_meta re-PUT is the heartbeat; a dead peer’s rpc_meta expires and the name can be reused', async () => {
    const c = clock();
    const { port } = await start({ ttlMs: 1000, now: c.now });
    const key = 'mooncake/rpc_meta/127.0.0.1:12345';
    const v1 = '{"ip_or_host_name":"127.0.0.1","rpc_port":15001}';
    await rawRequest(port, 'PUT', k(key), v1);
    c.advance(900);
    expect((await rawRequest(port, 'PUT', k(key), v1)).text).toBe('metadata unchanged');
    c.advance(900);
    expect((await rawRequest(port, 'GET', k(key))).text).toBe(v1);
    // A restarted process with a new RPC port is refused while the old entry lives...
    const v2 = '{"ip_or_host_name":"127.0.0.1","rpc_port":15002}';
    expect((await rawRequest(port, 'PUT', k(key), v2)).status).toBe(400);
    // ...and accepted once the dead peer's entry expired.
    c.advance(100);
    expect((await rawRequest(port, 'PUT', k(key), v2)).status).toBe(200);
    expect((await rawRequest(port, 'GET', k(key))).text).toBe(v2);
  });

  test('expired entries do not count against maxEntries', async () => {
    const c = clock();
    const { port } = await start({ ttlMs: 1000, maxEntries: 1, now: c.now });
    await rawRequest(port, 'PUT', k('a'), 'v');
    expect((await rawRequest(port, 'PUT', k('b'), 'v')).status).toBe(507);
    c.advance(1000);
    expect((await rawRequest(port, 'PUT', k('b'), 'v')).status).toBe(200);
  });

  test('without ttlMs entries never expire', async () => {
    const c = clock();
    const { port } = await start({ now: c.now });
    await rawRequest(port, 'PUT', k('a'), 'v');
    c.advance(365 * 24 * 3600 * 1000);
    expect((await rawRequest(port, 'GET', k('a'))).status).toBe(200);
  });
});

test('TTL with the real clock: the background sweep drops expired entries', async () => {
  const { port, server } = await start({ ttlMs: 300 });
  await rawRequest(port, 'PUT', k('a'), 'v');
  const deadline = Date.now() + 10_000;
  while (server['store'].size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(server['store'].size).toBe(0);
});

describe('persistence (dataDir)', () => {
  test('entries survive a restart; deletes too', async () => {
    const dataDir = tempDir();
    const first = await start({ dataDir });
    await rawRequest(first.port, 'PUT', k('mooncake/ram/a'), '{"a":1}');
    await rawRequest(first.port, 'PUT', k('mooncake/rpc_meta/a'), '{"ip_or_host_name":"127.0.0.1","rpc_port":1}');
    await rawRequest(first.port, 'PUT', k('gone'), 'x');
    await rawRequest(first.port, 'DELETE', k('gone'));
    await rawRequest(first.port, 'PUT', k('bin'), Buffer.from([0xff, 0x00, 0xfe]));
    await first.server.close();

    const { logger, logged } = capture();
    const second = await start({ dataDir, logger });
    expect((await rawRequest(second.port, 'GET', k('mooncake/ram/a'))).text).toBe('{"a":1}');
    expect((await rawRequest(second.port, 'GET', k('gone'))).status).toBe(404);
    expect((await rawRequest(second.port, 'GET', k('bin'))).body.equals(Buffer.from([0xff, 0x00, 0xfe]))).toBe(true);
    // The duplicate rule still protects a persisted rpc_meta entry.
    expect((await rawRequest(second.port, 'PUT', k('mooncake/rpc_meta/a'), '{}')).status).toBe(400);
    expect(logged.info.join('\n')).toMatch(/loaded 3 entries/);
    expect(logged.error).toEqual([]);
  });

  test('a 200 answer means the change is on disk (written atomically: no temp files left)', async () => {
    const dataDir = tempDir();
    const { port, server } = await start({ dataDir });
    await Promise.all(Array.from({ length: 20 }, (_, i) => rawRequest(port, 'PUT', k(`key${i}`), `v${i}`)));
    // The file is a log (JSON lines: a header, then one record per change).
    const onDisk = fs.readFileSync(path.join(dataDir, 'metadata.json'), 'utf8').trimEnd().split('\n').slice(1).map((l) => JSON.parse(l) as { op: string; key: string });
    expect(onDisk.filter((e) => e.op === 'put').map((e) => e.key).sort()).toEqual(Array.from({ length: 20 }, (_, i) => `key${i}`).sort());
    expect(fs.readdirSync(dataDir)).toEqual(['metadata.json']);
    expect(server.dataFile).toBe(path.join(dataDir, 'metadata.json'));
  });

  test('TTL continues across a restart (persisted wall-clock time of the last PUT)', async () => {
    const dataDir = tempDir();
    const now = Date.now();
    const entry = (key: string, ageMs: number) => ({ key, value: 'v', encoding: 'utf8', updatedAt: now - ageMs });
    fs.writeFileSync(
      path.join(dataDir, 'metadata.json'),
      JSON.stringify({ format: 'mooncake-node-metadata', version: 1, savedAt: '', entries: [entry('old', 120_000), entry('fresh', 1_000)] }),
    );
    const { logger, logged } = capture();
    const { port } = await start({ dataDir, ttlMs: 60_000, logger });
    expect((await rawRequest(port, 'GET', k('old'))).status).toBe(404);
    expect((await rawRequest(port, 'GET', k('fresh'))).status).toBe(200);
    expect(logged.info.join('\n')).toMatch(/loaded 1 entries .*\(1 expired\)/);
  });

  test('a corrupt (torn) file is moved aside with a clear log; the server starts empty and keeps working', async () => {
    const dataDir = tempDir();
    fs.writeFileSync(path.join(dataDir, 'metadata.json'), '{"format":"mooncake-node-metadata","version":1,"entries":[{"key":"a","val');
    fs.writeFileSync(path.join(dataDir, 'metadata.json.tmp-123-1-abcd'), 'half written');
    const { logger, logged } = capture();
    const { port, server } = await start({ dataDir, logger });
    expect(server.entries().size).toBe(0);
    expect(logged.error).toHaveLength(1);
    expect(logged.error[0]).toMatch(/metadata\.json is unreadable .*moved it to .*metadata\.json\.corrupt-.*started with an empty store/);
    const files = fs.readdirSync(dataDir);
    expect(files.some((f) => f.startsWith('metadata.json.corrupt-'))).toBe(true);
    expect(files.some((f) => f.includes('.tmp-'))).toBe(false);
    expect((await rawRequest(port, 'PUT', k('a'), 'v')).status).toBe(200);
    await server.close();
    const again = await start({ dataDir });
    expect(again.server.entries().get('a')).toBe('v');
  });

  test('a file of the wrong shape is treated as corrupt; malformed entries are skipped with a warning', async () => {
    const dataDir = tempDir();
    fs.writeFileSync(path.join(dataDir, 'metadata.json'), '[1,2,3]');
    const c1 = capture();
    await start({ dataDir, logger: c1.logger });
    expect(c1.logged.error[0]).toMatch(/not a mooncake-node-metadata file/);
    await Promise.all(started.splice(0).map((s) => s.close()));

    const dir2 = tempDir();
    fs.writeFileSync(
      path.join(dir2, 'metadata.json'),
      JSON.stringify({ format: 'mooncake-node-metadata', version: 1, entries: [{ key: 'ok', value: 'v', encoding: 'utf8', updatedAt: 0 }, { key: 1 }, null] }),
    );
    const c2 = capture();
    const { server } = await start({ dataDir: dir2, logger: c2.logger });
    expect([...server.entries().keys()]).toEqual(['ok']);
    expect(c2.logged.warn.join('\n')).toMatch(/skipped 2 malformed entries/);
  });

  test('a write failure answers 500 with the reason and is logged', async () => {
    const dataDir = tempDir();
    const { logger, logged } = capture();
    const { port } = await start({ dataDir, logger });
    fs.rmSync(dataDir, { recursive: true, force: true });
    const r = await rawRequest(port, 'PUT', k('a'), 'v');
    expect(r.status).toBe(500);
    expect(r.text).toMatch(/could not be persisted/);
    expect(logged.error.join('\n')).toMatch(/could not write/);
    // Recovers once the directory is back.
    fs.mkdirSync(dataDir);
    expect((await rawRequest(port, 'PUT', k('b'), 'v')).status).toBe(200);
    expect(fs.readFileSync(path.join(dataDir, 'metadata.json'), 'utf8')).toMatch(/"key":"b"/);
  });

  test('an unusable dataDir makes listen() reject with INVALID_CONFIG', async () => {
    const base = tempDir();
    const file = path.join(base, 'a-file');
    fs.writeFileSync(file, 'x');
    const server = new MetadataServer({ dataDir: path.join(file, 'sub'), logger: null });
    started.push(server);
    await expect(server.listen(0, '127.0.0.1')).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  });
});
