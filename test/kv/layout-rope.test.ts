/**
 * MLA with a separate rope tensor per layer (vLLM-Ascend's nope + rope caches): layout arithmetic, the
 * registry JSON, host caches, the pattern helpers, and a Node <-> Node pull on mooncake-node's side channel.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer } from '../../lib';
import { KvConsumer, KvLayout, KvProducer, allocateHostCaches, checkKvPattern, fillKvPattern, planTransfer } from '../../lib/kv';

const spec = { attention: 'mla' as const, numLayers: 3, numBlocks: 10, blockSize: 4, headBytes: 64, ropeBytes: 16 };

describe('MLA layout with a rope tensor', () => {
  it('numbers latent and rope tensors per layer and sizes each by its own width', () => {
    const l = KvLayout.from(spec);
    expect(l.tensorsPerLayer).toBe(2);
    expect(l.tensorCount).toBe(6);
    expect(l.tensorIndex(1, 'latent')).toBe(2);
    expect(l.tensorIndex(1, 'rope')).toBe(3);
    expect(l.tensorAt(5)).toEqual({ layer: 2, kind: 'rope' });
    expect(l.tensorBlockBytes(2)).toBe(256);
    expect(l.tensorBlockBytes(3)).toBe(64);
    expect(l.blockRange(3, 3)).toEqual({ offset: 192, length: 64 });
    expect(l.totalBytes).toBe(3 * 10 * (256 + 64));
    expect(KvLayout.fromJSON(l.toJSON())).toEqual(l);
    expect(l.toJSON().rope_bytes).toBe(16);
    expect(KvLayout.from({ ...spec, ropeBytes: undefined }).toJSON()).not.toHaveProperty('rope_bytes');
    expect(l.incompatibility(KvLayout.from({ ...spec, ropeBytes: 32 }))).toMatch(/ropeBytes/);
    expect(() => KvLayout.from({ ...spec, attention: 'mha', numHeads: 1 })).toThrow(expect.objectContaining({ code: 'INVALID_CONFIG', details: expect.objectContaining({ field: 'layout.ropeBytes' }) }));
    expect(() => l.tensorIndex(0, 'k')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    const lens = (max?: number) => allocateHostCaches(l, max).regions.map((r) => (r as Buffer).length);
    expect(lens()).toEqual([9600]);
    expect(lens(3200)).toEqual([3200, 3200, 3200]); // a layer's latent and rope share a region
  });

  it('plans whole-block copies per tensor, each with its own block length', () => {
    const l = KvLayout.from(spec);
    const tensors = [...Array(6).keys()].map((t) => BigInt(1 << 20) * BigInt(t + 1));
    const plan = planTransfer({ layout: l, tensors, blockIds: [1, 2], head: 0 }, { layout: l, tensors, blockIds: [5, 6], head: 0 }, 1);
    expect(plan.wholeBlocks).toBe(true);
    expect(plan.requests.map((r) => r.length)).toEqual([512, 128, 512, 128, 512, 128]);
    expect(plan.requests[1]).toMatchObject({ local: tensors[1] + 64n, remote: tensors[1] + 5n * 64n });
    expect(plan.bytes).toBe(3 * 2 * 320);
  });
});

describe('Node <-> Node pull with nope and rope tensors (mooncake-node side channel)', () => {
  let meta: MetadataServer;
  let url: string;
  beforeAll(async () => {
    meta = new MetadataServer({ logger: null });
    url = (await meta.listen()).url;
  });
  afterAll(() => meta.close());

  it('every latent and rope byte arrives, the pattern checks out', async () => {
    const common = { metadataServer: url, prefill: { dpSize: 1, tpSize: 1 }, decode: { dpSize: 1, tpSize: 1 }, layout: spec, engineOptions: { bindAddress: '127.0.0.1', advertiseAddress: '127.0.0.1' } };
    const p = await KvProducer.create({ ...common, engineId: 'pr' });
    const c = await KvConsumer.create({ ...common, engineId: 'dr' });
    try {
      const target = { layout: p.layout, tensorView: (t: number) => p.caches.tensorView(t) };
      expect(fillKvPattern(target, { seed: 7, blockIds: [2, 3], headStart: 0 })).toBe(3 * 2 * 4 * (64 + 16));
      const hold = p.hold('rope-1', [2, 3]);
      const o = await c.pull(hold.params, [8, 9]);
      expect(o.ok, o.error?.message).toBe(true);
      expect(o.bytes).toBe(3 * 2 * 4 * (64 + 16));
      expect(checkKvPattern({ layout: c.layout, tensorView: (t) => c.caches.tensorView(t) }, { seed: 7, blockIds: [8, 9], headStart: 0 })).toEqual({ bytes: 3 * 2 * 4 * 80, mismatches: 0 });
      expect(c.caches.blockView(2, 'rope', 9)!.equals(p.caches.blockView(2, 'rope', 3)!)).toBe(true);
      expect((await hold.released).reason).toBe('done');
    } finally {
      await c.close();
      await p.close();
    }
  });
});
