// How the engine's MetadataPublisher writes and renews its entries, on an in-memory store double.
import { afterEach, describe, expect, test } from 'vitest';
import { TransferEngine } from '../../lib';
import { MooncakeError } from '../../lib/errors';
import { MetadataPublisher } from '../../lib/metadata/publisher';
import type { MetadataRenewal, MetadataStore, SetOptions } from '../../lib/metadata/store';

class MemoryStore implements MetadataStore {
  readonly url = 'memory://';
  readonly data = new Map<string, string>();
  readonly sets: { key: string; value: string; ttlMs?: number }[] = [];
  gets = 0;
  failing = false;
  constructor(readonly renewal?: MetadataRenewal) {}
  async get(key: string): Promise<string | undefined> {
    this.gets++;
    if (this.failing) throw new MooncakeError('METADATA', 'down');
    return this.data.get(key);
  }
  async set(key: string, value: string, options: SetOptions = {}): Promise<void> {
    if (this.failing) throw new MooncakeError('METADATA', 'down');
    await new Promise((r) => setTimeout(r, 5));
    this.sets.push({ key, value, ttlMs: options.ttlMs });
    this.data.set(key, value);
  }
  async remove(key: string): Promise<boolean> {
    return this.data.delete(key);
  }
  async close(): Promise<void> {}
}

const publishers: MetadataPublisher[] = [];
afterEach(async () => {
  await Promise.all(publishers.splice(0).map((p) => p.stop()));
});

function publisher(store: MetadataStore, o: { ttlMs?: number; refreshMs?: number; describe?: () => string; errors?: MooncakeError[] } = {}): MetadataPublisher {
  const p = new MetadataPublisher({
    store,
    name: 'pub',
    rpcMeta: '{"ip_or_host_name":"127.0.0.1","rpc_port":1}',
    describe: o.describe ?? (() => '{"name":"pub"}'),
    refreshMs: o.refreshMs ?? 0,
    isStale: async () => true,
    onError: (e) => o.errors?.push(e),
    ttlMs: o.ttlMs,
  });
  publishers.push(p);
  return p;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('MetadataPublisher liveness', () => {
  test('default: plain writes (no ttlMs), no renewal', async () => {
    const s = new MemoryStore('rewrite');
    await publisher(s).start();
    expect(s.sets.map((x) => [x.key, x.ttlMs])).toEqual([
      ['mooncake/rpc_meta/pub', undefined],
      ['mooncake/ram/pub', undefined],
    ]);
    await sleep(300);
    expect(s.sets).toHaveLength(2);
  });

  test("'rewrite' stores: every write carries ttlMs and both entries are written again about every TTL/3", async () => {
    const s = new MemoryStore('rewrite');
    await publisher(s, { ttlMs: 300 }).start();
    await sleep(1000);
    expect(s.sets.every((x) => x.ttlMs === 300)).toBe(true);
    const rpc = s.sets.filter((x) => x.key === 'mooncake/rpc_meta/pub').length;
    const ram = s.sets.filter((x) => x.key === 'mooncake/ram/pub').length;
    // ~10 renewals in 1 s at 100 ms; loose bounds for a busy machine.
    expect(rpc).toBeGreaterThanOrEqual(4);
    expect(ram).toBeGreaterThanOrEqual(4);
    expect(rpc).toBeLessThan(30);
  });

  test('a store without `renewal` is treated as rewrite', async () => {
    const s = new MemoryStore(undefined);
    await publisher(s, { ttlMs: 300 }).start();
    await sleep(500);
    expect(s.sets.length).toBeGreaterThan(2);
  });

  test("'client' stores (etcd leases): no rewrites, but a check at least once per TTL that restores lost entries", async () => {
    const s = new MemoryStore('client');
    const p = publisher(s, { ttlMs: 200, refreshMs: 5000 });
    await p.start();
    await sleep(500);
    expect(s.sets).toHaveLength(2);
    expect(s.gets).toBeGreaterThanOrEqual(2); // refresh ran although refreshMs is 5 s
    s.data.clear(); // the lease expired: etcd dropped both keys
    await sleep(600);
    expect(s.data.get('mooncake/rpc_meta/pub')).toBeDefined();
    expect(s.data.get('mooncake/ram/pub')).toBe('{"name":"pub"}');
    expect(s.sets.slice(2).every((x) => x.ttlMs === 200)).toBe(true);
    expect(p.republished).toBeGreaterThanOrEqual(1);
  });

  test('renewals are serialized with publish: the store always ends with the newest descriptor', async () => {
    const s = new MemoryStore('rewrite');
    let version = 0;
    const p = publisher(s, { ttlMs: 60, describe: () => `{"v":${version}}` });
    await p.start();
    for (let i = 1; i <= 20; i++) {
      version = i;
      await p.publish();
      expect(s.data.get('mooncake/ram/pub')).toBe(`{"v":${i}}`);
      await sleep(7);
    }
    await sleep(100);
    expect(s.data.get('mooncake/ram/pub')).toBe('{"v":20}');
  });

  test('renewal failures are reported as METADATA errors and retried on the next tick', async () => {
    const s = new MemoryStore('rewrite');
    const errors: MooncakeError[] = [];
    await publisher(s, { ttlMs: 150, errors }).start();
    s.failing = true;
    await sleep(300);
    expect(errors.length).toBeGreaterThan(0);
    expect(errors[0].code).toBe('METADATA');
    s.failing = false;
    const before = s.sets.length;
    await sleep(300);
    expect(s.sets.length).toBeGreaterThan(before);
  });

  test('stop() stops renewing and deletes the entries', async () => {
    const s = new MemoryStore('rewrite');
    const p = publisher(s, { ttlMs: 90 });
    await p.start();
    await p.stop();
    const n = s.sets.length;
    await sleep(200);
    expect(s.sets.length).toBe(n);
    expect(s.data.size).toBe(0);
  });
});

test('metadataTtlMs is validated (INVALID_CONFIG below 100 ms or not an integer)', async () => {
  for (const bad of [0, 50, 1.5, -1, '1000']) {
    await expect(TransferEngine.create({ metadataServer: 'P2PHANDSHAKE', metadataTtlMs: bad as number })).rejects.toMatchObject({ code: 'INVALID_CONFIG' });
  }
});
