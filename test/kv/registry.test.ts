// The KV registry over the HTTP metadata backend: documented keys, heartbeats, removal, dead-rank detection.
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, MooncakeError, TransferEngine, createMetadataStore } from '../../lib';
import { KvLayout, KvRegistry, kvRankKey, type KvRankEntry } from '../../lib/kv';

const layout = KvLayout.from({ numLayers: 1, numBlocks: 4, blockSize: 2, headBytes: 4, numHeads: 1 });

function entry(over: Partial<KvRankEntry> = {}): Omit<KvRankEntry, 'heartbeat'> {
  return {
    version: 1,
    engine_id: 'e',
    role: 'kv_producer',
    dp_rank: 0,
    tp_rank: 0,
    dp_size: 1,
    tp_size: 1,
    segment: 'seg',
    host: '127.0.0.1',
    rpc_port: 1,
    kv_port: null,
    total_kv_heads: 1,
    layout: layout.toJSON(),
    tensors: ['4096', '8192'],
    regions: [{ address: '4096', length: 8192 }],
    pid: 1,
    instance: 'i',
    started_at: 0,
    ...over,
  };
}

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function until(cond: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

function code(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: MooncakeError) => e.code,
  );
}

describe('KvRegistry', () => {
  let meta: MetadataServer;
  let url: string;

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(async () => {
    await meta?.close();
  });

  it('uses documented keys (with the cluster namespace)', () => {
    expect(kvRankKey('0', 1, 3, '')).toBe('mooncake/kv/0/1/3');
    expect(kvRankKey('prefill-a', 0, 0, 'prod')).toBe('mooncake/prod/kv/prefill-a/0/0');
  });

  it('publishes, refreshes the heartbeat and removes the entry on close', async () => {
    const reg = new KvRegistry(createMetadataStore(url), { heartbeatMs: 30, staleAfterMs: 1000, clusterId: '' });
    const key = await reg.publish(entry({ engine_id: 'hb' }));
    expect(key).toBe('mooncake/kv/hb/0/0');
    const first = JSON.parse(meta.entries().get(key)!) as KvRankEntry;
    expect(first.segment).toBe('seg');
    await until(() => (JSON.parse(meta.entries().get(key)!) as KvRankEntry).heartbeat > first.heartbeat);
    await reg.close();
    expect(meta.entries().has(key)).toBe(false);
    await reg.close(); // idempotent
  });

  it('finds peers, and says SEGMENT_NOT_FOUND for ranks that never published', async () => {
    const pub = new KvRegistry(createMetadataStore(url), { heartbeatMs: 1000, staleAfterMs: 5000, clusterId: '' });
    await pub.publish(entry({ engine_id: 'found', tp_rank: 1 }));
    const reader = new KvRegistry(createMetadataStore(url), { heartbeatMs: 1000, staleAfterMs: 5000, clusterId: '' });
    const peer = await reader.lookup('found', 0, 1);
    expect(peer.tensors).toEqual([4096n, 8192n]);
    expect(peer.layout.blockBytes).toBe(8);
    expect(await code(reader.lookup('found', 0, 0))).toBe('SEGMENT_NOT_FOUND');
    await pub.close();
    // Cached until invalidated; then gone.
    expect((await reader.lookup('found', 0, 1)).entry.engine_id).toBe('found');
    reader.invalidate('found', 0, 1);
    expect(await code(reader.lookup('found', 0, 1))).toBe('SEGMENT_NOT_FOUND');
    await reader.close();
  });

  it('re-reads an entry in the background past half its cache life: lookups do not wait for the store', async () => {
    let now = 1_000_000;
    const pub = new KvRegistry(createMetadataStore(url), { heartbeatMs: 60_000, staleAfterMs: 600_000, clusterId: '', now: () => now });
    await pub.publish(entry({ engine_id: 'bg', instance: 'first' }));
    const store = createMetadataStore(url);
    let gets = 0;
    const counting = new Proxy(store, {
      get: (t, k) => (k === 'get' ? (...a: Parameters<typeof store.get>) => (gets++, t.get(...a)) : Reflect.get(t, k)),
    });
    const reader = new KvRegistry(counting, { heartbeatMs: 1000, staleAfterMs: 600_000, clusterId: '', now: () => now });
    expect((await reader.lookup('bg', 0, 0)).entry.instance).toBe('first');
    expect(gets).toBe(1);
    now += 400; // young: served from the cache, nothing fetched
    await reader.lookup('bg', 0, 0);
    expect(gets).toBe(1);
    await store.set(kvRankKey('bg', 0, 0), JSON.stringify({ ...entry({ engine_id: 'bg', instance: 'second' }), heartbeat: now }));
    now += 200; // past half: the cached entry now, a fresh one fetched behind it
    expect((await reader.lookup('bg', 0, 0)).entry.instance).toBe('first');
    expect(gets).toBe(2);
    await new Promise((r) => setTimeout(r, 100));
    expect((await reader.lookup('bg', 0, 0)).entry.instance).toBe('second');
    now += 2000; // past its whole life (no lookup refreshed it): the lookup waits for the store, as before
    await reader.lookup('bg', 0, 0);
    expect(gets).toBe(3);
    await reader.close();
    await pub.close();
  });

  it('declares a rank with a stale heartbeat dead when its handshake port does not answer', async () => {
    const store = createMetadataStore(url);
    const port = await closedPort();
    await store.set(kvRankKey('dead', 0, 0, ''), JSON.stringify({ ...entry({ engine_id: 'dead', rpc_port: port }), heartbeat: Date.now() - 60_000 }));
    const reader = new KvRegistry(createMetadataStore(url), { heartbeatMs: 1000, staleAfterMs: 5000, clusterId: '' });
    const t0 = performance.now();
    const err = await reader.lookup('dead', 0, 0).catch((e: MooncakeError) => e);
    expect((err as MooncakeError).code).toBe('CONNECT_FAILED');
    expect((err as MooncakeError).message).toContain('dead');
    expect(performance.now() - t0).toBeLessThan(5000);
    await reader.close();
    await store.close();
  });

  it('accepts a stale heartbeat when the rank answers a probe (clock skew, slow metadata)', async () => {
    const engine = await TransferEngine.create({ metadataServer: url, bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' });
    try {
      const store = createMetadataStore(url);
      await store.set(kvRankKey('skewed', 0, 0, ''), JSON.stringify({ ...entry({ engine_id: 'skewed', rpc_port: engine.rpcPort }), heartbeat: Date.now() - 60_000 }));
      const reader = new KvRegistry(createMetadataStore(url), { heartbeatMs: 1000, staleAfterMs: 5000, clusterId: '' });
      expect((await reader.lookup('skewed', 0, 0)).entry.rpc_port).toBe(engine.rpcPort);
      await reader.close();
      await store.close();
    } finally {
      await engine.close();
    }
  });

  it('rejects entries that are not rank entries', async () => {
    const store = createMetadataStore(url);
    await store.set(kvRankKey('junk', 0, 0, ''), 'not json');
    await store.set(kvRankKey('junk', 0, 1, ''), JSON.stringify({ version: 99 }));
    await store.set(kvRankKey('junk', 0, 2, ''), JSON.stringify({ ...entry(), heartbeat: Date.now(), tensors: ['1'] }));
    const reader = new KvRegistry(createMetadataStore(url), { heartbeatMs: 1000, staleAfterMs: 5000, clusterId: '' });
    for (const tp of [0, 1, 2]) expect(await code(reader.lookup('junk', 0, tp))).toBe('MALFORMED_JSON');
    await reader.close();
    await store.close();
  });
});
