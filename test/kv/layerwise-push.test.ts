// Layerwise push (KvProducer.pushLayerwise): each layer written when it is ready, in one process.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer } from '../../lib';
import { KvConsumer, KvProducer, checkKvPattern, fillKvPattern, heldHeads, patternSeed, type KvLayoutSpec } from '../../lib/kv';

const common = { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' };

function code(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return (e as { code?: string }).code;
  }
  return undefined;
}

describe('layerwise push (tp 2 -> tp 1, GQA)', () => {
  let meta: MetadataServer;
  const producers: KvProducer[] = [];
  let consumer: KvConsumer;
  const totalKvHeads = 4;
  const layers = 4;
  const layoutP: KvLayoutSpec = { numLayers: layers, numBlocks: 16, blockSize: 4, headBytes: 16, numHeads: 2, headLayout: 'HND' };
  const layoutD: KvLayoutSpec = { ...layoutP, numHeads: 4 };
  const parallel = { prefill: { dpSize: 1, tpSize: 2 }, decode: { dpSize: 1, tpSize: 1 } };

  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    const { url } = await meta.listen();
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

  it('writes each layer when it is ready (any order); the decode has every byte after the last', async () => {
    const rid = 'lw-1';
    const pBlocks = [3, 4, 9];
    const dBlocks = [0, 1, 2];
    const seed = patternSeed(rid);
    const x = consumer.expect(rid, dBlocks, { timeoutMs: 10_000 });
    for (const p of producers) fillKvPattern(p.caches, { seed, blockIds: pBlocks, headStart: heldHeads('mha', totalKvHeads, 2, p.tpRank).start });
    const pushes = producers.map((p) => p.pushLayerwise(x.params, pBlocks));
    expect(pushes[0].layers).toBe(layers);
    let settled = false;
    void Promise.all(pushes.map((p) => p.done)).then(() => (settled = true));
    for (const l of [2, 0, 3]) {
      for (const p of pushes) p.layerReady(l);
      await new Promise((r) => setTimeout(r, 20));
    }
    // Layers 0, 2 and 3 have landed; layer 1 has not, and the push is not done.
    const partial = checkKvPattern(consumer.caches, { seed, blockIds: dBlocks, headStart: 0 });
    expect(partial.mismatches).toBeGreaterThan(0);
    expect(settled).toBe(false);
    for (const p of pushes) p.layerReady(1);
    const outcomes = await Promise.all(pushes.map((p) => p.done));
    for (const o of outcomes) {
      expect(o.ok, o.error?.message).toBe(true);
      expect(o.bytes).toBe(layers * 2 * pBlocks.length * 2 * 4 * 16); // layers x K/V x blocks x (2 heads x 4 tokens x 16 B)
      // HND head slices: one range per block, per tensor and layer; the first two blocks are one run on both sides.
      expect(o.ranges).toBe(layers * 2 * pBlocks.length);
    }
    const done = await x.done;
    expect(done.ok).toBe(true);
    const check = checkKvPattern(consumer.caches, { seed, blockIds: dBlocks, headStart: 0 });
    expect(check.mismatches).toBe(0);
    expect(check.bytes).toBe(3 * layers * 2 * 4 * 4 * 16);
  });

  it('refuses a layer outside the layout or given twice, with nothing else disturbed', async () => {
    const x = consumer.expect('lw-2', [5], { timeoutMs: 10_000 });
    const pushes = producers.map((p) => p.pushLayerwise(x.params, [7]));
    expect(code(() => pushes[0].layerReady(layers))).toBe('INVALID_ARGUMENT');
    expect(code(() => pushes[0].layerReady(-1))).toBe('INVALID_ARGUMENT');
    pushes[0].layerReady(0);
    expect(code(() => pushes[0].layerReady(0))).toBe('INVALID_ARGUMENT');
    for (const p of pushes) for (let l = 0; l < layers; l++) if (!(p === pushes[0] && l === 0)) p.layerReady(l);
    for (const o of await Promise.all(pushes.map((p) => p.done))) expect(o.ok).toBe(true);
    expect((await x.done).ok).toBe(true);
  });

  it('layers not ready by the timeout fail every block, and the decode is told', async () => {
    const x = consumer.expect('lw-3', [6, 7], { timeoutMs: 10_000 });
    const pushes = producers.map((p) => p.pushLayerwise(x.params, [1, 2], { timeoutMs: 300 }));
    for (const p of pushes) p.layerReady(0);
    const outcomes = await Promise.all(pushes.map((p) => p.done));
    for (const o of outcomes) {
      expect(o.ok).toBe(false);
      expect(o.error?.code).toBe('TIMEOUT');
      expect(o.failedBlockIds).toEqual([1, 2]);
    }
    const d = await x.done;
    expect(d.ok).toBe(false);
    expect(d.failedBlockIds).toEqual([6, 7]);
  });

  it('an abort ends it like a timeout (ABORT_ERR)', async () => {
    const x = consumer.expect('lw-4', [8], { timeoutMs: 10_000 });
    const ac = new AbortController();
    const pushes = producers.map((p) => p.pushLayerwise(x.params, [3], { signal: ac.signal }));
    for (const p of pushes) p.layerReady(3);
    ac.abort();
    for (const o of await Promise.all(pushes.map((p) => p.done))) expect(o.error?.code).toBe('ABORT_ERR');
    expect((await x.done).ok).toBe(false);
  });
});
