// Producers and consumers in this process (fast feedback); the multi-process suites cover real deployments.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer, TransferEngine } from '../../lib';
import {
  KvConsumer,
  KvProducer,
  checkKvPattern,
  fillKvPattern,
  heldHeads,
  kvRankKey,
  patternSeed,
  type KvLayoutSpec,
  type KvRelease,
} from '../../lib/kv';
import { freePortRange } from '../helpers/ports';

const common = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' };

const freePorts = freePortRange;

describe('KV in one process (tp 2 → tp 1, GQA)', () => {
  let meta: MetadataServer;
  let url: string;
  const producers: KvProducer[] = [];
  let consumer: KvConsumer;
  const totalKvHeads = 4;
  const layoutP: KvLayoutSpec = { numLayers: 3, numBlocks: 32, blockSize: 4, headBytes: 16, numHeads: 2 };
  const layoutD: KvLayoutSpec = { ...layoutP, numHeads: 4 };
  const parallel = { prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 1 } };

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
    for (let tp = 0; tp < 2; tp++) {
      producers.push(await KvProducer.create({ engineId: 'p', tpRank: tp, ...parallel, layout: layoutP, totalKvHeads, metadataServer: url, engineOptions: common }));
    }
    consumer = await KvConsumer.create({ engineId: 'd', ...parallel, layout: layoutD, totalKvHeads, metadataServer: url, engineOptions: common });
  });

  afterAll(async () => {
    for (const p of producers) await p.close();
    await consumer?.close();
    await meta?.close();
  });

  it('publishes one entry per rank under documented keys', () => {
    const keys = [...meta.entries().keys()];
    expect(keys).toContain(kvRankKey('p', 0, 0));
    expect(keys).toContain(kvRankKey('p', 0, 1));
    expect(keys).toContain(kvRankKey('d', 0, 0));
    expect(kvRankKey('p', 0, 1)).toBe('mooncake/kv/p/0/1');
  });

  it('warms up connections to the ranks it will read from, without touching KV blocks', async () => {
    const before = Buffer.from(consumer.caches.tensorView(0)!);
    expect(await consumer.warmUp('p')).toEqual({ peers: 2, failed: 0 });
    expect(await consumer.warmUp('nobody')).toEqual({ peers: 2, failed: 2 });
    expect(await producers[1].warmUp('d')).toEqual({ peers: 1, failed: 0 });
    expect(consumer.caches.tensorView(0)!.equals(before)).toBe(true);
  });

  it('pulls, verifies and releases on done', async () => {
    const rid = 'req-1';
    const pBlocks = [5, 6, 7, 20, 2];
    const dBlocks = [10, 11, 12, 13, 14];
    const seed = patternSeed(rid);
    const holds = producers.map((p) => {
      fillKvPattern(p.caches, { seed, blockIds: pBlocks, headStart: heldHeads('mha', totalKvHeads, 2, p.tpRank).start });
      return p.hold(rid, pBlocks);
    });
    const outcome = await consumer.pull(holds[0].params, dBlocks);
    expect(outcome.ok).toBe(true);
    expect(outcome.failedBlockIds).toEqual([]);
    expect(outcome.peers).toHaveLength(2);
    const check = checkKvPattern(consumer.caches, { seed, blockIds: dBlocks, headStart: 0 });
    expect(check.mismatches).toBe(0);
    expect(check.bytes).toBe(5 * 6 * 4 * 4 * 16);
    const released: KvRelease[] = await Promise.all(holds.map((h) => h.released));
    for (const r of released) expect(r.reason).toBe('done');
  });

  it('with zero local blocks (full prefix hit) moves nothing but still says done', async () => {
    const holds = producers.map((p) => p.hold('cached', [4, 5]));
    const outcome = await consumer.pull(holds[0].params, []);
    expect(outcome).toMatchObject({ ok: true, bytes: 0, failedBlockIds: [] });
    for (const h of holds) expect((await h.released).reason).toBe('done');
  });

  it('finds the dp rank from remote_port (kv_port + dp × tp) when remote_dp_rank is absent', async () => {
    const kvPort = await freePorts(2);
    const ranks = await Promise.all(
      [0, 1].map((tp) => KvProducer.create({ engineId: 'pk', tpRank: tp, ...parallel, layout: layoutP, totalKvHeads, metadataServer: url, kvPort, engineOptions: common })),
    );
    try {
      expect(ranks.map((r) => r.engine.rpcPort)).toEqual([kvPort, kvPort + 1]);
      const seed = patternSeed('by-port');
      for (const r of ranks) fillKvPattern(r.caches, { seed, blockIds: [0, 1], headStart: heldHeads('mha', totalKvHeads, 2, r.tpRank).start });
      const params = ranks.map((r) => r.hold('by-port', [0, 1]).params)[0];
      expect(params.remote_port).toBe(kvPort);
      const { remote_dp_rank: _dp, remote_tp_size: _tp, remote_total_kv_heads: _h, ...vllmStyle } = params;
      const outcome = await consumer.pull(vllmStyle, [20, 21]);
      expect(outcome.ok).toBe(true);
      expect(checkKvPattern(consumer.caches, { seed, blockIds: [20, 21], headStart: 0 }).mismatches).toBe(0);
      // A port that is not kv_port + dp × tp of that engine is refused.
      const wrong = await consumer.pull({ ...vllmStyle, remote_port: kvPort + 1 }, [20, 21]);
      expect(wrong).toMatchObject({ ok: false, failedBlockIds: [20, 21] });
      expect(wrong.error?.code).toBe('INVALID_ARGUMENT');
    } finally {
      for (const r of ranks) await r.close();
    }
  });

  it('uses regions its engine already registered (e.g. allocateDeviceMemory) without registering them again', async () => {
    const engine = await TransferEngine.create({ metadataServer: url, ...common });
    try {
      const spec = { ...layoutP, numBlocks: 8 };
      const bytes = 2 * spec.numLayers * spec.numBlocks * spec.blockSize * spec.numHeads! * spec.headBytes;
      const region = await engine.allocateManagedBuffer(bytes + 4096);
      const ranks = [
        await KvProducer.create({ engineId: 'pre', tpRank: 0, ...parallel, layout: spec, totalKvHeads, metadataServer: url, engine, caches: { regions: [region] } }),
        await KvProducer.create({ engineId: 'pre', tpRank: 1, ...parallel, layout: spec, totalKvHeads, metadataServer: url, engineOptions: common }),
      ];
      // The caches region once, plus the producer's hold fence (numBlocks × 4 bytes).
      expect(engine.memoryRegions.map((r) => r.length).sort((a, b) => a - b)).toEqual([spec.numBlocks * 4, region.length]);
      expect(ranks[0].caches.tensorAddresses[0]).toBe(region.address);
      const seed = patternSeed('pre');
      for (const r of ranks) fillKvPattern(r.caches, { seed, blockIds: [3, 4], headStart: heldHeads('mha', totalKvHeads, 2, r.tpRank).start });
      const params = ranks.map((r) => r.hold('pre', [3, 4]).params)[0];
      expect((await consumer.pull(params, [30, 31])).ok).toBe(true);
      expect(checkKvPattern(consumer.caches, { seed, blockIds: [30, 31], headStart: 0 }).mismatches).toBe(0);
      for (const r of ranks) await r.close();
      expect(region.unregistered).toBe(false); // the engine's region stays the caller's
      expect(engine.memoryRegions).toHaveLength(1); // the fence went with the rank
    } finally {
      await engine.close();
    }
  });

  it('pushes into the blocks the consumer assigned', async () => {
    const rid = 'req-push';
    const pBlocks = [1, 2, 3];
    const dBlocks = [7, 9, 8];
    const seed = patternSeed(rid);
    const x = consumer.expect(rid, dBlocks, { timeoutMs: 10_000 });
    const outcomes = await Promise.all(
      producers.map((p) => {
        fillKvPattern(p.caches, { seed, blockIds: pBlocks, headStart: heldHeads('mha', totalKvHeads, 2, p.tpRank).start });
        return p.push(x.params, pBlocks);
      }),
    );
    for (const o of outcomes) expect(o.ok).toBe(true);
    const got = await x.done;
    expect(got.ok).toBe(true);
    expect(checkKvPattern(consumer.caches, { seed, blockIds: dBlocks, headStart: 0 }).mismatches).toBe(0);
  });
});
