// Prefill tp 4 → decode tp 2, each group in its own process: GQA head slicing (head-major and token-major
// blocks), heads replicated over prefill ranks, and MLA (any one prefill rank serves). Pull and push, many
// concurrent requests, contents verified per (layer, block, head, token) on every decode rank.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MetadataServer } from '../../lib';
import { sourcesForDecodeRank, type KvLayoutSpec, type KvTransferParams, type TpMapping } from '../../lib/kv';
import { BlockPool, KvGroup, type RankOutcome } from './group';

interface Case {
  name: string;
  prefillLayout: KvLayoutSpec;
  decodeLayout: KvLayoutSpec;
  totalKvHeads: number;
}

const common = { numLayers: 3, numBlocks: 256, blockSize: 8, headBytes: 32 };
const cases: Case[] = [
  { name: 'GQA 8 heads, HND blocks', prefillLayout: { ...common, numHeads: 2, headLayout: 'HND' }, decodeLayout: { ...common, numHeads: 4, headLayout: 'HND' }, totalKvHeads: 8 },
  { name: 'GQA 8 heads, NHD blocks', prefillLayout: { ...common, numHeads: 2 }, decodeLayout: { ...common, numHeads: 4 }, totalKvHeads: 8 },
  { name: 'GQA 2 heads replicated over prefill ranks', prefillLayout: { ...common, numHeads: 1 }, decodeLayout: { ...common, numHeads: 1 }, totalKvHeads: 2 },
  { name: 'MLA', prefillLayout: { ...common, attention: 'mla', headBytes: 576 }, decodeLayout: { ...common, attention: 'mla', headBytes: 576 }, totalKvHeads: 1 },
];
const parallel = { prefill: { dpSize: 1, tpSize: 4 }, decode: { dpSize: 1, tpSize: 2 } };
const REQUESTS = 24;

for (const c of cases) {
  describe(`prefill tp4 → decode tp2: ${c.name}`, () => {
    let meta: MetadataServer;
    let prefill: KvGroup;
    let decode: KvGroup;
    const pPool = new BlockPool(common.numBlocks, 11);
    const dPool = new BlockPool(common.numBlocks, 12);
    const L = c.decodeLayout;
    const tensors = L.attention === 'mla' ? L.numLayers : 2 * L.numLayers;
    const bytesPerBlock = tensors * L.blockSize * (L.numHeads ?? 1) * L.headBytes;
    const mapping: TpMapping = { attention: L.attention ?? 'mha', totalHeads: c.totalKvHeads, prefillTp: 4, decodeTp: 2 };

    beforeAll(async () => {
      meta = new MetadataServer({ logger: null });
      const url = (await meta.listen()).url;
      [prefill, decode] = await Promise.all([
        KvGroup.spawn({ role: 'producer', engineId: 'p', metadataServer: url, ...parallel, layout: c.prefillLayout, totalKvHeads: c.totalKvHeads }),
        KvGroup.spawn({ role: 'consumer', engineId: 'd', metadataServer: url, ...parallel, layout: c.decodeLayout, totalKvHeads: c.totalKvHeads }),
      ]);
    });

    afterAll(async () => {
      await prefill?.close();
      await decode?.close();
      await meta?.close();
    });

    it('pull: each decode rank gathers its heads; every prefill rank is freed (done or not selected)', async () => {
      const reqs = Array.from({ length: REQUESTS }, (_, i) => {
        const n = 1 + ((i * 5) % 9);
        return { id: `pull-${c.name}-${i}`, p: pPool.take(n), d: dPool.take(n) };
      });
      await Promise.all(
        reqs.map(async (r) => {
          const params = await prefill.call<KvTransferParams>('hold', { dp: 0, requestId: r.id, blockIds: r.p });
          const results = await decode.call<RankOutcome[]>('pull', { dp: 0, params, blockIds: r.d });
          for (const x of results) {
            expect(x, x.error).toMatchObject({ ok: true, mismatches: 0, failedBlockIds: [] });
            expect(x.checkedBytes).toBe(r.d.length * bytesPerBlock);
            expect(x.peers).toBe(new Set(sourcesForDecodeRank(r.id, mapping, x.tp).map((s) => s.prefillRank)).size);
          }
          const used = new Set([0, 1].flatMap((d) => sourcesForDecodeRank(r.id, mapping, d).map((s) => s.prefillRank)));
          for (let tp = 0; tp < 4; tp++) {
            const ev = await prefill.waitEvent((e) => e.event === 'released' && e.requestId === r.id && e.tp === tp);
            expect(ev.reason).toBe(used.has(tp) ? 'done' : 'not-selected');
          }
        }),
      );
      for (const r of reqs) {
        pPool.give(r.p);
        dPool.give(r.d);
      }
    });

    it('push: the prefill ranks chosen for each decode rank write its heads', async () => {
      const reqs = Array.from({ length: REQUESTS }, (_, i) => {
        const n = 1 + ((i * 3) % 7);
        return { id: `push-${c.name}-${i}`, p: pPool.take(n), d: dPool.take(n) };
      });
      await Promise.all(
        reqs.map(async (r) => {
          const params = await decode.call<KvTransferParams>('expect', { dp: 0, requestId: r.id, blockIds: r.d, timeoutMs: 30_000 });
          const pushed = await prefill.call<RankOutcome[]>('push', { dp: 0, params, blockIds: r.p });
          for (const o of pushed) expect(o, o.error).toMatchObject({ ok: true });
          // Prefill ranks the mapping does not choose move nothing.
          expect(pushed.filter((o) => o.peers > 0).length).toBe(new Set([0, 1].flatMap((d) => sourcesForDecodeRank(r.id, mapping, d).map((s) => s.prefillRank))).size);
          const results = await decode.call<RankOutcome[]>('awaitPush', { dp: 0, requestId: r.id });
          for (const x of results) {
            expect(x, x.error).toMatchObject({ ok: true, mismatches: 0 });
            expect(x.checkedBytes).toBe(r.d.length * bytesPerBlock);
          }
        }),
      );
      for (const r of reqs) {
        pPool.give(r.p);
        dPool.give(r.d);
      }
    });
  });
}
