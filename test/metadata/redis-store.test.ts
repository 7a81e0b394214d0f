// The redis backend against real redis-server processes started on loopback (Debian's redis-server).
import { createClient } from 'redis';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { MooncakeError } from '../../lib/errors';
import { RedisMetadataStore, parseAddress } from '../../lib/metadata/redis-store';
import { createMetadataStore, type MetadataStore } from '../../lib/metadata/store';
import { eventually } from '../helpers/etcd';
import { skipWithoutRedis, startRedis } from '../helpers/redis';
import { timedRejection } from '../helpers/rejection';
import { freePort } from '../helpers/server-process';

const skip = skipWithoutRedis('redis-store');
const ENV = ['MC_REDIS_USERNAME', 'MC_REDIS_PASSWORD', 'MC_REDIS_DB_INDEX'] as const;
const savedEnv = Object.fromEntries(ENV.map((k) => [k, process.env[k]]));
const stores: MetadataStore[] = [];
afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close().catch(() => undefined)));
  for (const k of ENV) {
    if (savedEnv[k] === undefined) delete process.env[k];
    else process.env[k] = savedEnv[k];
  }
});

function store(conn: string, options: Parameters<typeof createMetadataStore>[1] = {}): MetadataStore {
  const s = createMetadataStore(conn, options);
  stores.push(s);
  return s;
}

/** A plain node-redis client, to look at what the store wrote. */
async function inspect(port: number, options: { password?: string; database?: number } = {}) {
  const c = createClient({ socket: { host: '127.0.0.1', port, reconnectStrategy: false }, ...options });
  c.on('error', () => undefined);
  await c.connect();
  return {
    get: (k: string) => c.get(k),
    pttl: (k: string) => c.pTTL(k),
    close: () => c.destroy(),
  };
}


describe('redis addresses', () => {
  test('host:port, [v6]:port, host alone (6379); anything else is INVALID_CONFIG', () => {
    expect(parseAddress('10.0.0.1:6380')).toEqual({ host: '10.0.0.1', port: 6380 });
    expect(parseAddress('redis.internal')).toEqual({ host: 'redis.internal', port: 6379 });
    expect(parseAddress('[::1]:7000')).toEqual({ host: '::1', port: 7000 });
    expect(parseAddress('[::1]')).toEqual({ host: '::1', port: 6379 });
    for (const bad of ['', ':6379', 'h:0', 'h:99999', 'h:x', 'user:pw@h:6379', 'h:6379/2', '::1:6379']) {
      expect(() => parseAddress(bad), bad).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG' }));
    }
    expect(() => createMetadataStore('redis://u:p@h:6379')).toThrow(/MC_REDIS_USERNAME \/ MC_REDIS_PASSWORD/);
  });
});

describe.skipIf(skip)('redis metadata store', () => {
  let server: Awaited<ReturnType<typeof startRedis>>;
  beforeAll(async () => {
    server = await startRedis();
  });
  afterAll(() => server?.cleanup());

  test('redis://host:port: plain GET / SET / DEL of the exact text, no expiry', async () => {
    const s = store(server.connectionString);
    expect(s).toBeInstanceOf(RedisMetadataStore);
    expect(s.url).toBe(server.connectionString);
    expect(s.renewal).toBe('rewrite');
    const key = 'mooncake/ram/redis-a';
    expect(await s.get(key)).toBeUndefined();
    const value = '{"buffers":[],"name":"redis-a","note":"é✓"}';
    await s.set(key, value);
    expect(await s.get(key)).toBe(value);
    const raw = await inspect(server.port);
    try {
      expect(await raw.get(key)).toBe(value);
      expect(await raw.pttl(key)).toBe(-1); // a plain key, as upstream writes it
      expect(await s.remove(key)).toBe(true);
      expect(await s.remove(key)).toBe(false);
      expect(await raw.get(key)).toBeNull();
    } finally {
      raw.close();
    }
  });

  test('ttlMs writes SET … PX; a plain SET afterwards makes the key permanent again', async () => {
    const s = store(server.connectionString);
    await s.set('mooncake/ram/ttl', '{"t":1}', { ttlMs: 800 });
    const raw = await inspect(server.port);
    try {
      const pttl = await raw.pttl('mooncake/ram/ttl');
      expect(pttl).toBeGreaterThan(0);
      expect(pttl).toBeLessThanOrEqual(800);
      expect(await eventually(async () => (await s.get('mooncake/ram/ttl')) === undefined, 10_000)).toBe(true);
      await s.set('mooncake/ram/ttl', '{"t":2}', { ttlMs: 800 });
      await s.set('mooncake/ram/ttl', '{"t":3}');
      expect(await raw.pttl('mooncake/ram/ttl')).toBe(-1);
    } finally {
      raw.close();
    }
  });

  test('close() is idempotent; later calls are CLOSED', async () => {
    const s = store(server.connectionString);
    await s.set('k', 'v');
    await s.close();
    await s.close();
    await expect(s.get('k')).rejects.toMatchObject({ code: 'CLOSED' });
  });
});

describe.skipIf(skip)('redis credentials and database from MC_REDIS_* (upstream env vars)', () => {
  let server: Awaited<ReturnType<typeof startRedis>>;
  beforeAll(async () => {
    server = await startRedis({ password: 'default-pw', users: { alice: 'alice-pw' } });
  });
  afterAll(() => server?.cleanup());

  test('no MC_REDIS_PASSWORD against a server that requires one: METADATA saying so', async () => {
    delete process.env.MC_REDIS_PASSWORD;
    delete process.env.MC_REDIS_USERNAME;
    const { error } = await timedRejection(store(server.connectionString).get('k'));
    expect(error.code).toBe('METADATA');
    expect(error.message).toMatch(/NOAUTH/);
    expect(error.message).toMatch(/no password is set/);
    expect(error.details).toMatchObject({ backend: 'redis', key: 'k', op: 'GET' });
  });

  test('MC_REDIS_PASSWORD (AUTH password) works; a wrong one is METADATA naming the variables', async () => {
    process.env.MC_REDIS_PASSWORD = 'default-pw';
    const good = store(server.connectionString);
    await good.set('mooncake/ram/auth', '{"a":1}');
    expect(await good.get('mooncake/ram/auth')).toBe('{"a":1}');
    process.env.MC_REDIS_PASSWORD = 'nope';
    const { error, ms } = await timedRejection(store(server.connectionString).get('mooncake/ram/auth'));
    expect(error.code).toBe('METADATA');
    expect(error.message).toMatch(/WRONGPASS/);
    expect(error.message).toMatch(/MC_REDIS_USERNAME \/ MC_REDIS_PASSWORD/);
    expect(ms).toBeLessThan(3000);
  });

  test('MC_REDIS_USERNAME + MC_REDIS_PASSWORD (AUTH user password, an ACL user)', async () => {
    process.env.MC_REDIS_USERNAME = 'alice';
    process.env.MC_REDIS_PASSWORD = 'alice-pw';
    const s = store(server.connectionString);
    await s.set('mooncake/ram/alice', '{"u":"alice"}');
    expect(await s.get('mooncake/ram/alice')).toBe('{"u":"alice"}');
    process.env.MC_REDIS_PASSWORD = 'default-pw'; // alice's name with the default user's password
    expect((await timedRejection(store(server.connectionString).get('k'))).error.message).toMatch(/WRONGPASS/);
    // Upstream sends no AUTH at all without a password, even with a username.
    process.env.MC_REDIS_PASSWORD = '';
    expect((await timedRejection(store(server.connectionString).get('k'))).error.message).toMatch(/NOAUTH/);
  });

  test('MC_REDIS_DB_INDEX selects the database; out of range is warned about and 0 is used, as upstream', async () => {
    process.env.MC_REDIS_PASSWORD = 'default-pw';
    process.env.MC_REDIS_DB_INDEX = '5';
    const s = store(server.connectionString) as RedisMetadataStore;
    expect(s.database).toBe(5);
    await s.set('mooncake/ram/db', '{"db":5}');
    const db5 = await inspect(server.port, { password: 'default-pw', database: 5 });
    const db0 = await inspect(server.port, { password: 'default-pw' });
    try {
      expect(await db5.get('mooncake/ram/db')).toBe('{"db":5}');
      expect(await db0.get('mooncake/ram/db')).toBeNull();
    } finally {
      db5.close();
      db0.close();
    }
    const warnings: string[] = [];
    process.env.MC_REDIS_DB_INDEX = '300';
    expect(new RedisMetadataStore(`127.0.0.1:${server.port}`, { warn: (m) => warnings.push(m) }).database).toBe(0);
    process.env.MC_REDIS_DB_INDEX = 'x';
    expect(new RedisMetadataStore(`127.0.0.1:${server.port}`, { warn: (m) => warnings.push(m) }).database).toBe(0);
    expect(warnings).toHaveLength(2);
    expect(warnings[0]).toMatch(/MC_REDIS_DB_INDEX='300' is not an integer in \[0, 255\]; using database 0/);
    process.env.MC_REDIS_DB_INDEX = ' 7trailing'; // std::stoi reads the leading number
    expect(new RedisMetadataStore(`127.0.0.1:${server.port}`, { warn: (m) => warnings.push(m) }).database).toBe(7);
  });

  test('a database the server does not have: METADATA naming MC_REDIS_DB_INDEX', async () => {
    process.env.MC_REDIS_PASSWORD = 'default-pw';
    process.env.MC_REDIS_DB_INDEX = '99'; // redis-server has 16 databases by default
    const { error } = await timedRejection(store(server.connectionString).get('k'));
    expect(error.code).toBe('METADATA');
    expect(error.message).toMatch(/cannot select database 99/);
    expect(error.message).toMatch(/MC_REDIS_DB_INDEX/);
  });
});

describe.skipIf(skip)('redis metadata store under faults', () => {
  test('nothing listening: METADATA "refused the connection", fast', async () => {
    const port = await freePort();
    const s = store(`redis://127.0.0.1:${port}`);
    const { error, ms } = await timedRejection(s.get('mooncake/ram/x'));
    expect(error.code).toBe('METADATA');
    expect(error.message).toMatch(new RegExp(`redis at 127\\.0\\.0\\.1:${port} refused the connection`));
    expect(error.details).toMatchObject({ backend: 'redis', errno: 'ECONNREFUSED', key: 'mooncake/ram/x', op: 'GET' });
    expect(ms).toBeLessThan(3000);
    expect((await timedRejection(s.set('k', 'v'))).error.code).toBe('METADATA');
  });

  test('a hung server (SIGSTOP): METADATA within the deadline; works again once it resumes', async () => {
    const server = await startRedis();
    try {
      const s = store(server.connectionString, { timeoutMs: 1000 });
      await s.set('k', 'v');
      server.pause();
      const { error, ms } = await timedRejection(s.get('k'));
      expect(error.code).toBe('METADATA');
      expect(error.message).toMatch(/did not answer GET 'k' within 1000 ms/);
      expect(error.details).toMatchObject({ timeoutMs: 1000 });
      expect(ms).toBeLessThan(1000 + 2000);
      // A fresh store cannot even finish connecting (the kernel accepts, the server never answers).
      const fresh = store(server.connectionString, { timeoutMs: 800 });
      expect((await timedRejection(fresh.get('k'))).error.code).toBe('METADATA');
      server.resume();
      expect(await eventually(async () => (await s.get('k')) === 'v', 15_000, 100)).toBe(true);
    } finally {
      await server.cleanup();
    }
  });

  test('a restarted server: METADATA while down, then the same store reconnects', async () => {
    const server = await startRedis();
    try {
      const s = store(server.connectionString);
      await s.set('k', 'v');
      await server.stop();
      const down = await timedRejection(s.get('k'));
      expect(down.error.code).toBe('METADATA');
      expect(down.ms).toBeLessThan(3000 + 1000);
      await server.restart();
      // No persistence: the restarted server is empty.
      expect(await eventually(async () => (await s.get('k')) === undefined, 15_000, 100)).toBe(true);
      await s.set('k', 'again');
      expect(await s.get('k')).toBe('again');
    } finally {
      await server.cleanup();
    }
  });
});
