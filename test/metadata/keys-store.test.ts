import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, test } from 'vitest';
import { escapeKeyForUrl, metadataKeyPrefix, rpcMetaKey, segmentKey } from '../../lib/metadata/keys';
import {
  createMetadataStore,
  isP2PHandshake,
  type MetadataStore,
  parseMetadataConnectionString,
  registerMetadataBackend,
} from '../../lib/metadata/store';
import { HttpMetadataStore } from '../../lib/metadata/http-store';
import { EtcdMetadataStore } from '../../lib/metadata/etcd-store';
import { RedisMetadataStore } from '../../lib/metadata/redis-store';
import { MooncakeError } from '../../lib/errors';

describe('keys', () => {
  const saved = process.env.MC_METADATA_CLUSTER_ID;
  afterEach(() => {
    if (saved === undefined) delete process.env.MC_METADATA_CLUSTER_ID;
    else process.env.MC_METADATA_CLUSTER_ID = saved;
  });

  test('prefix: mooncake/ plus the optional cluster id with one trailing slash', () => {
    delete process.env.MC_METADATA_CLUSTER_ID;
    expect(metadataKeyPrefix()).toBe('mooncake/');
    process.env.MC_METADATA_CLUSTER_ID = '';
    expect(metadataKeyPrefix()).toBe('mooncake/');
    process.env.MC_METADATA_CLUSTER_ID = 'prod-1';
    expect(metadataKeyPrefix()).toBe('mooncake/prod-1/');
    expect(rpcMetaKey('127.0.0.1:12345')).toBe('mooncake/prod-1/rpc_meta/127.0.0.1:12345');
    expect(metadataKeyPrefix('a/b/')).toBe('mooncake/a/b/');
    expect(metadataKeyPrefix('')).toBe('mooncake/'); // explicit '' ignores the environment
  });

  test('rpcMetaKey and segmentKey follow upstream', () => {
    expect(rpcMetaKey('127.0.0.1:12345', '')).toBe('mooncake/rpc_meta/127.0.0.1:12345');
    expect(segmentKey('127.0.0.1:12345', '')).toBe('mooncake/ram/127.0.0.1:12345');
    expect(segmentKey('[::1]:12345', '')).toBe('mooncake/ram/[::1]:12345');
    expect(segmentKey('nvmeof/disk0', '')).toBe('mooncake/nvmeof/disk0');
    expect(segmentKey('//ram/x', '')).toBe('mooncake/ram/x'); // leading slashes stripped, then has '/'
    expect(segmentKey('/node-a', '')).toBe('mooncake/ram/node-a');
    expect(segmentKey('n', 'c')).toBe('mooncake/c/ram/n');
  });

  test('escapeKeyForUrl matches curl_easy_escape', () => {
    expect(escapeKeyForUrl('mooncake/ram/127.0.0.1:12345')).toBe('mooncake%2Fram%2F127.0.0.1%3A12345');
    expect(escapeKeyForUrl('AZaz09-._~')).toBe('AZaz09-._~');
    // encodeURIComponent would keep these; curl does not.
    expect(escapeKeyForUrl("!'()*")).toBe('%21%27%28%29%2A');
    expect(escapeKeyForUrl('a b+c%d&e=f?g#h')).toBe('a%20b%2Bc%25d%26e%3Df%3Fg%23h');
    expect(escapeKeyForUrl('✓é')).toBe('%E2%9C%93%C3%A9');
    expect(escapeKeyForUrl('[::1]:1')).toBe('%5B%3A%3A1%5D%3A1');
    expect(escapeKeyForUrl('\u0000\u007f')).toBe('%00%7F');
    // every byte: only unreserved characters pass, hex is uppercase
    for (let b = 0; b < 128; b++) {
      const ch = String.fromCharCode(b);
      const expected = /[A-Za-z0-9\-._~]/.test(ch) ? ch : '%' + b.toString(16).toUpperCase().padStart(2, '0');
      expect(escapeKeyForUrl(ch)).toBe(expected);
    }
  });

  test('escapeKeyForUrl round-trips through URLSearchParams decoding', () => {
    for (const key of ['a/b:c d', 'ключ/✓ 😀', '100%', '%41', 'a+b', 'x&y=z', '?#', "!'()*", 'tab\there']) {
      expect(new URLSearchParams(`key=${escapeKeyForUrl(key)}`).get('key')).toBe(key);
    }
  });
});

describe('connection strings', () => {
  const codeOf = (f: () => unknown): string | undefined => {
    try {
      f();
    } catch (e) {
      return (e as MooncakeError).code;
    }
    return undefined;
  };

  test('http(s):// → HTTP store; the whole string is the base URL', async () => {
    const s = createMetadataStore('http://127.0.0.1:8080/metadata');
    expect(s).toBeInstanceOf(HttpMetadataStore);
    expect(s.url).toBe('http://127.0.0.1:8080/metadata');
    expect((s as HttpMetadataStore).requestUrl('mooncake/ram/a:1')).toBe('http://127.0.0.1:8080/metadata?key=mooncake%2Fram%2Fa%3A1');
    await s.close();
    const t = createMetadataStore('https://meta.example:8443/mc/metadata');
    expect(t.url).toBe('https://meta.example:8443/mc/metadata');
    await t.close();
    expect(parseMetadataConnectionString('http://h:1/metadata')).toEqual({ kind: 'http', connectionString: 'http://h:1/metadata', url: 'http://h:1/metadata' });
  });

  test('P2PHANDSHAKE → p2p, no store (a clear INVALID_CONFIG with details.p2p)', () => {
    expect(isP2PHandshake('P2PHANDSHAKE')).toBe(true);
    expect(isP2PHandshake('p2phandshake')).toBe(false);
    expect(parseMetadataConnectionString('P2PHANDSHAKE').kind).toBe('p2p');
    try {
      createMetadataStore('P2PHANDSHAKE');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(MooncakeError);
      expect((e as MooncakeError).code).toBe('INVALID_CONFIG');
      expect((e as MooncakeError).details).toMatchObject({ p2p: true });
      expect((e as Error).message).toMatch(/P2PHANDSHAKE mode has no metadata store/);
    }
  });

  test('etcd://, redis:// and scheme-less strings (= etcd) create etcd / redis stores without connecting', async () => {
    expect(parseMetadataConnectionString('etcd://a:2379,b:2379')).toMatchObject({ kind: 'etcd', endpoints: ['a:2379', 'b:2379'] });
    expect(parseMetadataConnectionString('etcd://a:2379; b:2379')).toMatchObject({ kind: 'etcd', endpoints: ['a:2379', 'b:2379'] });
    expect(parseMetadataConnectionString('redis://h:6379')).toMatchObject({ kind: 'redis', address: 'h:6379' });
    expect(parseMetadataConnectionString('127.0.0.1:8080')).toMatchObject({ kind: 'etcd', endpoints: ['127.0.0.1:8080'] });
    const e = createMetadataStore('etcd://a.invalid:2379,b.invalid:2379');
    expect(e).toBeInstanceOf(EtcdMetadataStore);
    expect(e.url).toBe('etcd://a.invalid:2379,b.invalid:2379');
    expect((e as EtcdMetadataStore).endpoints).toEqual(['a.invalid:2379', 'b.invalid:2379']);
    const bare = createMetadataStore('127.0.0.1:8080');
    expect(bare).toBeInstanceOf(EtcdMetadataStore);
    expect(bare.url).toBe('127.0.0.1:8080');
    const r = createMetadataStore('redis://h.invalid:6380');
    expect(r).toBeInstanceOf(RedisMetadataStore);
    expect(r.url).toBe('redis://h.invalid:6380');
    expect((r as RedisMetadataStore).port).toBe(6380);
    await Promise.all([e.close(), bare.close(), r.close()]);
  });

  test('unknown or mis-cased schemes and empty strings are INVALID_CONFIG with a hint', () => {
    expect(codeOf(() => createMetadataStore('ftp://x'))).toBe('INVALID_CONFIG');
    expect(() => createMetadataStore('HTTP://h:1/metadata')).toThrow(/case-sensitive/);
    expect(() => createMetadataStore('p2p://h:1')).toThrow(/exact string 'P2PHANDSHAKE'/);
    expect(codeOf(() => createMetadataStore(''))).toBe('INVALID_CONFIG');
    expect(codeOf(() => createMetadataStore('http://'))).toBe('INVALID_CONFIG');
  });

  test('registerMetadataBackend is the seam for etcd/redis, and can be undone', async () => {
    const fake: MetadataStore = {
      url: 'etcd://x:2379',
      get: async () => undefined,
      set: async () => undefined,
      remove: async () => false,
      close: async () => undefined,
    };
    let seen: string[] | undefined;
    const restore = registerMetadataBackend('etcd', (c) => {
      seen = c.endpoints;
      return fake;
    });
    try {
      expect(createMetadataStore('etcd://x:2379,y:2379')).toBe(fake);
      expect(seen).toEqual(['x:2379', 'y:2379']);
    } finally {
      restore();
    }
    const builtIn = createMetadataStore('etcd://x:2379');
    expect(builtIn).toBeInstanceOf(EtcdMetadataStore); // restored
    await builtIn.close();
  });
});

describe('client libraries load lazily', () => {
  test('the package and HTTP stores never load etcd3 or redis; creating such a store loads its client only', async () => {
    const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'mooncake-lazy-'));
    try {
      const root = path.resolve(__dirname, '../..');
      await promisify(execFile)(
        process.execPath,
        [path.join(root, 'node_modules/typescript/bin/tsc'), '--outDir', outDir, '--rootDir', path.join(root, 'lib'), '--module', 'commonjs', '--target', 'ES2022', '--strict', '--esModuleInterop', '--skipLibCheck', '--types', 'node', path.join(root, 'lib/metadata/index.ts')],
        { cwd: root, timeout: 120_000 },
      );
      const script = `
        const m = require(${JSON.stringify(path.join(outDir, 'metadata/index.js'))});
        const loaded = (name) => Object.keys(require.cache).some((k) => k.includes('/node_modules/' + name + '/'));
        const out = {};
        m.createMetadataStore('http://127.0.0.1:1/metadata').close();
        out.http = { etcd3: loaded('etcd3'), redis: loaded('@redis/client') };
        m.createMetadataStore('redis://127.0.0.1:1').close();
        out.redis = { etcd3: loaded('etcd3'), redis: loaded('@redis/client') };
        m.createMetadataStore('etcd://127.0.0.1:1').close();
        out.etcd = { etcd3: loaded('etcd3'), redis: loaded('@redis/client') };
        console.log(JSON.stringify(out));`;
      const { stdout } = await promisify(execFile)(process.execPath, ['-e', script], { env: { ...process.env, NODE_PATH: path.join(root, 'node_modules') }, timeout: 30_000 });
      expect(JSON.parse(stdout)).toEqual({
        http: { etcd3: false, redis: false },
        redis: { etcd3: false, redis: true },
        etcd: { etcd3: true, redis: true },
      });
    } finally {
      fs.rmSync(outDir, { recursive: true, force: true });
    }
  }, 120_000);
});
